"""SQLite's WAL checkpoint, moved off the decision writer's commits.

By default the connection whose commit brings the write-ahead log past 1,000 pages copies it
back into the database file (and syncs it) inside that commit. For the decision writer that was
one batch in ~100 at one call at a time taking 4-6 ms instead of ~1 (measured: 2.3% of
decisions over 3 ms, p99 7 ms; with checkpoints elsewhere, p99 2.4-2.8 ms). Here the
enforcer's connections do not checkpoint on commit; after its commits, at most every
``EVERY_S``, a thread of its own runs a PASSIVE checkpoint, which neither waits for nor blocks
readers and writers. Other processes on the same file (CLI, detector, purge) keep SQLite's
default, so the log is still checkpointed if this one stops.
"""

from __future__ import annotations

import concurrent.futures
import time

from sqlalchemy import Engine, event

from callwarden.log import get_logger
from callwarden.service.native import NativeExecutor

log = get_logger("callwarden.store")

#: Longest time between two checkpoints while decisions are being committed.
EVERY_S = 0.5


class BackgroundCheckpoints:
    """Call :meth:`after_commit` from the committing thread; the checkpoint runs elsewhere."""

    def __init__(self, engine: Engine, every_s: float = EVERY_S):
        self._engine = engine
        self._every_s = every_s
        # Native even under gevent (the FreeSWITCH process); the thread ends with the executor.
        self._threads = NativeExecutor(1, thread_name_prefix="callwarden-checkpoint")
        self._job: concurrent.futures.Future[None] | None = None
        self._last = time.monotonic()
        self.done = 0  # checkpoints run (for tests)

    @classmethod
    def install(cls, engine: Engine, every_s: float = EVERY_S) -> BackgroundCheckpoints | None:
        """For a SQLite file engine not connected yet: turn off checkpoints on commit for its
        connections and return the checkpointer; None for anything else."""
        if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
            return None

        @event.listens_for(engine, "connect")
        def _no_checkpoint_on_commit(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")

        return cls(engine, every_s)

    def after_commit(self) -> None:
        """A commit happened: start a checkpoint if none runs and the last is old enough."""
        now = time.monotonic()
        if now - self._last < self._every_s or (self._job is not None and not self._job.done()):
            return
        self._last = now
        self._job = self._threads.submit(self.run)

    def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) for a checkpoint that is running to end."""
        if self._job is not None:
            concurrent.futures.wait([self._job], timeout)

    def run(self) -> None:
        """One PASSIVE checkpoint on a connection of its own (outside any transaction)."""
        try:
            raw = self._engine.raw_connection()
            try:
                raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # type: ignore[union-attr]
            finally:
                raw.close()
            self.done += 1
        except Exception as exc:  # the next one retries; a failing store shows in decisions
            log.warning("wal_checkpoint_failed", error=type(exc).__name__)
