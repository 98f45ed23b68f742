"""Each service's migration history is one line: a new revision builds on the last, so
`uanet migrate` and a downgrade both know one order."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory

from shared.migrations import alembic_config

SERVICES = ("publisher", "subscriptions", "dispatcher")


@pytest.mark.parametrize("service", SERVICES)
def test_one_head_and_no_branches(service: str) -> None:
    scripts = ScriptDirectory.from_config(alembic_config(service, "sqlite://"))
    assert len(scripts.get_heads()) == 1
    revisions = list(scripts.walk_revisions())
    assert all(not isinstance(r.down_revision, tuple) for r in revisions)
    assert revisions[-1].down_revision is None
