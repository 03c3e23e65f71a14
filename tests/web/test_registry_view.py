"""``export_document(tenant=, limit=)``: the registry view's per-tenant, bounded query."""

from __future__ import annotations

from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.registry import export_document


def test_export_document_for_one_tenant_and_bounded(seeded_url):
    with make_sessionmaker(make_engine(seeded_url))() as s:
        whole = export_document(s)
        beta = export_document(s, tenant="beta")
        one = export_document(s, limit=1)
    assert [t["id"] for t in beta["tenants"]] == ["beta"]
    for sec, rows in beta.items():
        if sec != "tenants":
            assert all(r["tenant"] == "beta" for r in rows), sec
    assert beta["trunks"] and len(beta["trunks"]) < len(whole["trunks"])
    assert all(len(rows) <= 1 for rows in one.values())
    assert one["tenants"] == whole["tenants"][:1]
