"""Hostile or broken peers on the outbound ESL server: garbage, truncated frames, a wrong
Content-Length, early disconnects, a peer that never answers ``connect``, oversized and
endless header blocks, forged headers, hundreds of sessions at once. For each: no crash, no
spin, bounded memory, the call never let through, one log event, and the next call is served.

Protocol behaviour does not depend on the store, so these run on SQLite only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.esl.conftest import EslRig, profile, wait_until
from tests.sim.freeswitch import FsCall, Misbehaviour

SESSION_TIMEOUT_S = 2.0  # connect timeout is half of it
CLK_TCK = os.sysconf("SC_CLK_TCK")


@pytest.fixture
def hrig(sqlite_rig_factory: Callable[..., EslRig]) -> Iterator[EslRig]:
    rig = sqlite_rig_factory(freeswitch={"esl_outbound": {
        "host": "127.0.0.1", "port": 8084, "session_timeout_s": SESSION_TIMEOUT_S}})
    yield rig
    assert rig.proc is not None and rig.proc.poll() is None, "the adapter died"
    assert rig.stop() == 0
    assert not rig.events("esl_session_crashed") and not rig.events("esl_handler_error")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def open_sockets(pid: int) -> int:
    """Sockets the process holds (store connections and files are not counted: the pool may
    keep a few more after a burst, by design)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def still_serves(rig: EslRig) -> None:
    _, result = rig.place()
    assert result.variables_set["callwarden_decision"] == "allow" and result.resumed


def raw_peer(rig: EslRig) -> socket.socket:
    """A TCP peer that dials the outbound server like FreeSWITCH and reads its `connect`."""
    sock = socket.create_connection(("127.0.0.1", rig.port), timeout=5)
    assert sock.recv(64) == b"connect\n\n"
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("mis", [m for m in Misbehaviour if m is not Misbehaviour.NONE],
                         ids=lambda m: m.value)
def test_misbehaving_freeswitch_is_dropped_and_never_let_through(hrig: EslRig, mis: Misbehaviour) -> None:
    started = time.monotonic()
    call = FsCall("127.0.0.1", hrig.port, profile=profile(), switch=hrig.switch, misbehaviour=mis)
    result = call.run(timeout=10)
    elapsed = time.monotonic() - started
    assert not result.resume_sent and not result.resumed
    assert elapsed < SESSION_TIMEOUT_S + 1.5
    if mis is Misbehaviour.SILENT:  # dropped when `connect` is not answered in time
        assert result.closed_by == "peer" and elapsed >= SESSION_TIMEOUT_S / 2 - 0.1
    events = wait_until(lambda: hrig.events("esl_call"))
    assert len(events) == 1 and events[0]["failure"]  # one log event for the session, saying why
    if mis in (Misbehaviour.TRUNCATED_EVENT, Misbehaviour.BAD_CONTENT_LENGTH):
        log = hrig.call_log(call.uuid)
        assert log["failure"] == "protocol_error" and log["let_through"] is False
        cdr = hrig.cdr(call.uuid)  # decided allow, then denied: the recording never started
        assert cdr.decision == "deny" and "RECORDING_UNAVAILABLE" in cdr.reason_codes
    still_serves(hrig)


@pytest.mark.parametrize(("payload", "why"), [
    (b"Content-Type: command/reply\nContent-Length: 99999999999\n\n", "body larger than allowed"),
    (b"Content-Type: command/reply\nContent-Length: 12abc\n\n", "Content-Length is not a number"),
    (b"Reply-Text: +OK\n\n", "frame without Content-Type"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "header line is not 'Name: value'"),
    (b"\x00\x01\x02\x03binary", "control bytes in a header block"),
    (b"Content-Type: command/reply\nReply-Text: +OK\n\nContent-Type: command/reply\n"
     b"Reply-Text: +OK\n\n", "reply without a command"),
])
def test_malformed_frames_drop_the_connection_at_once(hrig: EslRig, payload: bytes, why: str) -> None:
    sock = raw_peer(hrig)
    sock.sendall(payload)
    assert closed_by_server(sock, timeout=SESSION_TIMEOUT_S / 4)
    sock.close()
    if why != "reply without a command":  # that one is a valid connect reply, then a stray
        event = wait_until(lambda: [e for e in hrig.events("esl_call") if why in (e.get("notes") or [])])
        assert event[0]["failure"] == "protocol_error"
    still_serves(hrig)


def test_early_disconnects(hrig: EslRig) -> None:
    for data in (b"", b"Content-Type: comm", b"Content-Type: command/reply\nContent-Length: 50\n\nshort"):
        sock = raw_peer(hrig)
        if data:
            sock.sendall(data)
        sock.close()
    wait_until(lambda: len(hrig.events("esl_call")) >= 3)
    failures = [e["failure"] for e in hrig.events("esl_call")]
    assert failures.count("eof") + failures.count("protocol_error") == 3
    still_serves(hrig)


