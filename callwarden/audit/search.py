"""The call search behind ``audit search`` and ``audit export``, and its public row format.

Row keys are a public contract (SPEC.md, "Audit search"): ``call_id``, ``tenant``,
``direction``, ``caller``, ``callee``, ``decision``, ``reasons`` (list of codes),
``attempted_at``, ``answered_at``, ``ended_at``, ``billsec``, ``disposition`` and
``recording`` (null or ``{sha256, size, location, ...}``); more keys may be added, none removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from callwarden.audit.access import Scope
from callwarden.audit.filters import NumberMatch, SearchFilters
from callwarden.numbers import mask
from callwarden.store.models import Call, Recording

#: Columns of the CSV form before ``node`` (bundles exported then still verify).
CSV_COLUMNS_V1 = ["call_id", "tenant", "direction", "caller", "callee", "decision", "reasons",
                  "enforced", "trunk", "campaign", "purpose", "pbx", "pbx_call_id", "attempted_at",
                  "answered_at", "ended_at", "billsec", "disposition", "hangup_cause", "consent_id",
                  "consent_basis", "recording_status", "recording_sha256", "recording_size",
                  "recording_location"]
#: Columns of the CSV form, in order (``reasons`` joined with commas, recording flattened).
#: New columns go last, so that scripts reading columns by position keep working.
CSV_COLUMNS = [*CSV_COLUMNS_V1, "node"]

#: Columns of the human table.
TABLE_COLUMNS = ["attempted_at", "call_id", "tenant", "direction", "caller", "callee", "decision",
                 "reasons", "billsec", "disposition"]


def _prefix_upper(digits: str) -> str | None:
    """Smallest digit string above every string starting with ``digits`` (None if there is none)."""
    stripped = digits.rstrip("9")
    if not stripped or not stripped[-1].isdigit():
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


def number_condition(column: Any, match: NumberMatch) -> ColumnElement[bool]:
    """Exact match, or an index-friendly range scan (rechecked with LIKE) for a prefix."""
    if not match.prefix:
        return column == match.digits
    cond = and_(column >= match.digits, column.like(match.digits + "%"))
    upper = _prefix_upper(match.digits)
    return and_(cond, column < upper) if upper else cond


def reason_condition(code: str) -> ColumnElement[bool]:
    """``reasons`` (comma-separated codes) contains ``code`` as a whole code."""
    return ("," + Call.reasons + ",").contains("," + code + ",")


def build_query(filters: SearchFilters, scope: Scope) -> Select[tuple[Call, Recording]]:
    """Calls matching ``filters`` within ``scope``, newest first (ties by call id)."""
    f = filters
    tenant = scope.tenant_filter(f.tenant)
    q = select(Call, Recording).outerjoin(Recording, Recording.id == Call.recording_id)
    conds: list[ColumnElement[bool]] = []
    if tenant is not None:
        conds.append(Call.tenant_id == tenant)
    if f.call_id:
        conds.append(Call.call_id == f.call_id)
    if f.caller:
        conds.append(number_condition(Call.caller, f.caller))
    if f.callee:
        conds.append(number_condition(Call.callee, f.callee))
    if f.since:
        conds.append(Call.attempted_at >= f.since)
    if f.until:
        conds.append(Call.attempted_at < f.until)
    if f.direction:
        conds.append(Call.direction == f.direction)
    if f.decision:
        conds.append(Call.decision == f.decision)
    if f.reason:
        conds.append(reason_condition(f.reason))
    if f.campaign:
        conds.append(Call.campaign == f.campaign)
    if f.trunk:
        conds.append(Call.trunk == f.trunk)
    if f.has_recording is True:
        conds.append(Recording.status == "stored")
    elif f.has_recording is False:
        conds.append(or_(Recording.id.is_(None), Recording.status != "stored"))
    return q.where(*conds).order_by(Call.attempted_at.desc(), Call.call_id)


def count_query(filters: SearchFilters, scope: Scope) -> Select[tuple[int]]:
    """How many calls ``build_query`` would return."""
    inner = build_query(filters, scope).order_by(None).with_only_columns(Call.call_id).subquery()
    return select(func.count()).select_from(inner)


def call_row(call: Call, rec: Recording | None, full_numbers: bool) -> dict[str, Any]:
    """One call in the public row format; numbers masked unless ``full_numbers``."""
    show = (lambda n: n) if full_numbers else mask
    stored = rec is not None and rec.status == "stored"
    return {
        "call_id": call.call_id, "tenant": call.tenant_id, "direction": call.direction,
        "caller": show(call.caller), "callee": show(call.callee), "decision": call.decision,
        "reasons": call.reason_codes, "enforced": call.enforced, "trunk": call.trunk,
        "campaign": call.campaign, "purpose": call.purpose, "pbx": call.pbx,
        "pbx_call_id": call.pbx_call_id, "node": call.node, "attempted_at": call.attempted_at,
        "answered_at": call.answered_at, "ended_at": call.ended_at, "billsec": call.billsec,
        "disposition": call.disposition, "hangup_cause": call.hangup_cause,
        "consent_id": call.consent_id, "consent_basis": call.consent_basis,
        "recording": {
            "sha256": rec.sha256, "size": rec.size, "location": rec.location,
            "duration_s": rec.duration_s, "encrypted": rec.encrypted, "key_id": rec.key_id,
            "retain_until": rec.retain_until, "legal_hold": rec.legal_hold,
        } if stored and rec is not None else None,
        "recording_status": rec.status if rec is not None else None,
    }


def csv_values(row: dict[str, Any], columns: list[str] = CSV_COLUMNS) -> list[Any]:
    """A row as CSV cells, in ``columns`` order (datetimes as ISO-8601)."""
    rec = row.get("recording") or {}
    flat = {**row, "recording_sha256": rec.get("sha256"), "recording_size": rec.get("size"),
            "recording_location": rec.get("location")}
    out: list[Any] = []
    for col in columns:
        v = flat.get(col)
        if isinstance(v, list):
            v = ",".join(v)
        elif hasattr(v, "isoformat"):
            v = v.isoformat()
        elif isinstance(v, bool):
            v = "true" if v else "false"
        out.append("" if v is None else v)
    return out


def search(session: Session, filters: SearchFilters, scope: Scope, *, limit: int, offset: int = 0,
           full_numbers: bool = False) -> list[dict[str, Any]]:
    """One page of results."""
    q = build_query(filters, scope).limit(limit).offset(offset)
    return [call_row(c, r, full_numbers) for c, r in session.execute(q)]


def iter_calls(session: Session, filters: SearchFilters, scope: Scope,
               batch: int = 2000) -> Iterator[tuple[Call, Recording | None]]:
    """Every matching call, streamed in batches (for exports of any size)."""
    q = build_query(filters, scope).execution_options(yield_per=batch)
    yield from session.execute(q)  # type: ignore[misc]
