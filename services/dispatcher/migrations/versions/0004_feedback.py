"""late bounces and complaints: the reports applied (once each) and Mailgun tokens seen

Revision ID: 0004_feedback
Revises: 0003_letters
Create Date: 2026-12-02 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "0004_feedback"
down_revision: str | None = "0003_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatch_feedback_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_key", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("ledger", sa.String(length=16), nullable=True),
        sa.Column("row_key", sa.String(length=40), nullable=True),
        sa.Column("status_code", sa.String(length=16), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_key"),
    )
    op.create_index(
        "ix_dispatch_feedback_row",
        "dispatch_feedback_events",
        ["ledger", "row_key", "kind"],
        unique=False,
    )
    op.create_table(
        "dispatch_webhook_tokens",
        sa.Column("token", sa.String(length=128), nullable=False),
        sa.Column("event_key", sa.String(length=200), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token"),
    )
    op.create_index(
        "ix_dispatch_webhook_tokens_seen_at", "dispatch_webhook_tokens", ["seen_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_dispatch_webhook_tokens_seen_at", table_name="dispatch_webhook_tokens")
    op.drop_table("dispatch_webhook_tokens")
    op.drop_index("ix_dispatch_feedback_row", table_name="dispatch_feedback_events")
    op.drop_table("dispatch_feedback_events")
