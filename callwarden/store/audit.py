"""The append-only, hash-chained audit log: append an entry, verify the chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, event, insert, select, text, update
from sqlalchemy.orm import Session

from callwarden.audit import pseudonym
from callwarden.store.hot import HotStatements
from callwarden.store.models import AuditEntry, AuditHead, utcnow

GENESIS = "0" * 64


def canonical(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def entry_hash(prev_hash: str, seq: int, at: dt.datetime, actor: str, action: str,
               subject: str | None, details: str) -> str:
    body = _body(seq, at, actor, action, subject, details)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _body(seq: int, at: dt.datetime, actor: str, action: str, subject: str | None,
          details: str) -> str:
    """What an entry's hash covers after the previous hash (canonical JSON)."""
    return canonical({
        "seq": seq, "at": at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        "actor": actor, "action": action, "subject": subject, "details": details,
    })


#: A sequence number no chain reaches: its digits mark where the seq goes in a body.
_SEQ_MARK = 9_007_199_254_740_993


def _around_seq(at: dt.datetime, actor: str, action: str, subject: str | None,
                details: str) -> tuple[str, str]:
    """An entry's body (:func:`_body`) in two parts, before and after its sequence number's
    digits, for a chain linked on the server (:func:`append_ready`). Only the key ``seq`` is
    followed by the mark outside a JSON string (inside one, its quotes are escaped)."""
    before, mark, after = _body(_SEQ_MARK, at, actor, action, subject, details).partition(
        f'"seq":{_SEQ_MARK}')
    assert mark, "canonical JSON without its seq"
    return before + '"seq":', after


_HEAD = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
_INSERT_ENTRY = insert(AuditEntry)
_MOVE_HEAD = update(AuditHead).where(AuditHead.id == 1)


@dataclass(frozen=True, slots=True)
class Head:
    """The chain's end, as locked by :func:`lock_head`."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class NewEntry:
    actor: str
    action: str
    subject: str | None = None
    details: dict[str, Any] | None = None
    at: dt.datetime | None = None


_HOT_HEAD, _HOT_NEW_HEAD = HotStatements(_HEAD), HotStatements(insert(AuditHead))
_HOT_INSERT_ENTRY, _HOT_MOVE_HEAD = HotStatements(_INSERT_ENTRY), HotStatements(_MOVE_HEAD)


def lock_head(conn: Connection) -> Head:
    """Lock the chain's head for the rest of the transaction (``FOR UPDATE`` on PostgreSQL;
    SQLite transactions are already exclusive), so that writers on several nodes append one
    after another. Creates it on a new store. Hot statements: this may run inside a
    PostgreSQL pipeline (it waits for what is queued before it)."""
    got = _HOT_HEAD.execute(conn)
    if not got:
        _HOT_NEW_HEAD.execute(conn, {"id": 1, "seq": 0, "hash": GENESIS})
        return Head(0, GENESIS)
    return Head(got[0][0], got[0][1])


def extend(conn: Connection, head: Head, entries: list[NewEntry]) -> list[str]:
    """Add ``entries`` after ``head`` (locked by :func:`lock_head` in this transaction), in
    one statement, and move the head; returns their hashes in order.

    Phone numbers in ``subject``/``details`` are replaced by their keyed hash and masked form
    (``callwarden.audit.pseudonym.protect``), with the key loaded for this store at start-up.
    :func:`prepare` then :func:`link`, in two steps.
    """
    return link(conn, head, prepare(conn, entries))


#: An entry ready for the chain: (actor, action, subject, details as canonical JSON, at or None).
_Ready = tuple[str, str, str | None, str, dt.datetime | None]


def prepare(conn: Connection, entries: list[NewEntry]) -> list[_Ready]:
    """What an entry's place in the chain does not change: its numbers pseudonymized and its
    details serialized. The costly part of an entry: writers do it before they lock the head
    (then :func:`link`), which every node's decisions wait for."""
    key = pseudonym.bound_key(conn.engine)
    ready: list[_Ready] = []
    for e in entries:
        # Numbers never go in clear: keyed hash + masked form (callwarden.audit.pseudonym).
        subject, details = pseudonym.protect(key, e.action, e.subject, e.details or {})
        ready.append((e.actor, e.action, subject, canonical(details), e.at))
    return ready


