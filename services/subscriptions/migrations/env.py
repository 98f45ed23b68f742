"""Alembic environment of the subscriptions service (see shared.migrations)."""

from alembic import context

from services.subscriptions.models import Base
from shared.migrations import run_env

run_env(context, Base.metadata)
