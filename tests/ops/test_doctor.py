"""`callwarden doctor` against a healthy installation (simulated Asterisk AMI and FreeSWITCH
event socket, a real store) and then with each check broken in turn: each must FAIL, name
what is wrong, and make the command exit 1."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text

from callwarden.cli.main import cli
from callwarden.ops import doctor
from callwarden.store.db import make_engine
from callwarden.store.migrate import upgrade
from tests.ops.helpers import AMI_SECRET, AMI_USER, free_port
from tests.sim.freeswitch import FsEventSocketServer
from tests.store.test_statistics import unanalyzed_calls

ESL_PASSWORD = "ClueCon-test"


@pytest.fixture
def esl() -> Iterator[FsEventSocketServer]:
    with FsEventSocketServer(password=ESL_PASSWORD) as server:
        yield server


@pytest.fixture
def healthy(tmp_path, store_url, ami, esl) -> dict[str, Any]:
    """The config of a complete, working installation."""
    return {
        "store": {"url": store_url},
        "recording": {"dir": str(tmp_path / "rec")},
        "logging": {"format": "console", "level": "warning"},
        "asterisk": {"agi": {"host": "127.0.0.1", "port": free_port()},
                     "ami": {"host": "127.0.0.1", "port": ami.port, "username": AMI_USER,
                             "secret": AMI_SECRET}},
        "freeswitch": {"esl_outbound": {"host": "127.0.0.1", "port": free_port()},
                       "esl_inbound": {"host": "127.0.0.1", "port": esl.address[1],
                                       "password": ESL_PASSWORD}},
        "metrics": {"host": "127.0.0.1", "port": free_port()},
    }


def run_doctor(tmp_path: Path, config: dict[str, Any] | str, *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    path = tmp_path / "doctor.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "doctor", "--timeout", "3", "--json",
                                      *args], catch_exceptions=False)
    checks = {r["check"]: r for r in json.loads(result.stdout)}
    return result.exit_code, checks


def only_failure(checks: dict[str, dict[str, str]]) -> dict[str, str]:
    failed = [r for r in checks.values() if r["status"] == "FAIL"]
    assert len(failed) == 1, failed
    return failed[0]


def with_(config: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of config with ``a.b.c`` set to value."""
    out = json.loads(json.dumps(config))
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


def test_a_healthy_installation_passes_every_check(tmp_path, healthy, esl) -> None:
    code, checks = run_doctor(tmp_path, healthy)
    assert code == 0, checks
    assert list(checks) == ["config", "store", "store schema", "audit key", "store statistics",
                            "recording area", "asterisk AMI", "freeswitch ESL", "FastAGI port",
                            "ESL outbound port", "metrics port", "clock"]
    statistics = checks.pop("store statistics")
    assert all(r["status"] == "PASS" for r in checks.values()), checks
    if healthy["store"]["url"].startswith("sqlite"):
        assert statistics["status"] == "SKIP" and "PostgreSQL only" in statistics["detail"]
    else:  # a new store: nothing to analyze yet
        assert statistics["status"] == "PASS", statistics
        assert statistics["detail"].startswith("calls: 0 rows, not analyzed yet (few rows)")
    assert "login as 'callwarden' accepted by Asterisk 22.10.1" in checks["asterisk AMI"]["detail"]
    assert "auth accepted" in checks["freeswitch ESL"]["detail"]
    assert any(c.text.startswith(f"auth {ESL_PASSWORD}") for c in esl.commands)
    assert not (tmp_path / "rec").exists(), "doctor does not create the recording directory"


def test_the_human_output_is_a_pass_fail_list(tmp_path, healthy) -> None:
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(with_(healthy, "asterisk.ami.secret", "wrong")), encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "doctor", "--timeout", "3"])
    lines = result.stdout.splitlines()
    assert result.exit_code == 1
    assert lines[0] == "callwarden doctor"
    assert any(line.lstrip().startswith("FAIL  asterisk AMI") for line in lines)
    on_sqlite = healthy["store"]["url"].startswith("sqlite")  # store statistics: PostgreSQL only
    assert lines[-1] == ("10 passed, 1 failed, 1 skipped" if on_sqlite
                         else "11 passed, 1 failed, 0 skipped")


def test_invalid_config_fails_and_skips_what_needs_it(tmp_path, healthy) -> None:
    code, checks = run_doctor(tmp_path, with_(healthy, "retention", {"recordings_days": 7}))
    assert code == 1
    assert checks["config"]["status"] == "FAIL"
    assert "retention.recordings_days" in checks["config"]["detail"]
    assert {checks[n]["status"] for n in ("store", "store schema", "audit key", "store statistics",
                                          "recording area", "clock")} == {"SKIP"}
    code, checks = run_doctor(tmp_path, with_(healthy, "timezone", "Mars/Olympus_Mons"))
    assert code == 1 and "timezone" in checks["config"]["detail"]
    code, checks = run_doctor(tmp_path, "store: [unclosed\n")
    assert code == 1 and "not valid YAML" in checks["config"]["detail"]


