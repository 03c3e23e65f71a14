"""Fidelity tests for tests/sim/freeswitch.py.

The core of it: replay what the client sent in each capture of ``tests/sim/captures/freeswitch/``
against the simulator (parameterised with the captured UUIDs, timestamps and sequence numbers)
and require the very bytes FreeSWITCH 1.10.12 sent, write for write. Then the behaviours no
capture shows (modelled from FreeSWITCH's sources), and greenswitch 0.0.19 on both sides.
Every wait is bounded.
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim.freeswitch import (
    GOODBYE,
    SETVAR_MULTI_USAGE,
    CallProfile,
    Chunking,
    FreeSwitch,
    FsCall,
    FsEventSocketServer,
    Misbehaviour,
    ScriptedClock,
    VirtualClock,
    parse_event_body,
    split_frames,
    url_encode,
    url_encode_by_byte,
)

TRACES = Path(__file__).resolve().parent / "captures"
FS_TRACES = TRACES / "freeswitch"
_BLOCK = re.compile(rb"\n===== (>>> SENT|<<< RECV|### NOTE|### SUMMARY) t=\+[0-9.]+s "
                    rb"wall=\S+ bytes=(\d+) =====\n")


# --------------------------------------------------------------------------- capture parsing


@dataclass
class Block:
    kind: str  # "sent" (our side), "recv" (FreeSWITCH, one TCP read) or "note"
    data: bytes


def load_trace(name: str) -> list[Block]:
    """The blocks of a ``===== >>> SENT ... bytes=N =====`` capture."""
    data = (FS_TRACES / name).read_bytes()
    blocks, pos = [], 0
    while pos < len(data) - 1:
        m = _BLOCK.match(data, pos)
        assert m, f"{name}: unparsable at {pos}"
        kind = {b">>> SENT": "sent", b"<<< RECV": "recv"}.get(m.group(1), "note")
        if kind == "note":
            end = data.find(b"\n=====", m.end())
            end = len(data) if end < 0 else end
        else:
            end = m.end() + int(m.group(2))
        blocks.append(Block(kind, data[m.end():end]))
        pos = end
    return blocks


def load_repr_trace(name: str) -> list[Block]:
    """The ``<<< b'...'`` / ``>>> '...'`` capture format (inbound_auth_api_status.txt)."""
    blocks = []
    for line in (FS_TRACES / name).read_text().splitlines():
        if line.startswith("<<< "):
            blocks.append(Block("recv", ast.literal_eval(line[4:])))
        elif line.startswith(">>> "):
            blocks.append(Block("sent", ast.literal_eval(line[4:]).encode()))
    return blocks


def recv_stream(blocks: list[Block]) -> bytes:
    return b"".join(b.data for b in blocks if b.kind == "recv")


def recv_sizes(blocks: list[Block]) -> list[int]:
    return [len(b.data) for b in blocks if b.kind == "recv"]


def events(blocks: list[Block]) -> list[dict[str, str]]:
    """Every event FreeSWITCH sent, as {header: url-encoded value}."""
    return [dict(parse_event_body(body)) for _, body in split_frames(recv_stream(blocks))
            if body.startswith(b"Event-Name")]


@dataclass
class Captured:
    """The values one outbound capture fixes: what the simulator is parameterised with."""

    uuid: str
    peer_uuid: str
    session_id: int
    start_us: int
    steps: list[int]
    sequence: int
    core_uuid: str
    hostname: str
    ipv4: str
    ipv6: str
    socket_arg: str
    app_uuids: list[str]
    socket_app_uuid: str
    park_after: int  # how many commands were answered before CHANNEL_PARK arrived
    commands: int


def captured(blocks: list[Block]) -> Captured:
    first = recv_stream(blocks)[:recv_sizes(blocks)[0]].decode()
    data = dict(line.split(": ", 1) for line in first.split("\n") if ": " in line)
    evs = events(blocks)
    start = int(data["Event-Date-Timestamp"])
    steps: list[int] = []
    for ev in evs:
        ts = int(ev["Event-Date-Timestamp"])
        if ts != start and ts not in steps:
            steps.append(ts)
    apps = list(dict.fromkeys(ev["Application-UUID"] for ev in evs
                              if ev["Event-Name"] == "CHANNEL_EXECUTE"))
    sent_before_park = 0
    for block in blocks:
        if block.kind == "sent":
            sent_before_park += 1
        elif block.kind == "recv" and b"Event-Name: CHANNEL_PARK" in block.data:
            break
    return Captured(
        uuid=data["Unique-ID"], peer_uuid=data["variable_other_loopback_leg_uuid"],
        session_id=int(data["variable_session_id"]), start_us=start, steps=steps,
        sequence=int(data["Event-Sequence"]), core_uuid=data["Core-UUID"],
        hostname=data["FreeSWITCH-Hostname"], ipv4=data["FreeSWITCH-IPv4"],
        ipv6=unquote(data["FreeSWITCH-IPv6"]),
        socket_arg=unquote(data["variable_current_application_data"]), app_uuids=apps,
        socket_app_uuid=next(ev["Application-UUID"] for ev in evs if ev.get("Application") == "socket"),
        park_after=sent_before_park,
        commands=sum(1 for b in blocks if b.kind == "sent" and not b.data.startswith(b"exit")))


def switch_for(cap: Captured, extra_steps: tuple[int, ...] = (), extra_uuids: tuple[str, ...] = ()
               ) -> FreeSwitch:
    """A FreeSwitch set to the capture's identity, clock and sequence (CHANNEL_CREATE of both
    loopback legs and 8 hidden events precede CHANNEL_DATA)."""
    return FreeSwitch(hostname=cap.hostname, core_uuid=cap.core_uuid, ipv4=cap.ipv4, ipv6=cap.ipv6,
                      clock=ScriptedClock(cap.start_us, [*cap.steps, *extra_steps]),
                      event_sequence=cap.sequence - 10,
                      uuid_factory=iter([*extra_uuids, *cap.app_uuids]).__next__)


def call_for(cap: Captured, sw: FreeSwitch, port: int, tmp_path: Path, **kw: Any) -> FsCall:
    return FsCall("127.0.0.1", port, switch=sw, uuid=cap.uuid, session_id=cap.session_id,
                  peer_uuid=cap.peer_uuid, socket_arg=cap.socket_arg,
                  socket_app_uuid=cap.socket_app_uuid, park_after=cap.park_after,
                  apps_after=cap.commands, record_path=lambda p: str(tmp_path / Path(p).name),
                  **kw)


# --------------------------------------------------------------------------- socket helpers


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A plain TCP server standing in for our outbound ESL server."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(5.0)
    yield srv
    srv.close()


def read_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(n - len(buf))
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    buf = bytearray()
    while marker not in buf and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the peer closes (bounded)."""
    return read_until(sock, b"\x00never\x00", timeout)


