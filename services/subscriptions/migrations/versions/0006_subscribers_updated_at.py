"""an index on subscribers.updated_at: OSDI's filter on modified_date (a CRM's nightly sync)

Revision ID: 0006_subscribers_updated_at
Revises: 0005_consent_reason
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006_subscribers_updated_at"
down_revision: str | None = "0005_consent_reason"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_subscribers_updated_at", "subscribers", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_subscribers_updated_at", table_name="subscribers")
