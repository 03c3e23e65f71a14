"""After an AMI outage (or a restart): complete the calls whose hangup we never heard about.

The store knows which calls were let through and have no end (``Enforcer.open_calls``); the PBX
knows which channels are up (``CoreShowChannels``). An open call whose channel is gone ended
while we were not listening: its end is taken from Asterisk's Master.csv when configured,
otherwise it is closed at reconnect time with disposition ``UNKNOWN`` and a cause saying why,
so the audit trail shows exactly what was and was not known. Open calls still up are put back
under watch (CDR completion, caller-ID policing).

Order matters: the store is read *before* the channel list, so a call decided in between is
either in the list (live) or not in the store's answer; it can never be closed by mistake.
Calls this process registered itself (denied ones included) are checked the same way.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass

from callwarden.agi.ami.cdr import merge, read_master_csv
from callwarden.agi.ami.connection import AmiConnection, AmiError
from callwarden.agi.ami.tracker import CallTracker
from callwarden.agi.ami.tuning import AmiTuning
from callwarden.agi.callbook import CallBook, TrackedCall
from callwarden.agi.store_gate import StoreGate
from callwarden.log import get_logger
from callwarden.service.enforcer import CallEnd

log = get_logger("callwarden.ami")

#: hangup_cause written when nothing is known of a call's end (fits the 64-char column).
CAUSE_NOT_SEEN = "UNKNOWN (hangup not seen: AMI was down)"


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    open_calls: int
    still_up: int
    from_cdr_csv: int
    unknown: int


async def live_channels(conn: AmiConnection, timeout: float) -> dict[str, str]:
    """uniqueid -> channel name of every channel up on the PBX now."""
    reply = await conn.action({"Action": "CoreShowChannels"}, timeout)
    if not isinstance(reply, list):
        raise AmiError(f"CoreShowChannels refused: {reply.get('Message') or 'no message'}")
    return {ev.get("Uniqueid"): ev.get("Channel") for ev in reply
            if ev.get("Event") == "CoreShowChannel"}


async def reconcile(*, conn: AmiConnection, tracker: CallTracker, gate: StoreGate, book: CallBook,
                    pbx: str, system_name: str, cdr_csv: str | None, tuning: AmiTuning,
                    clock: Callable[[], dt.datetime]) -> ReconcileReport:
    """One reconciliation pass; raises on store or AMI failure (the caller retries later)."""
    open_calls = await gate.call(gate.enforcer.open_calls, pbx, None,
                                 timeout=tuning.store_timeout_s)
    if system_name:  # several PBXes share the store: only ours (uniqueids "name-epoch.seq")
        open_calls = [(c, u) for c, u in open_calls if u.startswith(system_name + "-")]
    asked = time.monotonic()
    live = await live_channels(conn, tuning.action_timeout_s)

    missed: list[tuple[str, str]] = []
    still_up = 0
    for call_id, uniqueid in open_calls:
        tracked = book.get(uniqueid)
        if uniqueid in live:
            still_up += 1
            if tracked is None:  # restored: watch it again, decision facts come from the store
                book.add(TrackedCall(uniqueid=uniqueid, call_id=call_id, direction="restored",
                                     channel=live[uniqueid], watch_cid=True, has_recording=True))
            continue
        if tracked is not None:
            if tracked.completing or tracked.timer is not None:
                continue  # its hangup was seen; completion is under way
            if tracked.ending:
                tracker.complete_now(tracked)  # the store refused it earlier: try again
                continue
            book.remove(uniqueid)  # we were told of it, but its hangup came while we were away
        missed.append((call_id, uniqueid))
    # Calls we registered that the store does not list as open (denied calls have no
    # recording) but whose channel is gone: their hangup came while we were away too. Only
    # those registered before the channel list was asked for: a newer one may not be in it.
    listed = {u for _, u in open_calls}
    for tracked in book.calls():
        if tracked.uniqueid in listed or tracked.completing or tracked.timer is not None:
            continue
        if tracked.ending:
            tracker.complete_now(tracked)  # the store refused it earlier: try again
        elif tracked.uniqueid not in live and tracked.added < asked:
            book.remove(tracked.uniqueid)
            missed.append((tracked.call_id, tracked.uniqueid))

    rows = {}
    if missed and cdr_csv:
        try:
            rows = await gate.call(read_master_csv, cdr_csv, {u for _, u in missed},
                                   tracker.offset, tuning.csv_tail_bytes,
                                   timeout=tuning.store_timeout_s)
        except (OSError, TimeoutError) as exc:
            log.error("cdr_csv_unreadable", path=cdr_csv, error=type(exc).__name__,
                      detail=str(exc)[:200], action="closing missed calls as UNKNOWN")

    now = clock()
    for call_id, uniqueid in missed:
        found = rows.get(uniqueid)
        if found:
            s = merge(found)
            end = CallEnd(pbx=pbx, pbx_call_id=uniqueid, ended_at=s.ended_at or now,
                          answered_at=s.answered_at, billsec=s.billsec, disposition=s.disposition)
        else:
            end = CallEnd(pbx=pbx, pbx_call_id=uniqueid, ended_at=now, disposition="UNKNOWN",
                          hangup_cause=CAUSE_NOT_SEEN)
        await gate.call(gate.enforcer.call_ended, end, timeout=tuning.store_timeout_s)
        log.warning("ami_reconciled", call_id=call_id, pbx_call_id=uniqueid,
                    source="cdr_csv" if found else "none", disposition=end.disposition,
                    billsec=end.billsec)
        tracker.spawn_finalize(call_id)

    report = ReconcileReport(len(open_calls), still_up, sum(1 for _, u in missed if rows.get(u)),
                             sum(1 for _, u in missed if not rows.get(u)))
    log.info("ami_reconcile_done", open_calls=report.open_calls, still_up=report.still_up,
             from_cdr_csv=report.from_cdr_csv, unknown=report.unknown)
    return report
