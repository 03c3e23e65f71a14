"""End to end over real TCP: the simulated FreeSWITCH's ``socket`` application dials the real
outbound ESL server (in its own process) while the inbound listener watches the same simulated
switch. The same scenarios as the Asterisk side: allowed calls recorded and their CDR completed,
each deny hung up with its reason's cause, observe mode, record_session failure, inbound and
opt-out routes, a store that does not answer."""

from __future__ import annotations

import re
import time

import pytest

from callwarden.policy import reason
from callwarden.recorder.naming import spool_path
from tests.esl.conftest import (
    CALLER,
    CONSENTED,
    MONDAY_10AM,
    REFUSED,
    STRANGER,
    TENANT,
    EslRig,
    StoreLock,
    profile,
    wait_until,
)
from tests.sim.freeswitch import CallProfile

ALLOWED_VARS = {"callwarden_decision": "allow", "callwarden_reasons": None,
                "callwarden_enforced": "yes"}


def cause_of(codes: str) -> str:
    """The hangup cause the contract gives a deny: its first reason's (in contract order)."""
    return reason(codes.split(",")[0]).cause_name


def test_allowed_call_is_recorded_handed_back_and_its_cdr_completed(rig: EslRig) -> None:
    call, result = rig.place()
    assert result.commands[0].text == "connect"
    assert result.resume_sent and result.resumed and not result.hung_up
    assert {k: result.variables_set[k] for k in ALLOWED_VARS} == ALLOWED_VARS
    call_id = result.variables_set["callwarden_call_id"]
    # record_session was sent before the call went back to the dialplan, into the spool.
    texts = [(c.text, c.header("execute-app-name")) for c in result.commands]
    assert texts.index(("sendmsg", "record_session")) < texts.index(("resume", None))
    assert [a.name for a in result.apps].count("record_session") == 1
    expected = spool_path(rig.workdir / "rec", f"{TENANT}/2026/03/02/{call_id}.wav")
    assert result.recordings[0].path == str(expected.resolve())
    cdr = rig.cdr(call.uuid)
    assert cdr is not None and cdr.call_id == call_id and cdr.decision == "allow"
    assert cdr.pbx == "freeswitch" and cdr.caller == CALLER and cdr.callee == CONSENTED

    # The call goes on in the dialplan: answered, 7 seconds of talk, hung up by the callee.
    call.channel.answer()
    rig.switch.clock.advance(7_000_000)
    call.channel.hangup("NORMAL_CLEARING", source="far_end")
    cdr = wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at and c)
    assert cdr.billsec == 7 and cdr.disposition == "ANSWERED"
    assert cdr.hangup_cause == "NORMAL_CLEARING" and cdr.answered_at is not None
    assert (cdr.ended_at - cdr.answered_at).total_seconds() == pytest.approx(7, abs=0.1)
    # RECORD_STOP finalized the recording: hashed, stored, spool file gone.
    rec = wait_until(lambda: (r := rig.recording(call_id)) and r.status == "stored" and r)
    assert rec.sha256 and rec.size and rec.size > 44
    assert not expected.exists()
    log = rig.call_log(call.uuid)
    assert log["action"] == "resumed" and log["recording"] == "started"
    assert log["caller"] == "95512" and log["callee"] == "138****8000"  # numbers masked


WANTED = ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_EXECUTE_COMPLETE", "RECORD_START")


def test_freeswitch_sends_a_call_handler_only_the_events_it_waits_for(rig: EslRig) -> None:
    """Two subscription commands: this channel's Unique-ID as the filter, then the four events
    a handler waits for. The hub reads a handful of events per call, not the twenty-odd that
    ``myevents`` brings (CHANNEL_EXECUTE, _STATE, _PARK, _ANSWER, ...)."""
    call, result = rig.place()
    assert result.resumed
    texts = result.command_names
    assert texts[1:3] == [f"filter Unique-ID {call.channel.uuid}", "event plain " + " ".join(WANTED)]
    assert "myevents" not in texts and sum(t.startswith(("filter ", "event ")) for t in texts) == 2
    assert result.events_sent and set(result.events_sent) <= set(WANTED)
    assert "RECORD_START" in result.events_sent  # what the recording check waits for still comes


def test_a_call_handler_never_sees_another_channels_events(rig: EslRig) -> None:
    """``event plain`` alone would bring every channel's hangups and recordings (an outbound
    socket's subscription is switch-wide): the Unique-ID filter keeps each handler to its own.
    Eight calls at once, each hanging up while the others record: every event a session was
    sent names its own channel."""
    calls = [rig.fscall() for _ in range(8)]
    for call in calls:
        call.start(timeout=15)
    results = [call.join(15) for call in calls]
    for call, result in zip(calls, results, strict=True):
        assert result.error is None and result.events_sent
        ids = set(re.findall(rb"^Unique-ID: (.+)$", result.sent, re.M))
        assert ids == {call.channel.uuid.encode()}, "an event of another channel reached the handler"
    assert sum(r.resumed for r in results) >= 1  # some recorded and let through, some denied


