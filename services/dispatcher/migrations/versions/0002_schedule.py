"""quiet hours and daily digests: held ledger rows (due time, recipient) and the digests sent

Revision ID: 0002_schedule
Revises: 0001
Create Date: 2026-11-28 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.db import UTCDateTime

revision: str = "0002_schedule"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEDGER_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Nullable columns: SQLite adds them in place, no table copy.
    op.add_column("dispatch_deliveries", sa.Column("not_before", UTCDateTime(), nullable=True))
    op.add_column("dispatch_deliveries", sa.Column("held", sa.JSON(), nullable=True))
    op.add_column("dispatch_deliveries", sa.Column("digest_id", LEDGER_ID, nullable=True))
    op.create_index(
        "ix_dispatch_deliveries_due", "dispatch_deliveries", ["status", "not_before"], unique=False
    )
    op.create_index(
        "ix_dispatch_deliveries_digest_id", "dispatch_deliveries", ["digest_id"], unique=False
    )
    op.create_table(
        "dispatch_digests",
        sa.Column("id", LEDGER_ID, autoincrement=True, nullable=False),
        sa.Column("subscriber_id", sa.String(length=36), nullable=False),
        sa.Column("local_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("claim_token", sa.String(length=36), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("subscriber_id", "local_date", name="uq_dispatch_digest_day"),
    )


def downgrade() -> None:
    op.drop_table("dispatch_digests")
    op.drop_index("ix_dispatch_deliveries_digest_id", table_name="dispatch_deliveries")
    op.drop_index("ix_dispatch_deliveries_due", table_name="dispatch_deliveries")
    with op.batch_alter_table("dispatch_deliveries") as batch:
        batch.drop_column("digest_id")
        batch.drop_column("held")
        batch.drop_column("not_before")
