"""Complaints (投诉) about a tenant's calls: validated, de-duplicated, audit-logged.

A complaint names the tenant and the callee who complained, when it was received, where it came
from (12321, a carrier, the hotline ...), an optional note and optionally the call it is about.
Re-recording the same complaint (same tenant, callee, time and source) changes nothing, so a
CSV can be imported twice. Complaints count in the tenant's risk score (``complaints``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from callwarden.numbers import InvalidNumber, normalize
from callwarden.store import audit
from callwarden.store.models import Call, Complaint, Tenant

CSV_REQUIRED = ("tenant", "callee", "received_at")
CSV_COLUMNS = (*CSV_REQUIRED, "source", "note", "call_id")


class ComplaintError(ValueError):
    """A complaint that cannot be stored; ``field`` names the culprit."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class ComplaintIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    tenant: str = Field(min_length=1, max_length=64)
    callee: str
    received_at: dt.datetime
    source: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, max_length=4000)
    call_id: str | None = Field(default=None, max_length=32)

    @field_validator("callee")
    @classmethod
    def _callee(cls, v: str) -> str:
        if not v:
            raise ValueError("a number is required")
        try:
            return normalize(v).digits
        except InvalidNumber as exc:
            raise ValueError(str(exc)) from None

    @field_validator("source", "note", "call_id", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v


def parse_time(value: str | dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """ISO-8601; without an offset it is local time in the configured zone."""
    if isinstance(value, dt.datetime):
        t = value
    else:
        try:
            t = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ValueError("must be an ISO-8601 time such as 2026-03-02T10:15:00+08:00") from None
    return t.replace(tzinfo=tz) if t.tzinfo is None else t


def validate(raw: dict[str, Any], tz: ZoneInfo) -> ComplaintIn:
    """Check one complaint's fields (no store access); raises ComplaintError naming the field."""
    data = dict(raw)
    if data.get("received_at") not in (None, ""):
        try:
            data["received_at"] = parse_time(data["received_at"], tz)
        except ValueError as exc:
            raise ComplaintError("received_at", str(exc)) from None
    try:
        return ComplaintIn.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(row)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing" or (err["type"] == "string_too_short" and field == "tenant"):
            msg = "required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise ComplaintError(field, msg) from None


@dataclass(frozen=True, slots=True)
class Stored:
    complaint: Complaint
    created: bool


def record(session: Session, c: ComplaintIn, actor: str) -> Stored:
    """Store one complaint (inside the caller's transaction) unless it is already recorded."""
    if session.get(Tenant, c.tenant) is None:
        raise ComplaintError("tenant", f"unknown tenant {c.tenant!r}")
    if c.call_id is not None:
        call = session.get(Call, c.call_id)
        if call is None:
            raise ComplaintError("call_id", f"unknown call id {c.call_id!r}")
        if call.tenant_id != c.tenant:
            raise ComplaintError("call_id", f"call {c.call_id} belongs to another tenant")
    existing = session.scalar(select(Complaint).where(
        Complaint.tenant_id == c.tenant, Complaint.callee == c.callee,
        Complaint.received_at == c.received_at,
        Complaint.source.is_(None) if c.source is None else Complaint.source == c.source).limit(1))
    if existing is not None:
        return Stored(existing, created=False)
    row = Complaint(tenant_id=c.tenant, callee=c.callee, received_at=c.received_at, source=c.source,
                    note=c.note, call_id=c.call_id)
    session.add(row)
    session.flush()
    audit.append(session, actor, "complaints.added", c.tenant, {
        "complaint_id": row.id, "callee": c.callee, "received_at": c.received_at,
        "source": c.source, "call_id": c.call_id})
    return Stored(row, created=True)


def import_rows(session: Session, rows: Iterable[tuple[int, dict[str, Any]]], tz: ZoneInfo,
                actor: str) -> tuple[int, int, list[str]]:
    """Validate and store every row; ``(added, already recorded, errors)``.

    Errors are ``"line N: field: message"``; the caller rolls back when there is any, so an
    import is all or nothing.
    """
    added = same = 0
    errors: list[str] = []
    for line, raw in rows:
        try:
            stored = record(session, validate(raw, tz), actor)
        except ComplaintError as exc:
            errors.append(f"line {line}: {exc.field}: {exc.message}")
            continue
        if stored.created:
            added += 1
        else:
            same += 1
    return added, same, errors
