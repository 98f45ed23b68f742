"""target bounces: target addresses that refused subscribers' letters, for staff to fix

Revision ID: 0003_target_bounces
Revises: 0002
Create Date: 2026-11-28 06:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_target_bounces"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "action_target_bounces",
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("target_name", sa.String(length=300), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("letters", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["urgent_actions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("action_id", "address"),
    )


def downgrade() -> None:
    op.drop_table("action_target_bounces")
