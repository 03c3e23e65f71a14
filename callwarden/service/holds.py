"""Legal holds: keep one call's, one tenant's, or one number range's evidence past its deadline.

A hold is active from ``set_at`` until it is lifted; lifted holds stay in the table (and every
change is in the audit log). Purge asks :func:`held` whether a row is covered by any active
hold, as part of the same SQL statement that claims the row, so a hold can never be missed
between a check and a deletion.

Number ranges are prefixes of the canonical national number (``138``, ``0105800``, ``95512``),
matched against both the caller and the callee of a call, and the callee of a consent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, exists, false, literal, or_, select
from sqlalchemy.orm import Session

from callwarden.store import audit
from callwarden.store.models import Call, LegalHold, Tenant, utcnow

__all__ = [
    "SCOPES",
    "HoldError",
    "covering_holds",
    "held",
    "lift_hold",
    "list_holds",
    "normalize_prefix",
    "set_hold",
]

SCOPES = ("call", "tenant", "number_prefix")
MIN_PREFIX = 3
_SEPARATORS = re.compile(r"[\s\-().]")
_MOBILE = re.compile(r"1[3-9]")


class HoldError(ValueError):
    """A hold cannot be set or lifted as asked (message says why)."""


def normalize_prefix(raw: str) -> str:
    """Canonical digits of a number prefix: separators dropped, +86/0086 removed.

    ``+86 10 5800`` -> ``0105800`` (the trunk 0 restored, as numbers are stored), ``138`` stays.
    """
    text = _SEPARATORS.sub("", raw or "")
    had_cc = text.startswith(("+86", "0086"))
    text = text.removeprefix("+86") if text.startswith("+86") else text.removeprefix("0086")
    if not text.isdigit() or not text.isascii():
        raise HoldError("number prefix must be digits (spaces, dashes, +86 allowed)")
    if had_cc and not (_MOBILE.match(text) or text.startswith(("0", "400", "800", "95", "96"))):
        text = "0" + text  # +86 10 ... is the fixed line 010 ...
    if not MIN_PREFIX <= len(text) <= 20:
        raise HoldError(f"number prefix must be {MIN_PREFIX} to 20 digits")
    return text


def _covers(call_id: ColumnElement[str] | None, tenant_id: ColumnElement[str | None] | None,
            numbers: Sequence[ColumnElement[str | None]]) -> list[ColumnElement[bool]]:
    covers: list[ColumnElement[bool]] = []
    if call_id is not None:
        covers.append(and_(LegalHold.scope == "call", LegalHold.value == call_id))
    if tenant_id is not None:
        covers.append(and_(LegalHold.scope == "tenant", LegalHold.value == tenant_id))
    for column in numbers:
        covers.append(and_(LegalHold.scope == "number_prefix", column.startswith(LegalHold.value)))
    return covers


def held(call_id: ColumnElement[str] | None, tenant_id: ColumnElement[str | None] | None,
         numbers: Sequence[ColumnElement[str | None]] = ()) -> ColumnElement[bool]:
    """SQL: true when an active hold covers a row with these call id / tenant / number columns."""
    covers = _covers(call_id, tenant_id, numbers)
    if not covers:
        return false()
    return exists().where(LegalHold.lifted_at.is_(None), or_(*covers))


def covering_holds(session: Session, call_id: str | None, tenant_id: str | None,
                   numbers: Sequence[str | None] = ()) -> list[LegalHold]:
    """The active holds that cover a row with these values (the rule of :func:`held`), oldest
    first: to say *why* something is kept."""
    covers = _covers(None if call_id is None else literal(call_id),
                     None if tenant_id is None else literal(tenant_id),
                     [literal(n) for n in numbers if n])
    if not covers:
        return []
    return list(session.scalars(select(LegalHold).where(LegalHold.lifted_at.is_(None), or_(*covers))
                                .order_by(LegalHold.id)))


def call_held(call_id: ColumnElement[str]) -> ColumnElement[bool]:
    """SQL: true when an active hold covers the call ``call_id`` (by id, tenant or numbers)."""
    c = Call.__table__.alias("held_call")
    return exists().where(c.c.call_id == call_id,
                          held(c.c.call_id, c.c.tenant_id, [c.c.caller, c.c.callee]))


def set_hold(session: Session, actor: str, scope: str, value: str, reason: str) -> LegalHold:
    """Add an active hold (audit-logged); the call or tenant must exist."""
    if scope not in SCOPES:
        raise HoldError(f"scope must be one of {', '.join(SCOPES)}")
    reason = (reason or "").strip()
    if not reason:
        raise HoldError("a reason is required")
    if scope == "number_prefix":
        value = normalize_prefix(value)
    elif scope == "call" and session.get(Call, value) is None:
        raise HoldError(f"no call with id {value}")
    elif scope == "tenant" and session.get(Tenant, value) is None:
        raise HoldError(f"no tenant {value}")
    hold = LegalHold(scope=scope, value=value, reason=reason, set_by=actor, set_at=utcnow())
    session.add(hold)
    session.flush()
    audit.append(session, actor, "legal_hold_set", f"legal_hold:{hold.id}",
                 {"scope": scope, "value": value, "reason": reason})
    return hold


def lift_hold(session: Session, actor: str, hold_id: int, reason: str) -> LegalHold:
    """Lift an active hold (audit-logged); what it covered is purged by the next run if due."""
    reason = (reason or "").strip()
    if not reason:
        raise HoldError("a reason is required")
    hold = session.get(LegalHold, hold_id, with_for_update=True)
    if hold is None:
        raise HoldError(f"no legal hold {hold_id}")
    if hold.lifted_at is not None:
        raise HoldError(f"legal hold {hold_id} was already lifted at {hold.lifted_at.isoformat()}")
    hold.lifted_by, hold.lifted_at = actor, utcnow()
    audit.append(session, actor, "legal_hold_lifted", f"legal_hold:{hold.id}",
                 {"scope": hold.scope, "value": hold.value, "reason": reason})
    return hold


def list_holds(session: Session, *, include_lifted: bool = False) -> list[LegalHold]:
    """Holds, newest first; active ones only unless ``include_lifted``."""
    q = select(LegalHold).order_by(LegalHold.id.desc())
    if not include_lifted:
        q = q.where(LegalHold.lifted_at.is_(None))
    return list(session.scalars(q))
