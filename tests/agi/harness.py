"""Test rig for the Asterisk adapter: the real FastAGI server and AMI listener, driven over TCP
by the Asterisk simulator (tests/sim/asterisk.py), on a real store.

Additions to the simulator, kept here (tests/sim is not ours to edit):
* :func:`record_like_mixmonitor`: writes a small WAV where MixMonitor was told to record, the
  moment the simulator emits ``MixMonitorStart`` (the simulator models the app, not the file);
* :func:`call_spec`: a CallSpec for callwarden's routes with unique channel ids per call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from callwarden.agi import AsteriskAdapter
from callwarden.agi.ami import AmiTuning
from callwarden.config import Settings
from callwarden.service.enforcer import Enforcer
from callwarden.store.models import AuditEntry, Call, Recording
from tests.sim.asterisk import AgiCall, AgiTiming, AmiServer, CallSpec, OutboundCall, Pbx

CST = dt.timezone(dt.timedelta(hours=8))
#: Decisions in these tests happen on a Monday morning, China time: inside calling hours
#: whatever the wall clock says.
MONDAY_10AM = dt.datetime(2026, 3, 2, 10, 0, tzinfo=CST)
FAST = AgiTiming(env_split_pause=0.001, usage_pause=0, answer_delay=0, wait_scale=0.01)
FAST_AMI = AmiTuning(connect_timeout_s=2, action_timeout_s=2, ping_interval_s=0.5,
                     backoff_initial_s=0.05, backoff_max_s=0.2, cdr_wait_s=0.3,
                     cdr_settle_s=0.05, recording_settle_s=0.05, store_timeout_s=5,
                     reconcile_interval_s=60)
AMI_USER, AMI_SECRET = "callwarden", "s3cret"

# Seeded registry (config/registry.example.yaml): what an allowed call looks like.
TENANT, CALLER, TRUNK, CAMPAIGN = "acme", "95512", "ct-trunk-1", "renewals"
CONSENTED, REFUSED = "13800138000", "13900139000"

_ids = itertools.count(1)


def run(coro: Any, timeout: float = 60) -> Any:
    """Run an async test body with a hard deadline (a hung test fails, it does not hang CI)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def fixed_clock(when: dt.datetime = MONDAY_10AM) -> Callable[[], dt.datetime]:
    return lambda: when


def call_spec(port: int, *, callee: str = CONSENTED, caller: str = CALLER,
              tenant: str | None = TENANT, trunk: str | None = TRUNK,
              campaign: str | None = CAMPAIGN, route: str = "outbound",
              extra_pre_agi: tuple[tuple[str, str], ...] = (),
              decision_variable: str = "CALLWARDEN_DECISION", block_value: str = "deny",
              **overrides: Any) -> CallSpec:
    """An originated call through ``Set(...)`` steps and ``AGI(agi://.../<route>,<callee>)``,
    with uniqueids that are unique in the test run and consistent with the clock."""
    n = next(_ids)
    base = int(time.time())
    pre = [("Set", f"CALLERID(num)={caller}")]
    for name, value in (("CALLWARDEN_TENANT", tenant), ("CALLWARDEN_TRUNK", trunk),
                        ("CALLWARDEN_CAMPAIGN", campaign)):
        if value is not None:
            pre.append(("Set", f"{name}={value}"))
    return CallSpec(
        local_base=f"Local/{callee}@agents-{n:08x}", callee_base=f"Local/{callee}@carrier-{n:08x}",
        uniqueid1=f"{base}.{4 * n}", uniqueid2=f"{base}.{4 * n + 1}",
        uniqueid3=f"{base}.{4 * n + 2}", uniqueid4=f"{base}.{4 * n + 3}",
        exten=callee, context="agents", originate_cid_num="8001", originate_cid_name="Agent",
        originate_action_id=None, pre_agi=(*pre, *extra_pre_agi),
        agi_url=f"agi://127.0.0.1:{port}/{route}", agi_args=(callee,),
        after_agi_noop="after AGI: AGISTATUS=${AGISTATUS} CALLWARDEN_DECISION=${CALLWARDEN_DECISION}",
        decision_variable=decision_variable, block_value=block_value,
        bridge_id=None, **overrides)


def write_wav(path: Path, seconds: float = 0.2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * int(8000 * seconds))


def record_like_mixmonitor(pbx: Pbx) -> list[Path]:
    """Write a WAV wherever MixMonitor starts (same host as the "PBX"); returns the paths."""
    written: list[Path] = []

    def sink(event: str, privilege: str, data: bytes) -> None:
        if event != "MixMonitorStart":
            return
        name = next(line.split(": ", 1)[1] for line in data.decode().split("\r\n")
                    if line.startswith("Channel: "))
        chan = pbx.find_channel(name)
        if chan is not None and chan.mixmonitor_file:
            path = Path(chan.mixmonitor_file)
            write_wav(path)
            written.append(path)

    pbx.subscribe(sink)
    return written