def test_unreachable_store_fails(tmp_path, healthy) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    code, checks = run_doctor(tmp_path, with_(healthy, "store.url", dead))
    assert code == 1
    assert checks["store"]["status"] == "FAIL" and "not reachable" in checks["store"]["detail"]
    assert checks["store schema"]["status"] == "SKIP"
    missing = tmp_path / "nothing-here.db"
    code, checks = run_doctor(tmp_path, with_(healthy, "store.url", f"sqlite:///{missing}"))
    assert code == 1 and "does not exist" in checks["store"]["detail"]
    assert not missing.exists(), "doctor must not create an empty database"


def test_a_missing_or_wrong_audit_key_fails(tmp_path, healthy) -> None:
    key = tmp_path / "elsewhere.key"
    code, checks = run_doctor(tmp_path, with_(healthy, "audit", {"key_file": str(key)}))
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "audit key" and "is missing" in failure["detail"]
    key.write_text("cd" * 32)
    code, checks = run_doctor(tmp_path, with_(healthy, "audit", {"key_file": str(key)}))
    assert only_failure(checks)["detail"].startswith(f"audit key file {key} does not match")


def test_schema_behind_head_fails(tmp_path, healthy) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(make_engine(url), "0001")
    code, checks = run_doctor(tmp_path, with_(healthy, "store.url", url))
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "store schema"
    assert "at 0001" in failure["detail"] and "callwarden db upgrade" in failure["detail"]


def test_recording_area_not_writable_or_short_of_space_fails(tmp_path, healthy) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, checks = run_doctor(tmp_path, with_(healthy, "recording.dir", str(blocker / "rec")))
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "recording area"
    assert "not a directory" in failure["detail"]
    code, checks = run_doctor(tmp_path, healthy, "--min-free-mb", str(10**12))
    failure = only_failure(checks)
    assert failure["check"] == "recording area" and "MB free, below the" in failure["detail"]


def test_ami_login_refused_or_unreachable_fails(tmp_path, healthy, ami) -> None:
    code, checks = run_doctor(tmp_path, with_(healthy, "asterisk.ami.secret", "wrong"))
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "asterisk AMI"
    assert "refused: Authentication failed" in failure["detail"]
    assert ami.server.actions_named("Login"), "a real login was attempted"
    code, checks = run_doctor(tmp_path, with_(healthy, "asterisk.ami.port", free_port()))
    assert only_failure(checks)["check"] == "asterisk AMI"
    assert "cannot connect" in checks["asterisk AMI"]["detail"]


def test_ami_port_that_is_not_asterisk_fails(tmp_path, healthy, esl) -> None:
    code, checks = run_doctor(tmp_path, with_(healthy, "asterisk.ami.port", esl.address[1]))
    assert code == 1 and "asterisk AMI" in [r["check"] for r in checks.values() if r["status"] == "FAIL"]


def test_esl_auth_refused_or_unreachable_fails(tmp_path, healthy) -> None:
    code, checks = run_doctor(tmp_path, with_(healthy, "freeswitch.esl_inbound.password", "nope"))
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "freeswitch ESL"
    assert "auth refused" in failure["detail"]
    code, checks = run_doctor(tmp_path, with_(healthy, "freeswitch.esl_inbound.port", free_port()))
    assert only_failure(checks)["check"] == "freeswitch ESL"


def test_esl_acl_rejection_fails(tmp_path, healthy, esl) -> None:
    esl.rude = True
    code, checks = run_doctor(tmp_path, healthy)
    failure = only_failure(checks)
    assert failure["check"] == "freeswitch ESL" and "ACL" in failure["detail"]


def test_a_port_held_by_another_program_fails_and_a_served_one_passes(tmp_path, healthy) -> None:
    agi_port = healthy["asterisk"]["agi"]["port"]
    holder = socket.socket()
    holder.bind(("127.0.0.1", agi_port))  # bound, never listening: nothing answers there
    try:
        code, checks = run_doctor(tmp_path, healthy)
        failure = only_failure(checks)
        assert code == 1 and failure["check"] == "FastAGI port"
        assert "another program holds the port" in failure["detail"]
    finally:
        holder.close()
    listener = socket.socket()
    listener.bind(("127.0.0.1", agi_port))
    listener.listen(1)
    try:
        code, checks = run_doctor(tmp_path, healthy)
        assert code == 0 and "accepts connections" in checks["FastAGI port"]["detail"]
    finally:
        listener.close()


