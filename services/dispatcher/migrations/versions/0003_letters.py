"""letters to officials: their ledger (one row per letter and target) and per-target windows

Revision ID: 0003_letters
Revises: 0002_schedule
Create Date: 2026-11-28 06:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "0003_letters"
down_revision: str | None = "0002_schedule"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatch_letter_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("letter_id", sa.String(length=36), nullable=False),
        sa.Column("action_id", sa.String(length=36), nullable=False),
        sa.Column("target_email", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("letter_id", "target_email", name="uq_dispatch_letter_target"),
    )
    op.create_index(
        "ix_dispatch_letter_deliveries_action",
        "dispatch_letter_deliveries",
        ["action_id"],
        unique=False,
    )
    op.create_table(
        "dispatch_letter_windows",
        sa.Column("target_email", sa.String(length=320), nullable=False),
        sa.Column("window_start", UTCDateTime(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("target_email"),
    )


def downgrade() -> None:
    op.drop_table("dispatch_letter_windows")
    op.drop_index("ix_dispatch_letter_deliveries_action", table_name="dispatch_letter_deliveries")
    op.drop_table("dispatch_letter_deliveries")