def replay(sock: socket.socket, blocks: list[Block], timeout: float = 10.0) -> bytes:
    """Send the client's blocks, reading FreeSWITCH's blocks in between, in capture order."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    for block in blocks:
        if block.kind == "sent":
            sock.sendall(block.data)
        elif block.kind == "recv":
            got += read_exact(sock, len(block.data), deadline)
    return bytes(got)


def first_difference(a: bytes, b: bytes) -> str:
    i = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return f"at byte {i}: got {a[i - 80:i + 80]!r}\nwant {b[i - 80:i + 80]!r}"


# --------------------------------------------------------------------------- capture replays

OUTBOUND = ["outbound_socket_full_call.txt", "outbound_socket_linger_no_exit.txt",
            "outbound_socket_record_before_answer.txt"]


@pytest.mark.parametrize("trace", OUTBOUND)
def test_outbound_socket_replays_the_capture_byte_for_byte(trace, listener, tmp_path):
    blocks = load_trace(trace)
    cap = captured(blocks)
    call = call_for(cap, switch_for(cap), listener.getsockname()[1], tmp_path,
                    chunking=Chunking.sizes(recv_sizes(blocks)), write_gap=0.0).start(15)
    conn, _ = listener.accept()
    with conn:
        got = replay(conn, blocks)
        if trace.endswith("no_exit.txt"):
            time.sleep(0.1)  # FreeSWITCH keeps the lingering socket open; we close it
        else:
            assert read_all(conn, 2.0) == b""  # ... or FreeSWITCH closes it after `exit`
    result = call.join(5)
    want = recv_stream(blocks)
    assert got == want, first_difference(got, want)
    assert result.writes == [b.data for b in blocks if b.kind == "recv"]
    assert result.error is None

    assert [a.name for a in result.apps] == [m.group(1).decode() for m in re.finditer(
        rb"execute-app-name: (\w+)", b"".join(b.data for b in blocks if b.kind == "sent"))]
    assert result.answered and result.hangup_cause == "NORMAL_CLEARING"
    assert result.hangup_source == "hangup_app"
    assert result.linger and result.linger_notice_sent
    assert result.recordings[0].path == "/tmp/x.wav" and result.recordings[0].size == 32044
    assert (tmp_path / "x.wav").stat().st_size == 32044  # "record file /tmp/x.wav ... 32044 bytes"
    if trace.endswith("no_exit.txt"):
        assert result.closed_by == "peer" and not result.exit_received
    else:
        assert result.exit_received and result.disconnect_notice_sent
        assert result.closed_by == "freeswitch"


def test_a_call_run_in_the_callers_thread_replays_the_capture_too(listener, tmp_path):
    """``run_here`` (the benchmark's: no thread of the call's own) speaks the same bytes."""
    blocks = load_trace(OUTBOUND[0])
    cap = captured(blocks)
    call = call_for(cap, switch_for(cap), listener.getsockname()[1], tmp_path,
                    chunking=Chunking.sizes(recv_sizes(blocks)), write_gap=0.0)
    results = []
    caller = threading.Thread(target=lambda: results.append(call.run_here(15)))
    caller.start()
    conn, _ = listener.accept()
    with conn:
        got = replay(conn, blocks)
        assert read_all(conn, 2.0) == b""
    caller.join(5)
    want = recv_stream(blocks)
    assert got == want, first_difference(got, want)
    assert results[0].writes == [b.data for b in blocks if b.kind == "recv"]
    assert results[0].error is None and results[0].exit_received and call.done
    with pytest.raises(RuntimeError):
        call.run_here(1)  # once only, like start()


def test_inbound_listener_sees_the_same_call_byte_for_byte(listener, tmp_path):
    """inbound_events_same_call.txt and outbound_socket_full_call.txt are one call: the
    inbound client originates it, the outbound client drives it; both views must match."""
    inbound = load_trace("inbound_events_same_call.txt")
    outbound = load_trace("outbound_socket_full_call.txt")
    cap = captured(outbound)
    job_match = re.search(rb"Job-UUID: (\S+)", recv_stream(inbound))
    assert job_match
    job = job_match.group(1).decode()
    a_leg_end = next(int(e["Event-Date-Timestamp"]) for e in events(inbound)
                     if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and e["Unique-ID"] == cap.peer_uuid)
    sw = switch_for(cap, extra_steps=(a_leg_end,), extra_uuids=(job,))
    calls: list[FsCall] = []

    def originate(arg: str):
        assert arg == "loopback/1001/default &park"
        calls.append(call_for(cap, sw, listener.getsockname()[1], tmp_path,
                              chunking=Chunking.sizes(recv_sizes(outbound)), write_gap=0.0).start(15))
        return calls[0].channel  # originate completes when this channel answers

    sw.originate_handler = originate
    outbound_got: list[bytes] = []

    def outbound_client() -> None:
        conn, _ = listener.accept()
        with conn:
            outbound_got.append(replay(conn, outbound))
            read_all(conn, 2.0)

    client = threading.Thread(target=outbound_client, daemon=True)
    client.start()
    with FsEventSocketServer(sw, chunking=lambda: Chunking.sizes(recv_sizes(inbound)),
                             write_gap=0.0) as fs, socket.create_connection(fs.address, 5) as c:
        got = replay(c, inbound)
        assert [cmd.text for cmd in fs.commands] == [
            "auth ClueCon",
            "event plain CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE RECORD_START RECORD_STOP",
            "bgapi originate loopback/1001/default &park"]
    client.join(10)
    assert got == recv_stream(inbound), first_difference(got, recv_stream(inbound))
    assert outbound_got == [recv_stream(outbound)]
    assert calls[0].join(5).writes == [b.data for b in outbound if b.kind == "recv"]


def test_inbound_auth_api_status_version_exit_capture():
    blocks = load_repr_trace("inbound_auth_api_status.txt")
    sw = FreeSwitch(uptime_us=55_299_741)  # "55 seconds, 299 milliseconds, 741 microseconds"
    with FsEventSocketServer(sw, chunking=lambda: Chunking.sizes(recv_sizes(blocks))) as fs, \
            socket.create_connection(fs.address, 5) as c:
        got = replay(c, blocks)
        assert read_all(c, 2.0) == b""  # closed after the goodbye
    assert got == recv_stream(blocks), first_difference(got, recv_stream(blocks))


def test_default_chunking_shares_reads_and_splits_an_event(listener, tmp_path):
    """Without Chunking.sizes the stream is the same; the writes show both phenomena the
    README names: several events in one write and one event split across two."""
    blocks = load_trace("outbound_socket_full_call.txt")
    cap = captured(blocks)
    call = call_for(cap, switch_for(cap), listener.getsockname()[1], tmp_path).start(15)
    conn, _ = listener.accept()
    with conn:
        got = replay(conn, blocks)
    result = call.join(5)
    assert got == recv_stream(blocks)
    assert any(w.count(b"Content-Type: text/event-plain") >= 2 for w in result.writes)
    assert any(w.endswith(b"Content-Type: text/event-plain\n\n") for w in result.writes)


# --------------------------------------------------------------------------- wire format


def test_url_encoding_matches_switch_url_encode():
    assert url_encode("+OK\n") == "%2BOK%0A"  # capture: Reply-Text of the connect reply
    assert url_encode("silence_stream://2000") == "silence_stream%3A//2000"  # capture
    assert url_encode("Tue, 24 Nov 2026 00:31:35 GMT") == "Tue,%2024%20Nov%202026%2000%3A31%3A35%20GMT"
    assert url_encode('"Outbound Call" <default>') == "%22Outbound%20Call%22%20%3Cdefault%3E"
    assert url_encode("50%25 a=b") == "50%25%20a%3Db"  # valid %XX kept, '=' encoded
    assert url_encode("张") == "%E5%BC%A0"
    for value in ("+OK\n", "50%25 a=b", "张", "%4", "%", "%4g", "a%41%", "%aF", "%4a", "%\x7f7"):
        assert url_encode(value) == url_encode_by_byte(value)


@settings(max_examples=400)
@given(st.text(alphabet=st.sampled_from(['%', 'a', 'F', '4', 'g', ' ', '\n', '"', '\x7f', '张',
                                          ':', '=', '/', '\\', '|', '~']), max_size=12))
def test_the_fast_url_encoder_escapes_as_the_byte_model(value: str) -> None:
    """The pattern the load generator uses escapes exactly what switch_url_encode()'s loop
    does: unsafe and non-printable bytes, and a '%' unless two upper-case hex digits follow."""
    assert url_encode(value) == url_encode_by_byte(value)


# --------------------------------------------------------------------------- outbound behaviours


class Client:
    """A minimal outbound ESL server connection for the behaviour tests."""

    def __init__(self, listener: socket.socket) -> None:
        self.sock, _ = listener.accept()
        self.buf = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n\n")

    def frame(self, timeout: float = 5.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + timeout
        while True:
            end = self.buf.find(b"\n\n")
            if end >= 0:
                head = dict(line.split(": ", 1) for line in self.buf[:end].decode().split("\n"))
                length = int(head.get("Content-Length", "0"))
                if len(self.buf) >= end + 2 + length:
                    body = self.buf[end + 2:end + 2 + length]
                    self.buf = self.buf[end + 2 + length:]
                    return head, body
            chunk = read_exact(self.sock, 1, deadline) if time.monotonic() < deadline else b""
            if not chunk:
                raise TimeoutError(f"no complete frame; buffered {self.buf[:200]!r}")
            self.buf += chunk + self._available()

    def _available(self) -> bytes:
        self.sock.settimeout(0.001)
        try:
            return self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return b""

    def command(self, text: str) -> dict[str, str]:
        self.send(text)
        return self.frame()[0]

    def event(self, name: str, timeout: float = 5.0, **match: str) -> dict[str, str]:
        """The next event called ``name`` whose headers have the ``match`` values."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head, body = self.frame(max(0.01, deadline - time.monotonic()))
            if head.get("Content-Type") == "text/event-plain":
                ev = {k: unquote(v) for k, v in parse_event_body(body)}
                if ev["Event-Name"] == name and all(ev.get(k) == v for k, v in match.items()):
                    return ev
        raise TimeoutError(name)

    def execute(self, app: str, arg: str | None = None) -> dict[str, str]:
        text = f"sendmsg\ncall-command: execute\nexecute-app-name: {app}"
        return self.command(text + (f"\nexecute-app-arg: {arg}" if arg else ""))

    def close(self) -> None:
        self.sock.close()


