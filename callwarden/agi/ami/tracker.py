"""What AMI events mean for the calls in the CallBook: CDR completion and caller-ID policing.

Only channels the FastAGI routes registered (or reconciliation restored) are looked at, so the
PBX's other traffic costs a dictionary lookup per event. Event handlers run inside panoramisk's
protocol callback and never block: they update the call's state and schedule the store work
(completion, caller-ID checks, recording finalization) as tasks that go through the StoreGate.

Completion waits for the channel's ``Cdr`` records (``Hangup`` comes first; a channel may post
several records, see :func:`callwarden.agi.ami.cdr.merge`); without them (no ``cdr`` read
permission, CDRs disabled) it completes from ``Hangup`` and ``Newstate`` alone.

Caller-ID changes after the decision are seen as ``NewCallerid`` on the decided channel and as
``DialBegin`` presenting another number (``DestConnectedLineNum``) to the dialled party. Events
from dialplan steps before the AGI ran are stale, not changes: they are filtered by their
dialplan position, and a suspected change is confirmed by reading the channel's caller ID now.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from panoramisk.message import Message

from callwarden.agi.ami.cdr import cause_name, epoch_to_utc, merge, row_from_event
from callwarden.agi.ami.tuning import AmiTuning
from callwarden.agi.callbook import CallBook, TrackedCall
from callwarden.agi.presentation import is_hidden_presentation
from callwarden.agi.store_gate import StoreGate
from callwarden.log import get_logger
from callwarden.numbers import is_hidden, mask_raw, try_normalize
from callwarden.policy import reason
from callwarden.service.enforcer import CallEnd

log = get_logger("callwarden.ami")

CID_ALTERED_CAUSE = reason("CID_ALTERED").cause_code
MAX_CDR_ROWS = 32  # per channel; a real one has 1-3
MAX_TASKS = 10_000  # pending store jobs; beyond this, reconciliation catches up


class AmiActions(Protocol):
    """The AMI actions the tracker needs (the listener provides them)."""

    async def hangup(self, channel: str, cause: int) -> bool: ...

    async def getvar(self, channel: str, name: str) -> str | None: ...


class CallTracker:
    """Consumes AMI events for the calls in ``book``."""

    EVENTS = ("Hangup", "Cdr", "NewCallerid", "DialBegin", "Newstate")

    def __init__(self, *, book: CallBook, gate: StoreGate, pbx: str, observe: bool,
                 tuning: AmiTuning, clock: Callable[[], dt.datetime], actions: AmiActions):
        self.book, self.gate, self.pbx, self.observe = book, gate, pbx, observe
        self.tuning, self.clock, self.actions = tuning, clock, actions
        self.offset: dt.timedelta | None = None  # the PBX's UTC offset, once a Cdr proves it
        self._tasks: set[asyncio.Task[None]] = set()
        self._finalizing: set[str] = set()
        self._handlers: dict[str, Callable[[Message], None]] = {
            "hangup": self._on_hangup, "cdr": self._on_cdr, "newcallerid": self._on_newcallerid,
            "dialbegin": self._on_dialbegin, "newstate": self._on_newstate,
        }

    # -- event intake (synchronous, never blocks) ------------------------------------------

    def on_event(self, event: Message) -> None:
        handler = self._handlers.get(str(event.get("Event", "")).lower())
        if handler is not None:
            handler(event)

    def _on_newstate(self, ev: Message) -> None:
        call = self.book.get(ev.get("Uniqueid"))
        if call is not None and call.answered_at is None and ev.get("ChannelState") == "6":
            call.answered_at = self._event_time(ev)

    def _on_hangup(self, ev: Message) -> None:
        call = self.book.get(ev.get("Uniqueid"))
        if call is None or call.hangup_at is not None:
            return
        call.hangup_at = self._event_time(ev)
        call.hangup_cause = cause_name(ev.get("Cause"))
        if call.timer is None and not call.completing:
            self._schedule_completion(call, self.tuning.cdr_wait_s)

    def _on_cdr(self, ev: Message) -> None:
        call = self.book.get(ev.get("UniqueID"))
        if call is None or len(call.cdr_rows) >= MAX_CDR_ROWS:
            return
        row, proven = row_from_event(ev, self.offset)
        if proven is not None:
            self.offset = proven
        call.cdr_rows.append(row)
        if not call.completing:
            self._schedule_completion(call, self.tuning.cdr_settle_s)

    def _on_newcallerid(self, ev: Message) -> None:
        call = self._watched(ev)
        if call is None:
            return
        raw = ev.get("CallerIDNum")
        hidden = is_hidden_presentation(ev.get("CID-CallingPres")) or _absent(raw)
        if not hidden and self._same_as_decided(call, raw):
            return
        self._spawn(self._verify_and_tear_down(call, call.channel or ev.get("Channel"), "NewCallerid"))

    def _on_dialbegin(self, ev: Message) -> None:
        call = self._watched(ev)
        if call is None:
            return
        presented = ev.get("DestConnectedLineNum")
        if _absent(presented) or self._same_as_decided(call, presented):
            return  # "<unknown>": Dial did not set one, the channel's own caller ID goes out
        self._spawn(self._tear_down(call, presented, "DialBegin"))

    # -- caller-ID policing ----------------------------------------------------------------

    def _watched(self, ev: Message) -> TrackedCall | None:
        call = self.book.get(ev.get("Uniqueid"))
        if call is None or not call.watch_cid or call.torn_down or call.hangup_at is not None:
            return None
        call.channel = call.channel or ev.get("Channel")
        if _before_agi(call, ev):
            return None
        return call

    @staticmethod
    def _same_as_decided(call: TrackedCall, raw: str | None) -> bool:
        if call.decided_caller is None:
            return False  # restored after a restart: let the enforcer compare
        number = try_normalize(raw)
        return (number.digits if number else raw) == call.decided_caller

    async def _verify_and_tear_down(self, call: TrackedCall, channel: str | None, source: str) -> None:
        """A NewCallerid may be stale (queued before the decision): read the caller ID the
        channel has now and act on that. If it cannot be read, assume the change (fail closed)."""
        current: str | None = None
        if channel:
            try:
                num = await self.actions.getvar(channel, "CALLERID(num)")
                pres = await self.actions.getvar(channel, "CALLERID(pres)")
            except Exception as exc:
                log.warning("cid_verify_failed", call_id=call.call_id, error=type(exc).__name__)
            else:
                if num is None and pres is None:
                    return  # the channel is gone: its hangup completes the CDR
                if not _absent(num) and not is_hidden_presentation(pres):
                    if self._same_as_decided(call, num):
                        return  # stale event: the caller ID the call carries is the decided one
                    current = num
        await self._tear_down(call, current, source)

    async def _tear_down(self, call: TrackedCall, new_caller: str | None, source: str) -> None:
        if call.torn_down:
            return
        call.torn_down = True
        try:
            call_id = await self.gate.call(self.gate.enforcer.caller_id_changed, self.pbx,
                                           call.uniqueid, new_caller,
                                           timeout=self.tuning.store_timeout_s)
        except Exception as exc:
            # Cannot record it, but the call still must not go on with another number.
            log.error("cid_altered_unrecorded", call_id=call.call_id, error=type(exc).__name__,
                      action="tearing the call down anyway" if not self.observe else "none (observe)")
            call_id = None if self.observe else call.call_id
        if call_id is None:
            call.torn_down = False
            if self.observe:
                call.watch_cid = False  # recorded as CID_ALTERED; observe mode lets it run
            return
        hung_up = await self.actions.hangup(call.channel or "", CID_ALTERED_CAUSE)
        log.warning("cid_altered_torn_down", call_id=call.call_id, pbx_call_id=call.uniqueid,
                    source=source, new_caller=mask_raw(new_caller) if new_caller else "(hidden)",
                    hung_up=hung_up)

    # -- completion ------------------------------------------------------------------------

    def _schedule_completion(self, call: TrackedCall, delay: float) -> None:
        if call.timer is not None:
            call.timer.cancel()
        loop = asyncio.get_running_loop()
        call.timer = loop.call_later(delay, lambda: self._spawn(self.complete(call)))

    def complete_now(self, call: TrackedCall) -> None:
        """Retry a completion the store refused earlier (called by reconciliation)."""
        if not call.completing and call.timer is None:
            self._spawn(self.complete(call))

    async def complete(self, call: TrackedCall) -> None:
        """Write the call's end to the store; then finalize its recording."""
        call.timer = None
        if call.completing or self.book.get(call.uniqueid) is not call:
            return
        call.completing = True
        try:
            end = self._call_end(call)
            done = await self._store_with_retries(end, call)
        finally:
            call.completing = False
        if not done:
            call.completion_failed = True
            return
        self.book.remove(call.uniqueid)
        if call.has_recording:
            await self.finalize_recording(call.call_id)

    def _call_end(self, call: TrackedCall) -> CallEnd:
        summary = merge(call.cdr_rows)
        ended = call.hangup_at or summary.ended_at or self.clock()
        if call.cdr_rows:
            answered, billsec, disposition = summary.answered_at, summary.billsec, summary.disposition
        else:  # no CDR records (no cdr permission): what Hangup and Newstate told us
            answered = call.answered_at
            billsec = max(0, int((ended - answered).total_seconds())) if answered else 0
            disposition = "ANSWERED" if answered else "NO ANSWER"
        return CallEnd(pbx=self.pbx, pbx_call_id=call.uniqueid, ended_at=ended,
                       answered_at=answered, billsec=billsec, disposition=disposition,
                       hangup_cause=call.hangup_cause)

    async def _store_with_retries(self, end: CallEnd, call: TrackedCall) -> bool:
        delay = 0.5
        for attempt in range(1, self.tuning.store_retries + 1):
            try:
                await self.gate.call(self.gate.enforcer.call_ended, end,
                                     timeout=self.tuning.store_timeout_s)
                return True
            except Exception as exc:
                log.warning("cdr_completion_failed", call_id=call.call_id, attempt=attempt,
                            error=type(exc).__name__)
                if attempt < self.tuning.store_retries:
                    await asyncio.sleep(delay)
                    delay *= 2
        log.error("cdr_completion_deferred", call_id=call.call_id, pbx_call_id=call.uniqueid,
                  action="kept for reconciliation")
        return False

    def spawn_finalize(self, call_id: str) -> None:
        self._spawn(self.finalize_recording(call_id))

    async def finalize_recording(self, call_id: str) -> None:
        """Hash and store the recording once MixMonitor has closed it (never twice at once)."""
        if call_id in self._finalizing:
            return
        self._finalizing.add(call_id)
        try:
            await asyncio.sleep(self.tuning.recording_settle_s)
            await self.gate.call(self.gate.enforcer.finalize_recording, call_id,
                                 timeout=self.tuning.store_timeout_s * 12, pool="recordings")
        except Exception as exc:
            log.error("recording_finalize_failed", call_id=call_id, error=type(exc).__name__,
                      detail=str(exc)[:200])
        finally:
            self._finalizing.discard(call_id)

    # -- plumbing --------------------------------------------------------------------------

    def _event_time(self, ev: Message) -> dt.datetime:
        return epoch_to_utc(ev.get("Timestamp")) or self.clock()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if len(self._tasks) >= MAX_TASKS:
            coro.close()
            log.error("ami_backlog_full", pending=len(self._tasks),
                      action="event dropped; reconciliation will complete the call")
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ami_task_failed", error=type(task.exception()).__name__)

    async def drain(self) -> None:
        """Wait for pending work (used at shutdown and by tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def flush(self, timeout: float) -> None:
        """At shutdown: complete now the calls whose end is known but still being collected,
        and give pending store work ``timeout`` seconds (the rest is left to reconciliation)."""
        for call in self.book.calls():
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
                self._spawn(self.complete(call))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), timeout)

    def cancel(self) -> None:
        for call in self.book.calls():
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
        for task in list(self._tasks):
            task.cancel()


def _absent(raw: str | None) -> bool:
    return raw is None or raw == "<unknown>" or is_hidden(raw)


def _before_agi(call: TrackedCall, ev: Message) -> bool:
    """The event comes from a dialplan step at or before the one that ran the AGI."""
    if call.agi_priority is None:
        return False
    try:
        priority = int(ev.get("Priority", ""))
    except ValueError:
        return False
    return (ev.get("Context") == call.agi_context and ev.get("Exten") == call.agi_exten
            and priority <= call.agi_priority)
