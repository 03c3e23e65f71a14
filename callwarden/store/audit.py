"""The append-only, hash-chained audit log: append an entry, verify the chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, event, insert, select, update
from sqlalchemy.orm import Session

from callwarden.audit import pseudonym
from callwarden.store.hot import HotStatements
from callwarden.store.models import AuditEntry, AuditHead, utcnow

GENESIS = "0" * 64


def canonical(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, seq: int, at: dt.datetime, actor: str, action: str,
               subject: str | None, details: str) -> str:
    body = canonical({
        "seq": seq, "at": at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor": actor, "action": action, "subject": subject, "details": details,
    })
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
_INSERT_ENTRY = insert(AuditEntry)
_MOVE_HEAD = update(AuditHead).where(AuditHead.id == 1)


@dataclass(frozen=True, slots=True)
class Head:
    """The chain's end, as locked by :func:`lock_head`."""

    seq: int
    hash: str
    also: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class NewEntry:
    actor: str
    action: str
    subject: str | None = None
    details: dict[str, Any] | None = None
    at: dt.datetime | None = None


_HOT_INSERT_ENTRY, _HOT_MOVE_HEAD = HotStatements(_INSERT_ENTRY), HotStatements(_MOVE_HEAD)
_HOT_NEW_HEAD = HotStatements(insert(AuditHead))


@lru_cache(maxsize=8)
def _also(also: tuple[Any, ...]) -> HotStatements:
    return HotStatements(select(*also))


@lru_cache(maxsize=8)
def _head_with(also: tuple[Any, ...]) -> HotStatements:
    """The head's locking read with extra columns, built once (a statement built per call
    costs its cache-key computation every time)."""
    return HotStatements(_HEAD.add_columns(*also) if also else _HEAD)


def lock_head(conn: Connection, *also: Any) -> Head:
    """Lock the chain's head for the rest of the transaction (``FOR UPDATE`` on PostgreSQL;
    SQLite transactions are already exclusive), so that writers on several nodes append one
    after another. Creates it on a new store. ``also``: scalar subqueries read in the same
    round trip (:attr:`Head.also`)."""
    return start_lock_head(conn, *also)()


def start_lock_head(conn: Connection, *also: Any) -> Callable[[], Head]:
    """:func:`lock_head` in two halves: the locking read is sent now, the :class:`Head` is
    read when the returned function is called. In a PostgreSQL pipeline, reads sent in
    between run after the lock is granted (a session runs its statements in order) and come
    back in the same round trip as the head."""
    rows = _head_with(also).start(conn)

    def head() -> Head:
        got = rows()
        if not got:  # hot statements too: this may run inside a PostgreSQL pipeline
            _HOT_NEW_HEAD.execute(conn, {"id": 1, "seq": 0, "hash": GENESIS})
            extra = tuple(_also(also).execute(conn)[0]) if also else ()
            return Head(0, GENESIS, extra)
        first = got[0]
        return Head(first[0], first[1], tuple(first[2:]))
    return head


def extend(conn: Connection, head: Head, entries: list[NewEntry]) -> list[str]:
    """Add ``entries`` after ``head`` (locked by :func:`lock_head` in this transaction), in
    one statement, and move the head; returns their hashes in order.

    Phone numbers in ``subject``/``details`` are replaced by their keyed hash and masked form
    (``callwarden.audit.pseudonym.protect``), with the key loaded for this store at start-up.
    """
    return _link(conn, head, _protected(conn, entries))


#: An entry ready for the chain: (actor, action, subject, details as canonical JSON, at or None).
_Ready = tuple[str, str, str | None, str, dt.datetime | None]


def _protected(conn: Connection, entries: list[NewEntry]) -> list[_Ready]:
    """What an entry's place in the chain does not change: its numbers pseudonymized and its
    details serialized (the costly part of an entry; :func:`_append_pending` does it before
    it locks the head)."""
    key = pseudonym.bound_key(conn.engine)
    ready: list[_Ready] = []
    for e in entries:
        # Numbers never go in clear: keyed hash + masked form (callwarden.audit.pseudonym).
        subject, details = pseudonym.protect(key, e.action, e.subject, e.details or {})
        ready.append((e.actor, e.action, subject, canonical(details), e.at))
    return ready


def _link(conn: Connection, head: Head, ready: list[_Ready]) -> list[str]:
    """Chain ``ready`` entries after ``head`` (locked), insert them and move the head."""
    if not ready:
        return []
    rows, hashes = [], []
    seq, prev = head.seq, head.hash
    now = utcnow()
    for actor, action, subject, text, when in ready:
        at = (when or now).astimezone(dt.UTC)
        seq += 1
        h = entry_hash(prev, seq, at, actor, action, subject, text)
        rows.append({"seq": seq, "at": at, "actor": actor, "action": action,
                     "subject": subject, "details": text, "prev_hash": prev, "hash": h})
        hashes.append(h)
        prev = h
    _HOT_INSERT_ENTRY.executemany(conn, rows)
    _HOT_MOVE_HEAD.execute(conn, {"seq": seq, "hash": prev})
    return hashes


def append(session: Session, actor: str, action: str, subject: str | None = None,
           details: dict[str, Any] | None = None, at: dt.datetime | None = None) -> str:
    """Add one entry at the end of the chain, inside the caller's transaction; returns its hash."""
    conn = session.connection()
    return extend(conn, lock_head(conn), [NewEntry(actor, action, subject, details, at)])[0]


#: ``Session.info`` key of the entries :func:`append_at_commit` keeps until the commit.
_AT_COMMIT = "callwarden.audit.at_commit"


def append_at_commit(session: Session, actor: str, action: str, subject: str | None = None,
                     details: dict[str, Any] | None = None) -> None:
    """Add one entry to the chain when ``session``'s transaction commits (dropped if it rolls
    back). The head is then locked for the last statements only, not from here to the commit:
    decisions on every node wait for that lock, so a background writer with long
    transactions (purge, detector, reconciliation) must not hold it while it works. The
    entry's time is the commit's, like every other entry's."""
    session.info.setdefault(_AT_COMMIT, []).append(NewEntry(actor, action, subject, details))


@event.listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    entries = session.info.pop(_AT_COMMIT, None)
    if entries:
        conn = session.connection()
        ready = _protected(conn, entries)  # before the lock: decisions wait for the head
        _link(conn, lock_head(conn), ready)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_AT_COMMIT, None)


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str


def verify_chain(session: Session, batch: int = 5000,
                 inspect: Callable[[AuditEntry], None] | None = None) -> list[ChainProblem]:
    """Walk the whole chain; report every altered, missing or re-linked entry. ``inspect``
    sees every entry on the way (one walk for other checks of the entries)."""
    problems: list[ChainProblem] = []
    prev_hash, expected_seq, last = GENESIS, 1, 0
    stmt = select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=batch)
    for e in session.scalars(stmt):
        if e.seq != expected_seq:
            problems.append(ChainProblem(expected_seq, f"entries {expected_seq}..{e.seq - 1} are missing"))
        if e.prev_hash != prev_hash:
            problems.append(ChainProblem(e.seq, "prev_hash does not link to the previous entry"))
        if entry_hash(e.prev_hash, e.seq, e.at, e.actor, e.action, e.subject, e.details) != e.hash:
            problems.append(ChainProblem(e.seq, "content does not match its hash (entry altered)"))
        if inspect is not None:
            inspect(e)
        prev_hash, expected_seq, last = e.hash, e.seq + 1, e.seq
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != last or head.hash != prev_hash):
        problems.append(ChainProblem(head.seq, "chain head does not match the last entry (entries removed at the end)"))
    return problems
