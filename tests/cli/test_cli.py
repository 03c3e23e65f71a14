"""The administrator's and the dry-run commands, as operators script them (real subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_REGISTRY, cli_invoker

AT = "2026-03-02T10:00:00+08:00"


@pytest.fixture
def cw(tmp_path, store_url):
    return cli_invoker(store_url, tmp_path)


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, p.stderr + p.stdout
    return p.stdout


def test_check_contract_allow_and_deny(cw):
    ok(cw("registry", "import", str(EXAMPLE_REGISTRY)))
    p = cw("check", "--tenant", "acme", "--caller", "95512", "--callee", "13800138000", "--at", AT, "--json")
    assert p.returncode == 0 and json.loads(p.stdout) == {"decision": "allow", "reasons": [], "hangup_cause": None}
    p = cw("check", "--tenant", "acme", "--caller", "955121234", "--callee", "13800138000",
           "--trunk", "cm-trunk-9", "--campaign", "spring-promo", "--purpose", "consultation", "--at", AT, "--json")
    assert p.returncode == 3
    out = json.loads(p.stdout)
    assert out["decision"] == "deny" and out["hangup_cause"] == "CALL_REJECTED"
    assert [r["code"] for r in out["reasons"]] == [
        "CID_NOT_REGISTERED", "NUMBER_LENGTH_ALTERED", "TRUNK_UNVERIFIED", "CAMPAIGN_NOT_APPROVED"]
    assert set(out["reasons"][0]) == {"code", "clause", "message_zh", "message_en"}
    human = cw("check", "--tenant", "nobody", "--caller", "anonymous", "--callee", "13800138000", "--at", AT)
    assert human.returncode == 3 and "TENANT_UNKNOWN" in human.stdout and "CID_HIDDEN" in human.stdout


def test_check_stores_nothing(cw):
    ok(cw("registry", "import", str(EXAMPLE_REGISTRY)))
    cw("check", "--tenant", "acme", "--caller", "95512", "--callee", "13800138000", "--at", AT)
    assert json.loads(ok(cw("audit", "search", "--json"))) == []


def test_config_error_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("retention:\n  recordings_days: 7\n")
    p = subprocess.run([sys.executable, "-m", "callwarden.cli.main", "--config", str(cfg), "db", "upgrade"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "retention.recordings_days: 7: must be at least 30 days" in p.stderr
    assert not (tmp_path / "callwarden.db").exists()


def test_registry_import_error_names_entry_and_changes_nothing(cw, tmp_path):
    doc = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))
    doc["trunks"][1]["tenant"] = "ghost"
    bad = tmp_path / "reg.yaml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True))
    p = cw("registry", "import", str(bad))
    assert p.returncode == 1 and "trunks[1].tenant: unknown tenant 'ghost'" in p.stderr
    assert json.loads(ok(cw("tenants", "list", "--json"))) == []


def test_registry_export_reimports_unchanged(cw, tmp_path):
    ok(cw("registry", "import", str(EXAMPLE_REGISTRY)))
    out = tmp_path / "out.yaml"
    ok(cw("registry", "export", "--out", str(out)))
    assert "unchanged" in ok(cw("registry", "import", str(out)))
    assert "created" not in ok(cw("registry", "import", str(out)))


def test_admin_lifecycle(cw, tmp_path):
    ok(cw("tenants", "add", "--id", "gamma", "--name", "Gamma Ltd", "--commitment", "CMT-9"))
    ok(cw("numbers", "add", "95577", "--tenant", "gamma", "--outbound", "--filing", "BA-9", "--filed-on", "2026-01-01"))
    ok(cw("trunks", "add", "g-1", "--tenant", "gamma", "--verified", "--proof", "TRK-9"))
    proof = tmp_path / "proof.pdf"
    proof.write_bytes(b"%PDF-1.4 trunk contract")
    ok(cw("proofs", "add", "--tenant", "gamma", "--kind", "trunk", "--subject", "g-1", "--ref", "TRK-9", "--file", str(proof)))
    ok(cw("consents", "add", "--tenant", "gamma", "--callee", "+86 138 0013 8000", "--scope", "callback",
          "--obtained-at", "2026-01-01T00:00:00+08:00", "--evidence-kind", "recording", "--evidence-ref", "REC-1"))
    args = ("check", "--tenant", "gamma", "--caller", "95577", "--callee", "13800138000", "--trunk", "g-1", "--at", AT)
    assert cw(*args).returncode == 0
    ok(cw("tenants", "suspend", "gamma", "--reason", "complaints"))
    p = cw(*args)
    assert p.returncode == 3 and "TENANT_SUSPENDED" in p.stdout
    ok(cw("tenants", "resume", "gamma", "--reason", "reviewed"))
    ok(cw("numbers", "update", "95577", "--no-outbound"))
    assert "NUMBER_INBOUND_ONLY" in cw(*args).stdout
    ok(cw("numbers", "update", "95577", "--outbound"))
    ok(cw("refusals", "add", "13800138000", "--tenant", "gamma"))
    assert "CALLEE_REFUSED" in cw(*args).stdout
    ok(cw("refusals", "remove", "13800138000", "--tenant", "gamma"))
    assert cw(*args).returncode == 0
    reg = ok(cw("campaigns", "register", "--tenant", "gamma", "--id", "promo", "--purpose", "notification",
                "--description", "限时优惠 办卡 促销"))
    assert "review" in reg and "促销" in reg
    p = cw("campaigns", "register", "--tenant", "gamma", "--id", "m", "--purpose", "marketing")
    assert p.returncode == 1 and "marketing campaigns are not allowed" in p.stderr
    ok(cw("campaigns", "approve", "gamma", "promo", "--note", "service notice only"))
    listed = json.loads(ok(cw("campaigns", "list", "--json")))
    assert listed[0]["status"] == "approved" and listed[0]["reviewed_by"] == "tester"
    assert "entries, chain intact" in ok(cw("verify"))


def test_consent_csv_import_is_all_or_nothing_with_row_errors(cw, tmp_path):
    ok(cw("registry", "import", str(EXAMPLE_REGISTRY)))
    good = "tenant,callee,scope,obtained_at,expires_at,evidence_kind,evidence_ref,evidence_sha256\n" \
           "acme,13600136000,callback;consultation,2026-01-01T00:00:00+08:00,,contract,C-1,\n" \
           "acme,+86 135 0013 5000,consultation,2026-01-02T00:00:00+08:00,2027-01-01T00:00:00+08:00,web_form,W-2,\n"
    bad = good + "acme,not-a-number,callback,2026-01-01T00:00:00+08:00,,contract,C-3,\n" \
                 "acme,13400134000,marketing,2026-01-01T00:00:00+08:00,,contract,C-4,\n"
    f = tmp_path / "c.csv"
    f.write_text(bad)
    p = cw("consents", "import", str(f))
    assert p.returncode == 1 and "line 4: callee" in p.stderr and "line 5: scope" in p.stderr
    assert len(json.loads(ok(cw("consents", "list", "--json")))) == 2  # only the registry's
    f.write_text(good)
    assert "imported 2" in ok(cw("consents", "import", str(f)))
    assert len(json.loads(ok(cw("consents", "list", "--tenant", "acme", "--json")))) == 4


def test_national_dnc_import(cw, tmp_path):
    ok(cw("registry", "import", str(EXAMPLE_REGISTRY)))
    f = tmp_path / "dnc.txt"
    f.write_text("\n".join(["13800138000", "+86 139 0000 0001", "bogus"]) + "\n")
    p = cw("refusals", "import", str(f))
    assert p.returncode == 1 and "line 3" in p.stderr
    assert "added 2 refusal(s), skipped 1 bad line(s)" in ok(cw("refusals", "import", str(f), "--skip-invalid"))
    p = cw("check", "--tenant", "acme", "--caller", "95512", "--callee", "13800138000", "--at", AT, "--json")
    assert [r["code"] for r in json.loads(p.stdout)["reasons"]] == ["CALLEE_REFUSED"]


def test_audit_search_contract_and_masking(cw, store_url, make_settings):
    from callwarden.policy import CallAttempt
    from callwarden.service.enforcer import Enforcer
    from tests.conftest import at, seed

    seed(store_url)
    e = Enforcer(make_settings(store_url))
    allowed = e.decide(CallAttempt("acme", "95512", "13800138000", at("2026-03-02 10:00"), pbx="asterisk"))
    denied = e.decide(CallAttempt("acme", "95512", "13900139000", at("2026-03-02 11:00"), pbx="asterisk"))
    rows = json.loads(ok(cw("audit", "search", "--tenant", "acme", "--json")))
    assert [r["call_id"] for r in rows] == [denied.call_id, allowed.call_id]  # newest first
    keys = {"call_id", "tenant", "direction", "caller", "callee", "decision", "reasons", "attempted_at",
            "answered_at", "ended_at", "billsec", "disposition", "recording"}
    assert keys <= set(rows[0])
    assert rows[0]["callee"] == "139****9000" and rows[0]["reasons"] == ["CALLEE_REFUSED", "NO_CONSENT"]
    full = json.loads(ok(cw("audit", "search", "--callee", "13900139000", "--full-numbers", "--json")))
    assert [r["callee"] for r in full] == ["13900139000"]
    assert json.loads(ok(cw("audit", "search", "--reason", "NO_CONSENT", "--json")))[0]["call_id"] == denied.call_id
    assert json.loads(ok(cw("audit", "search", "--decision", "allow", "--json")))[0]["call_id"] == allowed.call_id
    window = ok(cw("audit", "search", "--from", "2026-03-02T10:30:00+08:00", "--to", "2026-03-02T12:00:00+08:00", "--json"))
    assert [r["call_id"] for r in json.loads(window)] == [denied.call_id]


def test_unknown_command_and_help():
    p = subprocess.run([sys.executable, "-m", "callwarden.cli.main", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "check" in p.stdout and "registry" in p.stdout
    assert Path(sys.executable).exists()


def test_a_large_dnc_import_on_sqlite_never_holds_decisions_past_their_deadline(
        sqlite_url, tmp_path, make_settings, steady_heap):
    """SQLite has one writer: the import goes in short transactions, so decisions made while
    it runs keep the default 500 ms deadline; the file is checked whole first."""
    import threading

    from sqlalchemy import func, select

    from callwarden.cli import admin
    from callwarden.policy import CallAttempt
    from callwarden.service.enforcer import Enforcer
    from callwarden.store.models import AuditEntry, Refusal
    from tests.conftest import at, seed

    seed(sqlite_url)
    cw = cli_invoker(sqlite_url, tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(f"1370{i:07d}\n" for i in range(3 * admin.SQLITE_IMPORT_STEP)) + "bogus\n")
    p = cw("refusals", "import", str(bad))
    assert p.returncode == 1 and "nothing was changed" in p.stderr
    n = 8 * admin.SQLITE_IMPORT_STEP + 17
    big = tmp_path / "dnc.txt"
    big.write_text("".join(f"1360{i:07d}\n" for i in range(n)))
    e = Enforcer(make_settings(sqlite_url, decision_timeout_ms=500,
                               frequency={"per_day": 1000, "per_week": 7000}))
    e.warm_up("asterisk", at("2026-03-02 10:00"))
    done, codes = threading.Event(), []

    def decide_meanwhile() -> None:
        while not done.is_set():
            codes.append(e.decide(CallAttempt("acme", "95512", "13800138000",
                                              at("2026-03-02 10:00"), pbx="asterisk")).decision.codes)

    t = threading.Thread(target=decide_meanwhile)
    t.start()
    try:
        assert f"added {n} refusal(s)" in ok(cw("refusals", "import", str(big)))
    finally:
        done.set()
        t.join(10)
    # one callee again and again: past frequency.per_day the rules deny it; never for time
    assert codes and codes[0] == () and not any("POLICY_UNAVAILABLE" in c for c in codes), \
        {c for c in codes if c}
    with e.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Refusal)) >= n
        assert s.scalar(select(func.count()).select_from(AuditEntry)
                        .where(AuditEntry.action == "refusals.bulk_import")) == 1
    e.engine.dispose()
