"""/metrics and /healthz of the Asterisk side, scraped over real HTTP while the real FastAGI
server and AMI listener run against the simulated Asterisk (tests/sim) on a real store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import make_url

from callwarden.config import Settings
from callwarden.ops.service import Operations
from tests.agi.harness import CONSENTED, REFUSED, Rig, record_like_mixmonitor, rig, run
from tests.ops.helpers import free_port, health, samples, value


@asynccontextmanager
async def served(make_settings: Callable[..., Settings], url: str, port: int) -> AsyncIterator[Rig]:
    """The Asterisk rig with its /metrics and /healthz on ``port``, decisions counted."""
    async with rig(make_settings, url, metrics={"host": "127.0.0.1", "port": port}) as r:
        ops = Operations(r.settings)
        ops.instrument(r.enforcer)
        ops.watch_asterisk(r.adapter)
        assert ops.start() is not None
        try:
            yield r
        finally:
            ops.close()


async def _health(port: int) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(health, port)


async def _samples(port: int) -> dict:  # type: ignore[type-arg]
    return await asyncio.to_thread(samples, port)


async def _health_until(port: int, status: int, timeout: float = 10.0) -> dict[str, Any]:
    """Poll /healthz until it answers ``status`` (the report is cached for a second)."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await _health(port)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz stayed {code}: {json.dumps(body)}")
        await asyncio.sleep(0.1)


def test_decisions_sessions_and_ami_link_are_scraped(make_settings, seeded_url) -> None:
    port = free_port()

    async def body() -> None:
        async with served(make_settings, seeded_url, port) as r:
            record_like_mixmonitor(r.pbx)
            allowed = await r.agi_call(args=(CONSENTED,)).run(timeout=10)
            denied = await r.agi_call(args=(REFUSED,)).run(timeout=10)
            hidden = await r.agi_call(callerid_pres="prohib_not_screened").run(timeout=10)
            assert allowed.variables["CALLWARDEN_DECISION"] == "allow"
            reasons = denied.variables["CALLWARDEN_REASONS"].split(",")
            hidden_reasons = hidden.variables["CALLWARDEN_REASONS"].split(",")
            assert "CALLEE_REFUSED" in reasons and hidden_reasons[0] == "CID_HIDDEN"

            m = await _samples(port)
            common = {"pbx": "asterisk", "route": "outbound"}
            assert value(m, "callwarden_decisions_total", **common, decision="allow",
                         reason="none", let_through="true") == 1
            assert value(m, "callwarden_decisions_total", **common, decision="deny",
                         reason=reasons[0], let_through="false") == 1
            assert value(m, "callwarden_decisions_total", **common, decision="deny",
                         reason="CID_HIDDEN", let_through="false") == 1
            for code in set(reasons) | set(hidden_reasons):
                expected = reasons.count(code) + hidden_reasons.count(code)
                assert value(m, "callwarden_decision_reasons_total", **common,
                             reason=code) == expected
            assert value(m, "callwarden_decision_duration_seconds_count", **common) == 3
            assert value(m, "callwarden_decision_duration_seconds_bucket", **common,
                         le="+Inf") == 3
            assert 0 < value(m, "callwarden_decision_duration_seconds_sum", **common) < 15
            assert value(m, "callwarden_sessions_open", pbx="asterisk", server="fastagi") == 0
            assert value(m, "callwarden_sessions_refused_total", pbx="asterisk",
                         server="fastagi") == 0
            assert value(m, "callwarden_pbx_link_up", pbx="asterisk", link="ami") == 1
            assert value(m, "callwarden_pbx_link_connects_total", pbx="asterisk",
                         link="ami") == 1
            assert value(m, "callwarden_info", version="0.1.0", mode="enforce") == 1
            assert value(m, "callwarden_recording_failures_total") == 0
            assert ("process_start_time_seconds", frozenset()) in m

            code, report = await _health(port)
            assert code == 200 and report["status"] == "ok" and report["failed"] == []
            assert set(report["checks"]) == {"store", "asterisk.ami"}
            assert report["checks"]["asterisk.ami"]["ok"] is True

    run(body())


