"""One-at-a-time maintenance jobs across processes and nodes (purge).

PostgreSQL: a session-level advisory lock keyed by the job name and the current schema, held on
a dedicated connection for the job's duration. SQLite: ``flock`` on ``<database>.<name>.lock``
beside the database file. Both are released by the operating system when the process dies, so
a killed job never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from sqlalchemy import Engine, text

__all__ = ["Busy", "exclusive"]


class Busy(Exception):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[None]:
    """Hold the lock called ``name`` for the ``with`` block; Busy if someone else holds it."""
    if engine.dialect.name == "postgresql":
        with _pg_lock(engine, name):
            yield
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield  # a private in-memory database: no one else can see it
        return
    with _file_lock(f"{database}.{name}.lock", name):
        yield


@contextlib.contextmanager
def _pg_lock(engine: Engine, name: str) -> Iterator[None]:
    key = text("SELECT hashtextextended(:name || ':' || current_schema(), 0)")
    with engine.connect() as conn:
        lock_id = conn.execute(key, {"name": f"callwarden.{name}"}).scalar_one()
        got = conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": lock_id}).scalar_one()
        conn.commit()  # the lock is the session's, not the transaction's
        if not got:
            raise Busy(f"another {name} is running (PostgreSQL advisory lock held)")
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
                conn.commit()


@contextlib.contextmanager
def _file_lock(path: str, name: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another {name} is running (lock file {path} held)") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
