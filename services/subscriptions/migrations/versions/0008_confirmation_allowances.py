"""confirmations are counted per mailbox (however its address is written), across processes

Revision ID: 0008_confirmation_allowances
Revises: 0007_pending_letters
Create Date: 2026-12-06 20:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_confirmation_allowances"
down_revision: str | None = "0007_pending_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "confirmation_allowances",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(
        "ix_confirmation_allowances_window_start",
        "confirmation_allowances",
        ["window_start"],
    )


def downgrade() -> None:
    op.drop_index("ix_confirmation_allowances_window_start", table_name="confirmation_allowances")
    op.drop_table("confirmation_allowances")
