"""Bad FastAGI peers: the server drops them with one log line, never crashes, never spins,
keeps memory bounded, and keeps answering well-behaved calls meanwhile."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import pytest
from structlog.testing import capture_logs

from tests.agi.harness import FAST, rig, run
from tests.conftest import seed
from tests.sim.asterisk import AgiCall, Hostile


@pytest.fixture
def url(sqlite_url: str) -> str:
    seed(sqlite_url)
    return sqlite_url


def catch_loop_errors(errors: list[dict]) -> None:
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))


@pytest.mark.parametrize("mode", list(Hostile), ids=[m.value for m in Hostile])
def test_hostile_peer_is_dropped_with_one_log_line(make_settings, url, mode: Hostile) -> None:
    async def body() -> None:
        errors: list[dict] = []
        catch_loop_errors(errors)
        with capture_logs() as logs:
            async with rig(make_settings, url, with_ami=False) as r:
                started = time.monotonic()
                bad = asyncio.ensure_future(AgiCall(r.port, hostile=mode, timing=FAST).run(timeout=8))
                good = await r.agi_call().run(timeout=5)  # answered while the bad peer hangs on
                assert good.variables["CALLWARDEN_DECISION"] == "allow"
                assert time.monotonic() - started < 1.5  # not held up by the bad peer (2 s)
                result = await bad
                # dropped by the server, within the environment-block deadline (2 s)
                assert not result.timed_out and time.monotonic() - started < 3.5
                assert r.adapter.agi.active == 0
        dropped = [e for e in logs if e["event"] == "agi_bad_peer"]
        assert len(dropped) == 1 and "error" in dropped[0]
        assert not errors and not [e for e in logs if e["event"] == "agi_handler_error"]

    run(body())


async def raw_peer(port: int, send: bytes, *, read_for: float) -> tuple[bytes, float]:
    """Connect, send ``send``, read until the server closes; returns (received, seconds)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(send)
    received = b""
    try:
        async with asyncio.timeout(read_for):
            while data := await reader.read(4096):
                received += data
    finally:
        writer.close()
    return received, time.monotonic() - started


ENV = (b"agi_network: yes\nagi_network_script: outbound\nagi_request: agi://x/outbound\n"
       b"agi_channel: PJSIP/a-1\nagi_uniqueid: 1795480861.25\nagi_callerid: 95512\n"
       b"agi_callingpres: 0\nagi_context: agents\nagi_extension: 13800138000\n"
       b"agi_priority: 3\nagi_arg_1: 13800138000\n\n")


def test_peer_that_stops_answering_commands_hits_the_session_deadline(make_settings, url) -> None:
    """Asterisk never times out a connected FastAGI conversation: callwarden must."""

    async def body() -> None:
        with capture_logs() as logs:
            async with rig(make_settings, url, with_ami=False,
                           asterisk={"agi": {"session_timeout_s": 1}}) as r:
                received, took = await raw_peer(r.port, ENV, read_for=5)
        assert received.startswith(b'GET FULL VARIABLE "${CALLWARDEN_TENANT}|~|')
        assert 0.4 < took < 2.5  # route budget (0.5 s) + failure grace, far from the 5 s read
        failed = [e for e in logs if e["event"] == "agi_route_failed"]
        assert len(failed) == 1 and failed[0]["error"] == "timed out"

    run(body())


@pytest.mark.parametrize("reply", [b"BANANA\n", b"200 result=1 (\x00\xff)\n", b"9" * 5000 + b"\n",
                                   b"520-usage\n" + b"more\n" * 100])
def test_peer_answering_garbage_is_dropped(make_settings, url, reply: bytes) -> None:
    async def body() -> None:
        with capture_logs() as logs:
            async with rig(make_settings, url, with_ami=False) as r:
                received, took = await raw_peer(r.port, ENV + reply, read_for=5)
        assert took < 1.0
        assert [e["event"] for e in logs if e["event"].startswith("agi_bad")] == ["agi_bad_peer"]

    run(body())


async def garbage_peer(port: int, payload: bytes) -> bool:
    """Send ``payload`` and wait for the server to close or reset the connection; True if it
    did within 10 s.
    (The simulator's GARBAGE mode generates its bytes one by one, which is fine for one peer
    but would block the shared event loop for seconds with a hundred.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            writer.write(payload)
            await writer.drain()
            while await reader.read(65536):
                pass
        return True
    except ConnectionError:  # reset: the server aborted the connection
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


def rss() -> int:
    """Resident memory of this process, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def sample_rss(peak: list[int]) -> None:
    while True:
        peak.append(rss())
        await asyncio.sleep(0.02)


