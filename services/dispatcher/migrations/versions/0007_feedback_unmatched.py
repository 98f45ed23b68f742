"""feedback that matches no message of ours: counts by route and kind, not a row each

Revision ID: 0007_feedback_unmatched
Revises: 0006_ledger_key_order
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_feedback_unmatched"
down_revision: str | None = "0006_ledger_key_order"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dispatch_feedback_unmatched",
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "kind"),
    )
    # The rows kept so far for reports that matched nothing and changed nothing: counts now.
    op.execute(
        "INSERT INTO dispatch_feedback_unmatched (source, kind, count, last_at) "
        "SELECT source, kind, COUNT(*), MAX(received_at) FROM dispatch_feedback_events "
        "WHERE ledger IS NULL AND NOT applied GROUP BY source, kind"
    )
    op.execute("DELETE FROM dispatch_feedback_events WHERE ledger IS NULL AND NOT applied")


def downgrade() -> None:
    op.drop_table("dispatch_feedback_unmatched")
