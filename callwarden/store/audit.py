"""The append-only, hash-chained audit log: append an entry, verify the chain."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from callwarden.audit import pseudonym
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


def append(session: Session, actor: str, action: str, subject: str | None = None,
           details: dict[str, Any] | None = None, at: dt.datetime | None = None) -> str:
    """Add one entry at the end of the chain, inside the caller's transaction; returns its hash.

    Phone numbers in ``subject``/``details`` are replaced by their keyed hash and masked form
    (``callwarden.audit.pseudonym.protect``), with the key loaded for this store at start-up.

    The head row is locked (``FOR UPDATE`` on PostgreSQL; SQLite transactions are already
    exclusive), so concurrent writers on several nodes append one after another. Plain Core
    statements: this runs inside every call decision.
    """
    conn = session.connection()
    # Numbers never go in clear: keyed hash + masked form (callwarden.audit.pseudonym).
    subject, details = pseudonym.protect(pseudonym.bound_key(conn.engine), action, subject,
                                         details or {})
    head = conn.execute(_HEAD).one_or_none()
    if head is None:
        conn.execute(insert(AuditHead).values(id=1, seq=0, hash=GENESIS))
        prev_seq, prev_hash = 0, GENESIS
    else:
        prev_seq, prev_hash = head
    at = (at or utcnow()).astimezone(dt.UTC)
    text = canonical(details or {})
    seq = prev_seq + 1
    h = entry_hash(prev_hash, seq, at, actor, action, subject, text)
    conn.execute(_INSERT_ENTRY, {"seq": seq, "at": at, "actor": actor, "action": action,
                                 "subject": subject, "details": text, "prev_hash": prev_hash, "hash": h})
    conn.execute(_MOVE_HEAD, {"seq": seq, "hash": h})
    return h


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
