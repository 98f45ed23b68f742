"""send schedule: the deployment-wide rate per channel, shared by every dispatcher process

Revision ID: 0008_send_schedule
Revises: 0007_feedback_unmatched
Create Date: 2026-12-06 20:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_send_schedule"
down_revision: str | None = "0007_feedback_unmatched"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatch_send_schedule",
        sa.Column("channel", sa.String(length=16), primary_key=True),
        sa.Column("free_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dispatch_send_schedule")