def test_a_unique_id_a_filter_would_misread_keeps_the_older_subscription(rig: EslRig) -> None:
    """A dialplan's own ``origination_uuid`` may start with a character that a filter value
    reads as syntax (``+``/``-`` signs, ``/`` a regex): then ``myevents`` narrows to the
    channel and one ``filter Event-Name`` per wanted event, and the call is decided as ever."""
    call, result = rig.place(uuid="-odd-call-1")
    assert result.resumed and result.variables_set["callwarden_decision"] == "allow"
    texts = result.command_names
    assert texts[1:3] == ["myevents", "event plain RECORD_START RECORD_STOP"]
    assert [t for t in texts if t.startswith("filter ")] == [f"filter Event-Name {n}" for n in WANTED]
    assert "RECORD_START" in result.events_sent


def test_the_outcome_goes_to_freeswitch_in_one_uuid_setvar_multi(rig: EslRig) -> None:
    """Decision, reasons and enforcement flag: one api command and one reply, not three; the
    call ID before record_session is one variable (uuid_setvar)."""
    call, result = rig.place()
    apis = [t for t in result.command_names if t.startswith("api ")]
    assert apis[0] == f"api uuid_setvar {call.channel.uuid} callwarden_call_id " + \
        result.variables_set["callwarden_call_id"]
    assert apis[1:] == [f"api uuid_setvar_multi {call.channel.uuid} callwarden_decision=allow;"
                        "callwarden_reasons=;callwarden_enforced=yes"]
    assert result.variables_set["callwarden_decision"] == "allow"
    assert result.variables_set["callwarden_reasons"] is None  # empty: unset, as before
    assert result.variables_set["callwarden_enforced"] == "yes"


def test_the_subscription_goes_with_the_first_commands_after_the_decision(rig: EslRig) -> None:
    """While the store decides, the channel sends the hub nothing to read (the decision writer
    has the CPU); the subscription then precedes record_session in the same write, so its
    RECORD_START is still caught."""
    call = rig.fscall()
    with StoreLock(rig.store_url):  # holds the decision back (less than its 500 ms budget)
        call.start(timeout=15)
        time.sleep(0.2)
        assert [c.text for c in call._session.commands] == ["connect"]
    result = call.join(15)
    assert result.error is None and result.resumed
    texts = [c.text for c in result.commands]
    record = next(i for i, c in enumerate(result.commands) if c.header("execute-app-name") == "record_session")
    assert texts[1].startswith("filter Unique-ID ") and texts[2].startswith("event plain ")
    assert record > 2
    assert "RECORD_START" in result.events_sent