def test_hundreds_of_connections_at_once(make_settings, url) -> None:
    """300 connections at once, a third each silent, garbage and real calls: every real call is
    decided, bad peers are dropped, memory stays bounded and no exception escapes."""

    async def body() -> None:
        errors: list[dict] = []
        catch_loop_errors(errors)
        with capture_logs() as logs:
            async with rig(make_settings, url, with_ami=False, decision_timeout_ms=5000,
                           frequency={"per_day": 1000, "per_week": 7000}) as r:
                base = rss()
                peak = [base]
                sampler = asyncio.ensure_future(sample_rss(peak))
                garbage = os.urandom(256 * 1024)  # binary, NULs, no usable newline structure
                silent = [AgiCall(r.port, hostile=Hostile.SILENT, timing=FAST).run(timeout=10)
                          for _ in range(100)]
                noise = [garbage_peer(r.port, garbage) for _ in range(100)]
                good = [r.agi_call().run(timeout=15) for _ in range(100)]
                started = time.monotonic()
                results = await asyncio.gather(*good, *silent)
                dropped = await asyncio.gather(*noise)
                took = time.monotonic() - started
                sampler.cancel()
                decided = Counter(x.variables.get("CALLWARDEN_REASONS", "none") or "allow"
                                  for x in results[:100])
                assert decided == {"allow": 100}, decided
                assert all(x.server_closed and not x.timed_out for x in results) and all(dropped)
                assert took < 10
                assert max(peak) - base < 64 * 1024 * 1024, "memory grew with the flood"
                assert r.adapter.agi.active == 0 and r.adapter.agi.served == 300
        assert not errors and not [e for e in logs if e["event"] == "agi_handler_error"]
        assert len([e for e in logs if e["event"] == "agi_bad_peer"]) == 200

    run(body(), timeout=90)


def test_idle_peers_do_not_spin_the_cpu(make_settings, url) -> None:
    async def body() -> None:
        async with rig(make_settings, url, with_ami=False) as r:
            conns = [await asyncio.open_connection("127.0.0.1", r.port) for _ in range(50)]
            await asyncio.sleep(0.1)
            cpu = time.process_time()
            await asyncio.sleep(1.0)
            assert time.process_time() - cpu < 0.3, "waiting on idle peers must cost nothing"
            for _, writer in conns:
                writer.close()

    run(body())


def test_connections_beyond_the_limit_are_closed_on_arrival(make_settings, url) -> None:
    async def body() -> None:
        from callwarden.agi import AsteriskAdapter
        from callwarden.service.enforcer import Enforcer
        from tests.agi.harness import asterisk_settings, fixed_clock

        settings = asterisk_settings(make_settings, url, ami_port=None)
        enforcer = Enforcer(settings)
        adapter = AsteriskAdapter(settings, enforcer, clock=fixed_clock(), agi_port=0, max_sessions=5)
        await adapter.start()
        try:
            with capture_logs() as logs:
                idle = [await asyncio.open_connection("127.0.0.1", adapter.agi_port) for _ in range(5)]
                await asyncio.sleep(0.1)
                extra = [AgiCall(adapter.agi_port, hostile=Hostile.SILENT, timing=FAST).run(timeout=5)
                         for _ in range(20)]
                started = time.monotonic()
                refused = await asyncio.gather(*extra)
                assert all(x.server_closed for x in refused) and time.monotonic() - started < 2
                assert adapter.agi.refused == 20
                for _, writer in idle:
                    writer.close()
                async with asyncio.timeout(5):
                    while adapter.agi.active:
                        await asyncio.sleep(0.05)
                ok = await AgiCall(adapter.agi_port, script="outbound", args=("13800138000",),
                                   variables={"CALLWARDEN_TENANT": "acme"}, callerid_num="95512",
                                   timing=FAST).run(timeout=5)
                assert ok.variables["CALLWARDEN_DECISION"] == "allow"
            assert len([e for e in logs if e["event"] == "agi_overloaded"]) == 1  # rate-limited
        finally:
            await adapter.stop()
            enforcer.engine.dispose()

    run(body())


def test_stop_lets_conversations_in_progress_finish(make_settings, url) -> None:
    """``serve`` stopping (SIGTERM) closes the port but finishes the calls already talking."""

    async def slow_asterisk(port: int, first_command: asyncio.Event) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(ENV)
        commands = []
        while line := await reader.readline():
            commands.append(line)
            first_command.set()
            await asyncio.sleep(0.05)  # a busy PBX: every reply takes a while
            writer.write(b"200 result=0\n")
        writer.close()
        return commands

    async def body() -> None:
        async with rig(make_settings, url, with_ami=False) as r:
            first = asyncio.Event()
            peer = asyncio.ensure_future(slow_asterisk(r.port, first))
            await asyncio.wait_for(first.wait(), 5)
            await asyncio.wait_for(r.adapter.stop(), 10)
            commands = await asyncio.wait_for(peer, 5)
            assert commands[-1].startswith(b"EXEC Hangup")  # denied (no tenant) and hung up
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", r.port)  # no longer listening

    run(body())
