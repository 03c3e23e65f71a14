"""`callwarden serve` as an operator runs it (a real process, a real config): /metrics and
/healthz over HTTP while calls go through the real FastAGI server and the real outbound Event
Socket server, with the simulated Asterisk (AMI) and FreeSWITCH (inbound event socket) as the
PBXes. With both PBX sections the FreeSWITCH adapter is a child process; its metrics and link
state must show up in the one endpoint, and its death must show up in /healthz."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from callwarden.store.models import Alert, Call
from tests.ops.helpers import AMI_SECRET, AMI_USER, free_port, health, samples, value
from tests.sim.asterisk import AgiCall, AgiTiming
from tests.sim.freeswitch import CallProfile, FsCall, FsEventSocketServer

ROOT = Path(__file__).resolve().parents[2]
FAST = AgiTiming(env_split_pause=0.001, usage_pause=0, answer_delay=0, wait_scale=0.01)
TENANT, CALLER, TRUNK, CAMPAIGN = "acme", "95512", "ct-trunk-1", "renewals"
CONSENTED, REFUSED = "13800138000", "13900139000"


class Serve:
    """One `callwarden serve` process and where it listens."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.config = config
        self.path = workdir / "callwarden.yaml"
        self.path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.log = workdir / "serve.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "callwarden.cli.main", "--config", str(self.path), "serve"],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})

    @property
    def metrics_port(self) -> int:
        return int(self.config["metrics"]["port"])

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == name:
                    out.append(event)
        return out

    def health_until(self, status: int, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                code, body = health(self.metrics_port)
            except OSError as exc:  # not listening yet
                last = exc
            else:
                if code == status:
                    return body
                last = body
            time.sleep(0.2)
        raise AssertionError(f"/healthz never answered {status}: {last}\n{self.log.read_text()[-3000:]}")

    def first_detector_pass(self, timeout: float = 30.0) -> None:
        """Wait until /metrics counts one successful detector pass (the first starts 5 s in)."""
        deadline = time.monotonic() + timeout
        while value(samples(self.metrics_port), "callwarden_detector_runs_total", outcome="ok") != 1:
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.5)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise AssertionError("serve did not stop within 30 s of SIGTERM") from None
        return int(self.proc.returncode)


@pytest.fixture
def esl_server() -> Iterator[FsEventSocketServer]:
    with FsEventSocketServer() as server:  # password ClueCon
        yield server


def stack_config(tmp_path: Path, url: str, *, ami_port: int | None, esl_port: int | None,
                 **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "store": {"url": url},
        "recording": {"dir": str(tmp_path / "rec")},
        "logging": {"format": "json", "level": "info"},
        # decisions use the wall clock here: a window of the whole day keeps them stable
        "calling_hours": {"window": "00:00-24:00"},
        "frequency": {"per_day": 1000, "per_week": 7000},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
        "policing": {"enabled": False},
        # not a test of the deadline: a loaded host must not turn a slow commit into a deny
        "decision_timeout_ms": 5000,
    }
    if ami_port is not None:
        config["asterisk"] = {
            "agi": {"host": "127.0.0.1", "port": free_port()},
            "ami": {"host": "127.0.0.1", "port": ami_port, "username": AMI_USER,
                    "secret": AMI_SECRET}}
    if esl_port is not None:
        config["freeswitch"] = {
            "esl_outbound": {"host": "127.0.0.1", "port": free_port()},
            "esl_inbound": {"host": "127.0.0.1", "port": esl_port, "password": "ClueCon"}}
    config.update(extra)
    return config


def agi_call(serve: Serve, callee: str) -> dict[str, str]:
    port = serve.config["asterisk"]["agi"]["port"]
    call = AgiCall(port, script="outbound", args=(callee,), callerid_num=CALLER, timing=FAST,
                   variables={"CALLWARDEN_TENANT": TENANT, "CALLWARDEN_TRUNK": TRUNK,
                              "CALLWARDEN_CAMPAIGN": CAMPAIGN})
    result = asyncio.run(call.run(timeout=15))
    return result.variables


def fs_call(serve: Serve, callee: str) -> Any:
    port = serve.config["freeswitch"]["esl_outbound"]["port"]
    profile = CallProfile(caller_id_number=CALLER, destination_number=callee,
                          variables={"callwarden_tenant": TENANT, "callwarden_trunk": TRUNK,
                                     "callwarden_campaign": CAMPAIGN})
    return FsCall("127.0.0.1", port, profile=profile).run(timeout=15)


