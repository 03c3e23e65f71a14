"""Several FreeSWITCH nodes on one store (a seat-rental provider's cluster): two simulated
switches with different switchnames, each with its own callwarden adapter process, over real
TCP, sharing one store (SQLite and PostgreSQL).

Every call is stored under its node (the connect reply's FreeSWITCH-Switchname), and each
listener's reconciliation ends only calls of its own node (or of no known node): a call up on
node A is never ended because node B's ``show channels`` does not list it.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from callwarden.store.models import Call
from tests.esl.conftest import CALLER, STRANGER, TENANT, EslRig, profile, wait_until
from tests.sim.freeswitch import CallProfile, FsCall


def _allowed_call(rig: EslRig) -> FsCall:
    call, result = rig.place(profile())
    assert result.variables_set["callwarden_decision"] == "allow" and result.resumed
    call.channel.answer()
    return call


def _after(rig: EslRig, name: str, count: int, timeout: float = 10.0) -> dict[str, Any]:
    """The first ``name`` log event after the first ``count`` ones."""
    return wait_until(lambda: (e := rig.events(name))[count:] and e[count], timeout)


def _ended(rig: EslRig, uuid: str) -> Call:
    return wait_until(lambda: (c := rig.cdr(uuid)) and c.ended_at and c, timeout=10)


def _disconnect(rig: EslRig) -> None:
    """The event socket goes away (FreeSWITCH restarts its module, the network drops...)."""
    assert rig.fs is not None
    down = len(rig.events("esl_inbound_down"))
    rig.fs.refuse()
    rig.fs.drop_connections()
    _after(rig, "esl_inbound_down", down)


def _reconnect(rig: EslRig) -> None:
    assert rig.fs is not None
    connected = len(rig.events("esl_inbound_connected"))
    rig.fs.accept_again()
    _after(rig, "esl_inbound_connected", connected)


def test_a_node_reconciles_only_its_own_calls(make_rig) -> None:
    a = make_rig(switchname="fs-a")
    b = make_rig(switchname="fs-b")
    a_live = _allowed_call(a)
    b_gone = _allowed_call(b)
    assert a.cdr(a_live.uuid).node == "fs-a" and b.cdr(b_gone.uuid).node == "fs-b"
    assert a.call_log(a_live.uuid)["node"] == "fs-a"

    # B's adapter is down while its call ends: nobody hears that hangup.
    assert b.stop() == 0
    b_gone.channel.hangup("NORMAL_CLEARING", source="far_end")
    deferred, reconciled = len(b.events("reconcile_deferred")), len(b.events("esl_reconciled"))
    learned = len(b.events("esl_node_learned"))
    b.start()
    # A fresh listener does not know its node yet: it ends nothing, not even B's own call.
    _after(b, "reconcile_deferred", deferred)
    time.sleep(0.5)
    assert len(b.events("esl_reconciled")) == reconciled
    assert b.cdr(b_gone.uuid).ended_at is None and a.cdr(a_live.uuid).ended_at is None

    b.switch.heartbeat()  # FreeSWITCH's HEARTBEAT (every 20 s) names the switch
    assert _after(b, "esl_node_learned", learned)["node"] == "fs-b"
    done = _after(b, "esl_reconciled", reconciled)
    assert (done["node"], done["open_in_store"], done["ended"]) == ("fs-b", 1, 1)
    assert _ended(b, b_gone.uuid).disposition == "UNKNOWN"
    # A's call is up on A: B never even considered it.
    assert a.cdr(a_live.uuid).ended_at is None
    assert all(e.get("pbx_call_id") != a_live.uuid for e in b.events("call_end_reconciled"))

    # A's call ends normally afterwards, with its real end.
    a.switch.clock.advance(7_000_000)
    a_live.channel.hangup("NORMAL_CLEARING", source="far_end")
    cdr = _ended(a, a_live.uuid)
    assert (cdr.disposition, cdr.billsec, cdr.hangup_cause) == ("ANSWERED", 7, "NORMAL_CLEARING")
    assert (cdr.ended_at - cdr.answered_at).total_seconds() == 7
    assert a.stop() == 0 and b.stop() == 0


def test_a_call_that_vanished_while_its_listener_was_down_is_ended_by_its_node(make_rig) -> None:
    a = make_rig(switchname="fs-a")
    b = make_rig(switchname="fs-b")
    a_gone, a_live = _allowed_call(a), _allowed_call(a)
    b_live = _allowed_call(b)
    # A's first pass (once an event named its switch) may be logged only now, on a busy host:
    # counted before it, it would pass for the pass after the reconnection.
    _after(a, "esl_reconciled", 0)
    reconciled = len(a.events("esl_reconciled"))
    _disconnect(a)
    a_gone.channel.hangup("NORMAL_CLEARING", source="far_end")
    time.sleep(0.3)  # a few reconnection attempts meet a closed port
    assert a.cdr(a_gone.uuid).ended_at is None
    deferred = len(a.events("reconcile_deferred"))
    _reconnect(a)
    # Learned again on the new connection (the address might lead to another switch now).
    _after(a, "reconcile_deferred", deferred)
    assert a.cdr(a_gone.uuid).ended_at is None
    a.switch.heartbeat()
    done = _after(a, "esl_reconciled", reconciled)
    assert (done["node"], done["open_in_store"], done["ended"]) == ("fs-a", 2, 1)
    assert _ended(a, a_gone.uuid).disposition == "UNKNOWN"
    assert a.cdr(a_live.uuid).ended_at is None and b.cdr(b_live.uuid).ended_at is None
    for rig, call in ((a, a_live), (b, b_live)):
        call.channel.hangup("NORMAL_CLEARING", source="far_end")
        assert _ended(rig, call.uuid).disposition == "ANSWERED"
    assert a.stop() == 0 and b.stop() == 0


def test_a_configured_switchname_is_confirmed_by_the_switch(make_rig) -> None:
    a = make_rig(switchname="fs-a")
    a_live = _allowed_call(a)
    _after(a, "esl_reconciled", 0)  # A's own (deferred) pass is over: it would end the next row
    # A call stored before the upgrade (no node) that no switch has any more.
    old_uuid = "9a1e7c5e-0000-4000-8000-000000000000"
    with Session(a.engine) as s:
        s.add(Call(call_id="0" * 32, tenant_id=TENANT, direction="outbound", pbx="freeswitch",
                   pbx_call_id=old_uuid, caller=CALLER, callee=STRANGER, attempted_at=a.at,
                   decision="allow", reasons="", recording_id=424242))
        s.commit()
    b = make_rig(switchname="fs-b", freeswitch={"switchname": "fs-b"})
    _after(b, "reconcile_deferred", 0)  # the config alone does not make the node known
    b.switch.heartbeat()
    learned = _after(b, "esl_node_learned", 0)
    assert (learned["node"], learned["confirms_config"]) == ("fs-b", True)
    done = _after(b, "esl_reconciled", 0)
    # Calls of no known node are everybody's: B ends the one no switch has.
    assert (done["node"], done["open_in_store"], done["ended"]) == ("fs-b", 1, 1)
    assert _ended(b, old_uuid).disposition == "UNKNOWN"
    assert a.cdr(a_live.uuid).ended_at is None
    assert not b.events("esl_switchname_mismatch")
    assert a.stop() == 0 and b.stop() == 0


def test_a_switchname_the_switch_contradicts_is_an_error_and_the_switch_wins(make_rig) -> None:
    a = make_rig(switchname="fs-a")
    a_live = _allowed_call(a)
    # Node B's config was copied from node A's: it names A's switch. Trusting it before B's
    # switch has spoken would end A's live call (not in B's `show channels`).
    b = make_rig(switchname="fs-b", freeswitch={"switchname": "fs-a"})
    _after(b, "reconcile_deferred", 0)
    time.sleep(0.5)
    assert not b.events("esl_reconciled") and a.cdr(a_live.uuid).ended_at is None
    b_gone = _allowed_call(b)  # its events say fs-b
    assert b.cdr(b_gone.uuid).node == "fs-b"  # stored under the switch's own word
    mismatch = _after(b, "esl_switchname_mismatch", 0)
    assert (mismatch["configured"], mismatch["reported"], mismatch["level"]) == ("fs-a", "fs-b", "error")
    done = _after(b, "esl_reconciled", 0)  # the deferred one, as fs-b (A's call no candidate)
    assert (done["node"], done["ended"]) == ("fs-b", 0) and done["open_in_store"] <= 1
    b.switch.heartbeat()  # more events naming fs-b
    reconciled = len(b.events("esl_reconciled"))
    _disconnect(b)
    b_gone.channel.hangup("NORMAL_CLEARING", source="far_end")
    _reconnect(b)
    b.switch.heartbeat()
    done = _after(b, "esl_reconciled", reconciled)
    assert (done["node"], done["ended"]) == ("fs-b", 1)
    assert _ended(b, b_gone.uuid).disposition == "UNKNOWN"
    assert len(b.events("esl_switchname_mismatch")) == 1  # once, not per event
    assert a.cdr(a_live.uuid).ended_at is None
    a_live.channel.hangup("NORMAL_CLEARING", source="far_end")
    assert _ended(a, a_live.uuid).disposition == "ANSWERED"
    assert a.stop() == 0 and b.stop() == 0


def test_inbound_calls_carry_their_node_and_names_survive_url_encoding(make_rig) -> None:
    name = "机房 A/fs-1"  # FreeSWITCH URL-encodes header values; both sides decode them alike
    a = make_rig(switchname=name)
    inbound = CallProfile(caller_id_number=STRANGER, destination_number=CALLER,
                          variables={"callwarden_route": "inbound", "callwarden_tenant": TENANT})
    call, result = a.place(inbound)
    assert result.resumed
    cdr = a.cdr(call.uuid)
    assert cdr.direction == "inbound" and cdr.node == name
    a.switch.heartbeat()
    assert _after(a, "esl_node_learned", 0)["node"] == name
    assert a.stop() == 0
