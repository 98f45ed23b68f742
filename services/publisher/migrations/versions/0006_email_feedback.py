"""email feedback counts: hard and soft bounces and complaints reported after the relay said yes

Revision ID: 0006_email_feedback
Revises: 0005_tokens_audit
Create Date: 2026-12-02 04:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_email_feedback"
down_revision: str | None = "0005_tokens_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("email_hard_bounces", "email_soft_bounces", "email_complaints")


def upgrade() -> None:
    with op.batch_alter_table("action_tallies") as batch:
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("action_tallies") as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