def test_one_endpoint_for_both_pbxes(tmp_path, seeded_url, ami, esl_server) -> None:
    serve = Serve(tmp_path, stack_config(tmp_path, seeded_url, ami_port=ami.port,
                                         esl_port=esl_server.address[1]))
    try:
        report = serve.health_until(200)
        assert set(report["checks"]) == {"store", "asterisk.ami", "freeswitch.adapter",
                                         "freeswitch.esl_inbound"}
        allowed = agi_call(serve, CONSENTED)
        denied = agi_call(serve, REFUSED)
        assert (allowed["CALLWARDEN_DECISION"], denied["CALLWARDEN_DECISION"]) == ("allow", "deny")
        fs_allowed = fs_call(serve, CONSENTED)
        fs_denied = fs_call(serve, REFUSED)
        assert fs_allowed.variables_set["callwarden_decision"] == "allow"
        assert fs_denied.variables_set["callwarden_decision"] == "deny" and fs_denied.hung_up

        m = samples(serve.metrics_port)  # also proves no series is exposed twice
        for pbx, first in (("asterisk", denied["CALLWARDEN_REASONS"].split(",")[0]),
                           ("freeswitch", fs_denied.variables_set["callwarden_reasons"].split(",")[0])):
            common = {"pbx": pbx, "route": "outbound"}
            assert value(m, "callwarden_decisions_total", **common, decision="allow",
                         reason="none", let_through="true") == 1, pbx
            assert value(m, "callwarden_decisions_total", **common, decision="deny",
                         reason=first, let_through="false") == 1, pbx
            assert value(m, "callwarden_decision_duration_seconds_count", **common) == 2, pbx
        assert value(m, "callwarden_sessions_open", pbx="asterisk", server="fastagi") == 0
        assert value(m, "callwarden_sessions_open", pbx="freeswitch", server="esl_outbound") == 0
        assert value(m, "callwarden_pbx_link_up", pbx="asterisk", link="ami") == 1
        assert value(m, "callwarden_pbx_link_up", pbx="freeswitch", link="esl_inbound") == 1
        assert value(m, "callwarden_adapter_up", pbx="freeswitch") == 1
        assert value(m, "callwarden_info", version="0.1.0", mode="enforce") == 1

        # the inbound event socket goes away: unhealthy, and healthy again once it is back
        esl_server.stop()
        report = serve.health_until(503)
        assert report["failed"] == ["freeswitch.esl_inbound"]
        assert value(samples(serve.metrics_port), "callwarden_pbx_link_up", pbx="freeswitch",
                     link="esl_inbound") == 0
        esl_server.start()
        serve.health_until(200)

        # the FreeSWITCH adapter process dies: unhealthy until the supervisor restarts it
        started = serve.events("freeswitch_adapter_started")
        os.kill(started[-1]["pid"], signal.SIGKILL)
        report = serve.health_until(503, timeout=10)
        assert "freeswitch.adapter" in report["failed"]
        assert value(samples(serve.metrics_port), "callwarden_adapter_up", pbx="freeswitch") == 0
        serve.health_until(200, timeout=30)
        assert len(serve.events("freeswitch_adapter_started")) == len(started) + 1
    finally:
        assert serve.stop() == 0


def test_freeswitch_only_process_serves_its_own_endpoint(tmp_path, seeded_url, esl_server) -> None:
    """No asterisk: section: `serve` becomes the gevent FreeSWITCH process, which serves
    /metrics and /healthz itself (store probes in a native thread)."""
    serve = Serve(tmp_path, stack_config(tmp_path, seeded_url, ami_port=None,
                                         esl_port=esl_server.address[1]))
    try:
        report = serve.health_until(200)
        assert set(report["checks"]) == {"store", "freeswitch.esl_inbound"}
        result = fs_call(serve, REFUSED)
        reasons = result.variables_set["callwarden_reasons"].split(",")
        m = samples(serve.metrics_port)
        assert value(m, "callwarden_decisions_total", pbx="freeswitch", route="outbound",
                     decision="deny", reason=reasons[0], let_through="false") == 1
        assert value(m, "callwarden_pbx_link_up", pbx="freeswitch", link="esl_inbound") == 1
        assert value(m, "callwarden_recording_failures_total") == 0
        assert ("process_start_time_seconds", frozenset()) in m
        esl_server.stop()
        assert serve.health_until(503)["failed"] == ["freeswitch.esl_inbound"]
    finally:
        assert serve.stop() == 0