def test_connect_reply_carries_the_call_parameters(listener):
    profile = CallProfile(caller_id_number="13800138000", caller_id_name="Li Lei",
                          destination_number="+8610123", hide_number=True,
                          variables={"callwarden_tenant": "acme", "callwarden_trunk": "t1",
                                     "callwarden_campaign": "c-9", "callwarden_purpose": "marketing",
                                     "sip_h_X-Campaign": "c 9", "effective_caller_id_number": "95555"})
    call = FsCall("127.0.0.1", listener.getsockname()[1], profile=profile).start(10)
    c = Client(listener)
    head = {k: unquote(v) for k, v in c.command("connect").items()}
    assert list(head)[-4:] == ["Content-Type", "Reply-Text", "Socket-Mode", "Control"]
    assert head["Reply-Text"] == "+OK\n" and head["Unique-ID"] == call.uuid
    assert head["Caller-Caller-ID-Number"] == "13800138000" and head["Caller-Caller-ID-Name"] == "Li Lei"
    assert head["Channel-Caller-ID-Name"] == "Li Lei"
    assert head["Caller-Destination-Number"] == "+8610123"
    assert head["Caller-Privacy-Hide-Number"] == "true" and head["Caller-Screen-Bit"] == "true"
    assert head["Channel-Name"] == "loopback/+8610123-b" and head["Answer-State"] == "ringing"
    assert head["variable_callwarden_tenant"] == "acme" and head["variable_sip_h_X-Campaign"] == "c 9"
    keys = list(head)
    assert keys.index("variable_effective_caller_id_number") < keys.index(
        "variable_current_application_data") < keys.index("variable_socket_host")
    c.close()
    assert call.join(5).closed_by == "peer"


