"""initial: urgent actions, follow-ups, API tokens, the tally, outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-28 04:16:44.060865
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "publisher_api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "publisher_outbox",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("routing_key", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_publisher_outbox_pending",
        "publisher_outbox",
        ["published_at", "created_at"],
        unique=False,
    )

    op.create_table(
        "publisher_processed_messages",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_table(
        "urgent_actions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("year", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("themes", sa.JSON(), nullable=False),
        sa.Column("urgency", sa.String(length=16), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("deadline", sa.Date(), nullable=True),
        sa.Column("default_language", sa.String(length=2), nullable=False),
        sa.Column("audience", sa.JSON(), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("year", "number", name="uq_urgent_actions_year_number"),
    )
    op.create_index("ix_urgent_actions_created_at", "urgent_actions", ["created_at"], unique=False)

    op.create_table(
        "action_country_tallies",
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("recipients", sa.Integer(), nullable=False),
        sa.Column("people", sa.Integer(), nullable=False),
        sa.Column("actions", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["urgent_actions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("action_id", "country"),
    )
    op.create_table(
        "action_responders",
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("subscriber_id", sa.Uuid(), nullable=False),
        sa.Column("first_reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["urgent_actions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("action_id", "subscriber_id"),
    )
    op.create_table(
        "action_tallies",
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("recipients_email", sa.Integer(), nullable=False),
        sa.Column("recipients_sms", sa.Integer(), nullable=False),
        sa.Column("email_sent", sa.Integer(), nullable=False),
        sa.Column("email_delivered", sa.Integer(), nullable=False),
        sa.Column("email_failed", sa.Integer(), nullable=False),
        sa.Column("sms_sent", sa.Integer(), nullable=False),
        sa.Column("sms_delivered", sa.Integer(), nullable=False),
        sa.Column("sms_failed", sa.Integer(), nullable=False),
        sa.Column("people", sa.Integer(), nullable=False),
        sa.Column("actions", sa.Integer(), nullable=False),
        sa.Column("kind_letter", sa.Integer(), nullable=False),
        sa.Column("kind_email", sa.Integer(), nullable=False),
        sa.Column("kind_call", sa.Integer(), nullable=False),
        sa.Column("kind_sms_reply", sa.Integer(), nullable=False),
        sa.Column("kind_other", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["urgent_actions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("action_id"),
    )
    op.create_table(
        "action_updates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("content", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["urgent_actions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_action_updates_action_id", "action_updates", ["action_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_action_updates_action_id", table_name="action_updates")

    op.drop_table("action_updates")
    op.drop_table("action_tallies")
    op.drop_table("action_responders")
    op.drop_table("action_country_tallies")
    op.drop_index("ix_urgent_actions_created_at", table_name="urgent_actions")

    op.drop_table("urgent_actions")
    op.drop_table("publisher_processed_messages")
    op.drop_index("ix_publisher_outbox_pending", table_name="publisher_outbox")

    op.drop_table("publisher_outbox")
    op.drop_table("publisher_api_tokens")