def test_observe_mode_end_to_end(tmp_path, seeded_url, ami, esl_server) -> None:
    """mode: observe through both real adapters: the denied calls go on (and are recorded),
    the CDRs keep the would-be decision, and the metrics count them as let through."""
    serve = Serve(tmp_path, stack_config(tmp_path, seeded_url, ami_port=ami.port,
                                         esl_port=esl_server.address[1], mode="observe"))
    try:
        serve.health_until(200)
        agi = agi_call(serve, REFUSED)
        assert (agi["CALLWARDEN_DECISION"], agi["CALLWARDEN_ENFORCED"]) == ("deny", "no")
        fs = fs_call(serve, REFUSED)
        assert fs.variables_set["callwarden_decision"] == "deny"
        assert fs.variables_set["callwarden_enforced"] == "no"
        assert fs.resume_sent and not fs.hung_up and fs.recordings

        engine = create_engine(seeded_url)
        try:
            with Session(engine) as s:
                rows = s.scalars(select(Call).where(Call.direction == "outbound")).all()
        finally:
            engine.dispose()
        assert sorted(r.pbx for r in rows) == ["asterisk", "freeswitch"]
        for row in rows:
            assert row.decision == "deny" and row.enforced is False
            assert "CALLEE_REFUSED" in row.reasons.split(",") and row.recording_id is not None

        m = samples(serve.metrics_port)
        assert value(m, "callwarden_info", version="0.1.0", mode="observe") == 1
        for pbx, reasons in (("asterisk", agi["CALLWARDEN_REASONS"]),
                             ("freeswitch", fs.variables_set["callwarden_reasons"])):
            assert value(m, "callwarden_decisions_total", pbx=pbx, route="outbound",
                         decision="deny", reason=reasons.split(",")[0], let_through="true") == 1
    finally:
        assert serve.stop() == 0


def test_detector_passes_inside_serve_are_counted(tmp_path, seeded_url, ami) -> None:
    serve = Serve(tmp_path, stack_config(tmp_path, seeded_url, ami_port=ami.port, esl_port=None,
                                         policing={"enabled": True, "interval_s": 5}))
    try:
        serve.health_until(200)
        serve.first_detector_pass()
        m = samples(serve.metrics_port)
        assert value(m, "callwarden_detector_last_success_timestamp_seconds") > time.time() - 60
        # the alerts that pass raised (the seeded registry lacks some proofs) are counted from
        # the audit log, like anything a `callwarden police --once` timer would raise
        engine = create_engine(seeded_url)
        try:
            with Session(engine) as s:
                raised = len(s.scalars(select(Alert)).all())
        finally:
            engine.dispose()
        assert raised > 0
        deadline = time.monotonic() + 15  # audit counts are re-read at most every 5 s
        while value(samples(serve.metrics_port), "callwarden_policing_alerts_total") != raised:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert value(m, "callwarden_purged_total", kind="recording") == 0
    finally:
        assert serve.stop() == 0


def test_freeswitch_only_serve_runs_the_detector(tmp_path, seeded_url, esl_server) -> None:
    """Without asterisk:, `serve` is the gevent FreeSWITCH process: the detector runs there (a
    native thread), is counted on that process's own endpoint, and stops with it."""
    serve = Serve(tmp_path, stack_config(tmp_path, seeded_url, ami_port=None,
                                         esl_port=esl_server.address[1],
                                         policing={"enabled": True, "interval_s": 5}))
    try:
        serve.health_until(200)
        serve.first_detector_pass()
        assert [e.get("runner") for e in serve.events("policing_started")] == ["thread"]
        engine = create_engine(seeded_url)
        try:
            with Session(engine) as s:
                assert s.scalars(select(Alert)).all(), "the pass raised the seeded registry's alerts"
        finally:
            engine.dispose()
        # calls are still answered while the detector thread runs
        assert fs_call(serve, REFUSED).variables_set["callwarden_decision"] == "deny"
    finally:
        assert serve.stop() == 0
    assert serve.events("policing_pass"), "a pass must have been logged"