def test_clock_off_the_database_fails(tmp_path, healthy, monkeypatch) -> None:
    real: Callable[[], dt.datetime] = doctor.wall_clock
    monkeypatch.setattr(doctor, "wall_clock", lambda: real() + dt.timedelta(minutes=10))
    code, checks = run_doctor(tmp_path, healthy)
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "clock"
    assert "+600" in failure["detail"] and "NTP" in failure["detail"]
    monkeypatch.setattr(doctor, "wall_clock", lambda: dt.datetime(1970, 1, 2, tzinfo=dt.UTC))
    code, checks = run_doctor(tmp_path, healthy)
    assert only_failure(checks)["check"] == "clock" and "not set" in checks["clock"]["detail"]


def test_a_calls_table_without_statistics_fails_until_db_upgrade_analyzes_it(tmp_path, healthy) -> None:
    """A restored dump brings no statistics; then the planner reads the decisions' call history
    through the wrong index (callwarden.store.statistics). Doctor says so and how to fix it;
    `db upgrade` analyzes; with autovacuum off for the table, stale statistics fail again."""
    url = healthy["store"]["url"]
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite keeps no planner statistics")
    unanalyzed_calls(url)  # autovacuum off for the table: nothing analyzes it behind our back

    code, checks = run_doctor(tmp_path, healthy)
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "store statistics"
    assert "has never been analyzed" in failure["detail"]
    assert "callwarden db upgrade" in failure["detail"] and "ANALYZE calls" in failure["detail"]

    path = tmp_path / "upgrade.yaml"
    path.write_text(yaml.safe_dump(healthy), encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "db", "upgrade"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "planner statistics refreshed (ANALYZE)" in result.output
    code, checks = run_doctor(tmp_path, healthy)
    assert code == 0, checks
    detail = checks["store statistics"]["detail"]
    assert checks["store statistics"]["status"] == "PASS"
    assert "analyzed 20" in detail and "autovacuum off" in detail, detail

    unanalyzed_calls(url)  # as many again since the ANALYZE
    code, checks = run_doctor(tmp_path, healthy)
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "store statistics"
    assert "autovacuum is off for calls" in failure["detail"]


def test_db_upgrade_on_sqlite_analyzes_nothing(tmp_path, sqlite_url) -> None:
    path = tmp_path / "upgrade.yaml"
    path.write_text(yaml.safe_dump({"store": {"url": sqlite_url}}), encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "db", "upgrade"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "ANALYZE" not in result.output
    with make_engine(sqlite_url).connect() as conn:  # no sqlite_stat1: SQLite plans by index shape
        assert conn.execute(text("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")).scalar() == 0


def test_sections_not_configured_are_skipped(tmp_path, healthy) -> None:
    config = {k: v for k, v in healthy.items() if k not in ("asterisk", "freeswitch")}
    code, checks = run_doctor(tmp_path, config)
    assert code == 0
    assert checks["asterisk AMI"]["status"] == checks["freeswitch ESL"]["status"] == "SKIP"
    assert "FastAGI port" not in checks and "ESL outbound port" not in checks


@pytest.fixture
def s3(monkeypatch) -> Iterator[str]:
    """A local S3 (moto's server on a free loopback port)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, val in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, val)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_s3_recording_store_needs_object_lock(tmp_path, healthy, s3) -> None:
    client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1")
    client.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)
    client.create_bucket(Bucket="unlocked")
    storage = {"kind": "s3", "bucket": "locked", "endpoint_url": s3, "region": "us-east-1"}
    code, checks = run_doctor(tmp_path, with_(healthy, "recording.storage", storage))
    assert code == 0 and "object lock on" in checks["recording store"]["detail"]
    code, checks = run_doctor(tmp_path, with_(healthy, "recording.storage",
                                              {**storage, "bucket": "unlocked"}))
    failure = only_failure(checks)
    assert code == 1 and failure["check"] == "recording store" and "no object lock" in failure["detail"]
    code, checks = run_doctor(tmp_path, with_(healthy, "recording.storage",
                                              {**storage, "bucket": "no-such-bucket"}))
    assert only_failure(checks)["check"] == "recording store"


def test_doctor_exit_status_from_a_real_process(tmp_path, healthy) -> None:
    """What an operator's script sees: the installed command, exit 1, FAIL on stdout."""
    import subprocess
    import sys

    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(with_(healthy, "asterisk.ami.secret", "wrong")), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "callwarden.cli.main", "--config", str(path),
                           "doctor", "--timeout", "3"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 1, proc.stderr
    assert "FAIL  asterisk AMI" in proc.stdout