@pytest.mark.parametrize(("prof", "code"), [
    (profile(tenant=None), "TENANT_UNKNOWN"),
    (profile(tenant="nobody"), "TENANT_UNKNOWN"),
    (profile(hide_number=True), "CID_HIDDEN"),
    (profile(caller="anonymous"), "CID_HIDDEN"),
    (profile(caller="13612345678"), "CID_USER_NUMBER"),
    (profile(caller="95599"), "CID_NOT_REGISTERED"),
    (profile(caller="9551201"), "NUMBER_LENGTH_ALTERED"),
    (profile(trunk="unknown-trunk"), "TRUNK_UNVERIFIED"),
    (profile(campaign="spring-promo"), "CAMPAIGN_NOT_APPROVED"),
    (profile(callee=REFUSED), "CALLEE_REFUSED"),
    (profile(callee=STRANGER), "NO_CONSENT"),
    (profile(callwarden_purpose="marketing"), "NO_CONSENT"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_denied_call_is_hung_up_with_its_cause(rig: EslRig, prof: CallProfile, code: str) -> None:
    call, result = rig.place(prof)
    reasons = result.variables_set["callwarden_reasons"]
    assert code in reasons.split(",")
    assert result.variables_set["callwarden_decision"] == "deny"
    assert result.variables_set["callwarden_enforced"] == "yes"
    assert result.hangup_cause == cause_of(reasons) == result.variables_set["callwarden_hangupcause"]
    assert result.hangup_source == "hangup_app"  # callwarden hung it up, not a closed socket
    assert not result.resume_sent and not result.recordings
    cdr = wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at and c)
    assert cdr.decision == "deny" and code in cdr.reason_codes
    assert cdr.hangup_cause == result.hangup_cause and cdr.disposition == "FAILED"
    assert rig.call_log(call.uuid)["action"] == "hung_up"


def test_hidden_presentation_is_read_from_the_privacy_variable(rig: EslRig) -> None:
    _, result = rig.place(profile(privacy="number"))
    assert "CID_HIDDEN" in result.variables_set["callwarden_reasons"].split(",")


def test_effective_caller_id_is_what_gets_decided(rig: EslRig) -> None:
    """An agent's extension as caller, the access number presented: the presented one counts."""
    _, result = rig.place(profile(caller="1001", effective_caller_id_number=CALLER))
    assert result.variables_set["callwarden_decision"] == "allow"


def test_recording_that_does_not_start_denies_recording_unavailable(rig: EslRig) -> None:
    call, result = rig.place(record_fails=True)
    assert [a.name for a in result.apps].count("record_session") == 1
    assert result.variables_set["callwarden_decision"] == "deny"
    assert result.variables_set["callwarden_reasons"] == "RECORDING_UNAVAILABLE"
    assert result.hangup_cause == reason("RECORDING_UNAVAILABLE").cause_name
    assert not result.resume_sent
    cdr = rig.cdr(call.uuid)
    assert cdr.decision == "deny" and cdr.reason_codes == ["RECORDING_UNAVAILABLE"]
    assert rig.recording(cdr.call_id).status == "failed"
    assert rig.call_log(call.uuid)["recording"] == "failed"


def test_caller_hanging_up_while_callwarden_decides(rig: EslRig) -> None:
    """The channel goes away mid-decision: nothing is sent to a dead channel, and its CDR is
    still completed (its CHANNEL_HANGUP_COMPLETE came before the decision was even stored)."""
    call = rig.fscall()
    with StoreLock(rig.store_url):  # holds the decision back (less than its 500 ms budget)
        call.start(timeout=15)
        time.sleep(0.15)
        call.hangup_far_end("ORIGINATOR_CANCEL")
        wait_until(lambda: call.channel.down, timeout=5)
    result = call.join(15)
    assert result.error is None and not result.resume_sent and not result.recordings
    assert result.hangup_source == "far_end"
    log = rig.call_log(call.uuid)
    assert log["action"] == "none" and log["failure"] is None and "caller hung up" in log["notes"]
    cdr = wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at and c)
    assert cdr.decision == "allow" and log["call_id"] == cdr.call_id
    assert cdr.hangup_cause == "ORIGINATOR_CANCEL" and cdr.disposition == "NO ANSWER"
    # An allowed call whose recording never arrived is flagged for the auditor.
    rec = wait_until(lambda: (r := rig.recording(cdr.call_id)) and r.status != "recording" and r)
    assert rec.status == "failed"


def test_inbound_call_is_logged_and_opens_the_callback_window(rig: EslRig) -> None:
    inbound = CallProfile(caller_id_number=STRANGER, destination_number=CALLER,
                          variables={"callwarden_route": "inbound", "callwarden_tenant": TENANT})
    call, result = rig.place(inbound)
    assert result.resume_sent and result.resumed and not result.hung_up
    assert result.variables_set["callwarden_decision"] == "allow"
    cdr = rig.cdr(call.uuid)
    assert cdr.direction == "inbound" and cdr.call_id == result.variables_set["callwarden_call_id"]
    assert cdr.party == STRANGER
    call.channel.hangup("NORMAL_CLEARING", source="far_end")
    wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at)
    # A callback to the stranger, who has no consent on file, is now allowed (即时回访).
    _, back = rig.place(profile(callee=STRANGER, callwarden_purpose="callback"))
    assert back.variables_set["callwarden_decision"] == "allow", back.variables_set


def test_inbound_and_optout_go_on_when_the_store_is_down(rig: EslRig) -> None:
    inbound = CallProfile(caller_id_number=STRANGER, destination_number=CALLER,
                          variables={"callwarden_route": "inbound", "callwarden_tenant": TENANT})
    optout = CallProfile(caller_id_number=STRANGER, destination_number="callwarden_optout",
                         variables={"callwarden_route": "optout", "callwarden_tenant": TENANT})
    with StoreLock(rig.store_url):
        _, logged = rig.place(inbound)
        _, refused = rig.place(optout)
    assert logged.resumed and not logged.hung_up  # inbound calls are never blocked
    assert logged.variables_set["callwarden_decision"] == "deny"
    assert logged.variables_set["callwarden_reasons"] == "POLICY_UNAVAILABLE"
    assert refused.resumed and refused.variables_set["callwarden_optout"] == "failed"


