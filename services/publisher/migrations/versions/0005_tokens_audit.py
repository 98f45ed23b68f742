"""tokens and audit: API token expiry and last use; the audit log of staff changes (append-only)

Revision ID: 0005_tokens_audit
Revises: 0004_target_bounce_fixes
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_tokens_audit"
down_revision: str | None = "0004_target_bounce_fixes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFUSAL = "the audit log is append-only"


def upgrade() -> None:
    with op.batch_alter_table("publisher_api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "publisher_audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_kind", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("action_id", sa.Uuid(), nullable=True),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_publisher_audit_log_at", "publisher_audit_log", ["at"])
    op.create_index("ix_publisher_audit_log_action", "publisher_audit_log", ["action_id", "at"])
    # Append-only in the database itself, not only in the code: an entry cannot be changed or
    # removed through the application's connection.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION publisher_audit_log_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{REFUSAL}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER publisher_audit_log_append_only BEFORE UPDATE OR DELETE "
            "ON publisher_audit_log FOR EACH ROW "
            "EXECUTE FUNCTION publisher_audit_log_append_only()"
        )
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER publisher_audit_log_no_{operation.lower()} BEFORE {operation} "
                f"ON publisher_audit_log BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER publisher_audit_log_append_only ON publisher_audit_log")
        op.execute("DROP FUNCTION publisher_audit_log_append_only()")
    op.drop_index("ix_publisher_audit_log_action", table_name="publisher_audit_log")
    op.drop_index("ix_publisher_audit_log_at", table_name="publisher_audit_log")
    op.drop_table("publisher_audit_log")
    with op.batch_alter_table("publisher_api_tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