def test_open_sessions_are_counted_while_a_conversation_runs(make_settings, seeded_url) -> None:
    port = free_port()

    async def body() -> None:
        async with served(make_settings, seeded_url, port) as r:
            # a peer that connects and says nothing holds one session open until the
            # server's environment deadline drops it
            reader, writer = await asyncio.open_connection("127.0.0.1", r.port)
            try:
                await asyncio.sleep(0.2)
                m = await _samples(port)
                assert value(m, "callwarden_sessions_open", pbx="asterisk",
                             server="fastagi") == 1
            finally:
                writer.close()
            deadline = time.monotonic() + 10
            while value(await _samples(port), "callwarden_sessions_open", pbx="asterisk",
                        server="fastagi") != 0:
                assert time.monotonic() < deadline, "the session never closed"
                await asyncio.sleep(0.1)

    run(body())


def test_health_is_503_while_ami_is_down_and_recovers(make_settings, seeded_url) -> None:
    port = free_port()

    async def body() -> None:
        async with served(make_settings, seeded_url, port) as r:
            await _health_until(port, 200)
            assert r.ami is not None
            await r.ami.refuse_connections()
            await r.ami.drop_clients()
            report = await _health_until(port, 503)
            assert report["status"] == "unhealthy" and report["failed"] == ["asterisk.ami"]
            ami = report["checks"]["asterisk.ami"]
            assert ami["ok"] is False and "not connected to 127.0.0.1:" in ami["detail"]
            assert report["checks"]["store"]["ok"] is True
            m = await _samples(port)
            assert value(m, "callwarden_pbx_link_up", pbx="asterisk", link="ami") == 0
            # calls are still decided while AMI is away
            result = await r.agi_call().run(timeout=10)
            assert result.variables["CALLWARDEN_DECISION"] == "allow"
            await r.ami.accept_connections()
            await _health_until(port, 200)
            m = await _samples(port)
            assert value(m, "callwarden_pbx_link_connects_total", pbx="asterisk",
                         link="ami") == 2

    run(body())


def test_health_is_503_when_the_store_is_down(make_settings, sqlite_url) -> None:
    """The store check runs a real query: a database file that is no longer a database (disk
    trouble, an operator's mistake) makes /healthz fail while FastAGI keeps answering (and
    denies outbound calls: fail closed)."""
    port = free_port()

    async def body() -> None:
        async with served(make_settings, sqlite_url, port) as r:
            await _health_until(port, 200)
            db = Path(make_url(sqlite_url).database or "")
            r.enforcer.engine.dispose()
            for suffix in ("-wal", "-shm"):
                Path(str(db) + suffix).unlink(missing_ok=True)
            db.write_bytes(b"this is not a database " * 512)
            report = await _health_until(port, 503)
            assert "store" in report["failed"]
            assert report["checks"]["store"]["ok"] is False
            assert "DatabaseError" in report["checks"]["store"]["detail"]
            result = await r.agi_call().run(timeout=10)
            assert result.variables["CALLWARDEN_REASONS"] == "POLICY_UNAVAILABLE"
            m = await _samples(port)
            assert value(m, "callwarden_decisions_total", pbx="asterisk", route="outbound",
                         decision="deny", reason="POLICY_UNAVAILABLE",
                         let_through="false") == 1

    run(body())


def test_metrics_null_serves_nothing_and_a_taken_port_does_not_stop_serving(
        make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, metrics=None) as r:
            assert Operations(r.settings).start() is None
        port = free_port()
        async with rig(make_settings, seeded_url, metrics={"host": "127.0.0.1", "port": port}) as r:
            first, second = Operations(r.settings), Operations(r.settings)
            try:
                assert first.start() is not None
                assert second.start() is None  # port taken: logged, not fatal
                result = await r.agi_call().run(timeout=10)
                assert result.variables["CALLWARDEN_DECISION"] == "allow"
            finally:
                first.close()
                second.close()

    run(body())
