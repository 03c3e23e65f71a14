"""``audit search``: every filter, alone and combined, on SQLite and PostgreSQL; paging; output
formats; masking; tenant scopes; access logging; index use."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import select, update

from callwarden.audit.access import AccessDenied, Scope, resolve_scope
from callwarden.audit.filters import FilterError, SearchFilters
from callwarden.audit.search import CSV_COLUMNS, build_query, search
from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.models import AuditEntry, Call
from tests.audit.world import World
from tests.conftest import CST

ALL = {"a1", "a2", "a3", "a4", "a5", "a6", "a7", "in1", "o1", "b1"}

CASES = [
    ({}, ALL),
    ({"tenant": "beta"}, {"b1"}),
    ({"callee": "13800138000"}, {"a1", "a2", "a3", "a4", "o1", "b1"}),
    ({"callee": "+86 138 0013 8000"}, {"a1", "a2", "a3", "a4", "o1", "b1"}),
    ({"callee": "1390013*"}, {"a5", "a7"}),
    ({"callee": "+86 1390013*"}, {"a5", "a7"}),
    ({"callee": "13900139001"}, {"a7"}),
    ({"caller": "136*"}, {"in1"}),
    ({"caller": "95512", "tenant": "acme"}, {"a1", "a2", "a3", "a4", "a5", "a6", "a7", "o1"}),
    ({"since": "2026-03-03", "until": "2026-03-03"}, {"a5", "in1", "a6"}),
    ({"since": "2026-03-02T11:00", "until": "2026-03-02T22:30"}, {"a2", "a3"}),
    ({"since": "2026-03-02T03:00:00+00:00", "until": "2026-03-02T04:00:00Z"}, {"a2"}),
    ({"since": "2026-03-05"}, {"o1"}),
    ({"until": "2026-03-02T10:30"}, {"a1", "b1"}),
    ({"direction": "inbound"}, {"in1"}),
    ({"decision": "deny"}, {"a3", "a4", "a5", "o1", "b1"}),
    ({"decision": "allow", "direction": "outbound"}, {"a1", "a2", "a6", "a7"}),
    ({"reason": "QUIET_HOURS"}, {"a4", "o1"}),
    ({"reason": "no_consent"}, {"a5", "b1"}),
    ({"reason": "NO_CONSENT", "tenant": "acme"}, {"a5"}),
    ({"decision": "deny", "reason": "FREQUENCY_EXCEEDED", "callee": "13800138000"}, {"a3", "a4"}),
    ({"reason": "FREQUENCY_EXCEEDED", "since": "2026-03-02T22:00"}, {"a4"}),
    ({"has_recording": True}, {"a1", "a2", "a6", "o1"}),
    ({"has_recording": False, "direction": "outbound", "decision": "allow"}, {"a7"}),
    ({"has_recording": True, "callee": "138*", "until": "2026-03-03"}, {"a1", "a2"}),
    ({"trunk": "cm-trunk-9"}, {"b1"}),
    ({"tenant": "acme", "direction": "outbound", "decision": "deny", "reason": "CALLEE_REFUSED",
      "callee": "13900139000", "since": "2026-03-01", "until": "2026-03-31", "has_recording": False}, {"a5"}),
    ({"tenant": "nobody"}, set()),
]


def _labels(world: World, rows) -> set[str]:
    by_id = {v: k for k, v in world.calls.items()}
    return {by_id[r["call_id"]] for r in rows}


def _search(world: World, scope: Scope | None = None, **kw):
    filters = SearchFilters.from_cli(CST, **kw)
    with make_sessionmaker(make_engine(world.url))() as s:
        return search(s, filters, scope or Scope("t"), limit=1000)


@pytest.mark.parametrize(("kw", "expected"), CASES, ids=[json.dumps(c[0], sort_keys=True) for c in CASES])
def test_filter_combinations(world, kw, expected):
    assert _labels(world, _search(world, **kw)) == expected


def test_campaign_filter(world):
    with make_sessionmaker(make_engine(world.url)).begin() as s:
        s.execute(update(Call).where(Call.call_id.in_([world.calls["a1"], world.calls["a5"]])).values(campaign="renewals"))
    assert _labels(world, _search(world, campaign="renewals")) == {"a1", "a5"}
    assert _labels(world, _search(world, campaign="renewals", decision="deny")) == {"a5"}


def test_newest_first_and_paging_covers_every_row_once(world):
    everything = _search(world)
    times = [r["attempted_at"] for r in everything]
    assert times == sorted(times, reverse=True)
    filters, pages = SearchFilters(), []
    with make_sessionmaker(make_engine(world.url))() as s:
        for offset in range(0, 12, 3):
            pages += search(s, filters, Scope("t"), limit=3, offset=offset)
    assert [r["call_id"] for r in pages] == [r["call_id"] for r in everything]


@pytest.mark.parametrize("kw", [{"reason": "NOT_A_CODE"}, {"since": "March 3rd"}, {"callee": "abc"},
                                {"callee": "x*"}, {"since": "2026-03-05", "until": "2026-03-01"},
                                {"direction": "sideways"}])
def test_bad_filters_are_refused(kw):
    with pytest.raises(FilterError):
        SearchFilters.from_cli(CST, **kw)


def test_tenant_scope_cannot_be_widened(world):
    beta = Scope("tenant-user", tenant="beta")
    assert _labels(world, _search(world, beta)) == {"b1"}
    assert _labels(world, _search(world, beta, callee="13800138000")) == {"b1"}
    with pytest.raises(AccessDenied):
        _search(world, beta, tenant="acme")
    assert resolve_scope("u", None, {"CALLWARDEN_TENANT_SCOPE": "beta"}).tenant == "beta"
    with pytest.raises(AccessDenied):
        resolve_scope("u", "acme", {"CALLWARDEN_TENANT_SCOPE": "beta"})


def test_cli_json_contract_masks_numbers_and_logs_the_search(world, run):
    r = run("audit", "search", "--callee", "13800138000", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert _labels(world, rows) == {"a1", "a2", "a3", "a4", "o1", "b1"}
    for row in rows:
        assert {"call_id", "tenant", "direction", "caller", "callee", "decision", "reasons", "attempted_at",
                "answered_at", "ended_at", "billsec", "disposition", "recording"} <= set(row)
        assert row["callee"] == "138****8000" and isinstance(row["reasons"], list)
    a1 = next(x for x in rows if x["call_id"] == world.calls["a1"])
    assert a1["recording"]["sha256"] and a1["recording"]["size"] and a1["recording"]["location"].startswith("file:")
    assert a1["billsec"] == 60 and a1["disposition"] == "ANSWERED" and a1["reasons"] == []
    assert next(x for x in rows if x["call_id"] == world.calls["a3"])["recording"] is None
    assert "13800138000" not in r.output
    with make_sessionmaker(make_engine(world.url))() as s:
        e = s.scalars(select(AuditEntry).where(AuditEntry.action == "audit.search")).one()
    details = json.loads(e.details)
    assert e.actor == "inspector" and details["rows"] == 6 and details["full_numbers"] is False
    # the filter's number is in the log keyed and masked, never in clear (issue 13)
    assert details["filters"]["callee"]["masked"] == "138****8000" and "13800138000" not in e.details
    assert details["scope"] == {"role": "auditor", "tenant": None}


def test_full_numbers_are_shown_and_audit_logged(world, run):
    r = run("audit", "search", "--tenant", "beta", "--full-numbers", "--json", actor="alice")
    rows = json.loads(r.output)
    assert rows[0]["callee"] == "13800138000" and rows[0]["caller"] == "01058001234"
    with make_sessionmaker(make_engine(world.url))() as s:
        e = s.scalars(select(AuditEntry).where(AuditEntry.action == "audit.full_numbers")).one()
    assert e.actor == "alice" and e.subject == "beta" and json.loads(e.details)["rows"] == 1


def test_cli_csv_and_table_and_count(world, run):
    r = run("audit", "search", "--reason", "QUIET_HOURS", "--csv")
    rows = list(csv.reader(io.StringIO(r.output)))
    assert rows[0] == CSV_COLUMNS and len(rows) == 3
    got = {row[0]: dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]}
    o1 = got[world.calls["o1"]]
    assert o1["reasons"] == "QUIET_HOURS" and o1["enforced"] == "false" and o1["callee"] == "138****8000"
    assert o1["recording_status"] == "stored" and len(o1["recording_sha256"]) == 64
    table = run("audit", "search", "--tenant", "beta").output
    assert "TRUNK_UNVERIFIED,NO_CONSENT" in table and "138****8000" in table
    assert run("audit", "search", "--decision", "deny", "--count").output.strip() == "5"
    r = run("audit", "search", "--limit", "2")
    assert r.exit_code == 0 and "more with --offset 2" in r.stderr


def test_cli_scopes_and_refusals(world, run):
    r = run("audit", "search", "--as-tenant", "beta", "--json")
    assert _labels(world, json.loads(r.output)) == {"b1"}
    r = run("audit", "search", "--as-tenant", "beta", "--tenant", "acme", "--json")
    assert r.exit_code == 4 and "access denied" in r.stderr
    r = run("audit", "search", "--as-tenant", "acme", "--json", env={"CALLWARDEN_TENANT_SCOPE": "beta"})
    assert r.exit_code == 4
    r = run("audit", "search", "--json", env={"CALLWARDEN_TENANT_SCOPE": "beta"})
    assert _labels(world, json.loads(r.output)) == {"b1"}
    r = run("audit", "search", "--reason", "BOGUS")
    assert r.exit_code == 2 and "unknown reason code" in r.output


def test_pull_a_recording_decrypted_checked_and_logged(world, run, tmp_path):
    out = tmp_path / "a2.wav"
    r = run("audit", "recording", world.calls["a2"], "--out", str(out))  # stored encrypted
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == world.recordings["a2"].read_bytes() and "matches finalization" in r.output
    assert run("audit", "recording", world.calls["a2"], "--out", str(out), "--as-tenant", "beta").exit_code == 4
    assert run("audit", "recording", world.calls["a3"], "--out", str(out)).exit_code == 1  # denied: none
    with make_sessionmaker(make_engine(world.url))() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "audit.recording")).all()
    assert [(e.subject, e.actor) for e in entries] == [(world.calls["a2"], "inspector")]
    stored = next(world.storage.root.rglob(world.calls["a1"] + ".wav"))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0x01
    stored.write_bytes(bytes(data))
    r = run("audit", "recording", world.calls["a1"], "--out", str(tmp_path / "a1.wav"))
    assert r.exit_code == 1 and "altered in storage" in r.stderr


@pytest.mark.parametrize(("kw", "indexes"), [
    ({"callee": "13800138000", "since": "2026-03-01", "until": "2026-03-31"}, ["ix_calls_callee_attempted"]),
    ({"callee": "138*", "since": "2026-03-01", "until": "2026-03-31"},
     ["ix_calls_callee_attempted", "ix_calls_attempted"]),
    ({"tenant": "acme", "since": "2026-03-02", "until": "2026-03-02"}, ["ix_calls_tenant_attempted"]),
    ({"caller": "95512", "since": "2026-03-01", "until": "2026-03-31"}, ["ix_calls_caller_attempted"]),
    ({"reason": "QUIET_HOURS", "since": "2026-03-01", "until": "2026-03-07"}, ["ix_calls_attempted"]),
])
def test_typical_auditor_queries_use_an_index(world, kw, indexes):
    """The planner reaches calls through one of the search indexes, never a full scan
    (PostgreSQL with sequential scans priced out, since the test tables are tiny)."""
    engine = make_engine(world.url)
    compiled = build_query(SearchFilters.from_cli(CST, **kw), Scope("t")).limit(100).compile(engine)
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            params = tuple(compiled.construct_params(escape_names=False)[k] for k in compiled.positiontup)
            plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), params))
            assert "SCAN calls" not in plan
        else:
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = " ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.construct_params()))
            assert "Seq Scan on calls" not in plan
    assert any(ix in plan for ix in indexes), plan


def test_the_node_is_in_json_and_last_in_csv(world, run):
    with make_sessionmaker(make_engine(world.url))() as s:  # a1 as if taken by FreeSWITCH node fs-a
        s.execute(update(Call).where(Call.call_id == world.calls["a1"]).values(node="fs-a"))
        s.commit()
    rows = {r["call_id"]: r for r in json.loads(run("audit", "search", "--json").output)}
    assert rows[world.calls["a1"]]["node"] == "fs-a" and rows[world.calls["a2"]]["node"] is None
    out = list(csv.reader(io.StringIO(run("audit", "search", "--csv").output)))
    assert out[0][-1] == "node" and out[0][:-1] == CSV_COLUMNS[:-1]
    got = {row[0]: row[-1] for row in out[1:]}
    assert got[world.calls["a1"]] == "fs-a" and got[world.calls["a2"]] == ""
