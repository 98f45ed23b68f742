"""the outbox's relayed_at: a row once handed to the broker is never folded into another message

Revision ID: 0009_outbox_relayed_at
Revises: 0008_confirmation_allowances
Create Date: 2026-12-06 23:59:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_outbox_relayed_at"
down_revision: str | None = "0008_confirmation_allowances"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "subscriptions_outbox", sa.Column("relayed_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("subscriptions_outbox") as batch:
        batch.drop_column("relayed_at")
