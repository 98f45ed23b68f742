"""outbound webhooks: endpoints, events and their deliveries

Revision ID: 0009_webhooks
Revises: 0008_osdi_outreaches
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_webhooks"
down_revision: str | None = "0008_osdi_outreaches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "publisher_webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("disabled_reason", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures_in_a_row", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "publisher_webhook_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("subscriber_id", sa.Uuid(), nullable=True),
        sa.Column("personal", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_publisher_webhook_events_subscriber", "publisher_webhook_events", ["subscriber_id"]
    )
    op.create_index(
        "ix_publisher_webhook_events_occurred", "publisher_webhook_events", ["occurred_at"]
    )
    op.create_table(
        "publisher_webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"], ["publisher_webhook_endpoints.id"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["event_id"], ["publisher_webhook_events.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_publisher_webhook_deliveries"),
    )
    op.create_index(
        "ix_publisher_webhook_deliveries_due",
        "publisher_webhook_deliveries",
        ["endpoint_id", "state", "next_attempt_at"],
    )
    op.create_index(
        "ix_publisher_webhook_deliveries_event", "publisher_webhook_deliveries", ["event_id"]
    )


def downgrade() -> None:
    op.drop_table("publisher_webhook_deliveries")
    op.drop_index("ix_publisher_webhook_events_occurred", "publisher_webhook_events")
    op.drop_index("ix_publisher_webhook_events_subscriber", "publisher_webhook_events")
    op.drop_table("publisher_webhook_events")
    op.drop_table("publisher_webhook_endpoints")
