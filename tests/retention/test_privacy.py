"""Numbers in the audit log are keyed hashes + masked forms; retention leaves no number behind.

Issue 13 §2: after a purge past retention no table, log line or export holds the purged
callee's number in clear; a search by number still finds its audit entries (old form and new);
a missing or wrong installation key stops start-up with a clear error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import MetaData, select

from callwarden.audit import pseudonym
from callwarden.audit.bundle import AUDIT_ENTRIES
from callwarden.audit.pseudonym import AuditKeyError, number_digest
from callwarden.cli.main import cli
from callwarden.config import parse_settings
from callwarden.policy import CallAttempt
from callwarden.recorder import spool_path
from callwarden.service.enforcer import CallEnd, Enforcer, InboundCall
from callwarden.store import audit
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.store.models import AuditEntry, AuditKeyFingerprint, Consent
from tests.conftest import CST, seed
from tests.recorder.conftest import write_wav
from tests.retention.conftest import DAY, NOW, Site

CALLEE = "13912345678"  # appears nowhere else in the seeded registry
MASKED = "139****5678"


def _old_call(site: Site, callee: str = CALLEE, days_ago: int = 40) -> str:
    """An allowed, recorded, finished call to ``callee`` decided through the Enforcer."""
    day = (NOW - days_ago * DAY).astimezone(CST).date()
    at = dt.datetime.combine(day, dt.time(10, 0), CST)
    seed(site.url, {"consents": [{
        "tenant": "acme", "callee": callee, "scope": ["callback"],
        "obtained_at": (at - 2 * DAY).isoformat(), "expires_at": (at + DAY).isoformat(),
        "evidence": {"kind": "contract", "ref": "C-PRIV-1", "sha256": None}}]})
    out = site.enforcer.decide(CallAttempt(tenant="acme", caller="95512", callee=callee, at=at,
                                           trunk="ct-trunk-1", pbx="asterisk", pbx_call_id="p-1"))
    assert out.let_through, out.decision.codes
    write_wav(spool_path(site.settings.recording.dir, out.recording_relpath), 1.0)
    os.utime(spool_path(site.settings.recording.dir, out.recording_relpath), (0, 0))
    site.enforcer.call_ended(CallEnd("asterisk", "p-1", ended_at=at + dt.timedelta(minutes=2),
                                     answered_at=at + dt.timedelta(seconds=5), billsec=115,
                                     disposition="ANSWERED"))
    site.recordings.finalize(out.call_id, wait_s=0)  # call_ended may have done it already
    assert site.rec(out.call_id).status == "stored"
    return out.call_id


def _every_value(url: str) -> list[str]:
    """Every cell of every table of the store, as text."""
    engine = make_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    cells = []
    with engine.connect() as c:
        for table in meta.sorted_tables:
            for row in c.execute(select(table)):
                cells += [str(v) for v in row]
    engine.dispose()
    assert len(meta.tables) >= 15
    return cells


def test_purge_leaves_no_clear_number_and_search_still_finds_entries(make_site, tmp_path, capfd) -> None:
    site = make_site(logging={"format": "json", "level": "info"})
    call_id = _old_call(site)
    site.enforcer.log_inbound(InboundCall("acme", CALLEE, "95512", NOW - 39 * DAY, "asterisk"))
    assert site.cli("audit", "search", "--callee", CALLEE, "--json").returncode == 0

    decision = site.entries("decision", call_id)[0]
    details = json.loads(decision.details)
    key = site.enforcer.audit_key
    assert details["callee"] == {"hmac": number_digest(key, CALLEE), "masked": MASKED}
    assert details["caller"]["masked"] == "95512"  # service numbers stay readable when masked
    assert CALLEE not in decision.details

    assert site.cli("purge").returncode == 0
    assert site.cdr(call_id) is None and site.count(AuditEntry, AuditEntry.action == "cdr_purged") == 2
    # the inbound call (39 days ago) is past cdr_days too, and has no recording
    cells = _every_value(site.url)
    assert not [c for c in cells if CALLEE in c], "the purged callee's number is still stored"
    assert any(MASKED in c for c in cells)  # what is left is masked and keyed

    p = site.cli("audit", "log", "--number", "+86 139 1234 5678", "--json")
    assert p.returncode == 0, p.stderr
    found = json.loads(p.stdout)
    actions = {r["action"] for r in found}
    assert {"decision", "inbound", "consents.created", "audit.search"} <= actions
    assert {r["numbers"] for r in found} == {"keyed"}
    # the export of the store's evidence after the purge
    bundle = tmp_path / "after.zip"
    assert site.cli("audit", "export", "--out", str(bundle), "--tenant", "acme").returncode == 0
    with zipfile.ZipFile(bundle) as z:
        for name in z.namelist():
            assert CALLEE.encode() not in z.read(name), name
    assert site.chain_ok()
    logged = capfd.readouterr()  # the enforcer's and the purge's log lines
    assert CALLEE not in logged.out + logged.err


def _legacy_append(session, action: str, subject: str | None, details: dict) -> None:
    """An entry as written before numbers were keyed (the old append: no protection)."""
    real = pseudonym.protect
    pseudonym.protect = lambda key, action, subject, details: (subject, details)  # type: ignore[assignment]
    try:
        audit.append(session, "pbx:asterisk", action, subject, details)
    finally:
        pseudonym.protect = real  # type: ignore[assignment]


def test_old_entries_in_clear_and_new_keyed_ones_both_verify_and_are_found(site, tmp_path) -> None:
    old_call = site.call(callee=CALLEE, write=False)  # a CDR, so the bundle's excerpt has it
    with unit_of_work(site.sessions) as s:
        _legacy_append(s, "decision", old_call, {"tenant": "acme", "caller": "95512",
                                                 "callee": CALLEE, "decision": "deny"})
        _legacy_append(s, "refusal_added", CALLEE, {"tenant": "acme", "source": "ivr"})
    site.enforcer.opt_out("acme", CALLEE, "ivr", "pbx:asterisk")  # new form
    new = site.entries("refusal_added")[-1]
    assert new.subject == "h:" + number_digest(site.enforcer.audit_key, CALLEE)

    code, rows = site.cli_json("audit", "log", "--number", CALLEE)
    assert code == 0
    assert [(r["action"], r["numbers"]) for r in rows] == [
        ("decision", "clear"), ("refusal_added", "clear"), ("refusal_added", "keyed")]

    code, report = site.cli_json("verify")
    assert report["audit_log"]["entries"] >= 3
    assert not [f for f in report["findings"] if f["kind"] == "audit_chain_broken"]
    notice = [f for f in report["findings"] if f["kind"] == "audit_numbers_in_clear"]
    assert len(notice) == 1 and notice[0]["severity"] == "notice"
    assert notice[0]["detail"].startswith("2 audit entries") and CALLEE not in notice[0]["detail"]

    bundle = tmp_path / "b.zip"
    assert site.cli("audit", "export", "--out", str(bundle)).returncode == 0
    code, result = site.cli_json("audit", "verify", str(bundle))
    assert code == 0 and result["ok"], result
    assert any("hold phone numbers in clear" in n for n in result["notes"])


# -- the installation key ---------------------------------------------------------------------

def _config(tmp_path: Path, url: str, key: Path | None) -> Path:
    data = {"store": {"url": url}, "recording": {"dir": str(tmp_path / "rec")},
            "logging": {"format": "console", "level": "warning"}}
    if key is not None:
        data["audit"] = {"key_file": str(key)}
    cfg = tmp_path / "k.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def _run(cfg: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["--config", str(cfg), "--actor", "t", *args])


def test_db_upgrade_creates_the_key_once_and_start_up_refuses_a_missing_or_wrong_one(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    key = tmp_path / "keys" / "audit.key"
    cfg = _config(tmp_path, url, key)
    r = _run(cfg, "db", "upgrade")
    assert r.exit_code == 0, r.output
    assert "audit key created" in r.output and key.exists()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_text()
    r = _run(cfg, "db", "upgrade")
    assert r.exit_code == 0 and "audit key found" in r.output and key.read_text() == first
    assert _run(cfg, "tenants", "list").exit_code == 0

    key.rename(tmp_path / "moved.key")  # missing
    for args in (("tenants", "list"), ("audit", "search"), ("serve",)):
        r = _run(cfg, *args)
        assert r.exit_code == 1 and "audit key file" in r.stderr and "is missing" in r.stderr, args
    r = _run(cfg, "db", "upgrade")  # never a new key for a store that has one
    assert r.exit_code == 1 and "is missing" in r.stderr and not key.exists()
    with pytest.raises(AuditKeyError, match="is missing"):
        Enforcer(parse_settings(yaml.safe_load(cfg.read_text())))

    key.write_text("ab" * 32 + "\n")  # a well-formed key, but not this store's
    r = _run(cfg, "tenants", "list")
    assert r.exit_code == 1 and "does not match this store" in r.stderr
    with pytest.raises(AuditKeyError, match="does not match this store"):
        Enforcer(parse_settings(yaml.safe_load(cfg.read_text())))
    key.write_text("not a key")
    r = _run(cfg, "tenants", "list")
    assert r.exit_code == 1 and "not a callwarden audit key" in r.stderr
    (tmp_path / "moved.key").replace(key)
    assert _run(cfg, "tenants", "list").exit_code == 0


def test_default_key_file_is_beside_the_sqlite_store(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(pseudonym.KEY_ENV)
    url = f"sqlite:///{tmp_path / 'site.db'}"
    cfg = _config(tmp_path, url, None)
    assert _run(cfg, "db", "upgrade").exit_code == 0
    key = pseudonym.read_key(tmp_path / "site.db.audit.key")
    engine = make_engine(url)
    with engine.connect() as c:
        assert c.execute(select(AuditKeyFingerprint.fingerprint)).scalar_one() == key.fingerprint
    engine.dispose()
    pg = parse_settings({"store": {"url": "postgresql+psycopg://cw@db/cw"}})
    assert pseudonym.key_path(pg) == Path.cwd() / "audit.key"


def test_a_number_without_a_loaded_key_is_never_written_in_clear(store_url) -> None:
    engine = make_engine(store_url)
    pseudonym._BOUND.pop(engine.url.render_as_string(hide_password=True))
    pseudonym._BY_ENGINE.clear()
    try:
        with pytest.raises(AuditKeyError), unit_of_work(make_sessionmaker(engine)) as s:
            audit.append(s, "t", "decision", "c1", {"callee": CALLEE})
        with unit_of_work(make_sessionmaker(engine)) as s:  # nothing to key: no key needed
            audit.append(s, "t", "tenants.status", "acme", {"from": "active", "to": "suspended"})
        with make_sessionmaker(engine)() as s:
            assert [e.action for e in s.scalars(select(AuditEntry))] == ["tenants.status"]
    finally:
        engine.dispose()


def test_a_bundle_carries_the_keyed_consent_entries_of_its_calls(site, tmp_path) -> None:
    seed(site.url, {"consents": [{
        "tenant": "acme", "callee": CALLEE, "scope": ["callback"],
        "obtained_at": (NOW - 10 * DAY).isoformat(), "expires_at": None,
        "evidence": {"kind": "contract", "ref": "C-PRIV-2", "sha256": None}}]})
    with site.sessions() as s:
        consent_id = s.scalar(select(Consent.id).where(Consent.callee == CALLEE))
    site.call(callee=CALLEE, write=False, consent_id=consent_id)
    bundle = tmp_path / "c.zip"
    assert site.cli("audit", "export", "--out", str(bundle)).returncode == 0
    with zipfile.ZipFile(bundle) as z:
        entries = [json.loads(line) for line in z.read(AUDIT_ENTRIES).splitlines()]
    created = [e for e in entries if e["action"] == "consents.created"]
    assert [e["subject"] for e in created] == [
        "acme:h:" + number_digest(site.enforcer.audit_key, CALLEE)]
