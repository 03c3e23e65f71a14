"""`callwarden police`, `tenants risk`, `complaints ...` and `alerts ...` as operators run them."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess

import pytest
from sqlalchemy import func, select

from callwarden.store.models import AuditEntry, Complaint
from tests.conftest import at, cli_invoker
from tests.policing.helpers import cdr, insert_calls, session_for, telemarketing

NOW = at("2026-03-02 10:30")


@pytest.fixture
def cw(tmp_path, world):
    return cli_invoker(world, tmp_path)


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stderr + p.stdout
    return p.stdout


def n_complaints(url: str) -> int:
    with session_for(url) as s:
        return s.scalar(select(func.count()).select_from(Complaint))


def audit_actions(url: str, action: str) -> list[AuditEntry]:
    with session_for(url) as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


def test_complaints_add_list_and_errors(cw, world):
    out = ok(cw("complaints", "add", "--tenant", "care", "--callee", "+86 138 0013 8000",
                "--at", "2026-03-02T09:00:00+08:00", "--source", "12321", "--note", "called twice"))
    assert "recorded" in out and "138****8000" in out and "13800138000" not in out
    again = ok(cw("complaints", "add", "--tenant", "care", "--callee", "13800138000",
                  "--at", "2026-03-02 09:00", "--source", "12321"))  # no offset: config timezone
    assert "already recorded" in again and n_complaints(world) == 1
    bad = cw("complaints", "add", "--tenant", "care", "--callee", "call me")
    assert bad.returncode == 1 and "callee: not a telephone number" in bad.stderr
    ghost = cw("complaints", "add", "--tenant", "ghost", "--callee", "13800138000")
    assert ghost.returncode == 1 and "tenant: unknown tenant 'ghost'" in ghost.stderr
    badcall = cw("complaints", "add", "--tenant", "care", "--callee", "13800138000", "--call-id", "nope")
    assert badcall.returncode == 1 and "call_id: unknown call id" in badcall.stderr
    theirs = cdr("spam", "13800138000", NOW, access="95581")
    insert_calls(world, [theirs])
    other = cw("complaints", "add", "--tenant", "care", "--callee", "13800138000", "--call-id", theirs["call_id"])
    assert other.returncode == 1 and "belongs to another tenant" in other.stderr
    assert n_complaints(world) == 1

    rows = json.loads(ok(cw("complaints", "list", "--json")))
    assert [(r["tenant"], r["callee"], r["source"]) for r in rows] == [("care", "138****8000", "12321")]
    assert audit_actions(world, "complaints.full_numbers") == []
    full = json.loads(ok(cw("complaints", "list", "--json", "--full-numbers", "--tenant", "care")))
    assert full[0]["callee"] == "13800138000" and len(audit_actions(world, "complaints.full_numbers")) == 1
    assert json.loads(ok(cw("complaints", "list", "--json", "--tenant", "spam"))) == []
    assert len(audit_actions(world, "complaints.added")) == 1


def test_complaints_import_is_all_or_nothing_and_idempotent(cw, world, tmp_path):
    call = cdr("spam", "13800000001", NOW - dt.timedelta(hours=2), access="95581")
    insert_calls(world, [call])
    good = tmp_path / "good.csv"
    good.write_text("tenant,callee,received_at,source,note,call_id\n"
                    f"spam,13800000001,2026-03-02T09:00:00+08:00,12321,robocall,{call['call_id']}\n"
                    "spam,+8613800000002,2026-03-02 09:05,carrier,,\n"
                    "care,010-5800-9999,2026-03-01,hotline,rude,\n", encoding="utf-8")
    assert "imported 3 complaint(s)" in ok(cw("complaints", "import", str(good)))
    again = ok(cw("complaints", "import", str(good)))
    assert "imported 0 complaint(s), 3 already recorded" in again and n_complaints(world) == 3

    bad = tmp_path / "bad.csv"
    bad.write_text("tenant,callee,received_at,source\n"
                   "spam,13800000003,2026-03-02T09:00:00+08:00,12321\n"
                   "spam,not-a-number,2026-03-02T09:00:00+08:00,12321\n"
                   "ghost,13800000004,2026-03-02T09:00:00+08:00,12321\n"
                   "spam,13800000005,yesterday,12321\n"
                   ",13800000006,2026-03-02,12321\n", encoding="utf-8")
    p = cw("complaints", "import", str(bad))
    assert p.returncode == 1 and "4 bad row(s), nothing was imported" in p.stderr
    for needle in ("line 3: callee: not a telephone number", "line 4: tenant: unknown tenant 'ghost'",
                   "line 5: received_at: must be an ISO-8601 time", "line 6: tenant: required"):
        assert needle in p.stderr
    assert n_complaints(world) == 3  # the good row 2 was not kept either

    missing = tmp_path / "missing.csv"
    missing.write_text("tenant,number\nspam,13800000001\n")
    p = cw("complaints", "import", str(missing))
    assert p.returncode == 1 and "missing column(s): callee, received_at" in p.stderr


def test_complaints_move_the_score(cw, tmp_path):
    before = json.loads(ok(cw("tenants", "risk", "--tenant", "care", "--json", "--now", NOW.isoformat())))
    f = tmp_path / "c.csv"
    f.write_text("tenant,callee,received_at\n" + "".join(
        f"care,1380000000{i},2026-03-0{i}T09:00:00+08:00\n" for i in (1, 2)))
    ok(cw("complaints", "import", str(f)))
    after = json.loads(ok(cw("tenants", "risk", "--tenant", "care", "--json", "--now", NOW.isoformat())))
    part = lambda d: next(c for c in d["tenants"][0]["contributions"] if c["feature"] == "complaints")  # noqa: E731
    assert part(before)["points"] == 0 and part(after)["value"] == 2 and part(after)["points"] == 10
    assert after["tenants"][0]["score"] == before["tenants"][0]["score"] + 10


def test_tenants_risk_shows_scores_figures_and_thresholds(cw, world):
    insert_calls(world, telemarketing("spam", NOW - dt.timedelta(minutes=50), NOW, random.Random(31),
                                      access="95581"))
    data = json.loads(ok(cw("tenants", "risk", "--json", "--now", NOW.isoformat())))
    assert data["thresholds"] == {"warn": 30, "suspend": 50}
    assert [t["tenant"] for t in data["tenants"]][0] == "spam"  # riskiest first
    spam = data["tenants"][0]
    assert spam["level"] == "suspend" and spam["status"] == "active"
    assert {"weight", "start", "full", "value", "sample", "points", "label"} <= set(spam["contributions"][0])
    assert spam["counts"]["attempts"] == 500 and "evidence" not in spam
    one = json.loads(ok(cw("tenants", "risk", "--tenant", "spam", "--json", "--now", NOW.isoformat())))
    assert [t["tenant"] for t in one["tenants"]] == ["spam"]
    assert one["tenants"][0]["evidence"]["samples"]["no_consent_share"]
    human = ok(cw("tenants", "risk", "--tenant", "spam", "--now", NOW.isoformat()))
    assert "thresholds: warn 30, suspend 50" in human and "no_consent_share" in human
    assert "sequential run: 138****0001 .. 138****0500 (500 callees)" in human
    assert "WEIGHT" in human and "POINTS" in human
    ghost = cw("tenants", "risk", "--tenant", "ghost")
    assert ghost.returncode == 1 and "not found" in ghost.stderr
    # read-only: nothing was suspended by looking
    assert {t["id"]: t["status"] for t in json.loads(ok(cw("tenants", "list", "--json")))}["spam"] == "active"


def test_police_once_dry_run_then_for_real_then_alerts(cw, world):
    insert_calls(world, telemarketing("spam", NOW - dt.timedelta(minutes=50), NOW, random.Random(41),
                                      access="95581"))
    dry = ok(cw("police", "--once", "--dry-run", "--now", NOW.isoformat()))
    assert "dry run: nothing written" in dry and "would raise risk_suspend [suspend] spam" in dry
    assert json.loads(ok(cw("alerts", "list", "--json"))) == []
    real = json.loads(ok(cw("police", "--once", "--now", NOW.isoformat(), "--json")))
    assert real["ran"] and real["suspended"] == ["spam"] and len(real["raised"]) == 1
    assert json.loads(ok(cw("police", "--once", "--now", NOW.isoformat(), "--json")))["raised"] == []
    tenants = {t["id"]: t for t in json.loads(ok(cw("tenants", "list", "--json")))}
    assert tenants["spam"]["status"] == "suspended" and "alert #" in tenants["spam"]["status_reason"]

    listed = json.loads(ok(cw("alerts", "list", "--json", "--open")))
    assert [(a["tenant"], a["kind"], a["level"]) for a in listed] == [("spam", "risk_suspend", "suspend")]
    alert_id = listed[0]["id"]
    shown = json.loads(ok(cw("alerts", "show", str(alert_id))))
    assert shown["details"]["contributions"] and shown["details"]["evidence"]["samples"]
    assert cw("alerts", "show", "999").returncode == 1
    unknown = cw("alerts", "ack", str(alert_id), "999")
    assert unknown.returncode == 1 and "unknown alert(s): 999" in unknown.stderr
    assert "acknowledged" in ok(cw("alerts", "ack", str(alert_id), "--note", "called the customer"))
    assert "already acknowledged by tester" in ok(cw("alerts", "ack", str(alert_id)))
    assert json.loads(ok(cw("alerts", "list", "--json", "--open"))) == []
    acks = audit_actions(world, "alerts.acknowledged")
    assert len(acks) == 1 and acks[0].actor == "tester" and "called the customer" in acks[0].details
    # acknowledging is not resuming; resuming is the administrator's, and audited
    assert {t["id"]: t["status"] for t in json.loads(ok(cw("tenants", "list", "--json")))}["spam"] == "suspended"
    ok(cw("tenants", "resume", "spam", "--reason", "customer retrained, lists purged"))
    resumed = [e for e in audit_actions(world, "tenants.status") if '"to":"active"' in e.details]
    assert len(resumed) == 1 and resumed[0].actor == "tester"


def test_police_usage_errors(cw):
    p = cw("police", "--dry-run")
    assert p.returncode == 2 and "--dry-run and --now need --once" in p.stderr
    p = cw("police", "--once", "--now", "soon")
    assert p.returncode == 2 and "--now" in p.stderr
