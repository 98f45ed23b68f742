"""OSDI outreaches: the letters subscribers wrote, their totals per action, erased subscribers

Revision ID: 0008_osdi_outreaches
Revises: 0007_staff_sessions
Create Date: 2026-12-06 20:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_osdi_outreaches"
down_revision: str | None = "0007_staff_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "osdi_outreaches",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("letter_id", sa.Uuid(), nullable=False),
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("subscriber_id", sa.Uuid(), nullable=True),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["urgent_actions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("letter_id"),
    )
    op.create_index("ix_osdi_outreaches_action", "osdi_outreaches", ["action_id", "seq"])
    op.create_index("ix_osdi_outreaches_subscriber", "osdi_outreaches", ["subscriber_id"])
    op.create_table(
        "osdi_outreach_totals",
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("outreaches", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["urgent_actions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("action_id"),
    )
    op.create_table(
        "osdi_erased_subscribers",
        sa.Column("subscriber_id", sa.Uuid(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id"),
    )


def downgrade() -> None:
    op.drop_table("osdi_erased_subscribers")
    op.drop_table("osdi_outreach_totals")
    op.drop_index("ix_osdi_outreaches_subscriber", table_name="osdi_outreaches")
    op.drop_index("ix_osdi_outreaches_action", table_name="osdi_outreaches")
    op.drop_table("osdi_outreaches")
