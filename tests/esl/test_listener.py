"""The inbound event listener against the simulated FreeSWITCH: caller-ID changes on allowed
calls (uuid_kill, CID_ALTERED), reconnection with reconciliation (no CDR lost while the event
socket was down), CDR completion retried through a store outage, and a wrong password that
never stops the outbound server from answering calls."""

from __future__ import annotations

import time

from callwarden.policy import reason
from tests.esl.conftest import CALLER, EslRig, StoreLock, profile, wait_until

KILL_CAUSE = reason("CID_ALTERED").cause_name


def _allowed_call(rig: EslRig, **variables: str):
    call, result = rig.place(profile(**variables))
    assert result.variables_set["callwarden_decision"] == "allow" and result.resumed
    call.channel.answer()
    return call


def test_caller_id_change_mid_call_kills_the_call(rig: EslRig) -> None:
    call = _allowed_call(rig)
    call.channel.update_caller_id("", "95599")  # CALL_UPDATE: the presented number changed
    wait_until(lambda: call.channel.down, timeout=10)
    assert call.channel.hangup_cause == KILL_CAUSE and call.channel.hangup_source == "uuid_kill"
    assert f"uuid_kill {call.uuid} {KILL_CAUSE}" in rig.switch.api_log
    cdr = wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at and c)
    assert cdr.decision == "deny" and "CID_ALTERED" in cdr.reason_codes
    assert cdr.hangup_cause == KILL_CAUSE
    wait_until(lambda: rig.events("cid_altered_killed"))


def test_unchanged_or_unpresented_caller_id_is_left_alone(rig: EslRig) -> None:
    call = _allowed_call(rig)
    call.channel.update_caller_id("ACME", CALLER)  # same number, other name
    call.channel.update_caller_id("ACME", "+86 95512")  # same number, other spelling
    # The agent's own extension changes, the presented (effective) caller ID does not.
    call2 = _allowed_call(rig, caller="1001", effective_caller_id_number=CALLER)
    call2.channel.update_caller_id("Agent", "1002")
    time.sleep(0.5)  # give a wrong kill the time to happen
    assert not call.channel.down and not call2.channel.down
    assert not any(f"uuid_kill {c.uuid}" in " ".join(rig.switch.api_log) for c in (call, call2))
    for c in (call, call2):
        c.channel.hangup("NORMAL_CLEARING", source="far_end")
    assert wait_until(lambda: (x := rig.cdr(call.uuid)) and x.ended_at and x).decision == "allow"


def test_caller_id_watch_survives_a_restart_of_callwarden(make_rig) -> None:
    rig = make_rig()
    call = _allowed_call(rig)
    rig.restart()  # the in-memory watch list is gone; the store still knows the call
    call.channel.update_caller_id("", "95599")
    wait_until(lambda: call.channel.down, timeout=10)
    assert call.channel.hangup_cause == KILL_CAUSE
    cdr = wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at and c)
    assert "CID_ALTERED" in cdr.reason_codes
    assert rig.stop() == 0


def test_observe_mode_records_a_caller_id_change_without_killing(make_rig) -> None:
    rig = make_rig(mode="observe")
    call = _allowed_call(rig)
    call.channel.update_caller_id("", "95599")
    time.sleep(0.5)
    assert not call.channel.down
    call.channel.hangup("NORMAL_CLEARING", source="far_end")
    cdr = wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at and c)
    assert "CID_ALTERED" in cdr.reason_codes and cdr.enforced is False
    assert rig.stop() == 0


def test_event_socket_drop_loses_no_cdr(rig: EslRig) -> None:
    assert rig.fs is not None
    before = len(rig.events("esl_inbound_connected"))
    ended_offline = _allowed_call(rig)
    still_up = _allowed_call(rig)
    # FreeSWITCH's event socket goes away; one call ends while nobody listens.
    rig.fs.refuse()
    rig.fs.drop_connections()
    wait_until(lambda: rig.events("esl_inbound_down"), timeout=10)
    ended_offline.channel.hangup("NORMAL_CLEARING", source="far_end")
    time.sleep(0.3)  # a few reconnection attempts meet a closed port
    assert rig.cdr(ended_offline.uuid).ended_at is None
    rig.fs.accept_again()
    wait_until(lambda: len(rig.events("esl_inbound_connected")) > before, timeout=10)
    # Reconciliation: the store's open calls against `show channels`, once an event on the new
    # connection has named the switch (FreeSWITCH's HEARTBEAT, every 20 s).
    rig.switch.heartbeat()
    cdr = wait_until(lambda: (c := rig.cdr(ended_offline.uuid)) and c.ended_at and c, timeout=10)
    assert cdr.disposition == "UNKNOWN"
    wait_until(lambda: any(e.get("pbx_call_id") == ended_offline.uuid
                           for e in rig.events("call_end_reconciled")))
    assert rig.cdr(still_up.uuid).ended_at is None  # still live: left alone
    # Events flow again on the new connection: the live call's hangup completes normally.
    rig.switch.clock.advance(3_000_000)
    still_up.channel.hangup("NORMAL_CLEARING", source="far_end")
    cdr = wait_until(lambda: (c := rig.cdr(still_up.uuid)) and c.ended_at and c, timeout=10)
    assert cdr.disposition == "ANSWERED" and cdr.billsec == 3


def test_cdr_completion_is_retried_through_a_store_outage(rig: EslRig) -> None:
    call = _allowed_call(rig)
    with StoreLock(rig.store_url):
        call.channel.hangup("NORMAL_CLEARING", source="far_end")
        wait_until(lambda: any(e.get("pbx_call_id") == call.uuid
                               for e in rig.events("call_end_not_stored")), timeout=15)
    cdr = wait_until(lambda: (c := rig.cdr(call.uuid)) and c.ended_at and c, timeout=15)
    assert cdr.hangup_cause == "NORMAL_CLEARING" and cdr.disposition == "ANSWERED"
    wait_until(lambda: any(e.get("pbx_call_id") == call.uuid
                           for e in rig.events("call_end_stored_on_retry")))


def test_wrong_password_is_retried_and_calls_are_still_decided(make_rig) -> None:
    rig = make_rig(password="not-ClueCon")  # the switch's password differs from the config's
    wait_until(lambda: len(rig.events("esl_inbound_auth_failed")) >= 2, timeout=15)
    assert not rig.events("esl_inbound_connected")
    _, result = rig.place()
    assert result.variables_set["callwarden_decision"] == "allow" and result.resumed
    assert rig.stop() == 0
