"""the hourly budget of confirmation SMS, counted for all dispatchers together

Revision ID: 0009_confirmation_sms_hours
Revises: 0008_send_schedule
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_confirmation_sms_hours"
down_revision: str | None = "0008_send_schedule"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "confirmation_sms_hours",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("hour"),
    )


def downgrade() -> None:
    op.drop_table("confirmation_sms_hours")
