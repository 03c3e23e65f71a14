"""Search filters shared by ``audit search``, ``audit export`` and the compliance report.

Numbers are matched in canonical form (``callwarden.numbers.normalize``), exactly, or as a
prefix when the value ends with ``*`` (``138*``, ``+86 10*``). Times are aware datetimes; a
value with no offset is read in the configured time zone, and a date alone (``2026-03-31``)
given as an upper bound covers that whole day.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, fields, replace
from typing import Any
from zoneinfo import ZoneInfo

from callwarden.numbers import InvalidNumber, normalize
from callwarden.policy.reasons import REASONS

DIRECTIONS = ("outbound", "inbound")
DECISIONS = ("allow", "deny")
_PREFIX_JUNK = re.compile(r"[\s\-().]")


class FilterError(ValueError):
    """A filter value that cannot be used (the message names the filter, never a number)."""


@dataclass(frozen=True, slots=True)
class NumberMatch:
    """Canonical digits, matched exactly or as a prefix."""

    digits: str
    prefix: bool = False

    @classmethod
    def parse(cls, value: str, name: str) -> NumberMatch:
        text = value.strip()
        if text.endswith("*"):
            raw = _PREFIX_JUNK.sub("", text.rstrip("*"))
            for cc in ("+86", "0086"):
                if raw.startswith(cc):
                    raw = raw[len(cc):]
            if not raw or not raw.lstrip("+").isdigit():
                raise FilterError(f"{name}: a prefix must be digits followed by '*'")
            return cls(raw, True)
        try:
            return cls(normalize(text).digits)
        except InvalidNumber as exc:
            raise FilterError(f"{name}: {exc}") from None

    def describe(self) -> str:
        return self.digits + ("*" if self.prefix else "")


def parse_time(value: str | None, tz: ZoneInfo | dt.tzinfo, name: str, *, upper: bool = False) -> dt.datetime | None:
    """ISO-8601 date or datetime -> aware datetime; a bare date as ``upper`` bound ends that day."""
    if not value:
        return None
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = dt.date.fromisoformat(text) + dt.timedelta(days=1 if upper else 0)
            return dt.datetime.combine(day, dt.time(), tz)
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise FilterError(f"{name}: must be ISO-8601, e.g. 2026-03-01 or 2026-03-01T08:00:00+08:00") from None
    return t if t.tzinfo else t.replace(tzinfo=tz)


def parse_reason(value: str | None) -> str | None:
    if not value:
        return None
    code = value.strip().upper()
    if code not in REASONS:
        raise FilterError(f"--reason: unknown reason code {value!r} (one of {', '.join(REASONS)})")
    return code


@dataclass(frozen=True, slots=True)
class SearchFilters:
    """Every filter of ``audit search``; None means 'any'. ``until`` is exclusive."""

    tenant: str | None = None
    caller: NumberMatch | None = None
    callee: NumberMatch | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    direction: str | None = None
    decision: str | None = None
    reason: str | None = None
    campaign: str | None = None
    has_recording: bool | None = None
    trunk: str | None = None
    call_id: str | None = None

    def __post_init__(self) -> None:
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise FilterError(f"--direction: must be one of {', '.join(DIRECTIONS)}")
        if self.decision is not None and self.decision not in DECISIONS:
            raise FilterError(f"--decision: must be one of {', '.join(DECISIONS)}")
        if self.since and self.until and self.since >= self.until:
            raise FilterError("--from must be before --to")

    @classmethod
    def from_cli(cls, tz: ZoneInfo | dt.tzinfo, *, tenant: str | None = None, caller: str | None = None,
                 callee: str | None = None, since: str | None = None, until: str | None = None,
                 direction: str | None = None, decision: str | None = None, reason: str | None = None,
                 campaign: str | None = None, has_recording: bool | None = None,
                 trunk: str | None = None, call_id: str | None = None) -> SearchFilters:
        """Filters from the raw strings of the command line."""
        return cls(
            tenant=tenant or None,
            caller=NumberMatch.parse(caller, "--caller") if caller else None,
            callee=NumberMatch.parse(callee, "--callee") if callee else None,
            since=parse_time(since, tz, "--from"),
            until=parse_time(until, tz, "--to", upper=True),
            direction=direction, decision=decision, reason=parse_reason(reason),
            campaign=campaign or None, has_recording=has_recording, trunk=trunk or None,
            call_id=call_id or None,
        )

    def with_tenant(self, tenant: str | None) -> SearchFilters:
        return replace(self, tenant=tenant)

    def describe(self) -> dict[str, Any]:
        """The filters as plain values (for the audit log and the bundle manifest)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if isinstance(v, NumberMatch):
                v = v.describe()
            elif isinstance(v, dt.datetime):
                v = v.isoformat()
            out[f.name] = v
        return out
