"""Several nodes, one store: one pass at a time, and nothing raised twice."""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import threading
import time

import yaml
from sqlalchemy import func, select

from callwarden.policing import actions
from callwarden.policing.figures import Measurer
from callwarden.policing.runner import Detector
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.store.models import Alert, AuditEntry
from tests.conftest import at, seed
from tests.policing.helpers import insert_calls, registry_doc, session_for, telemarketing

NOW = at("2026-03-02 10:30")


def prepare(url: str) -> None:
    seed(url, registry_doc("care", "spam", proofs=False))  # proofs missing: 2 finding alerts too
    insert_calls(url, telemarketing("spam", NOW - dt.timedelta(minutes=50), NOW, random.Random(11),
                                    access="95581"))


def counts(url: str) -> tuple[int, int, int, int]:
    with session_for(url) as s:
        n_alerts = s.scalar(select(func.count()).select_from(Alert))
        n_keys = s.scalar(select(func.count(func.distinct(Alert.dedup_key))))
        n_audit = s.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "policing.alert"))
        n_status = s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "tenants.status", AuditEntry.subject == "spam"))
    return n_alerts, n_keys, n_audit, n_status


def run_two(detectors: list[Detector]) -> list:
    results: list = [None, None]
    errors: list[BaseException] = []
    go = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            go.wait()
            results[i] = detectors[i].run_pass(now=NOW)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_two_overlapping_passes_on_postgresql_one_runs_one_skips(postgresql_url, make_settings, monkeypatch):
    prepare(postgresql_url)
    real = Measurer.measure

    def slow(self, *a, **kw):  # hold the lock long enough for the other node to try it
        out = real(self, *a, **kw)
        time.sleep(1.0)
        return out

    monkeypatch.setattr(Measurer, "measure", slow)
    nodes = [Detector(make_settings(postgresql_url), engine=make_engine(postgresql_url), run_by=f"node{i}") for i in range(2)]
    try:
        results = run_two(nodes)
    finally:
        for d in nodes:
            d.engine.dispose()
    assert sorted(r.ran for r in results) == [False, True]
    skipped = next(r for r in results if not r.ran)
    assert skipped.skipped == "another node is running a pass" and skipped.raised == []
    ran = next(r for r in results if r.ran)
    assert sorted(r.planned.kind for r in ran.raised) == ["proof_missing", "proof_missing", "risk_suspend"]
    assert counts(postgresql_url) == (3, 3, 3, 1)


def test_two_cli_processes_on_postgresql_raise_everything_exactly_once(postgresql_url, tmp_path):
    prepare(postgresql_url)
    cfg = tmp_path / "cw.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"url": postgresql_url}, "logging": {"format": "console", "level": "warning"}}))
    cmd = [sys.executable, "-m", "callwarden.cli.main", "--config", str(cfg), "police", "--once",
           "--now", NOW.isoformat()]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert counts(postgresql_url) == (3, 3, 3, 1)
    stdout = "".join(o for o, _ in outs)
    assert stdout.count("raised #") == 3 and stdout.count("tenant SUSPENDED") == 1


def test_without_the_lock_the_dedup_key_still_stops_a_double_alert(postgresql_url):
    """Two transactions applying the same plan at once (as if the lock were bypassed)."""
    prepare(postgresql_url)
    plan = [actions.PlannedAlert("proof_missing:care:number:95580", "care", "proof_missing", "warn", None,
                                 "proof_missing: number 95580", {"summary": "x"})]
    engine = make_engine(postgresql_url)
    first_in = threading.Event()
    got: dict[str, list] = {}

    def slow_first() -> None:
        with unit_of_work(make_sessionmaker(engine)) as s:
            got["a"] = actions.apply(s, plan, "node-a", {})
            first_in.set()
            time.sleep(0.5)  # the other transaction now waits on our uncommitted key

    def second() -> None:
        first_in.wait(10)
        with unit_of_work(make_sessionmaker(engine)) as s:
            got["b"] = actions.apply(s, plan, "node-b", {})

    try:
        threads = [threading.Thread(target=slow_first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        engine.dispose()
    assert len(got["a"]) == 1 and got["b"] == []
    assert counts(postgresql_url)[:3] == (1, 1, 1)


def test_concurrent_passes_on_sqlite_raise_everything_once(sqlite_url, make_settings, monkeypatch):
    prepare(sqlite_url)
    real = Measurer.measure
    both_measured = threading.Barrier(2)

    def in_step(self, *a, **kw):  # both passes plan the same alerts before either applies
        out = real(self, *a, **kw)
        both_measured.wait(30)
        return out

    monkeypatch.setattr(Measurer, "measure", in_step)
    nodes = [Detector(make_settings(sqlite_url), engine=make_engine(sqlite_url)) for _ in range(2)]
    results = run_two(nodes)
    assert all(r.ran for r in results)
    assert [len(r.planned) for r in results] == [3, 3]
    assert sorted(len(r.raised) for r in results) == [0, 3]
    assert counts(sqlite_url) == (3, 3, 3, 1)
