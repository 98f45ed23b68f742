"""The dispatcher's first schema: actions, follow-ups, the delivery ledgers, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-28 04:17:00.163597
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatch_action_messages",
        sa.Column("action_id", sa.String(length=36), nullable=False),
        sa.Column("message_kind", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("default_language", sa.String(length=16), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("action_id", "message_kind"),
    )
    op.create_table(
        "dispatch_actions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("reference", sa.String(length=40), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("default_language", sa.String(length=16), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("deadline", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "dispatch_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("action_id", sa.String(length=36), nullable=False),
        sa.Column("message_kind", sa.String(length=80), nullable=False),
        sa.Column("subscriber_id", sa.String(length=36), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=True),
        sa.Column("claim_token", sa.String(length=36), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.Column("receipt_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "action_id", "message_kind", "subscriber_id", "channel", name="uq_dispatch_delivery"
        ),
    )
    op.create_index(
        "ix_dispatch_deliveries_provider_message_id",
        "dispatch_deliveries",
        ["provider_message_id"],
        unique=False,
    )
    op.create_index(
        "ix_dispatch_deliveries_subscriber", "dispatch_deliveries", ["subscriber_id"], unique=False
    )

    op.create_table(
        "dispatch_transactional_deliveries",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("template", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("provider_message_id", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("receipt_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index(
        "ix_dispatch_transactional_deliveries_provider_message_id",
        "dispatch_transactional_deliveries",
        ["provider_message_id"],
        unique=False,
    )

    op.create_table(
        "dispatcher_outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("routing_key", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_dispatcher_outbox_pending",
        "dispatcher_outbox",
        ["published_at", "created_at"],
        unique=False,
    )

    op.create_table(
        "dispatcher_processed_messages",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )


def downgrade() -> None:
    op.drop_table("dispatcher_processed_messages")
    op.drop_index("ix_dispatcher_outbox_pending", table_name="dispatcher_outbox")

    op.drop_table("dispatcher_outbox")
    op.drop_index(
        "ix_dispatch_transactional_deliveries_provider_message_id",
        table_name="dispatch_transactional_deliveries",
    )

    op.drop_table("dispatch_transactional_deliveries")
    op.drop_index("ix_dispatch_deliveries_subscriber", table_name="dispatch_deliveries")
    op.drop_index("ix_dispatch_deliveries_provider_message_id", table_name="dispatch_deliveries")

    op.drop_table("dispatch_deliveries")
    op.drop_table("dispatch_actions")
    op.drop_table("dispatch_action_messages")
