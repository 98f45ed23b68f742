"""federation: sections on a hub, their counts; an action's origin, sections, pending updates;
endpoints of federation's kinds

Revision ID: 0011_federation
Revises: 0010_sign_in_failures
Create Date: 2026-12-06 20:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_federation"
down_revision: str | None = "0010_sign_in_failures"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "publisher_sections",
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("key_sealed", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_heard_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("endpoint_id", sa.Uuid(), nullable=True),
        sa.PrimaryKeyConstraint("code"),
    )
    op.create_table(
        "publisher_section_counts",
        sa.Column("section_code", sa.String(length=16), nullable=False),
        sa.Column("action_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=40), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("section_code", "action_id"),
    )
    with op.batch_alter_table("urgent_actions") as batch:
        batch.add_column(sa.Column("sections", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("origin", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("origin_action_id", sa.Uuid(), nullable=True))
        batch.add_column(sa.Column("pending_updates", sa.JSON(), nullable=True))
        batch.create_unique_constraint("uq_urgent_actions_origin_action_id", ["origin_action_id"])
    with op.batch_alter_table("publisher_webhook_endpoints") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), server_default="webhook", nullable=False)
        )
        batch.add_column(sa.Column("section_code", sa.String(length=16), nullable=True))
    with op.batch_alter_table("publisher_webhook_events") as batch:
        batch.add_column(sa.Column("topic", sa.String(length=80), nullable=True))
    op.create_index("ix_publisher_webhook_events_topic", "publisher_webhook_events", ["topic"])


def downgrade() -> None:
    op.drop_index("ix_publisher_webhook_events_topic", "publisher_webhook_events")
    with op.batch_alter_table("publisher_webhook_events") as batch:
        batch.drop_column("topic")
    with op.batch_alter_table("publisher_webhook_endpoints") as batch:
        batch.drop_column("section_code")
        batch.drop_column("kind")
    with op.batch_alter_table("urgent_actions") as batch:
        batch.drop_constraint("uq_urgent_actions_origin_action_id", type_="unique")
        batch.drop_column("pending_updates")
        batch.drop_column("origin_action_id")
        batch.drop_column("origin")
        batch.drop_column("sections")
    op.drop_table("publisher_section_counts")
    op.drop_table("publisher_sections")
