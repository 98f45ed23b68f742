"""Transactions of the publisher, with one rule for SQLite.

SQLite allows one writer at a time, and a transaction that read before writing fails at once
(``SQLITE_BUSY_SNAPSHOT``) if another writer committed in between, whatever the busy timeout.
So on SQLite the writes of this process take turns; PostgreSQL needs no such gate (its row locks and
unique constraints do the work).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


class Database:
    def __init__(self, engine: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction that may write; committed on leaving, rolled back on an exception."""
        gate = self._write_turn if self.is_sqlite else contextlib.nullcontext()
        async with gate, self.sessionmaker() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessionmaker() as session, session.begin():
            yield session


def database_of_app(request: Request) -> Database:
    """The app's Database, for routes (one dependency for every router of the publisher)."""
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(database_of_app)]