def link(conn: Connection, head: Head, ready: list[_Ready]) -> list[str]:
    """Chain ``ready`` entries (:func:`prepare`) after ``head`` (locked by :func:`lock_head`
    in this transaction), insert them and move the head; returns their hashes in order."""
    if not ready:
        return []
    rows, hashes = [], []
    seq, prev = head.seq, head.hash
    now = utcnow()
    for actor, action, subject, details, when in ready:
        at = (when or now).astimezone(dt.UTC)
        seq += 1
        h = entry_hash(prev, seq, at, actor, action, subject, details)
        rows.append({"seq": seq, "at": at, "actor": actor, "action": action,
                     "subject": subject, "details": details, "prev_hash": prev, "hash": h})
        hashes.append(h)
        prev = h
    _HOT_INSERT_ENTRY.executemany(conn, rows)
    _HOT_MOVE_HEAD.execute(conn, {"seq": seq, "hash": prev})
    return hashes


# The chain linked on the PostgreSQL server in one statement: lock the head (or start from
# the genesis on a new store), hash each entry after the previous one (sha256 of the previous
# hash and the body, the body's parts around the seq made by _around_seq), insert them, move
# the head. What Python's entry_hash computes; verify_chain checks it like any entry.
_SERVER_LINK = HotStatements(text("""
WITH RECURSIVE
locked AS (SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE),
head AS (SELECT seq, CAST(hash AS text) AS hash FROM locked
         UNION ALL SELECT 0, CAST(:genesis AS text) WHERE NOT EXISTS (SELECT 1 FROM locked)),
entry AS (SELECT * FROM json_to_recordset(CAST(:entries AS json))
          AS e(n bigint, before text, after text, actor text, action text, subject text,
               details text, at timestamptz)),
chain (n, seq, hash, prev_hash) AS (
    SELECT CAST(0 AS bigint), seq, hash, CAST(NULL AS text) FROM head
    UNION ALL
    SELECT e.n, c.seq + 1,
           encode(sha256(convert_to(c.hash || e.before || CAST(c.seq + 1 AS text) || e.after,
                                    'UTF8')), 'hex'),
           c.hash
    FROM chain AS c JOIN entry AS e ON e.n = c.n + 1),
added AS (INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash)
          SELECT c.seq, e.at, e.actor, e.action, e.subject, e.details, c.prev_hash, c.hash
          FROM chain AS c JOIN entry AS e ON e.n = c.n)
INSERT INTO audit_head (id, seq, hash)
SELECT 1, seq, hash FROM chain ORDER BY n DESC LIMIT 1
ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash"""))


def append_ready(conn: Connection, ready: list[_Ready]) -> None:
    """Add ``ready`` entries (:func:`prepare`) at the end of the chain, in this transaction.

    PostgreSQL: one statement that the server runs whole (:data:`_SERVER_LINK`): the head is
    locked there, not across a round trip to this process, and held only from that
    statement to the commit; inside a pipeline the statement is only queued. Elsewhere
    :func:`lock_head` then :func:`link`. Entries without a time get this moment's, taken
    before the lock."""
    if not ready:
        return
    if conn.dialect.name != "postgresql":
        link(conn, lock_head(conn), ready)
        return
    now = utcnow()
    rows = []
    for n, (actor, action, subject, details, when) in enumerate(ready, 1):
        at = (when or now).astimezone(dt.UTC)
        before, after = _around_seq(at, actor, action, subject, details)
        rows.append({"n": n, "before": before, "after": after, "actor": actor, "action": action,
                     "subject": subject, "details": details,
                     "at": at.isoformat(timespec="microseconds")})
    # One JSON text, not arrays: psycopg escapes every element of a text array in Python.
    _SERVER_LINK.execute(conn, {"genesis": GENESIS, "entries": json.dumps(rows)})


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
    back). The head is then locked for the last statement only (:func:`append_ready`), not
    from here to the commit: decisions on every node wait for that lock, so a background
    writer with long transactions (purge, detector, reconciliation) must not hold it while
    it works. The entry's time is the commit's, like every other entry's."""
    session.info.setdefault(_AT_COMMIT, []).append(NewEntry(actor, action, subject, details))


@event.listens_for(Session, "before_commit")
def _append_pending(session: Session) -> None:
    entries = session.info.pop(_AT_COMMIT, None)
    if entries:
        conn = session.connection()
        append_ready(conn, prepare(conn, entries))  # prepared before the lock: decisions wait


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
