"""the outbox's relayed_at: a row once handed to the broker is never folded into another message

Revision ID: 0011_outbox_relayed_at
Revises: 0010_sms_alert_marks
Create Date: 2026-12-06 23:59:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_outbox_relayed_at"
down_revision: str | None = "0010_sms_alert_marks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "dispatcher_outbox", sa.Column("relayed_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("dispatcher_outbox") as batch:
        batch.drop_column("relayed_at")
