"""staff sessions kept on the server: signing out ends them

Revision ID: 0007_staff_sessions
Revises: 0006_email_feedback
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_staff_sessions"
down_revision: str | None = "0006_email_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "publisher_staff_sessions",
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["publisher_staff_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    op.create_index("ix_publisher_staff_sessions_user_id", "publisher_staff_sessions", ["user_id"])
    op.create_index(
        "ix_publisher_staff_sessions_expires_at", "publisher_staff_sessions", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_publisher_staff_sessions_expires_at", "publisher_staff_sessions")
    op.drop_index("ix_publisher_staff_sessions_user_id", "publisher_staff_sessions")
    op.drop_table("publisher_staff_sessions")