def test_commands_replies_and_transcript(listener, tmp_path):
    # On a whole second: billsec is a difference of epoch seconds, so a call that started in
    # the last milliseconds of one would bill 1 (seen once in CI).
    switch = FreeSwitch(clock=VirtualClock(start_us=int(time.time()) * 1_000_000))
    call = FsCall("127.0.0.1", listener.getsockname()[1], switch=switch, loopback_peer=False).start(10)
    c = Client(listener)
    c.command("connect")
    assert c.command("myevents")["Reply-Text"] == "+OK Events Enabled"
    assert c.command("myevents")["Reply-Text"] == "-ERR aready enabled."  # sic (source)
    assert c.command("event plain RECORD_START RECORD_STOP")["Reply-Text"] == \
        "+OK event listener enabled plain"
    assert c.command("event plain NOPE")["Reply-Text"] == "-ERR no keywords supplied"
    assert c.command("filter Unique-ID " + call.uuid)["Reply-Text"] == \
        f"+OK filter added. [Unique-ID]=[{call.uuid}]"
    assert c.command("linger 30")["Reply-Text"] == "+OK will linger 30 seconds"
    assert c.command("nolinger")["Reply-Text"] == "+OK will not linger"
    assert c.command("linger")["Reply-Text"] == "+OK will linger"
    assert c.command("getvar socket_host")["Reply-Text"] == "127.0.0.1"
    assert c.command("getvar nope")["Reply-Text"] == "-ERR command not found"  # sic (source)
    assert c.command("resume")["Reply-Text"] == "+OK"
    assert c.command("bogus")["Reply-Text"] == "-ERR command not found"
    assert c.execute("set", "callwarden_decision=allow")["Reply-Text"] == "+OK"
    assert c.execute("export", "callwarden_id=42")["Reply-Text"] == "+OK"
    c.send("sendmsg\ncall-command: execute\nexecute-app-name: answer\nevent-lock: true\n"
           "Event-UUID: 11111111-2222-3333-4444-555555555555")
    assert c.frame()[0]["Reply-Text"] == "+OK"
    assert c.execute("record_session", str(tmp_path / "r.wav"))["Reply-Text"] == "+OK"
    executed = c.event("CHANNEL_EXECUTE", Application="answer")
    assert executed["Application-UUID"] == "11111111-2222-3333-4444-555555555555"
    rec = c.event("RECORD_START")
    assert rec["Record-File-Path"] == str(tmp_path / "r.wav")
    assert rec["variable_callwarden_decision"] == "allow" and rec["variable_socket_resume"] == "true"
    assert rec["variable_export_vars"] == "callwarden_id"
    c.send("sendmsg\ncall-command: hangup\nhangup-cause: CALL_REJECTED")
    hup = c.event("CHANNEL_HANGUP")
    assert hup["Hangup-Cause"] == "CALL_REJECTED"
    done = c.event("CHANNEL_HANGUP_COMPLETE")
    assert done["variable_hangup_cause_q850"] == "21" and done["variable_billsec"] == "0"
    head, _ = c.frame()
    assert head["Content-Disposition"] == "linger" and head["Linger-Time"] == "-1"
    assert c.command("exit")["Reply-Text"] == "+OK bye"
    head, body = c.frame()
    assert head["Content-Disposition"] == "disconnect" and body == GOODBYE.encode()
    c.close()
    r = call.join(5)
    assert r.command_names[:3] == ["connect", "myevents", "myevents"]
    assert [a.name for a in r.apps] == ["set", "export", "answer", "record_session"]
    assert r.variables_set == {"callwarden_decision": "allow", "callwarden_id": "42"}
    assert r.exported == ["callwarden_id"]
    assert r.resume_sent and r.socket_resume and not r.resumed
    assert r.hangup_cause == "CALL_REJECTED" and r.hangup_source == "sendmsg"
    assert r.recordings[0].file_exists and r.recordings[0].size > 44
    assert r.events_sent.count("CHANNEL_EXECUTE_COMPLETE") == 5  # four apps + socket
    assert r.exit_received and r.disconnect_notice_sent
    assert r.apps[2].event_uuid == "11111111-2222-3333-4444-555555555555"


