"""Calls this process handed to the PBX and is waiting to hear the end of, keyed by uniqueid.

The FastAGI routes write here after each decision; the AMI listener reads it to know which of
the PBX's many channels are ours (only those cost a store round trip), which must be watched for
caller-ID changes, and what the decision saw. It lives in memory, bounded in size and age:
whatever it forgets (a restart, an eviction) is recovered by AMI reconciliation from the store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from callwarden.log import get_logger

log = get_logger("callwarden.agi")

#: Longest a call stays in the book without an end (a day of talk time is not a phone call).
DEFAULT_MAX_AGE_S = 24 * 3600
DEFAULT_MAX_CALLS = 100_000


@dataclass(slots=True)
class CdrRow:
    """One Asterisk CDR record (AMI ``Cdr`` event or Master.csv line), times in UTC."""

    start: dt.datetime | None
    answer: dt.datetime | None
    end: dt.datetime | None
    billsec: int | None
    disposition: str | None


@dataclass(slots=True)
class TrackedCall:
    """One call: what the AGI route decided, and what AMI has told us since."""

    uniqueid: str
    call_id: str
    direction: str  # outbound | inbound
    channel: str | None = None
    watch_cid: bool = False  # an allowed, enforced outbound call: tear down on caller-ID change
    decided_caller: str | None = None  # canonical digits the decision saw
    # Where the AGI ran: caller-ID events from dialplan steps before it are not changes.
    agi_context: str | None = None
    agi_exten: str | None = None
    agi_priority: int | None = None
    has_recording: bool = False
    added: float = field(default_factory=time.monotonic)
    # Filled from AMI events:
    answered_at: dt.datetime | None = None
    hangup_at: dt.datetime | None = None
    hangup_cause: str | None = None
    cdr_rows: list[CdrRow] = field(default_factory=list)
    torn_down: bool = False
    # Completion bookkeeping (AMI listener):
    timer: asyncio.TimerHandle | None = None  # completion scheduled
    completing: bool = False  # completion running
    completion_failed: bool = False  # the store refused; reconciliation retries it

    @property
    def ending(self) -> bool:
        """The PBX has reported the call over; its completion is pending or under way."""
        return self.hangup_at is not None or bool(self.cdr_rows)


class CallBook:
    """uniqueid -> TrackedCall, oldest first, bounded by count and age. Event-loop only."""

    def __init__(self, max_calls: int = DEFAULT_MAX_CALLS, max_age_s: float = DEFAULT_MAX_AGE_S):
        self.max_calls = max_calls
        self.max_age_s = max_age_s
        self._calls: OrderedDict[str, TrackedCall] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, uniqueid: object) -> bool:
        return uniqueid in self._calls

    def add(self, call: TrackedCall) -> None:
        self._calls[call.uniqueid] = call
        self._calls.move_to_end(call.uniqueid)
        self._evict()

    def get(self, uniqueid: str | None) -> TrackedCall | None:
        return self._calls.get(uniqueid) if uniqueid else None

    def remove(self, uniqueid: str) -> TrackedCall | None:
        return self._calls.pop(uniqueid, None)

    def calls(self) -> list[TrackedCall]:
        return list(self._calls.values())

    def _evict(self) -> None:
        now = time.monotonic()
        while self._calls:
            uniqueid, oldest = next(iter(self._calls.items()))
            if len(self._calls) <= self.max_calls and now - oldest.added <= self.max_age_s:
                return
            self.remove(uniqueid)
            log.warning("callbook_evicted", call_id=oldest.call_id, pbx_call_id=uniqueid,
                        note="no end seen in time; AMI reconciliation will complete it")
