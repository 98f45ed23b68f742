"""ledger: the index of waiting rows leaves out the rows sent at once (no index changes when an
outcome is written: HOT updates on PostgreSQL, with room left on each page)

Revision ID: 0005_ledger_waiting
Revises: 0004_feedback
Create Date: 2026-12-02 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_ledger_waiting"
down_revision: str | None = "0004_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = sa.text("not_before IS NOT NULL")


def upgrade() -> None:
    # Rows left ``retry`` now carry a not_before (see models.Delivery): give the ones already
    # there one, so a close still finds them through the new index.
    op.execute(
        "UPDATE dispatch_deliveries SET not_before = updated_at "
        "WHERE status = 'retry' AND not_before IS NULL"
    )
    # ... and a final row none: it waits for nothing.
    op.execute(
        "UPDATE dispatch_deliveries SET not_before = NULL "
        "WHERE status IN ('sent', 'delivered', 'failed', 'cancelled') AND not_before IS NOT NULL"
    )
    op.create_index(
        "ix_dispatch_deliveries_waiting",
        "dispatch_deliveries",
        ["not_before"],
        unique=False,
        sqlite_where=WAITING,
        postgresql_where=WAITING,
    )
    op.drop_index("ix_dispatch_deliveries_due", table_name="dispatch_deliveries")
    if op.get_bind().dialect.name == "postgresql":
        # Applies to pages written from now on (a VACUUM FULL would rewrite the old ones).
        op.execute("ALTER TABLE dispatch_deliveries SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE dispatch_deliveries RESET (fillfactor)")
    op.create_index(
        "ix_dispatch_deliveries_due", "dispatch_deliveries", ["status", "not_before"], unique=False
    )
    op.drop_index("ix_dispatch_deliveries_waiting", table_name="dispatch_deliveries")
