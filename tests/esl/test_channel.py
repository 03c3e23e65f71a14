"""Reading channel data and events (pure functions), on the captured bytes where they exist."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from callwarden.esl import channel as ch
from callwarden.esl.calls import InFlight, WatchedCalls, changed
from callwarden.esl.frames import FrameParser
from tests.esl.traces import received


def _connect_reply() -> dict[str, str]:
    return FrameParser().feed(received("outbound_socket_full_call.txt")[0])[0].headers


def _captured_event(name: str, trace: str = "outbound_socket_full_call.txt") -> dict[str, str]:
    parser = FrameParser()
    for chunk in received(trace):
        for frame in parser.feed(chunk):
            if frame.is_event and frame.event()["Event-Name"] == name:
                return frame.event()
    raise AssertionError(name)


def test_channel_info_from_the_captured_connect_reply() -> None:
    info = ch.channel_info(_connect_reply())
    assert info.uuid == "b7c5d71a-e267-4c66-b0c0-d48b24958714"
    assert info.channel_name == "loopback/1001-b"
    assert info.route == "outbound" and info.route_given is None and info.route_known
    assert info.caller == "0000000000" and info.destination == "1001"
    assert info.hidden is False and info.tenant is None
    assert (info.socket_mode, info.control) == ("async", "full")
    assert info.node == "vm"  # FreeSWITCH-Switchname of the captured switch


def test_channel_variables_are_read_and_trimmed() -> None:
    data = {**_connect_reply(), "variable_callwarden_tenant": " acme ",
            "variable_callwarden_trunk": "ct-trunk-1", "variable_callwarden_campaign": "",
            "variable_callwarden_route": "OptOut", "variable_callwarden_callee": "13800138000",
            "variable_effective_caller_id_number": "95512",
            "variable_effective_caller_id_name": "ACME"}
    info = ch.channel_info(data)
    assert info.tenant == "acme" and info.trunk == "ct-trunk-1" and info.campaign is None
    assert info.route == "optout" and info.route_given == "OptOut"
    assert info.destination == "13800138000"  # callwarden_callee wins over destination_number
    assert info.caller == "95512" and info.caller_name == "ACME"


@pytest.mark.parametrize(("headers", "hidden"), [
    ({"Caller-Privacy-Hide-Number": "true"}, True),
    ({"Channel-Privacy-Hide-Number": "true"}, True),
    ({"variable_privacy": "number"}, True),
    ({"variable_privacy": "yes"}, True),
    ({"variable_privacy": "name"}, False),
    ({"variable_origination_privacy": "screen+hide_number"}, True),
    ({"variable_origination_privacy": "hide_name"}, False),
    ({"Caller-Privacy-Hide-Number": "false"}, False),
])
def test_presentation_restricted(headers: dict[str, str], hidden: bool) -> None:
    assert ch.caller_hidden(headers) is hidden


@pytest.mark.parametrize(("raw", "node"), [
    ("fs-a", "fs-a"), ("  fs-a\t", "fs-a"), ("节点-1", "节点-1"), (None, None), ("", None),
    ("   ", None), ("fs\na", None), ("fs\x00a", None), ("x" * 200, "x" * ch.NODE_MAX_LEN),
])
def test_node_names_are_bounded_and_printable(raw: str | None, node: str | None) -> None:
    assert ch.node_name(raw) == node
    data = {**_connect_reply(), ch.SWITCHNAME_HEADER: raw} if raw is not None else {
        k: v for k, v in _connect_reply().items() if k != ch.SWITCHNAME_HEADER}
    assert ch.channel_info(data).node == node


def test_node_width_is_the_same_for_the_config_the_adapter_and_the_store() -> None:
    from callwarden.config.model import SWITCHNAME_MAX_LEN
    from callwarden.store.models import Call

    assert ch.NODE_MAX_LEN == SWITCHNAME_MAX_LEN == Call.__table__.c.node.type.length


def test_every_captured_event_names_its_switch() -> None:
    """What the listener learns its node from."""
    assert _captured_event("CHANNEL_ANSWER")[ch.SWITCHNAME_HEADER] == "vm"
    assert _captured_event("CHANNEL_HANGUP_COMPLETE", "inbound_events_same_call.txt")[
        ch.SWITCHNAME_HEADER] == "vm"


def test_hangup_info_from_the_captured_hangup_complete() -> None:
    info = ch.hangup_info(_captured_event("CHANNEL_HANGUP_COMPLETE"))
    assert info is not None and info.uuid == "b7c5d71a-e267-4c66-b0c0-d48b24958714"
    assert info.billsec == 2 and info.hangup_cause == "NORMAL_CLEARING"
    assert info.disposition == "ANSWERED" and info.call_id is None
    assert info.answered_at == dt.datetime.fromtimestamp(1795480295790016 / 1e6, dt.UTC)
    assert info.ended_at == dt.datetime.fromtimestamp(1795480297770027 / 1e6, dt.UTC)


@pytest.mark.parametrize(("answered", "cause", "disposition"), [
    (True, "NORMAL_CLEARING", "ANSWERED"), (False, "USER_BUSY", "BUSY"),
    (False, "NO_ANSWER", "NO ANSWER"), (False, "ORIGINATOR_CANCEL", "NO ANSWER"),
    (False, "CALL_REJECTED", "FAILED"), (False, None, "FAILED"),
])
def test_disposition(answered: bool, cause: str | None, disposition: str) -> None:
    assert ch.disposition(answered, cause) == disposition


def test_call_uuids_include_the_a_leg_of_a_bridged_b_leg() -> None:
    assert ch.call_uuids({"Unique-ID": "b", "Channel-Call-UUID": "a"}) == ("b", "a")
    assert ch.call_uuids({"Unique-ID": "a", "Channel-Call-UUID": "a"}) == ("a",)


def test_show_channels_json() -> None:
    rows = [{"uuid": "u1", "cid_num": "95512"}, {"uuid": "u2", "cid_num": "1001"}]
    assert ch.parse_show_channels(json.dumps({"row_count": 2, "rows": rows})) == {"u1", "u2"}
    assert ch.parse_show_channels('{"row_count":0}') == set()
    assert ch.parse_show_channels("-ERR show Command not found!\n") is None
    assert ch.parse_show_channels(json.dumps({"row_count": 3, "rows": rows})) is None


def test_watched_calls_compare_canonical_numbers_and_stay_bounded() -> None:
    watched = WatchedCalls(max_size=2)
    watched.add("a", "c1", "95512")
    found = watched.find(["x", "a"])
    assert found is not None and found[0] == "a"
    w = found[1]
    assert not changed(w, "95512", False) and not changed(w, "+86 95512", False)
    assert changed(w, "95599", False) and changed(w, "95512", True) and changed(w, None, False)
    watched.add("b", "c2", "95512")
    watched.add("c", "c3", "95512")
    assert "a" not in watched and len(watched) == 2
    assert watched.retain({"c"}) == 1 and list(watched._calls) == ["c"]


def test_in_flight_parks_a_hangup_until_the_handler_finishes() -> None:
    released: list[tuple[str, str, object]] = []
    inflight = InFlight(max_recent=1)
    inflight.on_release = lambda uuid, call_id, item: released.append((uuid, call_id, item))
    inflight.begin("u1")
    assert inflight.call_id("u1") is None and inflight.park("u1", "hangup")
    inflight.decided("u1", "c1")
    assert inflight.call_id("u1") == "c1" and not released
    inflight.finish("u1")
    assert released == [("u1", "c1", "hangup")] and inflight.call_id("u1") == "c1"
    assert not inflight.park("u9", "x")  # nobody works on u9: not ours to keep
    inflight.begin("u2")
    inflight.finish("u2")  # never decided: nothing remembered, nothing released
    assert inflight.call_id("u2") is None and len(released) == 1
