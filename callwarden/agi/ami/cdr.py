"""Asterisk call records as callwarden needs them: AMI ``Cdr`` events and Master.csv lines.

Asterisk writes CDR times as *local* wall-clock text (``2026-11-24 00:39:56``) in whatever zone
the PBX host runs, and says nothing about that zone. Two facts let us convert them without
asking the operator: an AMI event's ``Timestamp`` is UTC epoch seconds, and a uniqueid starts
with the UTC epoch second its channel was created (the CDR's start). The difference, rounded to
the quarter hour, is the PBX's UTC offset.

A channel can produce several CDR records (the main one, one for the ``h`` extension, forks
after transfers): :func:`merge` folds them into one end-of-call summary.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from callwarden.agi.callbook import CdrRow

UTC = dt.UTC
_QUARTER_H = 15 * 60
_EPOCH_IN_UNIQUEID = re.compile(r"(\d{9,12})\.\d+$")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

#: Q.850 cause numbers as the ITU (and FreeSWITCH) name them, so both PBXes store the same text.
Q850_NAMES = {
    0: "UNSPECIFIED", 1: "UNALLOCATED_NUMBER", 3: "NO_ROUTE_DESTINATION",
    16: "NORMAL_CLEARING", 17: "USER_BUSY", 18: "NO_USER_RESPONSE", 19: "NO_ANSWER",
    20: "SUBSCRIBER_ABSENT", 21: "CALL_REJECTED", 22: "NUMBER_CHANGED",
    27: "DESTINATION_OUT_OF_ORDER", 28: "INVALID_NUMBER_FORMAT", 29: "FACILITY_REJECTED",
    31: "NORMAL_UNSPECIFIED", 34: "NORMAL_CIRCUIT_CONGESTION", 38: "NETWORK_OUT_OF_ORDER",
    41: "NORMAL_TEMPORARY_FAILURE", 42: "SWITCH_CONGESTION", 44: "REQUESTED_CHAN_UNAVAIL",
    50: "FACILITY_NOT_SUBSCRIBED", 52: "OUTGOING_CALL_BARRED", 54: "INCOMING_CALL_BARRED",
    58: "BEARERCAPABILITY_NOTAVAIL", 88: "INCOMPATIBLE_DESTINATION",
    102: "RECOVERY_ON_TIMER_EXPIRE", 111: "PROTOCOL_ERROR", 127: "INTERWORKING",
}

#: Master.csv columns (cdr_csv.c, loguniqueid=yes): only the ones we read.
_CSV_START, _CSV_ANSWER, _CSV_END, _CSV_BILLSEC, _CSV_DISPOSITION, _CSV_UNIQUEID = 9, 10, 11, 13, 14, 16


def cause_name(code: str | int | None) -> str | None:
    """``16`` -> ``NORMAL_CLEARING``; unknown numbers -> ``Q850_<n>``; None stays None."""
    if code is None or str(code).strip() == "":
        return None
    try:
        n = int(str(code).strip())
    except ValueError:
        return str(code)[:64]
    return Q850_NAMES.get(n, f"Q850_{n}")


def epoch_to_utc(value: str | float | None) -> dt.datetime | None:
    """An AMI ``Timestamp`` (``1795480798.546714``) as an aware UTC datetime."""
    if value is None or value == "":
        return None
    try:
        return dt.datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def uniqueid_epoch(uniqueid: str) -> dt.datetime | None:
    """When the channel was created, from its uniqueid (``[systemname-]epoch.sequence``)."""
    m = _EPOCH_IN_UNIQUEID.search(uniqueid or "")
    return epoch_to_utc(m.group(1)) if m else None


def _naive(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text.strip(), _TIME_FORMAT)
    except ValueError:
        return None


def learn_offset(local_text: str | None, utc: dt.datetime | None) -> dt.timedelta | None:
    """The PBX's UTC offset from one local wall-clock time and the UTC instant it names."""
    local = _naive(local_text)
    if local is None or utc is None:
        return None
    seconds = (local - utc.replace(tzinfo=None)).total_seconds()
    quarters = round(seconds / _QUARTER_H)
    if abs(quarters) > 14 * 4:  # no zone is further than 14 h from UTC: the clocks disagree
        return None
    return dt.timedelta(seconds=quarters * _QUARTER_H)