def test_uuid_setvar_multi_sets_and_unsets_as_mod_commands_does(listener):
    """``api uuid_setvar_multi <uuid> a=1;b=;c`` (source: mod_commands.c): each item set, an
    empty value or no ``=`` unsets, ``+OK`` once any was set; an unknown channel gets the error
    and then the usage line; no space after the uuid: no output (``-ERR no reply``)."""
    call = FsCall("127.0.0.1", listener.getsockname()[1], loopback_peer=False).start(10)
    c = Client(listener)
    c.command("connect")
    c.send(f"api uuid_setvar {call.uuid} gone_soon x")
    assert c.frame()[1] == b"+OK\n"
    c.send(f"api uuid_setvar_multi {call.uuid} a=1;b=two=2;gone_soon=;c")
    assert c.frame()[1] == b"+OK\n"
    c.send(f"api uuid_setvar_multi {call.uuid} =x")
    assert c.frame()[1] == b"-ERR No variable specified\n" + SETVAR_MULTI_USAGE.encode()
    c.send("api uuid_setvar_multi nosuch a=1")
    assert c.frame()[1] == b"-ERR No such channel!\n" + SETVAR_MULTI_USAGE.encode()
    c.send(f"api uuid_setvar_multi {call.uuid}")
    assert c.frame()[1] == b"-ERR no reply\n"
    assert c.command("exit")["Reply-Text"] == "+OK bye"
    c.close()
    r = call.join(5)
    assert r.variables_set == {"gone_soon": None, "a": "1", "b": "two=2", "c": None}


def test_each_command_knows_when_its_bytes_arrived(listener):
    """Commands that came in one write arrived together, whenever each was parsed (the bench
    times a decision by its command's arrival, not by the simulator's turn to parse it)."""
    call = FsCall("127.0.0.1", listener.getsockname()[1]).start(10)
    c = Client(listener)
    c.command("connect")
    time.sleep(0.05)
    c.send("myevents\n\nlinger\n\ngetvar socket_host")  # one write, three commands
    for _ in range(3):
        c.frame()
    c.command("exit")
    c.close()
    first, *rest = call.join(5).commands
    together = rest[:3]
    assert [cmd.text for cmd in together] == ["myevents", "linger", "getvar socket_host"]
    assert len({cmd.arrived for cmd in together}) == 1
    assert first.arrived + 0.04 < together[0].arrived <= together[0].at <= together[2].at
    assert together[2].arrived < together[2].at


def test_without_linger_freeswitch_says_goodbye_and_closes(listener):
    call = FsCall("127.0.0.1", listener.getsockname()[1]).start(10)
    c = Client(listener)
    c.command("connect")
    c.command("myevents")
    c.execute("hangup", "USER_BUSY")
    assert c.event("CHANNEL_HANGUP")["Hangup-Cause"] == "USER_BUSY"
    assert c.event("CHANNEL_HANGUP_COMPLETE")["variable_last_arg"] == "USER_BUSY"
    head, body = c.frame()
    assert head["Content-Disposition"] == "disconnect" and body == GOODBYE.encode()
    assert read_all(c.sock, 2.0) == b""
    r = call.join(5)
    assert r.hangup_cause == "USER_BUSY" and not r.linger_notice_sent and r.closed_by == "freeswitch"


