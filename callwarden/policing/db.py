"""Store access for the detector: read without blocking decisions, lock for the one pass.

*Reading.* On PostgreSQL reads never block writers. On SQLite, callwarden's engines open every
transaction with ``BEGIN IMMEDIATE`` (the write lock), which would stop the PBX adapters from
storing decisions for as long as the detector reads; so the detector reads SQLite through a
companion engine that opens plain deferred transactions (a consistent WAL snapshot, no lock).

*The pass lock.* PostgreSQL: ``pg_try_advisory_xact_lock`` on a key derived from the schema, held
by the pass's transaction and released by its commit, its rollback or the loss of its connection
(a crashed node cannot keep it). A node that does not get it skips the pass. SQLite: the database
write lock (``BEGIN IMMEDIATE``) serializes the passes' write phases.
"""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

#: First half of the advisory-lock key ("cw" + "p"olicing); the second is the schema's hash.
LOCK_CLASS = 0x637770


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def try_pass_lock(session: Session) -> bool:
    """Take the pass lock inside the session's transaction; False if another node holds it.

    On SQLite the transaction already holds the database write lock (``BEGIN IMMEDIATE``).
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(
        text("SELECT pg_try_advisory_xact_lock(CAST(:cls AS integer), hashtext(current_schema()))"),
        {"cls": LOCK_CLASS},
    ).scalar())


def tune(session: Session, work_mem_mb: int) -> None:
    """PostgreSQL: give this transaction's sorts and hashes ``work_mem_mb`` (``SET LOCAL``).

    A pass groups and sorts every callee of the window at once; with the server's default
    work_mem (4 MB) those spill to disk. ``SET LOCAL`` ends with the transaction, so the
    connection goes back to the pool unchanged.
    """
    if work_mem_mb and session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL work_mem = '{int(work_mem_mb)}MB'"))
