"""§2(2) re-filing deadlines and §5(1)1 proof documents: listed, and alerted once."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from callwarden.policing.filing import all_findings
from callwarden.store.models import AccessNumber, Alert, Tenant
from callwarden.store.registry import Registry, validate_entry
from tests.conftest import at, seed
from tests.policing.helpers import registry_doc, session_for

CHANGED = at("2026-03-02 15:00")  # a Monday; 10 working days later is Monday 2026-03-16


def change_filing(url: str, number: str, when: dt.datetime = CHANGED, filed_on: dt.date | None = None) -> None:
    """The registry marks a filing change (carrier changed) and we place it at ``when``."""
    with session_for(url) as s:
        n = s.scalar(select(AccessNumber).where(AccessNumber.number == number))
        entry = validate_entry("numbers", 0, {
            "number": n.as_filed, "tenant": n.tenant_id, "carrier": "China Mobile", "purpose": n.purpose,
            "inbound": n.inbound, "outbound": n.outbound, "filing": n.filing_ref,
            "filed_on": (filed_on or n.filed_on).isoformat()})
        Registry(s, "admin").number(entry)
        assert n.filing_changed_at is not None  # the registry starts the clock itself
        n.filing_changed_at = when


def kinds(findings) -> list[tuple[str, str, str]]:
    return sorted((f.kind, f.tenant_id, f.subject) for f in findings)


@pytest.fixture
def filed(store_url) -> str:
    seed(store_url, registry_doc("care", "spam"))
    return store_url


@pytest.mark.parametrize(("now", "overdue"), [
    ("2026-03-16 23:59", False),  # the 10th working day: still in time
    ("2026-03-17 00:01", True),
])
def test_refiling_is_due_within_ten_working_days(filed, make_settings, now, overdue):
    change_filing(filed, "95580")
    settings = make_settings(filed)
    with session_for(filed) as s:
        found = all_findings(s, settings, at(now))
    assert kinds(found) == ([("filing_overdue", "care", "95580")] if overdue else [])
    if overdue:
        f = found[0]
        assert (f.facts["changed_on"], f.facts["due_on"], f.facts["working_days_overdue"]) == \
            ("2026-03-02", "2026-03-16", 1)
        assert "re-filing was due by 2026-03-16" in f.detail


def test_holidays_and_make_up_days_move_the_deadline(filed, make_settings):
    change_filing(filed, "95580")
    holiday = make_settings(filed, calling_hours={"holidays": ["2026-03-04"]})
    extra = make_settings(filed, policing={"refiling": {"holidays": ["2026-03-05"]}})
    make_up = make_settings(filed, policing={"refiling": {"workdays": ["2026-03-07"]}})
    with session_for(filed) as s:
        assert all_findings(s, holiday, at("2026-03-17 12:00")) == []
        assert kinds(all_findings(s, holiday, at("2026-03-18 00:01"))) == [("filing_overdue", "care", "95580")]
        assert all_findings(s, extra, at("2026-03-17 12:00")) == []
        assert kinds(all_findings(s, make_up, at("2026-03-16 09:00"))) == [("filing_overdue", "care", "95580")]


def test_a_new_filing_on_or_after_the_change_clears_it(filed, make_settings):
    change_filing(filed, "95580", filed_on=dt.date(2026, 3, 5))
    with session_for(filed) as s:
        assert all_findings(s, make_settings(filed), at("2026-04-30 12:00")) == []


def test_missing_filings_and_proofs_are_listed(store_url, make_settings):
    doc = registry_doc("care", "spam", proofs=False)
    doc["numbers"].append({"number": "4001234567", "tenant": "care", "inbound": True})  # never filed
    doc["trunks"][1]["proof"] = None  # spam's trunk: no proof reference either
    doc["proofs"] = [{"tenant": "care", "kind": "number", "subject": "95580", "ref": "CERT-1"}]
    doc["tenants"].append({"id": "gone", "name": "Gone Ltd.", "status": "terminated"})
    doc["numbers"].append({"number": "95599", "tenant": "gone", "filing": "BA-X"})
    seed(store_url, doc)  # the terminated tenant's unproven number is not listed
    with session_for(store_url) as s:
        found = all_findings(s, make_settings(store_url), at("2026-03-02 10:00"))
        assert kinds(found) == [
            ("filing_missing", "care", "4001234567"),
            ("proof_missing", "care", "4001234567"),
            ("proof_missing", "spam", "95581"),
            ("proof_missing", "spam", "trunk-spam"),
        ]
        trunk = next(f for f in found if f.subject == "trunk-spam")
        assert trunk.subject_kind == "trunk" and trunk.facts == {"verified": True}
        only_care = all_findings(s, make_settings(store_url), at("2026-03-02 10:00"), ["care"])
        assert {f.tenant_id for f in only_care} == {"care"}


def test_findings_raise_warn_alerts_once_and_tenants_risk_lists_them(store_url, make_settings):
    from callwarden.policing.runner import Detector
    from callwarden.store.db import make_engine

    seed(store_url, registry_doc("care", "spam", proofs=False))
    change_filing(store_url, "95580")
    d = Detector(make_settings(store_url), engine=make_engine(store_url))
    try:
        now = at("2026-03-20 10:00")
        first = d.run_pass(now=now)
        raised = sorted((r.planned.kind, r.planned.tenant_id) for r in first.raised)
        assert raised == [("filing_overdue", "care"), ("proof_missing", "care"), ("proof_missing", "spam")]
        assert all(r.planned.level == "warn" and not r.suspended for r in first.raised)
        assert d.run_pass(now=now + dt.timedelta(days=2)).raised == []
        assert {f.kind for f in d.assess(now).findings} == {"filing_overdue", "proof_missing"}
        with session_for(store_url) as s:
            assert s.get(Tenant, "care").status == "active"  # findings never suspend
            overdue = s.scalar(select(Alert).where(Alert.kind == "filing_overdue"))
            assert overdue.tenant_id == "care" and "working day(s) overdue" in overdue.details
    finally:
        d.engine.dispose()