def test_far_end_hangup_and_socket_close_without_resume(listener):
    call = FsCall("127.0.0.1", listener.getsockname()[1], far_end_hangup_after_app="answer",
                  far_end_cause="ORIGINATOR_CANCEL").start(10)
    c = Client(listener)
    c.command("connect")
    c.command("myevents")
    c.command("linger")
    c.execute("answer")
    c.execute("playback", "silence_stream://5000")  # queued; never runs: the caller is gone
    assert c.event("CHANNEL_HANGUP")["Hangup-Cause"] == "ORIGINATOR_CANCEL"
    c.event("CHANNEL_HANGUP_COMPLETE")
    assert c.frame()[0]["Content-Disposition"] == "linger"
    c.close()
    r = call.join(5)
    assert [a.name for a in r.apps] == ["answer"] and r.hangup_source == "far_end"

    second = FsCall("127.0.0.1", listener.getsockname()[1]).start(10)
    c = Client(listener)
    c.command("connect")
    c.close()  # gone without `resume`: FreeSWITCH hangs the call up
    r = second.join(5)
    assert r.hangup_source == "socket_closed" and not r.resumed


def test_resume_lets_the_call_continue(listener):
    call = FsCall("127.0.0.1", listener.getsockname()[1]).start(10)
    c = Client(listener)
    c.command("connect")
    c.command("resume")
    c.command("exit")
    c.close()
    r = call.join(5)
    assert r.resumed and r.hangup_cause is None and r.resume_sent
    with call.sw.lock:
        assert call.uuid in call.sw.channels  # still up, back in the dialplan


def test_record_session_failure_and_record_before_answer(listener, tmp_path):
    bad = str(tmp_path / "nope.wav")
    call = FsCall("127.0.0.1", listener.getsockname()[1], record_fails=[bad]).start(10)
    c = Client(listener)
    c.command("connect")
    c.command("myevents")
    c.command("event plain RECORD_START RECORD_STOP")
    c.execute("record_session", bad)
    early = c.event("CHANNEL_PROGRESS_MEDIA")  # media is needed: pre-answer
    assert early["Answer-State"] == "early"
    assert c.event("CHANNEL_EXECUTE_COMPLETE")["Application"] == "record_session"
    c.execute("hangup")
    c.event("CHANNEL_HANGUP_COMPLETE")
    c.close()
    r = call.join(5)
    assert r.recordings[0].failed and not (tmp_path / "nope.wav").exists()
    assert r.pre_answered and not r.answered
    assert "RECORD_START" not in r.events_sent


@pytest.mark.parametrize("behaviour", list(Misbehaviour)[1:])
def test_misbehaviours(behaviour, listener):
    call = FsCall("127.0.0.1", listener.getsockname()[1], misbehaviour=behaviour).start(3)
    c = Client(listener)
    if behaviour is not Misbehaviour.CLOSE_AFTER_TCP:
        c.send("connect")
    if behaviour in (Misbehaviour.TRUNCATED_EVENT, Misbehaviour.BAD_CONTENT_LENGTH):
        c.frame()
        c.send("myevents")
        c.frame()
        c.send("sendmsg\ncall-command: execute\nexecute-app-name: answer")
    data = read_all(c.sock, 1.0)
    c.close()
    r = call.join(5)
    assert r.error is None
    if behaviour is Misbehaviour.SILENT:
        assert data == b"" and r.command_names == ["connect"]
    elif behaviour is Misbehaviour.GARBAGE:
        assert data.startswith(b"\x16\x03")
    elif behaviour is Misbehaviour.TRUNCATED_REPLY:
        assert data.startswith(b"Event-Name: CHANNEL_DATA") and not data.endswith(b"\n\n")
    elif behaviour is Misbehaviour.TRUNCATED_EVENT:
        assert data.count(b"Content-Length:") == 1 and r.closed_by == "freeswitch"
        head, _, body = data[data.index(b"Content-Length:"):].partition(b"\n\n")
        assert int(head.split(b"\n")[0].split(b": ")[1]) > len(body)
    elif behaviour is Misbehaviour.BAD_CONTENT_LENGTH:
        first = re.search(rb"Content-Length: (\d+)\nContent-Type: text/event-plain\n\n", data)
        assert first and int(first.group(1)) != data[first.end():].find(b"\n\nContent-Length") + 2
    else:
        assert data == b"" and r.closed_by == "freeswitch"


def test_no_connect_within_the_limit_gets_goodbye(listener):
    call = FsCall("127.0.0.1", listener.getsockname()[1], connect_timeout=0.3).start(5)
    c = Client(listener)
    head, body = c.frame()
    assert head["Content-Disposition"] == "disconnect" and body == GOODBYE.encode()
    c.close()
    assert call.join(5).disconnect_notice_sent


# --------------------------------------------------------------------------- inbound behaviours


