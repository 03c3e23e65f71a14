"""``agi://host:port/outbound``: decide an outbound call, record it, or hang it up.

Dialplan: ``AGI(agi://127.0.0.1:4573/outbound,<callee>)`` (callee defaults to ${EXTEN}) with
CALLWARDEN_TENANT, CALLWARDEN_TRUNK, CALLWARDEN_CAMPAIGN, CALLWARDEN_PURPOSE set on the channel.
The shipped subroutine also passes those four as arguments (``tenant=${CALLWARDEN_TENANT}``,
``trunk=``, ``campaign=``, ``purpose=``), which spares the round trip that reads them: one AGI
command in four, for callwarden and for Asterisk. The caller ID and its presentation are then
the environment's (``agi_callerid``, ``agi_callingpres``: as the AGI started).
Sets CALLWARDEN_DECISION (allow|deny, as stored), CALLWARDEN_REASONS (codes, comma-separated),
CALLWARDEN_CALL_ID, CALLWARDEN_ENFORCED (no = a deny let through by observe mode) and, on deny,
CALLWARDEN_HANGUPCAUSE. A call that is not let through is hung up here, with the decision's
Q.850 cause, so a dialplan mistake cannot dial it anyway.
"""

from __future__ import annotations

from callwarden.agi.callbook import TrackedCall
from callwarden.agi.routes.common import (
    caller_hidden,
    misnamed_recording,
    mixmonitor_file,
    passed_values,
    publish,
    read_variables,
    start_mixmonitor,
)
from callwarden.agi.routes.registry import CallReport, RouteContext, register
from callwarden.agi.session import AgiSession
from callwarden.log import get_logger
from callwarden.policy import CallAttempt, Decision, denial

log = get_logger("callwarden.agi")

#: The channel variables the decision needs, by the AGI argument key that carries each (after
#: the callee) as the shipped subroutine sends them.
ARGUMENT_KEYS = {"tenant": "CALLWARDEN_TENANT", "trunk": "CALLWARDEN_TRUNK",
                 "campaign": "CALLWARDEN_CAMPAIGN", "purpose": "CALLWARDEN_PURPOSE"}
VARIABLES = tuple(ARGUMENT_KEYS.values())
_POLICY_UNAVAILABLE = denial("POLICY_UNAVAILABLE")


@register("outbound", hangup_on_failure=True, failure_variables=(
    ("CALLWARDEN_DECISION", "deny"), ("CALLWARDEN_REASONS", "POLICY_UNAVAILABLE"),
    ("CALLWARDEN_ENFORCED", "yes"),
    ("CALLWARDEN_HANGUPCAUSE", str(_POLICY_UNAVAILABLE.hangup_cause_code)),
))
async def outbound(session: AgiSession, ctx: RouteContext, report: CallReport) -> None:
    values = await _values(session)
    hidden = caller_hidden(session, values["CALLERPRES()"])
    report.tenant = values["CALLWARDEN_TENANT"]
    report.caller = values["CALLERID(num)"]
    report.callee = session.arg(1) or session.env("agi_extension")
    if session.hung_up:
        report.notes.append("caller hung up before the decision")
        return
    attempt = CallAttempt(
        tenant=report.tenant, caller=report.caller, callee=report.callee, at=ctx.clock(),
        caller_hidden=hidden, trunk=values["CALLWARDEN_TRUNK"],
        campaign=values["CALLWARDEN_CAMPAIGN"], purpose=values["CALLWARDEN_PURPOSE"],
        pbx=ctx.pbx, pbx_call_id=session.uniqueid, channel=session.channel,
    )
    result = await ctx.gate.decide(attempt)
    decision, let_through, call_id = result.decision, result.let_through, result.call_id
    report.decision_ms = result.latency_ms

    recorded = published = False
    if let_through and result.outcome is not None and result.outcome.recording_relpath:
        path = mixmonitor_file(ctx, result.outcome.recording_relpath)
        error = await start_mixmonitor(session, path)
        if error is None:
            # the results go out with the check that MixMonitor writes our file (one round trip)
            seen = await publish(session, _results(decision, call_id, let_through),
                                 also=("MIXMONITOR_FILENAME",))
            published = True
            error = misnamed_recording(seen["MIXMONITOR_FILENAME"], path)
        if error is None:
            recorded, report.recording = True, "started"
        else:
            report.recording, report.notes = "failed", [*report.notes, error]
            decision, let_through = await _recording_failed(ctx, call_id, error)
            published = False  # what went out said allow: the deny replaces it

    report.decision, report.reasons = decision.decision, decision.codes
    report.call_id, report.let_through = call_id, let_through
    if call_id and ctx.book is not None and session.uniqueid:
        ctx.book.add(_tracked(session, call_id, decision, attempt, recorded))

    if not published:
        await publish(session, _results(decision, call_id, let_through))
    if not let_through and not session.hung_up:
        report.hung_up = await session.hangup_with_cause(decision.hangup_cause_code or 21)


