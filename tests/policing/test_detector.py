"""The detector over synthetic traffic, on SQLite and PostgreSQL: who is flagged, when, and why."""

from __future__ import annotations

import datetime as dt
import json
import random
import time

import pytest
from sqlalchemy import func, select

from callwarden.policing.scoring import ramp
from callwarden.policy import CallAttempt
from callwarden.service.enforcer import Enforcer
from callwarden.store.audit import verify_chain
from callwarden.store.models import Alert, AuditEntry, Call, Complaint, Tenant, utcnow
from callwarden.store.registry import Registry
from tests.conftest import at
from tests.policing.helpers import (
    add_complaints,
    cdr,
    clean_service,
    insert_calls,
    passes,
    random_mobile,
    session_for,
    telemarketing,
)

CARE, SPAM, EDGE = "95580", "95581", "95582"  # the tenants' access numbers (registry_doc order)


def alerts(url: str, tenant: str | None = None) -> list[Alert]:
    with session_for(url) as s:
        q = select(Alert).order_by(Alert.id)
        if tenant:
            q = q.where(Alert.tenant_id == tenant)
        return list(s.scalars(q))


def status(url: str, tenant: str) -> str:
    with session_for(url) as s:
        return s.get(Tenant, tenant).status


def audit_count(url: str, action: str, subject: str | None = None) -> int:
    with session_for(url) as s:
        q = select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)
        if subject:
            q = q.where(AuditEntry.subject == subject)
        return s.scalar(q)


def test_clean_tenant_is_never_flagged_and_the_telemarketer_is_suspended_within_the_window(
        world, police, make_settings):
    d = police()
    rng = random.Random(2020_81)
    start, end = at("2026-03-02 09:00"), at("2026-03-02 11:00")
    spam_from = at("2026-03-02 10:00")
    traffic = clean_service("care", start, end, rng, per_hour=90, access=CARE)
    traffic += telemarketing("spam", spam_from, end, rng, per_minute=6, access=SPAM)
    traffic.sort(key=lambda r: r["attempted_at"])
    inserted = 0
    suspended_at = None
    care_scores = []
    for now in passes(start, end, dt.timedelta(minutes=5)):
        batch = [r for r in traffic[inserted:] if r["attempted_at"] <= now]
        insert_calls(world, batch)
        inserted += len(batch)
        result = d.run_pass(now=now)
        care_scores.append(next(r.score for r in result.assessment.risks if r.tenant_id == "care"))
        if "spam" in result.suspended:
            suspended_at = now
    window = dt.timedelta(minutes=d.cfg.window_minutes)
    assert suspended_at is not None and spam_from < suspended_at <= spam_from + window
    assert status(world, "spam") == "suspended" and status(world, "care") == "active"
    assert alerts(world, "care") == [] and max(care_scores) < d.cfg.warn_score / 3
    kinds = [a.kind for a in alerts(world, "spam")]
    assert kinds in (["risk_suspend"], ["risk_warn", "risk_suspend"])  # each once over all the passes
    spam_alerts = [a for a in alerts(world, "spam") if a.kind == "risk_suspend"]

    # why: the alert explains itself, and its evidence is real calls of that tenant
    details = json.loads(spam_alerts[0].details)
    assert details["score"] == spam_alerts[0].score >= d.cfg.suspend_score
    assert details["thresholds"] == {"warn": d.cfg.warn_score, "suspend": d.cfg.suspend_score}
    parts = details["contributions"]
    assert sum(c["points"] for c in parts) == pytest.approx(details["score"])
    for c in parts:
        if c["note"] is None:
            assert c["points"] == pytest.approx(c["weight"] * ramp(c["value"], c["start"], c["full"]), abs=0.01)
    scoring = {c["feature"] for c in parts if c["points"] > 0}
    assert {"no_consent_share", "sequential_share", "new_callee_share", "answer_rate"} <= scoring
    samples = details["evidence"]["samples"]
    assert details["evidence"]["runs"][0]["from"].startswith("138****")
    with session_for(world) as s:
        for feature in scoring - {"complaints"}:
            ids = samples[feature]
            calls = s.scalars(select(Call).where(Call.call_id.in_(ids))).all()
            assert len(calls) == len(ids) > 0 and {c.tenant_id for c in calls} == {"spam"}
        assert all("NO_CONSENT" in c.reasons for c in
                   s.scalars(select(Call).where(Call.call_id.in_(samples["no_consent_share"]))))
        tenant = s.get(Tenant, "spam")
        assert f"alert #{spam_alerts[0].id}" in tenant.status_reason and "tenants resume" in tenant.status_reason
        assert verify_chain(s) == []
    assert audit_count(world, "policing.alert", "spam") == len(kinds)
    assert audit_count(world, "tenants.status", "spam") == 1

    # and it takes effect on the next call (every node reads the status from the store)
    enforcer = Enforcer(make_settings(world))
    try:
        d_spam = enforcer.check(CallAttempt("spam", SPAM, "13800009999", at("2026-03-02 11:01"),
                                            trunk="trunk-spam"))
        assert "TENANT_SUSPENDED" in d_spam.codes
        inbound_ok = enforcer.check(CallAttempt("care", CARE, "13800009999", at("2026-03-02 11:01"),
                                                trunk="trunk-care", purpose="callback"))
        assert "TENANT_SUSPENDED" not in inbound_ok.codes
    finally:
        enforcer.engine.dispose()


