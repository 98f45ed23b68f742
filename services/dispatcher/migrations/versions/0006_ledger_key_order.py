"""ledger: the unique key leads with the subscriber (it serves erasures too, so the index on
subscriber_id goes); the indexes on provider_message_id and digest_id only hold rows that have one

Revision ID: 0006_ledger_key_order
Revises: 0005_ledger_waiting
Create Date: 2026-12-02 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_ledger_key_order"
down_revision: str | None = "0005_ledger_waiting"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "dispatch_deliveries"
OLD_KEY = ["action_id", "message_kind", "subscriber_id", "channel"]
NEW_KEY = ["subscriber_id", "action_id", "message_kind", "channel"]
PARTIAL = ("provider_message_id", "digest_id")


def _partial(column: str) -> None:
    where = sa.text(f"{column} IS NOT NULL")
    op.create_index(
        f"ix_{TABLE}_{column}", TABLE, [column], sqlite_where=where, postgresql_where=where
    )


def _waiting() -> None:
    where = sa.text("not_before IS NOT NULL")
    op.create_index(
        "ix_dispatch_deliveries_waiting",
        TABLE,
        ["not_before"],
        sqlite_where=where,
        postgresql_where=where,
    )


def _rekey(columns: list[str]) -> None:
    # SQLite changes a table constraint by copying the table (batch mode); the partial index
    # is dropped first and made again after, as a copy would not keep its WHERE.
    op.drop_index("ix_dispatch_deliveries_waiting", table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_constraint("uq_dispatch_delivery", type_="unique")
        batch.create_unique_constraint("uq_dispatch_delivery", columns)
    _waiting()


def upgrade() -> None:
    for column in PARTIAL:
        op.drop_index(f"ix_{TABLE}_{column}", table_name=TABLE)
    op.drop_index("ix_dispatch_deliveries_subscriber", table_name=TABLE)
    _rekey(NEW_KEY)
    for column in PARTIAL:
        _partial(column)


def downgrade() -> None:
    for column in PARTIAL:
        op.drop_index(f"ix_{TABLE}_{column}", table_name=TABLE)
    _rekey(OLD_KEY)
    op.create_index("ix_dispatch_deliveries_subscriber", TABLE, ["subscriber_id"])
    for column in PARTIAL:
        op.create_index(f"ix_{TABLE}_{column}", TABLE, [column])
