"""The real entry points as an operator starts them: ``python -m callwarden.esl`` and
``callwarden serve --only freeswitch`` (which replaces itself with the former, so gevent patches
a fresh interpreter), each with a temporary config on ephemeral ports, driven by the simulator.

These use the production clock: the temporary config's calling hours cover the whole day and its
consent never expires, so the decisions do not depend on when the tests run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLE_REGISTRY, ROOT, seed
from tests.conftest import migrate as migrate_store
from tests.esl.conftest import CONSENTED, profile, wait_until
from tests.sim.freeswitch import FreeSwitch, FsCall, FsEventSocketServer

ESL = ["-m", "callwarden.esl"]  # the adapter process
CLI = ["-m", "callwarden.cli.main"]  # `callwarden ...`


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:
        return b""


def timeless_registry() -> dict[str, Any]:
    """The example registry with a consent that holds whatever today's date is."""
    doc = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))
    for consent in doc["consents"]:
        if consent["callee"] == CONSENTED:
            consent["obtained_at"], consent["expires_at"] = "2020-01-01T00:00:00+08:00", None
    return doc


class Adapter:
    """A production entry point in a child process, with its config and log."""

    def __init__(self, tmp: Path, argv: list[str], *, migrate: bool = True,
                 outbound_port: int | None = None, **config: Any):
        self.url = f"sqlite:///{tmp / 'callwarden.db'}"
        if migrate:
            migrate_store(self.url)
            seed(self.url, timeless_registry())
        self.switch = FreeSwitch()
        self.fs = FsEventSocketServer(self.switch).start()
        self.port, self.metrics_port = outbound_port or free_port(), free_port()
        base: dict[str, Any] = {
            "store": {"url": self.url}, "recording": {"dir": str(tmp / "rec")},
            "calling_hours": {"window": "00:00-24:00"},
            "frequency": {"per_day": 1000, "per_week": 7000},
            "logging": {"format": "json", "level": "info"},
            "metrics": {"host": "127.0.0.1", "port": self.metrics_port},
            "freeswitch": {"esl_outbound": {"host": "127.0.0.1", "port": self.port},
                           "esl_inbound": {"host": "127.0.0.1", "port": self.fs.port,
                                           "password": "ClueCon"}},
        }
        base.update(config)
        self.config = tmp / "callwarden.yaml"
        self.config.write_text(yaml.safe_dump(base), encoding="utf-8")
        self.log = tmp / "adapter.log"
        config_arg = ["--config", str(self.config)]
        command = ([sys.executable, *argv, *config_arg] if argv[:2] == ESL  # --config after
                   else [sys.executable, *CLI, *config_arg, *argv])  # --config before the command
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(command, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out

    def wait_ready(self) -> dict[str, Any]:
        def ready() -> list[dict[str, Any]]:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            return self.events("freeswitch_adapter_ready")
        return wait_until(ready, timeout=30)[0]

    def exit_code(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout=timeout)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.exit_code(15)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.fs.stop()


@pytest.fixture
def adapters(tmp_path: Path):
    made: list[Adapter] = []

    def start(argv: list[str], **kwargs: Any) -> Adapter:
        workdir = tmp_path / f"a{len(made)}"
        workdir.mkdir()
        adapter = Adapter(workdir, argv, **kwargs)
        made.append(adapter)
        return adapter

    yield start
    for adapter in made:
        adapter.close()


def _calls_are_enforced(adapter: Adapter) -> None:
    allowed = FsCall("127.0.0.1", adapter.port, profile=profile(), switch=adapter.switch).run(15)
    assert allowed.variables_set["callwarden_decision"] == "allow" and allowed.resumed
    assert allowed.recordings and not allowed.recordings[0].failed
    denied = FsCall("127.0.0.1", adapter.port, profile=profile(tenant="nobody"),
                    switch=adapter.switch).run(15)
    assert denied.hangup_cause == "OUTGOING_CALL_BARRED" and not denied.resume_sent


def test_python_m_callwarden_esl(adapters) -> None:
    adapter = adapters(ESL)
    ready = adapter.wait_ready()
    assert ready["outbound_port"] == adapter.port
    adapter.fs.wait_for_connections(1, timeout=10)  # the inbound listener found FreeSWITCH
    _calls_are_enforced(adapter)
    # Standalone, it serves its own /healthz and /metrics (callwarden.ops.esl_side).
    metrics = wait_until(lambda: fetch(f"http://127.0.0.1:{adapter.metrics_port}/metrics"))
    assert b'pbx="freeswitch"' in metrics
    assert adapter.terminate() == 0
    assert adapter.events("freeswitch_adapter_stopped")


def test_serve_only_freeswitch_replaces_itself_with_the_adapter(adapters) -> None:
    adapter = adapters(["serve", "--only", "freeswitch"],
                       asterisk={"agi": {"host": "127.0.0.1", "port": free_port()}, "ami": None})
    adapter.wait_ready()
    cmdline = Path(f"/proc/{adapter.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"callwarden.esl" in cmdline  # same PID, fresh interpreter (exec), patched first
    _calls_are_enforced(adapter)
    assert adapter.terminate() == 0


def test_config_errors_exit_2_naming_the_key(adapters) -> None:
    bad = adapters(ESL, freeswitch={"esl_outbound": {"port": 0}})
    assert bad.exit_code() == 2
    assert "freeswitch.esl_outbound.port" in bad.log.read_text()
    missing = adapters(ESL, freeswitch=None, migrate=False)
    assert missing.exit_code() == 2
    assert "no freeswitch: section" in missing.log.read_text()


def test_start_problems_exit_1(adapters) -> None:
    unmigrated = adapters(ESL, migrate=False)
    assert unmigrated.exit_code() == 1
    assert "callwarden db upgrade" in unmigrated.log.read_text()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = adapters(ESL, outbound_port=taken.getsockname()[1])
        assert busy.exit_code() == 1
    assert "freeswitch.esl_outbound: cannot listen" in busy.log.read_text()
    keyless = adapters(ESL, audit={"key_file": "/nonexistent/audit.key"})
    assert keyless.exit_code() == 1
    assert "audit key file /nonexistent/audit.key is missing" in keyless.log.read_text()


@pytest.mark.parametrize(("code", "expected"), [
    ("import callwarden.esl.process as p; print(p.CLEAN_START, p.patched())", "True True"),
    ("import sqlalchemy, callwarden.esl.process as p; print(p.CLEAN_START, p.patched())",
     "False False"),
    ("import callwarden.esl.process; from gevent import monkey; "
     "print(monkey.is_module_patched('socket'), monkey.is_module_patched('threading'))",
     "True False"),
    # psycopg would wait through gevent's patched poll (a hub per native thread); here its
    # waits stay in C (the store runs in native threads only).
    ("import callwarden.esl.process; import psycopg.waiting as w; print(w.wait is w.wait_c)",
     "True"),
])
def test_monkey_patching_happens_first_or_not_at_all(code: str, expected: str) -> None:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == expected, out.stderr


def test_this_test_process_was_never_patched() -> None:
    from gevent import monkey

    assert not monkey.is_module_patched("socket")
    assert time.sleep.__module__ == "time"