def local_to_utc(text: str | None, offset: dt.timedelta) -> dt.datetime | None:
    local = _naive(text)
    return (local - offset).replace(tzinfo=UTC) if local is not None else None


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def row_from_fields(start: str | None, answer: str | None, end: str | None, billsec: str | None,
                    disposition: str | None, offset: dt.timedelta) -> CdrRow:
    return CdrRow(
        start=local_to_utc(start, offset),
        answer=local_to_utc(answer, offset),
        end=local_to_utc(end, offset),
        billsec=_int(billsec),
        disposition=(disposition or "").strip() or None,
    )


def row_from_event(event: Mapping[str, str],
                   known: dt.timedelta | None) -> tuple[CdrRow, dt.timedelta | None]:
    """A CDR row from an AMI ``Cdr`` event, and the PBX offset when the event proves it.

    Two estimates: EndTime against the event's Timestamp (a record is posted when it ends, but
    a forked record may have ended long before), and StartTime against the uniqueid (true for
    the channel's first record, not for the ``h`` one). When they agree the offset is certain
    and returned; otherwise the ``known`` offset (learned earlier) is used.
    """
    by_end = learn_offset(event.get("EndTime"), epoch_to_utc(event.get("Timestamp")))
    by_start = learn_offset(event.get("StartTime"), uniqueid_epoch(event.get("UniqueID", "")))
    proven = by_end if by_end is not None and by_end == by_start else None
    offset = next((o for o in (proven, known, by_end, by_start) if o is not None), dt.timedelta(0))
    row = row_from_fields(event.get("StartTime"), event.get("AnswerTime"), event.get("EndTime"),
                          event.get("BillableSeconds"), event.get("Disposition"), offset)
    return row, proven


@dataclass(frozen=True, slots=True)
class CallSummary:
    """One call's end, folded from its CDR rows."""

    answered_at: dt.datetime | None
    ended_at: dt.datetime | None
    billsec: int | None
    disposition: str | None


def merge(rows: Iterable[CdrRow]) -> CallSummary:
    """Fold a channel's CDR rows: the row with the most billable seconds is the conversation
    (the ``h``-extension row has none); the call ended when its last row ended; it was
    answered if any row was."""
    rows = list(rows)
    if not rows:
        return CallSummary(None, None, None, None)
    main = max(rows, key=lambda r: (r.billsec or 0, r.answer is not None))
    ends = [r.end for r in rows if r.end is not None]
    answered = any((r.disposition or "").upper() == "ANSWERED" for r in rows)
    disposition = "ANSWERED" if answered else main.disposition
    return CallSummary(
        answered_at=main.answer if answered else None,
        ended_at=max(ends) if ends else None,
        billsec=main.billsec if answered else 0,
        disposition=disposition,
    )


def read_master_csv(path: str | os.PathLike[str], uniqueids: set[str], known: dt.timedelta | None,
                    max_bytes: int = 32 * 1024 * 1024) -> dict[str, list[CdrRow]]:
    """Rows of ``uniqueids`` in the last ``max_bytes`` of Asterisk's Master.csv.

    Calls missed during an AMI outage are recent, so only the tail is read: the file grows
    for ever unless the operator rotates it. Lines that do not parse are skipped. Times are
    converted with the offset proven by each call's first record (its start is the uniqueid's
    epoch), else ``known``.
    """
    raw: dict[str, list[list[str]]] = {}
    if not uniqueids:
        return {}
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - max_bytes))
        data = f.read()
    if size > max_bytes:
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""  # drop the cut first line
    for fields in csv.reader(io.StringIO(data.decode("utf-8", "replace"))):
        if len(fields) > _CSV_UNIQUEID and fields[_CSV_UNIQUEID] in uniqueids:
            raw.setdefault(fields[_CSV_UNIQUEID], []).append(fields)
    found: dict[str, list[CdrRow]] = {}
    for uniqueid, lines in raw.items():
        first = min((f[_CSV_START] for f in lines if _naive(f[_CSV_START])), default=None)
        offset = learn_offset(first, uniqueid_epoch(uniqueid))
        offset = next((o for o in (offset, known) if o is not None), dt.timedelta(0))
        found[uniqueid] = [
            row_from_fields(f[_CSV_START], f[_CSV_ANSWER], f[_CSV_END], f[_CSV_BILLSEC],
                            f[_CSV_DISPOSITION], offset) for f in lines]
    return found
