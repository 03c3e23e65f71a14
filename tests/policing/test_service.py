"""The detector inside ``callwarden serve``: periodic, off the event loop, stopped with the server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from structlog.testing import capture_logs

from callwarden import log as cwlog
from callwarden.policing.service import start_in_serve
from callwarden.policy import reason
from callwarden.store.models import Tenant, utcnow
from tests.agi.harness import AMI_SECRET, AMI_USER, FAST, call_spec, free_port, run
from tests.conftest import seed
from tests.policing.helpers import insert_calls, session_for, telemarketing
from tests.sim.asterisk import AmiServer, OutboundCall, Pbx

CALLWARDEN = Path(sys.executable).with_name("callwarden")


def test_disabled_policing_starts_no_task(sqlite_url, make_settings):
    cwlog.configure("console", "debug")  # an earlier test may have left the level at warning

    async def body() -> None:
        with capture_logs() as logs:
            assert start_in_serve(make_settings(sqlite_url, policing={"enabled": False}), asyncio.Event()) == []
        assert [e["event"] for e in logs] == ["policing_disabled"]

    run(body())


def test_periodic_passes_run_in_a_thread_and_stop_with_the_server(world, police):
    d = police(interval_s=5)
    insert_calls(world, telemarketing("spam", utcnow() - dt.timedelta(minutes=40), utcnow(),
                                      random.Random(61), access="95581"))

    async def body() -> None:
        stop = asyncio.Event()
        ticks = 0

        async def heartbeat() -> None:  # the loop keeps running while a pass reads the store
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        seen: list = []
        d.observer = seen.append
        beat = asyncio.create_task(heartbeat())
        task = asyncio.create_task(d.run_periodically(stop, first_delay_s=0))
        for _ in range(200):
            with session_for(world) as s:
                if s.get(Tenant, "spam").status == "suspended":
                    break
            await asyncio.sleep(0.05)
        t = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 2)
        await beat
        assert time.monotonic() - t < 1  # stopped at once, not after interval_s
        assert ticks > 10
        assert seen and seen[0].ran and seen[0].suspended == ["spam"]

    run(body())
    with session_for(world) as s:
        assert s.get(Tenant, "spam").status == "suspended"


def test_a_failing_pass_is_logged_and_the_loop_goes_on(world, police, monkeypatch):
    cwlog.configure("console", "debug")
    d = police(interval_s=5)
    calls = []

    def broken(*a, **kw):
        calls.append(1)
        raise RuntimeError("store on fire")

    monkeypatch.setattr(d, "run_pass", broken)
    seen: list = []
    d.observer = seen.append  # serve's metrics hook: told of every pass, None when it failed

    async def body() -> None:
        stop = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(d.run_periodically(stop, first_delay_s=0))
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.wait_for(task, 2)
        assert calls == [1] and seen == [None]
        failed = [e for e in logs if e["event"] == "policing_pass_failed"]
        assert failed and failed[0]["error"] == "RuntimeError" and "fire" in failed[0]["detail"]

    run(body())


def test_callwarden_serve_runs_the_detector(sqlite_url, tmp_path):
    """A real `callwarden serve`: its periodic pass suspends a telemarketer, whose next call
    through the simulated Asterisk is then refused; SIGTERM stops everything cleanly."""
    seed(sqlite_url)
    now = utcnow()
    insert_calls(sqlite_url, telemarketing("acme", now - dt.timedelta(minutes=40), now,
                                           random.Random(71), access="95512", first=13700000001))
    agi_port = free_port()
    log_path = tmp_path / "serve.log"

    async def body() -> None:
        pbx = Pbx(cel=False)
        async with AmiServer(pbx, users={AMI_USER: AMI_SECRET}) as ami:
            config = tmp_path / "callwarden.yaml"
            config.write_text(yaml.safe_dump({
                "store": {"url": sqlite_url},
                "recording": {"dir": str(tmp_path / "rec")},
                "logging": {"format": "json", "level": "info"},
                "asterisk": {"agi": {"host": "127.0.0.1", "port": agi_port},
                             "ami": {"host": "127.0.0.1", "port": ami.port,
                                     "username": AMI_USER, "secret": AMI_SECRET}},
                "policing": {"interval_s": 5},
            }), encoding="utf-8")
            with log_path.open("wb") as log:
                proc = subprocess.Popen([str(CALLWARDEN), "--config", str(config), "serve", "--only",
                                         "asterisk"], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "CALLWARDEN_ACTOR": "test"})
            try:
                deadline = time.monotonic() + 30
                while True:
                    with session_for(sqlite_url) as s:
                        if s.get(Tenant, "acme").status == "suspended":
                            break
                    assert proc.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, "serve did not police within 30 s"
                    await asyncio.sleep(0.2)
                await ami.wait_logged_in(1, timeout=10)
                result = await OutboundCall(pbx, call_spec(agi_port), timing=FAST).run(
                    agi_port=agi_port, talk_time=0.05)
                reasons = result.variables["CALLWARDEN_REASONS"].split(",")
                assert reasons[0] == "TENANT_SUSPENDED"
                assert (result.hangup_source, result.hangup_cause) == \
                    ("agi", reason("TENANT_SUSPENDED").cause_code)
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=20)
            assert rc == 0, log_path.read_text()

    run(body(), timeout=90)
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "policing_started" in names and names.count("policing_suspended") == 1
    suspended = next(e for e in events if e["event"] == "policing_suspended")
    assert suspended["tenant"] == "acme" and suspended["kind"] == "risk_suspend"
    assert "13700000" not in log_path.read_text()  # numbers never reach the log unmasked