def inbound_client(fs: FsEventSocketServer, password: str = "ClueCon") -> Client:
    c = Client.__new__(Client)
    c.sock, c.buf = socket.create_connection(fs.address, 5), b""
    assert c.frame()[0] == {"Content-Type": "auth/request"}
    assert c.command(f"auth {password}")["Reply-Text"] in ("+OK accepted", "-ERR invalid")
    return c


def test_inbound_bad_password_then_goodbye():
    with FsEventSocketServer(password="secret") as fs:
        c = Client.__new__(Client)
        c.sock, c.buf = socket.create_connection(fs.address, 5), b""
        c.frame()
        assert c.command("api status")["Reply-Text"] == "-ERR command not found"
        assert c.command("auth wrong")["Reply-Text"] == "-ERR invalid"
        head, body = c.frame()
        assert head == {"Content-Type": "text/disconnect-notice", "Content-Length": "67"}
        assert body == GOODBYE.encode() and read_all(c.sock, 1.0) == b""
        assert [x.text for x in fs.commands] == ["api status", "auth wrong"]


def test_inbound_events_kill_and_caller_id_change(tmp_path):
    with FsEventSocketServer() as fs:
        c = inbound_client(fs)
        assert c.command("event plain ALL")["Reply-Text"] == "+OK event listener enabled plain"
        ch = fs.switch.new_call(CallProfile(caller_id_number="13800138000", destination_number="95588"),
                                loopback_peer=False)
        ch.create()
        assert c.event("CHANNEL_CREATE")["Caller-Caller-ID-Number"] == "13800138000"
        ch.answer()
        ch.start_recording(str(tmp_path / "in.wav"))
        assert c.event("RECORD_START")["Record-File-Path"] == str(tmp_path / "in.wav")
        ch.update_caller_id("Han Meimei", "13900139000")
        upd = c.event("CALL_UPDATE")
        assert upd["Direction"] == "RECV" and upd["Caller-Caller-ID-Number"] == "13900139000"
        assert upd["Caller-Orig-Caller-ID-Number"] == "13800138000"
        c.send("api show channels")
        head, body = c.frame()
        lines = body.decode().split("\n")
        assert lines[0].startswith("uuid,direction,created,created_epoch,name,state,cid_name")
        assert lines[1].startswith(ch.uuid + ",inbound,") and body.endswith(b"\n\n1 total.\n")
        c.send("api show calls as json")
        rows = json.loads(c.frame()[1])
        assert rows["row_count"] == 1 and rows["rows"][0]["cid_num"] == "13900139000"
        c.send(f"api uuid_kill {ch.uuid} CALL_REJECTED")
        assert c.frame()[1] == b"+OK\n"
        assert c.event("CHANNEL_HANGUP")["Hangup-Cause"] == "CALL_REJECTED"
        done = c.event("CHANNEL_HANGUP_COMPLETE")
        assert done["variable_hangup_cause"] == "CALL_REJECTED" and done["variable_record_ms"]
        c.send(f"api uuid_kill {ch.uuid}")
        assert c.frame()[1] == b"-ERR No Such Channel!\n"
        c.send("api show channels")
        assert c.frame()[1] == b"\n0 total.\n"
        c.send("api show channels as json")
        assert c.frame()[1] == b'{"row_count":0}'
        c.send("api nosuch thing")
        assert c.frame()[1] == b"-ERR nosuch Command not found!\n"
        c.close()


def test_inbound_bgapi_background_job():
    with FsEventSocketServer() as fs:
        c = inbound_client(fs)
        c.command("event plain BACKGROUND_JOB")
        head = c.command("bgapi status")
        job = head["Job-UUID"]
        assert head["Reply-Text"] == f"+OK Job-UUID: {job}"
        head, body = c.frame()
        ev_headers = dict(parse_event_body(body))
        assert ev_headers["Job-UUID"] == job and ev_headers["Job-Command"] == "status"
        assert body.split(b"\n\n", 1)[1].startswith(b"UP 0 years")
        c.close()


def test_inbound_heartbeat_names_the_switch():
    """What a listener learns the switch's name from when no call is up (FreeSWITCH sends it
    every 20 s; the simulator when the test says so)."""
    sw = FreeSwitch(hostname="pbx01", switchname="fs-a")
    with FsEventSocketServer(sw) as fs:
        c = inbound_client(fs)
        c.command("event plain HEARTBEAT")
        sw.heartbeat()
        head, body = c.frame()
        ev = dict(parse_event_body(body))
        assert head["Content-Type"] == "text/event-plain" and ev["Event-Name"] == "HEARTBEAT"
        assert (ev["FreeSWITCH-Switchname"], ev["FreeSWITCH-Hostname"]) == ("fs-a", "pbx01")
        assert ev["Event-Info"] == "System%20Ready" and ev["Session-Count"] == "0"  # url-encoded
        c.close()


