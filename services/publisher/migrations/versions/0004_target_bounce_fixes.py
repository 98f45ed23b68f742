"""target bounce fixes: when staff replaced a bounced address, and with what

Revision ID: 0004_target_bounce_fixes
Revises: 0003_target_bounces
Create Date: 2026-11-29 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_target_bounce_fixes"
down_revision: str | None = "0003_target_bounces"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_bounces = sa.table(
    "action_target_bounces",
    sa.column("action_id", sa.Uuid()),
    sa.column("address", sa.String()),
    sa.column("last_at", sa.DateTime(timezone=True)),
    sa.column("fixed_at", sa.DateTime(timezone=True)),
)
_actions = sa.table("urgent_actions", sa.column("id", sa.Uuid()), sa.column("targets", sa.JSON()))


def upgrade() -> None:
    with op.batch_alter_table("action_target_bounces") as batch:
        batch.add_column(sa.Column("fixed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("fixed_to", sa.String(length=320), nullable=True))
    # Before this revision an address was fixed when it was no longer among the targets: keep
    # showing those as fixed (when is unknown; the last bounce is the closest we have).
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(_bounces.c.action_id, _bounces.c.address, _actions.c.targets).join(
            _actions, _actions.c.id == _bounces.c.action_id
        )
    ).all()
    for action_id, address, targets in rows:
        current = {str(t.get("email") or "").lower() for t in targets or []}
        if address not in current:
            connection.execute(
                sa.update(_bounces)
                .where(_bounces.c.action_id == action_id, _bounces.c.address == address)
                .values(fixed_at=_bounces.c.last_at)
            )


def downgrade() -> None:
    with op.batch_alter_table("action_target_bounces") as batch:
        batch.drop_column("fixed_to")
        batch.drop_column("fixed_at")