@dataclass
class Rig:
    """A running adapter, its simulated PBX, and the store behind it."""

    adapter: AsteriskAdapter
    enforcer: Enforcer
    settings: Settings
    pbx: Pbx
    ami: AmiServer | None

    @property
    def port(self) -> int:
        return self.adapter.agi_port

    def agi_call(self, route: str = "outbound", *, args: tuple[str, ...] = (CONSENTED,),
                 variables: dict[str, str] | None = None, callerid_num: str | None = CALLER,
                 **kwargs: Any) -> AgiCall:
        """A bare AGI() run (no AMI call flow) with callwarden's channel variables."""
        base = {"CALLWARDEN_TENANT": TENANT, "CALLWARDEN_TRUNK": TRUNK,
                "CALLWARDEN_CAMPAIGN": CAMPAIGN}
        return AgiCall(self.port, script=route, args=args, pbx=self.pbx,
                       variables={**base, **(variables or {})}, callerid_num=callerid_num,
                       timing=kwargs.pop("timing", FAST), **kwargs)

    def outbound_call(self, **spec: Any) -> OutboundCall:
        return OutboundCall(self.pbx, call_spec(self.port, **spec), timing=FAST)

    # -- store reads -------------------------------------------------------------------------

    def call_row(self, pbx_call_id: str) -> Call | None:
        with self.enforcer.sessions() as s:
            return s.scalars(select(Call).where(Call.pbx_call_id == pbx_call_id)).first()

    def recording_row(self, call: Call) -> Recording | None:
        with self.enforcer.sessions() as s:
            return s.get(Recording, call.recording_id) if call.recording_id else None

    def audit_actions(self, subject: str) -> list[str]:
        with self.enforcer.sessions() as s:
            return list(s.scalars(select(AuditEntry.action).where(AuditEntry.subject == subject)
                                  .order_by(AuditEntry.seq)))

    async def wait_for(self, check: Callable[[], Any], timeout: float = 5.0,
                       what: str = "condition") -> Any:
        """Poll ``check`` (run in a thread: it reads the store) until it returns truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = await asyncio.to_thread(check)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    async def wait_ended(self, pbx_call_id: str, timeout: float = 5.0) -> Call:
        def ended() -> Call | None:
            row = self.call_row(pbx_call_id)
            return row if row is not None and row.ended_at is not None else None

        return await self.wait_for(ended, timeout, f"the CDR of {pbx_call_id} to be completed")


def asterisk_settings(make_settings: Callable[..., Settings], url: str, *, ami_port: int | None,
                      **overrides: Any) -> Settings:
    asterisk: dict[str, Any] = {"agi": {"host": "127.0.0.1", "port": 4573, "session_timeout_s": 5}}
    asterisk["ami"] = ({"host": "127.0.0.1", "port": ami_port, "username": AMI_USER,
                        "secret": AMI_SECRET} if ami_port else None)
    for key, value in overrides.pop("asterisk", {}).items():  # merged one level deep
        asterisk[key] = {**asterisk[key], **value} if isinstance(asterisk.get(key), dict) else value
    # keep the test's own recording directory when a test changes other recording keys
    recording = {"dir": make_settings(url).recording.dir, "settle_s": 0.1, "finalize_wait_s": 0.5,
                 **overrides.pop("recording", {})}
    return make_settings(url, asterisk=asterisk, recording=recording, **overrides)


@asynccontextmanager
async def rig(make_settings: Callable[..., Settings], url: str, *, with_ami: bool = True,
              clock: Callable[[], dt.datetime] | None = None, tuning: AmiTuning = FAST_AMI,
              pbx: Pbx | None = None, settings: Settings | None = None,
              **overrides: Any) -> AsyncIterator[Rig]:
    """Start the simulated PBX (AMI server) and the adapter on ephemeral ports."""
    pbx = pbx or Pbx(cel=False)
    ami = await AmiServer(pbx, users={AMI_USER: AMI_SECRET}, login_failure_delay=0).start() \
        if with_ami else None
    settings = settings or asterisk_settings(make_settings, url,
                                             ami_port=ami.port if ami else None, **overrides)
    enforcer = Enforcer(settings)
    adapter = AsteriskAdapter(settings, enforcer, clock=clock or fixed_clock(), agi_port=0,
                              ami_tuning=tuning)
    await adapter.start()
    try:
        assert adapter.warmed is not None
        await asyncio.wait_for(adapter.warmed, 30)  # a test's first call must not pay for it
        if ami is not None:
            await ami.wait_logged_in(1, timeout=5)
            assert adapter.ami is not None
            await _until(lambda: adapter.ami.reconciliations >= 1, 5)
        yield Rig(adapter, enforcer, settings, pbx, ami)
    finally:
        await adapter.stop()
        if ami is not None:
            await ami.close()
        enforcer.engine.dispose()


async def _until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (for a subprocess that must be told its port)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

