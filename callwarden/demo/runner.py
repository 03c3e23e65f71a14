"""Run the demo: seed a temporary store, start both adapters, make the calls, print them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from callwarden import log as cwlog
from callwarden.demo.agi_client import AgiOutcome, agi_call
from callwarden.demo.esl_client import EslOutcome, esl_call
from callwarden.demo.scenarios import (
    ACCESS_NUMBER,
    TENANT,
    TRUNK,
    Scenario,
    demo_day,
    registry,
    scenarios,
)
from callwarden.numbers import mask_raw
from callwarden.policy.reasons import reason

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Result:
    scenario: Scenario
    pbx: str
    decision: str | None
    reasons: list[str]
    action: str
    let_through: bool
    pbx_call_id: str
    recording: str | None  # where the PBX was told to record

    def as_expected(self, observe: bool) -> bool:
        s = self.scenario
        if self.decision != s.expect:
            return False
        if s.expect_reason and s.expect_reason not in self.reasons:
            return False
        return self.let_through == (s.expect == "allow" or observe)


class MovableClock:
    """The adapters' clock: the demo sets the time of each call."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


def _write_recording(path: Path, finished: dt.datetime) -> None:
    """A short silent WAV where the PBX was told to record, last written when the call ended."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 8000)
    os.utime(path, (finished.timestamp(), finished.timestamp()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self, workdir: Path, *, observe: bool = False, out: IO[str] | None = None) -> None:
        self.workdir = workdir
        self.observe = observe
        self.out = out or sys.stdout
        self.config_path = workdir / "callwarden.yaml"
        self.log_path = workdir / "demo.log"
        self.clock_file = workdir / "clock"
        self.store_path = workdir / "demo.db"
        self.results: list[Result] = []
        day = demo_day()
        self.registry = registry(day)
        self.scenarios = scenarios(day)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- set up ------------------------------------------------------------------------------

    def prepare(self) -> None:
        from callwarden.audit.pseudonym import ensure_store_key
        from callwarden.config import parse_settings
        from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
        from callwarden.store.migrate import upgrade
        from callwarden.store.registry import Registry

        config = {
            "store": {"url": f"sqlite:///{self.store_path}"},
            "timezone": "Asia/Shanghai",
            "mode": "observe" if self.observe else "enforce",
            "frequency": {"per_day": 10, "per_week": 20},
            "decision_timeout_ms": 5000,  # a first call on a cold machine may be slow
            "recording": {"dir": str(self.workdir / "recordings")},
            "asterisk": {"agi": {"host": HOST, "port": _free_port()}, "ami": None},
            "freeswitch": {"esl_outbound": {"host": HOST, "port": _free_port()},
                           "esl_inbound": None},
            "metrics": None,
            "policing": {"enabled": False},
            "logging": {"format": "json", "level": "info"},
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        engine = make_engine(config["store"]["url"])
        try:
            upgrade(engine)
            ensure_store_key(parse_settings(config), engine)
            with unit_of_work(make_sessionmaker(engine)) as session:
                Registry(session, "demo").import_document(self.registry)
        finally:
            engine.dispose()

    def start_freeswitch(self) -> tuple[subprocess.Popen[str], int]:
        """The FreeSWITCH adapter in its own (gevent) process; its outbound port."""
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        log = self.log_path.open("a", encoding="utf-8")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "callwarden.demo.freeswitch_child", "--config",
                 str(self.config_path), "--clock-file", str(self.clock_file)],
                stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=self.workdir)
        finally:
            log.close()
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(READY_TIMEOUT_S):
                proc.kill()
                raise RuntimeError("the FreeSWITCH adapter did not start in time "
                                   f"(log: {self.log_path})")
        line = proc.stdout.readline().strip()
        if not line.startswith("READY "):
            proc.kill()
            raise RuntimeError(f"the FreeSWITCH adapter failed to start (log: {self.log_path})")
        return proc, int(line.split()[1])

    # -- the calls ---------------------------------------------------------------------------

    async def run_calls(self) -> None:
        from callwarden.agi import AsteriskAdapter
        from callwarden.config import load_settings
        from callwarden.service.enforcer import Enforcer

        settings = load_settings(self.config_path)
        clock = MovableClock(self.scenarios[0].at)
        self._set_clock(clock, self.scenarios[0].at)
        fs_proc, fs_port = await asyncio.to_thread(self.start_freeswitch)
        enforcer = Enforcer(settings)
        adapter = AsteriskAdapter(settings, enforcer, clock=clock, agi_port=0)
        await adapter.start()
        try:
            self._banner(adapter.agi_port, fs_port, fs_proc.pid)
            for number, scenario in enumerate(self.scenarios, start=1):
                self._set_clock(clock, scenario.at)
                agi = await agi_call(HOST, adapter.agi_port, scenario, CALL_TIMEOUT_S)
                esl = await asyncio.to_thread(esl_call, HOST, fs_port, scenario, CALL_TIMEOUT_S)
                results = [self._from_agi(scenario, agi), self._from_esl(scenario, esl)]
                self._report(number, scenario, results)
                await asyncio.to_thread(self._end_calls, enforcer, results)
        finally:
            await adapter.stop()
            enforcer.engine.dispose()
            fs_proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(fs_proc.wait, 15)
            except subprocess.TimeoutExpired:
                fs_proc.kill()

    def _set_clock(self, clock: MovableClock, at: dt.datetime) -> None:
        clock.at = at
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(at.isoformat(), encoding="utf-8")
        os.replace(tmp, self.clock_file)  # the child never reads half a timestamp

    def _end_calls(self, enforcer: Any, results: list[Result]) -> None:
        """What happens after the decision, told the way the PBXes' event listeners (AMI,
        inbound Event Socket) tell it: a call let through is answered and talks for a minute,
        writing its recording; a denied one ends at once. The call records are then complete
        and the recordings stored (sha256), so ``callwarden verify`` finds a clean store."""
        from callwarden.service.enforcer import CallEnd

        for r in results:
            at = r.scenario.at
            if r.let_through:
                ended = at + dt.timedelta(seconds=65)
                if r.recording:
                    _write_recording(Path(r.recording), ended)
                end = CallEnd(r.pbx.lower(), r.pbx_call_id, ended_at=ended,
                              answered_at=at + dt.timedelta(seconds=5), billsec=60,
                              disposition="ANSWERED", hangup_cause="NORMAL_CLEARING")
            else:
                cause = reason(r.reasons[0]).cause_name if r.reasons else "CALL_REJECTED"
                end = CallEnd(r.pbx.lower(), r.pbx_call_id, ended_at=at + dt.timedelta(seconds=1),
                              billsec=0, disposition="FAILED", hangup_cause=cause)
            enforcer.call_ended(end)

    def _from_agi(self, s: Scenario, o: AgiOutcome) -> Result:
        if o.hangup_cause is not None:
            action = f"hung up by callwarden, cause {o.hangup_cause}"
        elif o.mixmonitor:
            action = "MixMonitor started; the dialplan dials"
        else:
            action = "no action"
        let_through = o.hangup_cause is None and o.mixmonitor is not None
        return Result(s, "Asterisk", o.decision, o.reasons, action, let_through, o.uniqueid,
                      o.mixmonitor)

    def _from_esl(self, s: Scenario, o: EslOutcome) -> Result:
        if o.hangup_cause:
            action = f"hung up by callwarden, {o.hangup_cause}"
        elif o.resumed and o.recording:
            action = "record_session started; resume: the dialplan bridges"
        else:
            action = "no action"
        let_through = o.resumed and o.recording is not None and not o.hangup_cause
        return Result(s, "FreeSWITCH", o.decision, o.reasons, action, let_through, o.uuid,
                      o.recording)

    # -- output ------------------------------------------------------------------------------

    def _banner(self, agi_port: int, esl_port: int, child_pid: int) -> None:
        consents = len(self.registry["consents"])
        self.say("callwarden demo: the real servers, the PBX side simulated over real sockets")
        self.say(f"  store         {self.store_path} (SQLite; tenant {TENANT}, access number "
                 f"{ACCESS_NUMBER}, trunk {TRUNK}, {consents} consents)")
        self.say(f"  FastAGI       {HOST}:{agi_port}  Asterisk adapter (this process)")
        self.say(f"  Event Socket  {HOST}:{esl_port}  FreeSWITCH adapter (process {child_pid})")
        mode = ("observe: denied calls are let through, recorded, stored as deny"
                if self.observe else "enforce")
        self.say(f"  mode          {mode}")

    def _report(self, number: int, s: Scenario, results: list[Result]) -> None:
        self.results.extend(results)
        details = [f"campaign {s.campaign}"] if s.campaign else []
        if s.purpose:
            details.append(f"purpose {s.purpose}")
        if s.hidden:
            details.append("caller ID presentation restricted")
        self.say()
        self.say(f"{number}. {s.title}")
        self.say(f"   {ACCESS_NUMBER} -> {mask_raw(s.callee)}, {s.when}"
                 + (f", {', '.join(details)}" if details else ""))
        for r in results:
            verdict = r.decision or "(none)"
            if r.decision == "deny" and r.let_through:
                verdict += " (observe: let through)"
            codes = " ".join(r.reasons)
            mark = "" if r.as_expected(self.observe) else "   <-- NOT AS EXPECTED"
            self.say(f"   {r.pbx:<11} {verdict} {codes}".rstrip() + mark)
            self.say(f"   {'':<11} {r.action}")
        first = next((r.reasons[0] for r in results if r.reasons), None)
        if first is not None:
            why = reason(first)
            self.say(f"   {first} ({why.clause}): {why.message_en} / {why.message_zh}")

    def summary(self, keep: bool) -> int:
        good = sum(r.as_expected(self.observe) for r in self.results)
        self.say()
        self.say(f"{good} of {len(self.results)} decisions as expected. Each is stored: a call "
                 "record and a hash-chained audit entry; the calls let through were recorded "
                 "and their recordings stored with their sha256.")
        if keep:
            self.say(f"Kept in {self.workdir}. Look around:")
            self.say(f"  callwarden --config {self.config_path} audit search")
            self.say(f"  callwarden --config {self.config_path} verify")
        else:
            self.say("Run `callwarden demo --keep` to keep the store and look at the records; "
                     "`callwarden demo --observe` shows observe mode.")
        return 0 if good == len(self.results) and self.results else 1


def run_demo(*, observe: bool = False, keep: bool = False, workdir: Path | None = None,
             out: IO[str] | None = None) -> int:
    """The whole demo; the exit status (0 when every decision was the expected one)."""
    created = workdir is None
    root = Path(tempfile.mkdtemp(prefix="callwarden-demo-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    demo = Demo(root.resolve(), observe=observe, out=out)
    log_stream: Any = demo.log_path.open("a", encoding="utf-8")
    try:
        cwlog.configure("json", "info", stream=log_stream)  # the terminal shows only the demo
        demo.prepare()
        asyncio.run(demo.run_calls())
        return demo.summary(keep)
    except Exception as exc:
        demo.say(f"demo failed: {type(exc).__name__}: {exc} (log: {demo.log_path})")
        return 1
    finally:
        with contextlib.suppress(Exception):
            cwlog.configure("console", "warning")
        log_stream.close()
        if created and not keep:
            shutil.rmtree(root, ignore_errors=True)