def test_inbound_drop_refuse_and_reconnect():
    with FsEventSocketServer() as fs:
        c = inbound_client(fs)
        assert fs.drop_connections() == 1
        assert read_all(c.sock, 2.0) == b""
        fs.refuse(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(fs.address, 1).close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                c2 = inbound_client(fs)
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        old_core = fs.switch.core_uuid
        fs.switch.new_call(loopback_peer=False).create()
        fs.restart()  # FreeSWITCH restarted: connection cut, new Core-UUID, no channels
        assert read_all(c2.sock, 2.0) == b"" and fs.switch.core_uuid != old_core
        c3 = inbound_client(fs)
        c3.send("api status")
        assert b"\n0 session(s) since startup\n" in c3.frame()[1]
        assert c3.command("exit")["Reply-Text"] == "+OK bye"
        fs.wait_for_connections(3)
        assert [x.connection for x in fs.commands if x.text == "exit"] == [3]
        assert fs.errors == []


# --------------------------------------------------------------------------- greenswitch


def test_greenswitch_inbound_esl_against_the_server():
    gevent = pytest.importorskip("gevent")
    from greenswitch import InboundESL

    with FsEventSocketServer() as fs:
        esl = InboundESL(host=fs.host, port=fs.port, password="ClueCon", timeout=5)
        with gevent.Timeout(10):
            esl.connect()
            assert esl.send("api status").data.startswith("UP 0 years")
            seen = []
            esl.register_handle("CHANNEL_CREATE", seen.append)
            esl.send("event plain CHANNEL_CREATE")
            fs.switch.new_call(CallProfile(caller_id_number="13800138000"),
                               loopback_peer=False).create()
            while not seen:
                gevent.sleep(0.02)
            esl.stop()
        assert seen[0].headers["Caller-Caller-ID-Number"] == "13800138000"
        assert [c.text for c in fs.commands] == [
            "auth ClueCon", "api status", "event plain CHANNEL_CREATE", "exit"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_greenswitch_outbound_server_receives_a_call(tmp_path):
    """greenswitch's OutboundESLServer in this (not monkey-patched) process: its accept loop
    runs in a greenlet, the simulated call in a real thread. Port 0 is not usable (it would
    sys.exit), hence a free port."""
    gevent = pytest.importorskip("gevent")
    from greenswitch import OutboundESLServer

    seen: dict[str, object] = {}
    path = str(tmp_path / "g.wav")

    class App:
        def __init__(self, session):
            self.session = session

        def run(self):
            s = self.session
            seen["tenant"] = s.session_data.get("variable_callwarden_tenant")
            s.myevents()
            s.linger()
            s.call_command("set", "callwarden_decision=allow")
            s.call_command("answer")
            s.call_command("record_session", path)
            s.call_command("hangup", "NORMAL_CLEARING", block=True, response_timeout=5)

    port = free_port()
    server = OutboundESLServer(bind_address="127.0.0.1", bind_port=port, application=App)
    listen = gevent.spawn(server.listen)
    gevent.sleep(0.05)
    call = FsCall("127.0.0.1", port, profile=CallProfile(variables={"callwarden_tenant": "acme"}))
    call.start(10)
    deadline = time.monotonic() + 10
    while not call.done and time.monotonic() < deadline:
        gevent.sleep(0.02)
    server.stop()
    listen.join(timeout=2)
    r = call.join(1)
    assert seen == {"tenant": "acme"}
    assert r.command_names[:3] == ["connect", "myevents", "linger"]
    assert [a.name for a in r.apps] == ["set", "answer", "record_session", "hangup"]
    assert r.hangup_cause == "NORMAL_CLEARING" and r.linger_notice_sent and r.exit_received
    assert r.recordings[0].file_exists and r.variables_set == {"callwarden_decision": "allow"}


MONKEY_PATCHED = textwrap.dedent("""
    import gevent.monkey
    gevent.monkey.patch_all()
    import socket
    import gevent
    from greenswitch import InboundESL, OutboundESLServer
    from tests.sim.freeswitch import CallProfile, FsCall, FsEventSocketServer

    class App:
        def __init__(self, session):
            self.session = session

        def run(self):
            s = self.session
            s.myevents()
            s.linger()
            s.call_command("answer")
            s.call_command("hangup", "USER_BUSY", block=True, response_timeout=5)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with gevent.Timeout(20), FsEventSocketServer() as fs:
        esl = InboundESL(host=fs.host, port=fs.port, password="ClueCon")
        esl.connect()
        ends = []
        esl.register_handle("CHANNEL_HANGUP_COMPLETE", ends.append)
        esl.send("event plain CHANNEL_HANGUP_COMPLETE")
        server = OutboundESLServer(bind_address="127.0.0.1", bind_port=port, application=App)
        gevent.spawn(server.listen)
        gevent.sleep(0.1)
        result = FsCall("127.0.0.1", port, switch=fs.switch,
                        profile=CallProfile(caller_id_number="13800138000")).run(timeout=10)
        while len(ends) < 2:  # the B-leg's and the loopback A-leg's
            gevent.sleep(0.02)
        server.stop()
        esl.stop()
    assert result.hangup_cause == "USER_BUSY", result
    assert {e.headers["Hangup-Cause"] for e in ends} == {"USER_BUSY"}
    print("OK", [c.text for c in result.commands])
""")


def test_works_in_a_gevent_monkey_patched_process():
    """Product tests may patch; threading/socket then become cooperative and the simulator
    must still serve both sides (run in a child: patching cannot be undone here)."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", MONKEY_PATCHED], cwd=root, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK ['connect', 'myevents', 'linger', 'sendmsg', 'sendmsg', 'exit']")