async def _values(session: AgiSession) -> dict[str, str | None]:
    """The channel values the decision needs: from the AGI arguments when the dialplan passed
    them all (no round trip), else read from the channel in one."""
    passed = passed_values(session, ARGUMENT_KEYS)
    if passed is not None:
        # the caller ID as the AGI started, microseconds ago; AMI watches it from here on
        return {**passed, "CALLERID(num)": session.env("agi_callerid"), "CALLERPRES()": None}
    if session.headers.get("agi_arg_2") is not None:
        log.warning("agi_arguments_not_used", route="outbound",
                    why="arguments after the callee are not exactly tenant=, trunk=, campaign=, "
                        "purpose=; the channel variables are read instead")
    # CALLERID(num) and CALLERPRES() as they are now (the environment has them as at AGI
    # start): in the same round trip as the rest, so keeping them costs nothing.
    return await read_variables(session, *VARIABLES, "CALLERID(num)", "CALLERPRES()")


def _results(decision: Decision, call_id: str | None, let_through: bool) -> list[tuple[str, str]]:
    """The channel variables the dialplan reads after the AGI returns."""
    variables = [("CALLWARDEN_DECISION", decision.decision),
                 ("CALLWARDEN_REASONS", ",".join(decision.codes)),
                 ("CALLWARDEN_CALL_ID", call_id or ""),
                 ("CALLWARDEN_ENFORCED", "no" if let_through and not decision.allowed else "yes")]
    if not decision.allowed:
        variables.append(("CALLWARDEN_HANGUPCAUSE", str(decision.hangup_cause_code)))
    return variables


async def _recording_failed(ctx: RouteContext, call_id: str | None, error: str) -> tuple[Decision, bool]:
    """Turn the call into a RECORDING_UNAVAILABLE deny; if even that cannot be stored, the
    deny stands without it (fail closed: no unrecorded outbound call)."""
    if call_id is not None:
        try:
            outcome = await ctx.gate.call(ctx.gate.enforcer.recording_failed, call_id, error,
                                          timeout=ctx.store_timeout_s)
            return outcome.decision, outcome.let_through
        except Exception as exc:  # store trouble: deny without storing it
            log.error("recording_failure_unrecorded", call_id=call_id, error=type(exc).__name__,
                      action="denied RECORDING_UNAVAILABLE without storing it")
    return denial("RECORDING_UNAVAILABLE"), False


def _tracked(session: AgiSession, call_id: str, decision: Decision, attempt: CallAttempt,
             recorded: bool) -> TrackedCall:
    caller = attempt.caller_number
    try:
        priority = int(session.headers.get("agi_priority", ""))
    except ValueError:
        priority = None
    return TrackedCall(
        uniqueid=session.uniqueid or "", call_id=call_id, direction="outbound",
        channel=session.channel, watch_cid=decision.allowed,
        decided_caller=caller.digits if caller else None,
        agi_context=session.env("agi_context"), agi_exten=session.env("agi_extension"),
        agi_priority=priority, has_recording=recorded,
    )
