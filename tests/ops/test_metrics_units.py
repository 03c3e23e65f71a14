"""The pieces behind /metrics and /healthz, each on its own: the decision observer, the merge
of a child process's report, the audit-log counters, the health report, `callwarden health`."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from pathlib import Path

import yaml
from click.testing import CliRunner
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from callwarden.cli.main import cli
from callwarden.metrics import Metrics
from callwarden.ops.auditcount import TRACKED, AuditCollector, AuditCounter
from callwarden.ops.bridge import ChildReport, MergedRegistry, decode_report, encode_report
from callwarden.ops.health import CheckResult, Health
from callwarden.ops.http import make_app, serve_in_thread
from callwarden.ops.runtime import LinkState, ServerState
from callwarden.ops.service import probe_engine
from callwarden.policy import denial
from callwarden.policy.decide import Decision
from callwarden.service.enforcer import Outcome
from callwarden.store import audit
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from tests.ops.helpers import free_port

ALLOW = Outcome("c1", Decision(True, (), "callback"), let_through=True)
DENY = Outcome("c2", denial("NO_CONSENT", "QUIET_HOURS"), let_through=False)


def exposition(registry) -> dict[tuple[str, frozenset], float]:  # type: ignore[no-untyped-def,type-arg]
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, key
            out[key] = s.value
    return out


def test_the_observer_counts_decisions_reasons_and_latency() -> None:
    m = Metrics(mode="enforce", process_metrics=False)
    m.decided("outbound", "asterisk", ALLOW, 0.004)
    m.decided("outbound", "asterisk", ALLOW, 0.2)
    m.decided("outbound", "asterisk", DENY, 0.003)
    x = exposition(m.registry)
    base = {"pbx": "asterisk", "route": "outbound"}
    assert x[("callwarden_decisions_total", frozenset({**base, "decision": "allow", "reason": "none",
                                                       "let_through": "true"}.items()))] == 2
    assert x[("callwarden_decisions_total", frozenset({**base, "decision": "deny",
                                                       "reason": DENY.decision.codes[0],
                                                       "let_through": "false"}.items()))] == 1
    for code in ("NO_CONSENT", "QUIET_HOURS"):
        assert x[("callwarden_decision_reasons_total", frozenset({**base, "reason": code}.items()))] == 1
    assert x[("callwarden_decision_duration_seconds_bucket", frozenset({**base, "le": "0.005"}.items()))] == 2
    assert x[("callwarden_decision_duration_seconds_bucket", frozenset({**base, "le": "0.25"}.items()))] == 3
    assert x[("callwarden_decision_duration_seconds_count", frozenset(base.items()))] == 3
    # its own registry: a second Metrics starts from zero
    assert ("callwarden_decisions_total", frozenset({**base, "decision": "allow", "reason": "none",
            "let_through": "true"}.items())) not in exposition(Metrics(mode="enforce").registry)


def test_a_broken_observer_never_breaks_a_decision(monkeypatch) -> None:
    m = Metrics(mode="enforce", process_metrics=False)

    def boom(*_a: object) -> None:
        raise RuntimeError("metrics bug")

    monkeypatch.setattr(m.latency, "labels", boom)
    m.decided("outbound", "asterisk", ALLOW, 0.01)  # must not raise
    m.decided("outbound", "asterisk", ALLOW, 0.01)
    assert m._failed


def test_runtime_readers_that_fail_do_not_break_a_scrape() -> None:
    m = Metrics(mode="enforce", process_metrics=False)
    m.runtime.add_server(ServerState("asterisk", "fastagi", lambda: 1 // 0))
    m.runtime.add_link(LinkState("asterisk", "ami", "127.0.0.1:5038", lambda: 1 // 0))
    x = exposition(m.registry)
    assert ("callwarden_sessions_open", frozenset({"pbx": "asterisk", "server": "fastagi"}.items())) not in x
    assert x[("callwarden_pbx_link_up", frozenset({"pbx": "asterisk", "link": "ami"}.items()))] == 0


def _child_socket(tmp_path: Path, payload: bytes) -> tuple[str, threading.Thread]:
    path = str(tmp_path / "child.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.sendall(payload)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return path, thread


def test_a_child_report_is_merged_without_duplicate_series(tmp_path) -> None:
    parent = Metrics(mode="enforce", process_metrics=False)
    parent.decided("outbound", "asterisk", ALLOW, 0.01)
    child = Metrics(mode="enforce", process_metrics=False)
    child.decided("outbound", "freeswitch", DENY, 0.02)
    child.runtime.add_server(ServerState("freeswitch", "esl_outbound", lambda: 3))
    child.runtime.add_link(LinkState("freeswitch", "esl_inbound", "127.0.0.1:8021", lambda: True, lambda: 2))
    payload = encode_report(child.registry, child.runtime)
    report = decode_report(payload)
    assert [(x.name, x.up, x.connects) for x in report.links] == [("esl_inbound", True, 2)]
    path, _ = _child_socket(tmp_path, payload)
    merged = MergedRegistry(parent.registry, [ChildReport(path)])
    x = exposition(merged)  # would fail on a series exposed twice (callwarden_info is in both)
    assert x[("callwarden_sessions_open", frozenset({"pbx": "freeswitch", "server": "esl_outbound"}.items()))] == 3
    assert x[("callwarden_decision_duration_seconds_bucket", frozenset(
        {"pbx": "freeswitch", "route": "outbound", "le": "+Inf"}.items()))] == 1
    assert x[("callwarden_decision_duration_seconds_count", frozenset(
        {"pbx": "asterisk", "route": "outbound"}.items()))] == 1
    assert x[("callwarden_adapter_up", frozenset({"pbx": "freeswitch"}.items()))] == 1
    # the child is gone: its series disappear, the gauge says so
    x = exposition(MergedRegistry(parent.registry, [ChildReport(str(tmp_path / "gone.sock"))]))
    assert x[("callwarden_adapter_up", frozenset({"pbx": "freeswitch"}.items()))] == 0
    assert not any(labels and ("pbx", "freeswitch") in labels and name != "callwarden_adapter_up"
                   for name, labels in x)


def test_child_health_checks_name_what_failed(tmp_path) -> None:
    child = Metrics(mode="enforce", process_metrics=False)
    child.runtime.add_link(LinkState("freeswitch", "esl_inbound", "127.0.0.1:8021", lambda: False))
    path, _ = _child_socket(tmp_path, encode_report(child.registry, child.runtime))
    checks = ChildReport(path).health_checks(["esl_inbound"])
    assert checks["freeswitch.adapter"]().ok
    result = checks["freeswitch.esl_inbound"]()
    assert not result.ok and result.detail == "not connected to 127.0.0.1:8021"
    dead = ChildReport(str(tmp_path / "nobody.sock")).health_checks(["esl_inbound"])
    assert not dead["freeswitch.adapter"]().ok and not dead["freeswitch.esl_inbound"]().ok


def test_audit_counts_are_incremental_and_cross_process(sqlite_url, make_settings) -> None:
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    t0 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)
    with unit_of_work(sessions) as s:  # as another process (the recording service) writes them
        audit.append(s, "pbx:asterisk", "recording_failed", "call-1", {}, at=t0)
        audit.append(s, "pbx:asterisk", "decision", "call-2", {}, at=t0)
    counter = AuditCounter(probe_engine(make_settings(sqlite_url)), TRACKED, min_interval_s=0)
    collector = AuditCollector(counter)

    def read() -> dict[str, float]:
        return {f.name + repr(sorted(s.labels.items())): s.value
                for f in collector.collect() for s in f.samples}

    first = read()
    assert first["callwarden_recording_failures[]"] == 1
    assert first["callwarden_purged[('kind', 'recording')]"] == 0
    with unit_of_work(sessions) as s:
        audit.append(s, "pbx:freeswitch", "recording_failed", "call-3", {}, at=t0)
        audit.append(s, "admin", "recording_purged", "call-4", {}, at=t0 + dt.timedelta(hours=1))
    second = read()
    assert second["callwarden_recording_failures[]"] == 2
    assert second["callwarden_purged[('kind', 'recording')]"] == 1
    assert second["callwarden_purge_last_deletion_timestamp_seconds[('kind', 'recording')]"] == (
        t0 + dt.timedelta(hours=1)).timestamp()
    assert second["callwarden_purged[('kind', 'cdr')]"] == 0
    assert "callwarden_purge_last_deletion_timestamp_seconds[('kind', 'cdr')]" not in second
    engine.dispose()


def test_health_report_names_failures_and_survives_a_broken_check() -> None:
    calls = {"n": 0}

    def counted() -> CheckResult:
        calls["n"] += 1
        return CheckResult(True, "fine")

    health = Health({"good": counted, "bad": lambda: CheckResult(False, "down"),
                     "broken": lambda: 1 // 0}, cache_s=60)  # type: ignore[dict-item,return-value]
    healthy, body = health.report()
    assert not healthy and body["failed"] == ["bad", "broken"] and body["status"] == "unhealthy"
    assert body["checks"]["broken"] == {"ok": False, "detail": "check failed: ZeroDivisionError"}
    health.report()
    assert calls["n"] == 1, "a probe burst is answered from the cached report"


def test_health_command_exit_status(tmp_path) -> None:
    state = {"ok": True}
    health = Health({"store": lambda: CheckResult(state["ok"], "x")}, cache_s=0)
    server = serve_in_thread("127.0.0.1", 0, make_app(Metrics(mode="enforce").registry, health))
    try:
        config = tmp_path / "cw.yaml"
        config.write_text(yaml.safe_dump({"metrics": {"host": "0.0.0.0", "port": server.port},
                                          "logging": {"format": "console", "level": "warning"}}))
        runner = CliRunner()
        ok = runner.invoke(cli, ["--config", str(config), "health"])
        assert ok.exit_code == 0 and json.loads(ok.stdout)["status"] == "ok"
        state["ok"] = False
        bad = runner.invoke(cli, ["--config", str(config), "health"])
        assert bad.exit_code == 1 and json.loads(bad.stdout)["failed"] == ["store"]
    finally:
        server.close()
    gone = CliRunner().invoke(cli, ["health", "--url", f"http://127.0.0.1:{free_port()}/healthz",
                                    "--timeout", "1"])
    assert gone.exit_code == 1 and "does not answer" in gone.stderr


def test_endpoint_answers_only_what_it_serves() -> None:
    from tests.ops.helpers import http_get

    server = serve_in_thread("127.0.0.1", 0, make_app(Metrics(mode="enforce").registry, Health()))
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert http_get(base + "/nothing")[0] == 404
        status, ctype, body = http_get(base + "/metrics")
        assert status == 200 and "callwarden_info" in body
        assert http_get(base + "/healthz")[0] == 200  # no checks: healthy
    finally:
        server.close()


def test_detector_passes_are_counted_by_outcome() -> None:
    from callwarden.policing.runner import PassResult

    m = Metrics(mode="enforce", process_metrics=False)
    now = dt.datetime.now(dt.UTC)
    m.detector_pass(PassResult(now, False, ran=True, duration_s=0.25))
    m.detector_pass(PassResult(now, False, ran=False, skipped="another node is running a pass"))
    m.detector_pass(None)
    x = exposition(m.registry)
    for outcome in ("ok", "skipped", "failed"):
        assert x[("callwarden_detector_runs_total", frozenset({("outcome", outcome)}))] == 1
    assert x[("callwarden_detector_last_duration_seconds", frozenset())] == 0.25
    assert abs(x[("callwarden_detector_last_success_timestamp_seconds", frozenset())]
               - now.timestamp()) < 60