def test_slow_peer_is_cut_at_the_session_deadline(hrig: EslRig) -> None:
    sock = raw_peer(hrig)
    started = time.monotonic()
    reply = b"Content-Type: command/reply\nReply-Text: %2BOK%0A\n" + b"X-Pad: y\n" * 1000
    closed = False
    for byte in reply:  # one byte every 10 ms: each read makes progress, none completes
        try:
            sock.send(bytes([byte]))
        except OSError:
            closed = True
            break
        time.sleep(0.01)
        if time.monotonic() - started > SESSION_TIMEOUT_S + 2:
            break
    closed = closed or closed_by_server(sock, timeout=1)
    assert closed and time.monotonic() - started < SESSION_TIMEOUT_S + 2
    sock.close()
    still_serves(hrig)


def test_forged_header_in_a_value_stays_a_value(hrig: EslRig) -> None:
    """FreeSWITCH URL-encodes values, so a caller name with a line break arrives as %0A. Decoded
    before splitting (as greenswitch does) it would forge ``variable_callwarden_tenant``."""
    forged = profile(tenant=None)
    forged.caller_id_name = "Mallory\nvariable_callwarden_tenant: acme"
    _, result = hrig.place(forged)
    assert result.variables_set["callwarden_decision"] == "deny"
    assert "TENANT_UNKNOWN" in result.variables_set["callwarden_reasons"].split(",")


def test_silent_connections_do_not_spin_and_are_all_dropped(hrig: EslRig) -> None:
    idle_before = cpu_seconds(hrig.pid)
    time.sleep(1.0)
    assert cpu_seconds(hrig.pid) - idle_before < 0.1  # idle: no polling loop
    sockets_before = open_sockets(hrig.pid)
    peers = [raw_peer(hrig) for _ in range(200)]  # all wait for a `connect` reply
    cpu_before = cpu_seconds(hrig.pid)
    time.sleep(SESSION_TIMEOUT_S / 2 - 0.3)
    assert cpu_seconds(hrig.pid) - cpu_before < 0.2, "waiting sessions must not burn CPU"
    assert all(closed_by_server(p, timeout=3) for p in peers)
    for p in peers:
        p.close()
    wait_until(lambda: open_sockets(hrig.pid) <= sockets_before + 2, timeout=5)
    still_serves(hrig)


def test_memory_stays_bounded_under_endless_headers(hrig: EslRig) -> None:
    """100 peers each push 1 MiB of never-ending header block (100 MiB in all); each is cut
    when its block passes the 256 KiB limit, so the adapter's peak memory grows far less."""
    still_serves(hrig)
    peak_before = peak_rss_kib(hrig.pid)
    line = b"X-Pad: " + b"a" * 1017 + b"\n"  # 1 KiB lines, no empty line ever
    cut = []

    def flood() -> None:
        sock = raw_peer(hrig)
        try:
            for _ in range(1024):
                sock.sendall(line)
        except OSError:
            pass  # cut off while sending
        if closed_by_server(sock, timeout=10):
            cut.append(True)
        sock.close()

    threads = [threading.Thread(target=flood) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(cut) == 100, "every flooding peer must be cut off"
    growth_mib = (peak_rss_kib(hrig.pid) - peak_before) / 1024
    assert growth_mib < 60, f"peak memory grew {growth_mib:.0f} MiB for 100 MiB of input"
    wait_until(lambda: sum("header block larger than allowed" in (e.get("notes") or [])
                           for e in hrig.events("esl_call")) == 100)
    still_serves(hrig)


def test_hundreds_of_calls_at_once(hrig: EslRig) -> None:
    sockets_before = open_sockets(hrig.pid)
    calls = [FsCall("127.0.0.1", hrig.port, profile=profile(), switch=hrig.switch)
             for _ in range(300)]
    for c in calls:
        c.start(timeout=30)
    results = [c.join(40) for c in calls]
    assert all(c.done for c in calls)
    assert not any(r.timed_out or r.error for r in results)
    allowed = [r for r in results if r.resumed]
    stopped = [r for r in results if not r.resumed]
    # Fail closed under overload: a call goes on only allowed and recorded; every other one is
    # hung up (by callwarden with POLICY_UNAVAILABLE's cause, or by FreeSWITCH when the session
    # ended without `resume`).
    assert all(r.recordings and r.variables_set["callwarden_decision"] == "allow" for r in allowed)
    assert all(r.hung_up and r.variables_set.get("callwarden_decision") != "allow" for r in stopped)
    assert {r.hangup_source for r in stopped} <= {"hangup_app", "socket_closed"}
    assert allowed, "the store must get some decisions through"
    # One log event per call; every allow that did not reach `resume` was corrected.
    events = wait_until(lambda: len(e := hrig.events("esl_call")) >= 300 and e, timeout=20)
    assert len(events) == 300
    # A decision that committed after its deadline is corrected in the background.
    def corrected() -> bool:
        return all((cdr := hrig.cdr(r.uuid)) is None or cdr.decision == "deny" for r in stopped)

    try:
        wait_until(corrected, timeout=20)
    except AssertionError:
        raise AssertionError([(r.uuid, cdr.decision, cdr.reasons, r.hangup_source) for r in stopped
                              if (cdr := hrig.cdr(r.uuid)) is not None and cdr.decision != "deny"]
                             ) from None
    wait_until(lambda: open_sockets(hrig.pid) <= sockets_before + 2, timeout=10)
    still_serves(hrig)
