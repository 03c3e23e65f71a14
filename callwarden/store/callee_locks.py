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

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Integer, Select, func, select, text

from callwarden.store.hot import HotStatements

#: First half of the key ("cw" + "c"allee); the detector's pass lock uses 0x637770.
LOCK_CLASS = 0x637763

# DISTINCT and ORDER BY keep the subquery whole (not flattened): the locks are taken in the
# order of its rows. The callees come as one comma-separated text (digits only), cheaper for
# psycopg to adapt than a list.
_LOCKED = text(
    "SELECT pg_advisory_xact_lock(CAST(:cls AS integer), k) AS locked FROM ("
    "SELECT DISTINCT hashtext(current_schema() || ':' || c) AS k "
    "FROM unnest(string_to_array(CAST(:callees AS text), ',')) AS c ORDER BY k) AS keys"
).columns(locked=Integer).subquery("locks")


@lru_cache(maxsize=8)
def _statements(read: Select[Any]) -> tuple[HotStatements, HotStatements]:
    """``read`` alone, and ``read`` with the locks (count(*) still runs the volatile lock
    function for each row), built once."""
    locking = select(read.scalar_subquery(),
                     select(func.count()).select_from(_LOCKED).scalar_subquery())
    return HotStatements(read), HotStatements(locking)


def lock_callees(conn: Connection, callees: Iterable[str],
                 read: Select[Any]) -> Callable[[], Any]:
    """Take the locks of ``callees`` (digits) for the rest of ``conn``'s transaction, waiting
    for a batch of another node that holds one of them, and run ``read`` (one row, one
    column) in the same statement: one statement less per batch. Returns a function that
    gives ``read``'s value (None without a row). ``read`` sees the store as of the
    statement's start, before any wait for a lock; statements sent after this one run once
    the locks are granted. Inside a PostgreSQL pipeline nothing waits until that function
    is called. SQLite, or no callee: ``read`` alone."""
    wanted = sorted(set(callees))
    alone, locking = _statements(read)
    if not wanted or conn.dialect.name != "postgresql":
        rows = alone.start(conn)
    else:
        if any(not c.isdigit() for c in wanted):  # normalized numbers: never; never split one
            raise ValueError("callee locks take digits only")
        rows = locking.start(conn, {"cls": LOCK_CLASS, "callees": ",".join(wanted)})

    def value() -> Any:
        got = rows()
        return got[0][0] if got else None
    return value
