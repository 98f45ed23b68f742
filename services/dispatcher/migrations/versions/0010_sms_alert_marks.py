"""the mark every dispatcher sets while it has alert SMS going: confirmations wait for it

Revision ID: 0010_sms_alert_marks
Revises: 0009_confirmation_sms_hours
Create Date: 2026-12-06 20:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_sms_alert_marks"
down_revision: str | None = "0009_confirmation_sms_hours"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sms_alert_marks",
        sa.Column("name", sa.String(length=16), primary_key=True),
        sa.Column("until", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sms_alert_marks")
