"""Consistent read-only snapshots for auditor queries that never hold up call decisions.

The store's own engine begins every SQLite transaction with ``BEGIN IMMEDIATE`` (the write
lock), which is right for the enforcer but would make a long export stall the PBX's decisions.
Auditor reads go through here instead: on SQLite a deferred ``BEGIN`` (a WAL read snapshot that
never blocks writers), on PostgreSQL a ``REPEATABLE READ, READ ONLY`` transaction. Either way
every statement of one snapshot sees the same data, so a bundle's CSV, JSON and audit excerpt
agree with each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from callwarden.store.db import make_read_engine

_SQLITE_READERS: dict[str, Engine] = {}


def _sqlite_reader(engine: Engine) -> Engine:
    key = engine.url.render_as_string(hide_password=False)
    if key not in _SQLITE_READERS:
        _SQLITE_READERS[key] = make_read_engine(engine)
    return _SQLITE_READERS[key]


@contextmanager
def snapshot(engine: Engine) -> Iterator[Session]:
    """A read-only session over one consistent snapshot of the store."""
    if engine.dialect.name == "sqlite":
        with Session(_sqlite_reader(engine)) as session:
            yield session
        return
    with Session(engine) as session:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ",
                                              "postgresql_readonly": True})
        yield session
