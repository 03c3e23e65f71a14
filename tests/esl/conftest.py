"""The FreeSWITCH test rig: the real adapter in a child process (``tests.esl.harness``, so gevent's
monkey-patching never reaches this pytest process), the FreeSWITCH simulator in this one
(tests/sim/freeswitch.py: ``FsCall`` dials our outbound server, ``FsEventSocketServer`` serves
our inbound listener), both over real TCP on ephemeral ports, on a real store.

Every wait is bounded. Decisions run on a fixed clock (Monday 2 March 2026, 10:00 China time),
and the simulated switch's clock starts there too, so nothing depends on when CI runs.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session

from callwarden.store.models import Call, Recording
from tests.conftest import ROOT, migrated_store, seed
from tests.sim.freeswitch import (
    CallProfile,
    CallResult,
    FreeSwitch,
    FsCall,
    FsEventSocketServer,
    VirtualClock,
)

CST = dt.timezone(dt.timedelta(hours=8))
MONDAY_10AM = dt.datetime(2026, 3, 2, 10, 0, tzinfo=CST)
TENANT, CALLER, TRUNK, CAMPAIGN = "acme", "95512", "ct-trunk-1", "renewals"
CONSENTED, REFUSED, STRANGER = "13800138000", "13900139000", "13600136000"
READY_TIMEOUT_S = 30.0

_ids = itertools.count(1)


def profile(*, caller: str = CALLER, callee: str = CONSENTED, tenant: str | None = TENANT,
            trunk: str | None = TRUNK, campaign: str | None = CAMPAIGN,
            hide_number: bool = False, **variables: str) -> CallProfile:
    """What the dialplan hands to ``socket`` for an outbound call (the seeded allowed call)."""
    values = {"callwarden_tenant": tenant, "callwarden_trunk": trunk,
              "callwarden_campaign": campaign}
    values.update(variables)
    n = next(_ids)
    return CallProfile(caller_id_number=caller, destination_number=callee, hide_number=hide_number,
                       channel_name=f"sofia/internal/agent{n}@10.0.0.5",
                       variables={k: v for k, v in values.items() if v is not None})


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


class EslRig:
    """One adapter process + one simulated FreeSWITCH + one store."""

    def __init__(self, workdir: Path, store_url: str, *, at: dt.datetime = MONDAY_10AM,
                 inbound: bool = True, password: str = "ClueCon", switchname: str | None = None,
                 hub_probe: bool = False, **overrides: Any):
        self.workdir = workdir
        self.hub_probe = hub_probe  # see hub_report()
        workdir.mkdir(parents=True, exist_ok=True)
        self.store_url = store_url
        self.at = at
        # ``switchname``: the simulated switch's name (FreeSWITCH-Switchname; default "vm", as
        # in the captures); several rigs on one store with different names are several nodes.
        self.switch = FreeSwitch(clock=VirtualClock(int(at.timestamp() * 1_000_000)),
                                 switchname=switchname)
        self.fs: FsEventSocketServer | None = (
            FsEventSocketServer(self.switch, password=password).start() if inbound else None)
        freeswitch: dict[str, Any] = {"esl_outbound": {"host": "127.0.0.1", "port": 8084,
                                                       "session_timeout_s": 10}}
        freeswitch["esl_inbound"] = ({"host": "127.0.0.1", "port": self.fs.port,
                                      "password": "ClueCon"} if self.fs else None)
        config: dict[str, Any] = {
            "store": {"url": store_url},
            "recording": {"dir": str(workdir / "rec")},
            "logging": {"format": "json", "level": "info"},
            "calling_hours": {"window": "08:00-21:00"},
            "frequency": {"per_day": 1000, "per_week": 7000},
            "freeswitch": freeswitch,
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config = config
        self.config_path = workdir / "callwarden.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log_path = workdir / "adapter.log"
        self.engine = create_engine(store_url)
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.start()

    # -- the adapter process --------------------------------------------------------------------

    def start(self) -> None:
        connected_before = len(self.events("esl_inbound_connected")) if self.log_path.exists() else 0
        log = self.log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.esl.harness", "--config", str(self.config_path),
             "--at", self.at.isoformat(), "--fast-listener"]
            + (["--hub-probe"] if self.hub_probe else []),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        log.close()
        self.port = int(_read_ready(self.proc, READY_TIMEOUT_S, self.log_path))
        if self.fs is not None and self.fs.password == "ClueCon":  # the config's password
            wait_until(lambda: len(self.events("esl_inbound_connected")) > connected_before,
                       timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait: the adapter must stop cleanly (exit status 0)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError("the adapter did not stop within 15 s of SIGTERM") from None
        if rc != 0:  # shown by pytest with the failure
            print(self.log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
        return rc

    def restart(self) -> None:
        assert self.stop() == 0
        self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.fs is not None:
            self.fs.stop()
        self.engine.dispose()

    def hub_report(self, timeout: float = 10.0) -> dict[str, Any]:
        """How late the adapter's hub woke since the previous report (``hub_probe=True``):
        ``esl_hub_probe`` with samples, p50_ms, p99_ms, max_ms, stalls (over stall_ms)."""
        assert self.hub_probe and self.proc is not None
        before = len(self.events("esl_hub_probe"))
        self.proc.send_signal(signal.SIGUSR2)
        return wait_until(lambda: self.events("esl_hub_probe")[before:], timeout)[0]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The adapter's structured log events so far (optionally only ``name``)."""
        out = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    def call_log(self, pbx_call_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The one ``esl_call`` event of a call."""
        def find() -> list[dict[str, Any]]:
            return [e for e in self.events("esl_call") if e.get("pbx_call_id") == pbx_call_id]
        found = wait_until(find, timeout)
        assert len(found) == 1, found
        return found[0]

    # -- calls ----------------------------------------------------------------------------------

    def fscall(self, prof: CallProfile | None = None, **kwargs: Any) -> FsCall:
        return FsCall("127.0.0.1", self.port, profile=prof or profile(), switch=self.switch,
                      **kwargs)

    def place(self, prof: CallProfile | None = None, timeout: float = 15.0,
              **kwargs: Any) -> tuple[FsCall, CallResult]:
        call = self.fscall(prof, **kwargs)
        result = call.run(timeout=timeout)
        assert result.error is None, result.error
        assert not result.timed_out, "the simulated call hit its own timeout"
        return call, result

    # -- the store ------------------------------------------------------------------------------

    def cdr(self, pbx_call_id: str) -> Call | None:
        with Session(self.engine) as s:
            return s.scalars(sql_select(Call).where(Call.pbx_call_id == pbx_call_id)).first()

    def recording(self, call_id: str) -> Recording | None:
        with Session(self.engine) as s:
            return s.scalars(sql_select(Recording).where(Recording.call_id == call_id)).first()


class StoreLock:
    """Makes the store unable to answer: an exclusive lock held from outside."""

    def __init__(self, url: str):
        self.url = url

    def __enter__(self) -> StoreLock:
        if self.url.startswith("sqlite"):
            self.sqlite = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            self.sqlite.execute("BEGIN EXCLUSIVE")
        else:
            self.engine = create_engine(self.url)
            self.conn = self.engine.connect()
            self.tx = self.conn.begin()
            self.conn.execute(text("LOCK TABLE calls, audit_head IN ACCESS EXCLUSIVE MODE"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.url.startswith("sqlite"):
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()
        else:
            self.tx.rollback()
            self.conn.close()
            self.engine.dispose()


def _read_ready(proc: subprocess.Popen[str], timeout: float, log_path: Path) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        proc.kill()
        log = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise AssertionError(f"adapter did not start (got {line!r}); log:\n{log}")
    return line.split()[1]


# -- stores -----------------------------------------------------------------------------------


@contextmanager
def _seeded_store(kind: str, workdir: Path) -> Iterator[str]:
    """A migrated store seeded with the example registry."""
    with migrated_store(kind, workdir) as url:
        seed(url)
        yield url


@contextmanager
def _rig_factory(kind: str, workdir: Path) -> Iterator[Callable[..., EslRig]]:
    """Build adapters on one fresh store (``build(mode="observe")``); all closed on exit."""
    rigs: list[EslRig] = []
    with _seeded_store(kind, workdir) as url:

        def build(**kwargs: Any) -> EslRig:
            r = EslRig(workdir / f"rig{len(rigs)}", url, **kwargs)
            rigs.append(r)
            return r

        try:
            yield build
        finally:
            for r in rigs:
                r.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EslRig]:
    """A default adapter (enforce mode, inbound listener connected), shared by a module's
    tests, once per store backend."""
    workdir = tmp_path_factory.mktemp(f"esl-{request.param}")
    with _seeded_store(request.param, workdir) as url:
        the_rig = EslRig(workdir, url)
        try:
            yield the_rig
            assert the_rig.stop() == 0
        finally:
            the_rig.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def make_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., EslRig]]:
    """A fresh store and adapter per test, with config overrides: ``make_rig(mode="observe")``."""
    with _rig_factory(request.param, tmp_path) as build:
        yield build


@pytest.fixture
def sqlite_rig_factory(tmp_path: Path) -> Iterator[Callable[..., EslRig]]:
    """Like ``make_rig`` on SQLite only: for protocol hardening, which the store does not affect."""
    with _rig_factory("sqlite", tmp_path) as build:
        yield build
