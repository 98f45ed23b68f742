"""a section's row for each hub action sent to it (sent_at) and when the section published it

Revision ID: 0013_section_counts_sent
Revises: 0012_outbox_relayed_at
Create Date: 2026-12-07 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_section_counts_sent"
down_revision: str | None = "0012_outbox_relayed_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("publisher_section_counts") as batch:
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("publisher_section_counts") as batch:
        batch.drop_column("published_at")
        batch.drop_column("sent_at")