def edge_case_traffic(url: str, now: dt.datetime, no_consent: int) -> None:
    """100 attempts in the last hour by 'edge', every callee a known customer: ``no_consent``
    NO_CONSENT denials, 5 CALLEE_REFUSED, the rest answered 2-minute calls; 3 complaints.
    Score: complaints 15 + refused 10 + no_consent 15 x (k/100 - 0.05)/0.35."""
    rng = random.Random(no_consent)
    rows = []
    for i in range(100):
        t = now - dt.timedelta(minutes=59) + dt.timedelta(seconds=30 * i)
        callee = random_mobile(rng)
        rows.append(cdr("edge", callee, t - dt.timedelta(days=3), direction="inbound", access=EDGE))
        if i < no_consent:
            rows.append(cdr("edge", callee, t, access=EDGE, decision="deny", reasons="NO_CONSENT"))
        elif i < no_consent + 5:
            rows.append(cdr("edge", callee, t, access=EDGE, decision="deny", reasons="CALLEE_REFUSED"))
        else:
            rows.append(cdr("edge", callee, t, access=EDGE, billsec=120))
    insert_calls(url, rows)
    add_complaints(url, "edge", now, 3)


@pytest.mark.parametrize(("no_consent", "score", "raised"), [(16, 29.71, []), (17, 30.14, ["risk_warn"])])
def test_just_under_and_just_over_the_warn_threshold(world, police, no_consent, score, raised):
    now = at("2026-03-02 10:30")
    edge_case_traffic(world, now, no_consent)
    result = police().run_pass(now=now)
    risk = next(r for r in result.assessment.risks if r.tenant_id == "edge")
    assert risk.score == pytest.approx(score)
    assert [a.kind for a in alerts(world, "edge")] == raised
    assert status(world, "edge") == "active"


@pytest.mark.parametrize(("no_consent", "kinds", "state"),
                         [(16, ["risk_warn"], "active"), (17, ["risk_suspend"], "suspended")])
def test_just_under_and_just_over_the_suspend_threshold(world, police, no_consent, kinds, state):
    now = at("2026-03-02 10:30")
    edge_case_traffic(world, now, no_consent)
    police(warn_score=20, suspend_score=30).run_pass(now=now)
    assert [a.kind for a in alerts(world, "edge")] == kinds
    assert status(world, "edge") == state


def test_complaints_count_only_within_their_window(world, police):
    now = at("2026-03-02 10:30")
    d = police(warn_score=10, suspend_score=50)
    add_complaints(world, "care", now - dt.timedelta(days=31), 5)  # too old
    assert d.run_pass(now=now).raised == []
    add_complaints(world, "care", now, 2)  # 2 of 3: 10 points
    result = d.run_pass(now=now)
    risk = next(r for r in result.assessment.risks if r.tenant_id == "care")
    part = next(c for c in risk.contributions if c.feature == "complaints")
    assert (part.value, part.points, risk.level) == (2, 10, "warn")
    assert [r.planned.kind for r in result.raised] == ["risk_warn"]
    ev = json.loads(alerts(world, "care")[0].details)["evidence"]
    with session_for(world) as s:
        recent = s.scalars(select(Complaint.id).where(Complaint.received_at > now - dt.timedelta(days=1))).all()
    assert sorted(ev["complaint_ids"]) == sorted(recent)


def test_warnings_repeat_at_most_daily_and_nothing_is_raised_twice(world, police):
    d = police(warn_score=10, suspend_score=50)
    now = at("2026-03-02 10:30")
    add_complaints(world, "care", now, 2)
    assert [r.planned.kind for r in d.run_pass(now=now).raised] == ["risk_warn"]
    assert d.run_pass(now=now).raised == []
    assert d.run_pass(now=now + dt.timedelta(hours=3)).raised == []  # same local day
    next_day = d.run_pass(now=now + dt.timedelta(days=1))
    assert [r.planned.kind for r in next_day.raised] == ["risk_warn"]
    assert len({a.dedup_key for a in alerts(world, "care")}) == 2


