"""``callwarden subject export|erase --number N`` on both stores (issue 13 §3)."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import select

from callwarden.audit.pseudonym import number_digest
from callwarden.store.models import AuditEntry, Call, Complaint, Consent, Recording, Refusal
from tests.conftest import seed
from tests.retention.conftest import DAY, NOW, Site

N = "13712345670"
OTHER = "13800138000"


def _consent(site: Site, obtained: dt.datetime, expires: dt.datetime | None, ref: str) -> None:
    seed(site.url, {"consents": [{
        "tenant": "acme", "callee": N, "scope": ["callback"], "obtained_at": obtained.isoformat(),
        "expires_at": expires.isoformat() if expires else None,
        "evidence": {"kind": "contract", "ref": ref, "sha256": None}}]})


def _world(site: Site) -> dict[str, str]:
    """Calls to N: old (erasable), recent (30-day floor), old but on hold; one to another number."""
    ids = {
        "old": site.stored_call(callee=N, ended=NOW - 45 * DAY),
        "recent": site.stored_call(callee=N, ended=NOW - 5 * DAY),
        "held": site.stored_call(callee=N, ended=NOW - 60 * DAY),
        "other": site.stored_call(callee=OTHER, ended=NOW - 45 * DAY),
    }
    _consent(site, NOW - 200 * DAY, NOW - 100 * DAY, "C-OLD")  # expired long ago
    _consent(site, NOW - 20 * DAY, None, "C-LIVE")  # active
    seed(site.url, {"refusals": [{"tenant": "acme", "callee": N}]})
    assert site.cli("complaints", "add", "--tenant", "acme", "--callee", N,
                    "--source", "12321").returncode == 0
    assert site.cli("holds", "set", "--call", ids["held"], "--reason", "case 7").returncode == 0
    return ids


def test_export_lists_everything_held_about_the_number(site: Site, tmp_path) -> None:
    ids = _world(site)
    out = tmp_path / "subject.json"
    p = site.cli("subject", "export", "--number", "+86 137-1234-5670", "--out", str(out))
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["number"] == N
    assert sorted(c["call_id"] for c in doc["calls"]) == sorted([ids["old"], ids["recent"], ids["held"]])
    assert all(c["callee"] == N for c in doc["calls"])
    assert sorted(r["call_id"] for r in doc["recordings"]) == sorted(c["call_id"] for c in doc["calls"])
    assert all(r["status"] == "stored" and len(r["sha256"]) == 64 for r in doc["recordings"])
    assert sorted(c["evidence"]["ref"] for c in doc["consents"]) == ["C-LIVE", "C-OLD"]
    assert [r["tenant"] for r in doc["refusals"]] == ["acme"]
    assert [c["source"] for c in doc["complaints"]] == ["12321"]
    assert {"consents.created", "refusals.created", "complaints.added"} <= {
        e["action"] for e in doc["audit_entries"]}
    # the export itself is audit-logged, with the number keyed
    entry = site.entries("subject.exported")[-1]
    assert N not in entry.details
    assert json.loads(entry.details)["number"]["hmac"] == number_digest(site.enforcer.audit_key, N)
    assert json.loads(entry.details)["counts"]["calls"] == 3
    # stdout form, and a tenant scope sees only its tenant
    code = site.cli("subject", "export", "--number", N, "--as-tenant", "beta")
    assert code.returncode == 0 and json.loads(code.stdout)["calls"] == []
    assert site.cli("subject", "export", "--number", "hello").returncode == 2


def test_erase_removes_what_may_go_and_says_what_it_kept(site: Site) -> None:
    ids = _world(site)
    old_file = site.file(ids["old"])
    code, report = site.cli_json("subject", "erase", "--number", N)
    assert code == 0, report
    assert report["removed"] == {"recording": 1, "cdr": 1, "consent": 1, "complaint": 1}
    assert len(report["revoked_consents"]) == 1
    kept = {(k["kind"], k["subject"]): k["reason"] for k in report["kept"]}
    assert kept[("cdr", ids["held"])].startswith("its recording is kept")
    assert kept[("recording", ids["held"])].startswith("legal hold")
    assert "case 7" in kept[("recording", ids["held"])]
    assert "retention floor" in kept[("recording", ids["recent"])]
    assert "retention floor" in kept[("consent", f"consent:{report['revoked_consents'][0]}")]
    assert [k for k in kept if k[0] == "refusal"] and "do-not-call" in kept[
        next(k for k in kept if k[0] == "refusal")]
    assert all(N not in r for r in kept.values())

    assert site.cdr(ids["old"]) is None and not old_file.exists()
    assert site.cdr(ids["other"]) is not None and site.file(ids["other"]).exists()
    assert site.cdr(ids["recent"]) is not None and site.cdr(ids["held"]) is not None
    with site.sessions() as s:
        assert s.scalar(select(Complaint.id).where(Complaint.callee == N)) is None
        assert [c.evidence_ref for c in s.scalars(select(Consent).where(Consent.callee == N))] == ["C-LIVE"]
        assert s.scalar(select(Consent.revoked_at).where(Consent.evidence_ref == "C-LIVE")) is not None
        assert s.scalar(select(Refusal.id).where(Refusal.callee == N)) is not None
        assert s.scalar(select(Recording.status).where(Recording.call_id == ids["old"])) is None
        assert s.scalar(select(Call.call_id).where(Call.callee == N, Call.call_id == ids["old"])) is None
    erased = site.entries("subject.erased")
    assert len(erased) == 1 and N not in erased[0].details and erased[0].actor == "tester"
    assert json.loads(erased[0].details)["removed"]["cdr"] == 1
    assert [e.subject for e in site.entries("cdr_purged")] == [ids["old"]]
    with site.sessions() as s:
        assert not [e for e in s.scalars(select(AuditEntry)) if N in e.details or N in (e.subject or "")]
    assert site.chain_ok()

    # a second run: nothing more to remove; the text form names no number in clear
    p = site.cli("subject", "erase", "--number", N)
    assert p.returncode == 0 and "0 cdr(s)" in p.stdout and N not in p.stdout
    assert "KEPT recording " + ids["recent"] in p.stdout


def test_erase_is_refused_to_a_tenant_scoped_account(site: Site, monkeypatch) -> None:
    monkeypatch.setenv("CALLWARDEN_TENANT_SCOPE", "acme")
    p = site.cli("subject", "erase", "--number", N)
    assert p.returncode == 4 and "access denied" in p.stderr
