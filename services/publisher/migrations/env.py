from alembic import context

import services.publisher.federation.models  # noqa: F401 - their tables join Base.metadata
import services.publisher.webhooks.models  # noqa: F401
from services.publisher.models import Base
from shared.migrations import run_env

run_env(context, Base.metadata)
