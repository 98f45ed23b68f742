from alembic import context

import services.publisher.webhooks.models  # noqa: F401 - its tables join Base.metadata
from services.publisher.models import Base
from shared.migrations import run_env

run_env(context, Base.metadata)
