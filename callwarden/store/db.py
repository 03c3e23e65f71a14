"""Engines and sessions: SQLite (WAL, embedded default) and PostgreSQL, the same code for both."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from callwarden.service.native import native_sleep


class StoreUnavailable(Exception):
    """The store could not answer (down, locked, or slower than the decision deadline)."""


def make_engine(url: str, *, decision_timeout_ms: int | None = None, pool_size: int = 10) -> Engine:
    """An engine for ``url``.

    With ``decision_timeout_ms`` (the servers' engine) every wait is bounded so that a slow or
    absent store turns into a quick POLICY_UNAVAILABLE instead of a hung call; without it (the
    administrator's CLI) long imports may take the time they need.
    """
    if url.startswith("sqlite"):
        if decision_timeout_ms:
            # SQLite's own busy handler backs off to 100 ms between tries: behind a series of
            # short transactions of another process (a bulk import, a purge), a decision could
            # miss every free moment until its deadline. So the servers wait for the write
            # lock themselves, trying every 2 ms (see _on_begin); the handler covers the rest.
            begin_ms, busy_ms = max(decision_timeout_ms, 50), 20
        else:
            begin_ms = busy_ms = 30_000
        engine = create_engine(
            url, connect_args={"timeout": busy_ms / 1000, "check_same_thread": False}
        )
        _sqlite_pragmas(engine, busy_ms=busy_ms, begin_ms=begin_ms)
        return engine
    options = make_url(url).query.get("options", "")  # e.g. a search_path given in the URL
    if decision_timeout_ms is None:
        return create_engine(url, pool_size=pool_size, connect_args={"connect_timeout": 10})
    connect_args = {
        "connect_timeout": max(2, math.ceil(decision_timeout_ms / 1000)),  # libpq minimum: 2 s
        "options": f"{options} -c statement_timeout={decision_timeout_ms}"
                   f" -c lock_timeout={decision_timeout_ms}".strip(),
    }
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=decision_timeout_ms / 1000,
        connect_args=connect_args,
    )


#: How often a server retries SQLite's write lock while another connection holds it.
LOCK_POLL_S = 0.002


def _sqlite_pragmas(engine: Engine, busy_ms: int, begin_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Take the write lock up front: a deferred transaction that reads then writes can be
        # refused mid-way under WAL, instead of waiting its turn.
        deadline = time.monotonic() + begin_ms / 1000
        while True:
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() >= deadline:
                    raise
            native_sleep(LOCK_POLL_S)


def make_read_engine(engine: Engine) -> Engine:
    """An engine that reads without taking SQLite's write lock (PostgreSQL: ``engine`` itself).

    For long readers (auditor exports, the policing detector) that must not hold up decisions:
    a deferred ``BEGIN`` is a WAL read snapshot that never blocks writers.
    """
    if engine.dialect.name != "sqlite":
        return engine
    reader = create_engine(engine.url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(reader, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(reader, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN")

    return reader


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session per unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session
