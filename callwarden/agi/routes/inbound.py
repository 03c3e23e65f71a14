"""``agi://host:port/inbound``: log an inbound call (it opens the callback window), record it.

Dialplan: ``AGI(agi://127.0.0.1:4573/inbound,<dialled access number>)`` (defaults to ${EXTEN})
with CALLWARDEN_TENANT set; the caller is CALLERID(num). Inbound calls are never blocked by
policy: the route sets CALLWARDEN_DECISION=allow and CALLWARDEN_CALL_ID once the call is
logged. With ``recording.record_inbound`` it also starts MixMonitor; a recording that cannot
start is logged and marked failed, and the call goes on.
"""

from __future__ import annotations

from callwarden.agi.callbook import TrackedCall
from callwarden.agi.routes.common import (
    misnamed_recording,
    mixmonitor_file,
    publish,
    read_variables,
    start_mixmonitor,
)
from callwarden.agi.routes.registry import CallReport, RouteContext, register
from callwarden.agi.session import AgiSession
from callwarden.log import get_logger
from callwarden.service.enforcer import InboundCall

log = get_logger("callwarden.agi")


@register("inbound", failure_variables=(
    ("CALLWARDEN_DECISION", "deny"), ("CALLWARDEN_REASONS", "POLICY_UNAVAILABLE"),
))
async def inbound(session: AgiSession, ctx: RouteContext, report: CallReport) -> None:
    values = await read_variables(session, "CALLWARDEN_TENANT", "CALLERID(num)")
    report.tenant, report.caller = values["CALLWARDEN_TENANT"], values["CALLERID(num)"]
    report.callee = session.arg(1) or session.env("agi_dnid") or session.env("agi_extension")
    call = InboundCall(tenant=report.tenant, caller=report.caller, callee=report.callee,
                       at=ctx.clock(), pbx=ctx.pbx, pbx_call_id=session.uniqueid,
                       channel=session.channel)
    enforcer = ctx.gate.enforcer
    call_id = await ctx.gate.call(enforcer.log_inbound, call, timeout=ctx.store_timeout_s)
    report.call_id, report.decision, report.let_through = call_id, "allow", True

    results = [("CALLWARDEN_DECISION", "allow"), ("CALLWARDEN_REASONS", ""),
               ("CALLWARDEN_CALL_ID", call_id)]
    recorded = published = False
    if ctx.settings.recording.record_inbound:
        relpath = await ctx.gate.call(enforcer.start_recording, call_id, timeout=ctx.store_timeout_s)
        path = mixmonitor_file(ctx, relpath)
        error = await start_mixmonitor(session, path)
        if error is None:  # the results go out with the check that MixMonitor writes our file
            seen = await publish(session, results, also=("MIXMONITOR_FILENAME",))
            published = True
            error = misnamed_recording(seen["MIXMONITOR_FILENAME"], path)
        recorded = error is None
        report.recording = "started" if recorded else "failed"
        if error is not None:
            report.notes.append(error)
            await ctx.gate.call(enforcer.recording_not_started, call_id, error,
                                timeout=ctx.store_timeout_s)

    if ctx.book is not None and session.uniqueid:
        ctx.book.add(TrackedCall(uniqueid=session.uniqueid, call_id=call_id, direction="inbound",
                                 channel=session.channel, has_recording=recorded))
    if not published:
        await publish(session, results)
