"""pending_letters: letters waiting for their reply address to follow the link emailed to it

Revision ID: 0007_pending_letters
Revises: 0006_subscribers_updated_at
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_pending_letters"
down_revision: str | None = "0006_subscribers_updated_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "pending_letters",
        sa.Column("letter_id", sa.Uuid(), nullable=False),
        sa.Column("recipient_id", BIG_ID, nullable=False),
        sa.Column("subscriber_id", BIG_ID, nullable=False),
        sa.Column("sender_name", sa.String(length=200), nullable=False),
        sa.Column("sender_email", sa.String(length=320), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["letter_id"], ["letters.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["recipient_id"], ["action_recipients.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("letter_id"),
    )
    with op.batch_alter_table("pending_letters", schema=None) as batch_op:
        batch_op.create_index("ix_pending_letters_subscriber_id", ["subscriber_id"], unique=False)
        batch_op.create_index("ix_pending_letters_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pending_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_pending_letters_created_at")
        batch_op.drop_index("ix_pending_letters_subscriber_id")
    op.drop_table("pending_letters")