def test_inbound_recording(make_rig) -> None:
    rig = make_rig(recording={"record_inbound": True})
    inbound = CallProfile(caller_id_number=STRANGER, destination_number=CALLER,
                          variables={"callwarden_route": "inbound", "callwarden_tenant": TENANT})
    call, result = rig.place(inbound)
    assert result.resumed and result.recordings and not result.recordings[0].failed
    cdr = rig.cdr(call.uuid)
    assert cdr.direction == "inbound" and cdr.recording_id is not None
    assert rig.call_log(call.uuid)["recording"] == "started"
    call.channel.answer()
    rig.switch.clock.advance(4_000_000)
    call.channel.hangup("NORMAL_CLEARING", source="far_end")
    rec = wait_until(lambda: (r := rig.recording(cdr.call_id)) and r.status == "stored" and r)
    assert rec.sha256
    # A recording that cannot start is recorded as failed; the inbound call still goes on.
    call, result = rig.place(inbound, record_fails=True)
    assert result.resumed and not result.hung_up
    cdr = rig.cdr(call.uuid)
    assert cdr.decision == "allow" and rig.recording(cdr.call_id).status == "failed"
    assert rig.stop() == 0


def test_unknown_route_fails_closed(rig: EslRig) -> None:
    call, result = rig.place(profile(callwarden_route="outbond"))
    assert result.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and not result.resume_sent
    assert result.variables_set["callwarden_error"] == "unknown_route"
    assert rig.cdr(call.uuid) is None
    assert rig.call_log(call.uuid)["failure"] == "unknown_route"


def test_observe_mode_lets_a_denied_call_through_recorded(make_rig) -> None:
    rig = make_rig(mode="observe")
    call, result = rig.place(profile(callee=REFUSED))
    assert result.variables_set["callwarden_decision"] == "deny"
    assert result.variables_set["callwarden_enforced"] == "no"
    assert "CALLEE_REFUSED" in result.variables_set["callwarden_reasons"]
    assert result.resume_sent and result.resumed and not result.hung_up
    assert result.recordings and not result.recordings[0].failed
    cdr = rig.cdr(call.uuid)
    assert cdr.decision == "deny" and cdr.enforced is False and cdr.recording_id is not None
    assert rig.stop() == 0


def test_optout_adds_a_refusal_that_later_calls_meet(make_rig) -> None:
    rig = make_rig()
    optout = CallProfile(caller_id_number=CALLER, destination_number="callwarden_optout",
                         variables={"callwarden_route": "optout", "callwarden_tenant": TENANT,
                                    "callwarden_optout_number": CONSENTED})
    _, result = rig.place(optout)
    assert result.variables_set["callwarden_optout"] == "ok" and result.resume_sent
    _, after = rig.place(profile(callee=CONSENTED))
    assert "CALLEE_REFUSED" in after.variables_set["callwarden_reasons"].split(",")
    # Without a tenant nothing can be stored: "rejected", and the call goes on.
    _, bad = rig.place(CallProfile(caller_id_number=CONSENTED, destination_number="x",
                                   variables={"callwarden_route": "optout"}))
    assert bad.variables_set["callwarden_optout"] == "rejected" and bad.resume_sent
    assert rig.stop() == 0


def test_quiet_hours(make_rig) -> None:
    rig = make_rig(at=MONDAY_10AM.replace(hour=22, minute=30))
    _, late = rig.place()
    assert "QUIET_HOURS" in late.variables_set["callwarden_reasons"].split(",")
    assert late.hangup_cause == cause_of(late.variables_set["callwarden_reasons"])
    assert rig.stop() == 0


def test_frequency_limit(make_rig) -> None:
    rig = make_rig(frequency={"per_day": 1, "per_week": 5})
    _, first = rig.place()
    _, second = rig.place()
    assert first.variables_set["callwarden_decision"] == "allow"
    assert second.variables_set["callwarden_reasons"] == "FREQUENCY_EXCEEDED"
    assert second.hangup_cause == reason("FREQUENCY_EXCEEDED").cause_name
    assert rig.stop() == 0


def test_store_outage_denies_policy_unavailable_in_time(rig: EslRig) -> None:
    timeout_s = 0.5  # the default decision_timeout_ms
    with StoreLock(rig.store_url):
        started = time.monotonic()
        call, result = rig.place()
        elapsed = time.monotonic() - started
    assert result.variables_set["callwarden_decision"] == "deny"
    assert result.variables_set["callwarden_reasons"] == "POLICY_UNAVAILABLE"
    assert result.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and not result.resume_sent
    log = rig.call_log(call.uuid)
    assert log["decision_ms"] <= timeout_s * 1000 + 150
    assert elapsed < timeout_s + 2.0  # the simulator's own steps included
    # Nothing was stored for the denied call; the store works again afterwards.
    assert rig.cdr(call.uuid) is None
    _, ok = rig.place()
    assert ok.variables_set["callwarden_decision"] == "allow"
