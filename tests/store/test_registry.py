"""Registry import/export: idempotent, all or nothing, errors that name entry and field."""

from __future__ import annotations

import copy

import pytest
import yaml
from sqlalchemy import func, select

from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.store.models import AuditEntry, Campaign, Consent, Refusal, Tenant
from callwarden.store.registry import (
    Registry,
    RegistryError,
    export_document,
    import_refusals_bulk,
    iter_dnc_numbers,
)
from tests.conftest import EXAMPLE_REGISTRY

DOC = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))


def load(url, doc):
    with unit_of_work(make_sessionmaker(make_engine(url))) as s:
        return Registry(s, "admin").import_document(doc)


def count(url, model):
    with make_sessionmaker(make_engine(url))() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_import_twice_changes_nothing_the_second_time(store_url):
    first = load(store_url, DOC)
    assert first["tenants.created"] == 2 and first["numbers.created"] == 3
    audit_rows = count(store_url, AuditEntry)
    second = load(store_url, DOC)
    assert not any(k.endswith((".created", ".updated")) for k in second)
    assert count(store_url, AuditEntry) == audit_rows


def test_export_round_trips(store_url):
    load(store_url, DOC)
    with make_sessionmaker(make_engine(store_url))() as s:
        exported = export_document(s)
    again = load(store_url, yaml.safe_load(yaml.safe_dump(exported, allow_unicode=True)))
    assert not any(k.endswith((".created", ".updated")) for k in again), again
    assert {n["number"] for n in exported["numbers"]} == {"95512", "4008001234", "01058001234"}
    assert exported["consents"][1]["callee"] == "13900139001"  # stored canonical


@pytest.mark.parametrize(("mutate", "where", "message"), [
    (lambda d: d["numbers"][1].update(tenant="nobody"), "numbers[1].tenant", "unknown tenant 'nobody'"),
    (lambda d: d["numbers"][0].update(number="95x12"), "numbers[0].number", "not a telephone number"),
    (lambda d: d["consents"][0].update(scope=["marketing"]), "consents[0].scope.0", "callback"),
    (lambda d: d["consents"][0].update(obtained_at="2026-01-05T10:00:00"), "consents[0].obtained_at", "time zone"),
    (lambda d: d["campaigns"][0].update(purpose="marketing"), "campaigns[0].purpose", "marketing campaigns are not allowed"),
    (lambda d: d["tenants"][0].update(colour="red"), "tenants[0].colour", "unknown field"),
    (lambda d: d.update(phones=[]), "phones", "unknown section"),
])
def test_a_bad_entry_names_itself_and_nothing_is_imported(store_url, mutate, where, message):
    doc = copy.deepcopy(DOC)
    mutate(doc)
    with pytest.raises(RegistryError) as e:
        load(store_url, doc)
    assert e.value.where == where and message in e.value.message
    assert count(store_url, Tenant) == 0  # all or nothing


def test_marketing_wording_is_held_for_review_and_a_reviewer_can_approve(store_url):
    load(store_url, DOC)
    factory = make_sessionmaker(make_engine(store_url))
    with factory() as s:
        held = s.get(Campaign, ("acme", "spring-promo"))
        assert held.status == "review" and "discount" in held.classifier_matches
    with unit_of_work(factory) as s:
        Registry(s, "reviewer").review_campaign("acme", "spring-promo", True, "existing card holders only")
    load(store_url, DOC)  # re-import of the same text keeps the reviewer's approval
    with factory() as s:
        assert s.get(Campaign, ("acme", "spring-promo")).status == "approved"


def test_a_stale_file_does_not_lift_a_suspension(store_url):
    load(store_url, DOC)
    factory = make_sessionmaker(make_engine(store_url))
    with unit_of_work(factory) as s:
        Registry(s, "admin").set_tenant_status("acme", "suspended", "unconsented calls")
    counts = load(store_url, DOC)
    assert counts["tenants.kept_suspended"] == 1
    with factory() as s:
        assert s.get(Tenant, "acme").status == "suspended"


def test_filing_changes_start_the_refiling_clock(store_url):
    load(store_url, DOC)
    doc = copy.deepcopy(DOC)
    doc["numbers"][0]["carrier"] = "China Unicom"
    assert load(store_url, doc)["numbers.updated"] == 1
    from callwarden.store.models import AccessNumber

    with make_sessionmaker(make_engine(store_url))() as s:
        n = s.scalar(select(AccessNumber).where(AccessNumber.number == "95512"))
        assert n.filing_changed_at is not None


def test_bulk_dnc_import_streams_and_skips_duplicates(store_url):
    lines = ["number\n"] + [f"+86 137{i:08d}\n" for i in range(25_000)] + ["13700000001\n", "# note\n", "\n"]
    parsed = list(iter_dnc_numbers(iter(lines)))
    assert len(parsed) == 25_001 and all(d for _, d, _ in parsed)
    factory = make_sessionmaker(make_engine(store_url))
    with unit_of_work(factory) as s:
        added = import_refusals_bulk(s, "*", (d for _, d, _ in parsed), "national-dnc", batch=4000)
    assert added == 25_000
    with unit_of_work(factory) as s:
        assert import_refusals_bulk(s, "*", iter(["13700000002", "13800000000"]), "x") == 1
    assert count(store_url, Refusal) == 25_001


def test_dnc_lines_that_are_not_numbers_are_reported_by_line():
    out = list(iter_dnc_numbers(iter(["13700000001\n", "not-a-number\n"])))
    assert out[1][0] == 2 and out[1][1] is None and "not a telephone number" in out[1][2]


def test_consent_expiry_must_follow_obtained(store_url):
    doc = copy.deepcopy(DOC)
    doc["consents"][0]["expires_at"] = "2025-01-01T00:00:00+08:00"
    with pytest.raises(RegistryError, match=r"consents\[0\].expires_at: must be after obtained_at"):
        load(store_url, doc)
    assert count(store_url, Consent) == 0