def test_dry_run_writes_nothing(world, police):
    now = at("2026-03-02 10:30")
    insert_calls(world, telemarketing("spam", now - dt.timedelta(minutes=50), now, random.Random(1),
                                      access=SPAM))
    before = audit_count(world, "tenants.status")
    result = police().run_pass(now=now, dry_run=True)
    assert [p.kind for p in result.planned] == ["risk_suspend"] and result.raised == []
    assert alerts(world) == [] and status(world, "spam") == "active"
    assert audit_count(world, "tenants.status") == before and audit_count(world, "policing.alert") == 0


def test_a_resumed_tenant_starts_a_fresh_slate_and_is_suspended_again_if_it_goes_on(world, police):
    d = police()
    now = utcnow()
    insert_calls(world, telemarketing("spam", now - dt.timedelta(minutes=40), now, random.Random(3),
                                      access=SPAM))
    assert d.run_pass().suspended == ["spam"]
    with session_for(world) as s:
        Registry(s, "admin").set_tenant_status("spam", "active", "reviewed with the customer")
    resumed = utcnow()
    time.sleep(0.01)
    fresh = d.run_pass()
    assert fresh.suspended == [] and status(world, "spam") == "active"
    risk = next(r for r in fresh.assessment.risks if r.tenant_id == "spam")
    assert risk.figures.traffic.attempts == 0 and risk.figures.traffic_window.start >= resumed - dt.timedelta(seconds=1)
    # ... and it dials its list again
    again = telemarketing("spam", utcnow(), utcnow() + dt.timedelta(milliseconds=200), random.Random(4),
                          per_minute=45000, first=13900000001, access=SPAM)
    insert_calls(world, again)
    time.sleep(0.25)
    assert d.run_pass().suspended == ["spam"]
    keys = [a.dedup_key for a in alerts(world, "spam")]
    assert len(keys) == 2 and len(set(keys)) == 2 and all(k.startswith("risk_suspend:spam:") for k in keys)
    assert audit_count(world, "tenants.status", "spam") == 3  # suspended, resumed, suspended


def test_attempts_denied_while_suspended_do_not_count(world, police):
    now = at("2026-03-02 10:30")
    rows = telemarketing("spam", now - dt.timedelta(minutes=50), now, random.Random(5), access=SPAM)
    for r in rows:
        r.update(decision="deny", reasons="TENANT_SUSPENDED," + (r["reasons"] or "NO_CONSENT"),
                 answered_at=None, billsec=None, disposition=None)
    insert_calls(world, rows)
    result = police().run_pass(now=now)
    risk = next(r for r in result.assessment.risks if r.tenant_id == "spam")
    assert risk.figures.traffic.attempts == 0 and risk.score == 0 and result.raised == []


def test_observe_mode_calls_that_went_out_count_as_placed(world, police):
    """In observe mode a denied call is let through: it was made, answered or not."""
    now = at("2026-03-02 10:30")
    rows = [cdr("care", random_mobile(random.Random(i)), now - dt.timedelta(minutes=i), access=CARE,
                decision="deny", reasons="NO_CONSENT", enforced=False, answered=i % 10 == 0, billsec=9)
            for i in range(40)]
    insert_calls(world, rows)
    risk = next(r for r in police().run_pass(now=now, dry_run=True).assessment.risks if r.tenant_id == "care")
    t = risk.figures.traffic
    assert (t.attempts, t.completed, t.answered, t.no_consent, t.short) == (40, 40, 4, 40, 4)


def test_window_edges_are_measured_over_a_whole_day(world, police):
    now = at("2026-03-02 21:10")
    rng = random.Random(9)
    rows = []
    for i in range(60):  # 08:00-08:29 and 20:31-20:59: all at the edges
        t = at("2026-03-02 08:00") + dt.timedelta(seconds=29 * i) if i < 30 else \
            at("2026-03-02 20:31") + dt.timedelta(seconds=55 * (i - 30))
        callee = random_mobile(rng)
        rows.append(cdr("care", callee, t - dt.timedelta(days=1), direction="inbound", access=CARE))
        rows.append(cdr("care", callee, t, access=CARE))
    for i in range(20):  # and 20 at noon
        callee = random_mobile(rng)
        rows.append(cdr("care", callee, at("2026-03-02 12:00") + dt.timedelta(minutes=i), access=CARE))
    insert_calls(world, rows)
    risk = next(r for r in police().assess(now).risks if r.tenant_id == "care")
    edge = next(c for c in risk.contributions if c.feature == "window_edge_share")
    assert (edge.sample, edge.value) == (80, 0.75) and edge.points == 5
