"""Per-callee locks that keep frequency limits exact across nodes sharing PostgreSQL.

A decision counts the callee's allowed calls, then adds one. Two nodes deciding for the same
callee at once must take turns, or both count the same history and both pass a limit of 1.
Each decision batch therefore takes, before it reads its facts, a transaction-scoped advisory
lock per callee of the batch (``pg_advisory_xact_lock``, released by the commit or rollback,
or by the loss of the connection): the batches of several nodes wait for each other only when
they share a callee, and the audit head is locked just for linking the entries at the end.

The key is ``(LOCK_CLASS, hashtext(schema:callee))``: the class keeps it apart from the
detector's pass lock, the schema apart from other callwarden stores in one database. Locks
are taken in key order, so two batches cannot deadlock on them (two callees whose hashes
collide share one lock; taking it twice in one transaction is allowed). SQLite: nothing to do,
a decision transaction holds the database's write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, text

from callwarden.store.hot import HotStatements

#: First half of the key ("cw" + "c"allee); the detector's pass lock uses 0x637770.
LOCK_CLASS = 0x637763

# DISTINCT and ORDER BY keep the subquery whole (not flattened): the locks are taken in the
# order of its rows.
_LOCK = HotStatements(text(
    "SELECT pg_advisory_xact_lock(CAST(:cls AS integer), k) FROM ("
    "SELECT DISTINCT hashtext(current_schema() || ':' || c) AS k "
    "FROM unnest(CAST(:callees AS text[])) AS c ORDER BY k) AS keys"))


def lock_callees(conn: Connection, callees: Iterable[str]) -> None:
    """Take the locks of ``callees`` (digits) for the rest of ``conn``'s transaction; waits
    for a batch of another node that holds one of them. Inside a PostgreSQL pipeline this is
    only queued: statements sent after it run once the locks are granted."""
    wanted = sorted(set(callees))
    if not wanted or conn.dialect.name != "postgresql":
        return
    _LOCK.start(conn, {"cls": LOCK_CLASS, "callees": wanted})
