"""`callwarden verify`: tampering, missing and unexpected files, stuck recordings, and --fix."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from pathlib import Path

from sqlalchemy import text, update

from callwarden.store.db import unit_of_work
from callwarden.store.models import AuditEntry, Call, Recording
from tests.recorder.conftest import write_wav
from tests.retention.conftest import NOW, key_file


def kinds(out: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for f in out["findings"]:
        found.setdefault(f["kind"], []).append(f)
    return found


def test_a_clean_site_verifies(site):
    site.stored_call(ended=NOW)
    p = site.cli("verify")
    assert p.returncode == 0 and "entries, chain intact" in p.stdout and "verify: OK" in p.stdout
    code, out = site.cli_json("verify")
    assert code == 0 and out["ok"] and out["findings"] == []
    assert out["counts"]["recordings_stored"] == out["counts"]["recordings_hashed"] == 1
    assert out["audit_log"]["entries"] > 0 and len(out["audit_log"]["head"]) == 64


def test_a_recording_replaced_on_disk_is_caught(site):
    a, b, c = (site.stored_call(ended=NOW) for _ in range(3))
    same_size = site.file(a).read_bytes()
    site.file(a).write_bytes(same_size[:-1] + bytes([same_size[-1] ^ 1]))  # one bit flipped
    write_wav(site.file(b), 7.0)  # replaced by another recording
    code, out = site.cli_json("verify")
    assert code == 1 and not out["ok"]
    altered = kinds(out)["recording_altered"]
    assert {f["subject"] for f in altered} == {a, b}
    assert all(f["severity"] == "error" for f in altered)
    assert site.cli("verify", "--fix").returncode == 1  # nothing certain to fix: still wrong
    assert site.rec(c).status == "stored"


def _drop_guard(s) -> None:
    """What an attacker with database access does first: remove the append-only triggers."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("DROP TRIGGER audit_log_no_change ON audit_log"))
    else:
        s.execute(text("DROP TRIGGER audit_log_no_update"))
        s.execute(text("DROP TRIGGER audit_log_no_delete"))


def test_an_edited_audit_row_is_caught(site):
    call_id = site.stored_call(ended=NOW)
    [entry] = site.entries("recording_stored", call_id)
    with unit_of_work(site.sessions) as s:
        _drop_guard(s)
        s.execute(update(AuditEntry).where(AuditEntry.seq == entry.seq)
                  .values(details=entry.details.replace('"encrypted":false', '"encrypted":true')))
    p = site.cli("verify")
    assert p.returncode == 1
    assert f"audit log entry {entry.seq}: content does not match its hash" in p.stdout
    code, out = site.cli_json("verify")
    assert [f["subject"] for f in kinds(out)["audit_chain_broken"]] == [f"audit:{entry.seq}"]


def test_a_deleted_audit_row_is_caught(site):
    site.stored_call(ended=NOW)
    with unit_of_work(site.sessions) as s:
        _drop_guard(s)
        s.execute(text("DELETE FROM audit_log WHERE seq = 2"))
    code, out = site.cli_json("verify")
    assert code == 1 and "missing" in kinds(out)["audit_chain_broken"][0]["detail"]


def test_file_and_row_replaced_together_are_caught_by_the_audit_entry(site):
    call_id = site.stored_call(ended=NOW)
    path = site.file(call_id)
    write_wav(path, 4.0)
    forged = path.read_bytes()
    with unit_of_work(site.sessions) as s:
        s.execute(update(Recording).where(Recording.call_id == call_id).values(
            sha256=hashlib.sha256(forged).hexdigest(), size=len(forged)))
    code, out = site.cli_json("verify")
    found = kinds(out)
    assert code == 1 and "recording_altered" not in found  # file and row agree now ...
    assert [f["subject"] for f in found["recording_row_altered"]] == [call_id]  # ... the log does not


def test_missing_file_reported_then_fixed_as_lost(site):
    call_id = site.stored_call(ended=NOW)
    site.file(call_id).unlink()
    code, out = site.cli_json("verify")
    assert code == 1 and [f["subject"] for f in kinds(out)["recording_missing"]] == [call_id]
    code, out = site.cli_json("verify", "--fix")
    [f] = kinds(out)["recording_missing"]
    assert f["fixed"] and "lost" in f["fix"]
    rec, cdr = site.rec(call_id), site.cdr(call_id)
    assert rec.status == "failed" and rec.error.startswith("lost: ") and rec.sha256  # kept as record
    assert cdr.recording_problem == "lost" and "RECORDING_UNAVAILABLE" in cdr.reason_codes
    assert len(site.entries("recording_lost", call_id)) == 1
    code, out = site.cli_json("verify")  # the gap stays visible, and an error (answered call)
    assert code == 1 and "recording_missing" not in kinds(out)
    assert kinds(out)["recording_never_arrived"][0]["subject"] == call_id


def test_orphan_files_in_storage_and_spool_are_reported_not_touched(site):
    call_id = site.stored_call(ended=NOW)
    stray = site.store / "acme" / "2026" / "01" / "01" / "nobody.wav"
    write_wav(stray, 1.0)
    spool_stray = site.dir / "spool" / "acme" / "2026" / "01" / "01" / "ghost.wav"
    write_wav(spool_stray, 1.0)
    hidden = site.dir / "spool" / "acme" / ".partial.wav"  # a writer's temp file: not reported
    hidden.write_bytes(b"x")
    code, out = site.cli_json("verify", "--fix")
    found = kinds(out)
    assert code == 1
    assert [f["subject"] for f in found["unexpected_file"]] == ["file:acme/2026/01/01/nobody.wav"]
    assert [f["subject"] for f in found["spool_orphan"]] == [str(spool_stray)]
    assert stray.exists() and spool_stray.exists() and not any(f["fixed"] for f in out["findings"])
    # a stored copy with no row, named for a known call: attributed
    site.file(call_id).rename(site.file(call_id).with_name("x.wav"))
    with unit_of_work(site.sessions) as s:
        s.execute(update(Recording).where(Recording.call_id == call_id).values(status="purged"))
    code, out = site.cli_json("verify")
    assert "purged" not in str(kinds(out).get("unexpected_file"))  # x.wav is not named for it


def test_stuck_spool_file_is_finalized_by_fix(site):
    ended = NOW - dt.timedelta(hours=2)
    stuck = site.call(ended=ended)
    gone = site.call(ended=ended, write=False)
    live = site.call(ended=None)  # call still up: its spool file is expected
    recent = site.call(ended=dt.datetime.now(dt.UTC))  # just hung up: not stuck yet
    audio = Path(site.rec(stuck).spool_path).read_bytes()
    code, out = site.cli_json("verify")
    assert code == 1 and {f["subject"] for f in kinds(out)["recording_stuck"]} == {stuck, gone}
    code, out = site.cli_json("verify", "--fix")
    fixed = {f["subject"]: f for f in kinds(out)["recording_stuck"]}
    assert fixed[stuck]["fixed"] and fixed[stuck]["fix"].startswith("stored")
    assert fixed[gone]["fixed"] and fixed[gone]["fix"].startswith("failed")
    rec = site.rec(stuck)
    assert rec.status == "stored" and rec.sha256 == hashlib.sha256(audio).hexdigest()
    assert rec.retain_until == ended + dt.timedelta(days=30)
    [entry] = site.entries("recording_stored", stuck)
    assert entry.actor == "tester"
    assert site.rec(gone).status == "failed" and site.cdr(gone).recording_problem == "missing"
    assert site.rec(live).status == "recording" and site.rec(recent).status == "recording"
    found = kinds(site.cli_json("verify")[1])
    assert set(found) == {"recording_never_arrived"}  # only the real gap is left


def test_spool_leftover_identical_to_the_stored_copy_is_removed_by_fix(site):
    call_id = site.call(ended=NOW)
    spool = site.rec(call_id).spool_path
    audio = Path(spool).read_bytes()
    assert site.recordings.finalize(call_id, wait_s=0).outcome == "stored"
    with open(spool, "wb") as f:  # the spool removal failed back then (it only warns)
        f.write(audio)
    other = site.call(ended=NOW)
    other_spool = site.rec(other).spool_path
    site.recordings.finalize(other, wait_s=0)
    write_wav(Path(other_spool), 2.0)  # different audio: keep it
    code, out = site.cli_json("verify", "--fix")
    found = {f["subject"]: f for f in kinds(out)["spool_leftover"]}
    assert found[spool]["fixed"] and not os.path.exists(spool)
    assert not found[other_spool]["fixed"] and os.path.exists(other_spool)
    assert "different from" in found[other_spool]["detail"]
    assert len(site.entries("spool_leftover_removed", call_id)) == 1


def test_unanswered_call_without_recording_is_a_notice_not_an_error(site):
    call_id = site.call(ended=NOW, write=False, answered=False)
    site.recordings.finalize(call_id, wait_s=0)
    code, out = site.cli_json("verify")
    [f] = out["findings"]
    assert code == 0 and (f["kind"], f["severity"], f["subject"]) == (
        "recording_never_arrived", "notice", call_id)


def test_cdr_pointing_at_no_recording_row(site):
    call_id = site.stored_call(ended=NOW)
    with unit_of_work(site.sessions) as s:
        s.execute(update(Call).where(Call.call_id == call_id).values(recording_id=987654))
    code, out = site.cli_json("verify")
    assert code == 1 and kinds(out)["cdr_recording_row_missing"][0]["subject"] == call_id


def test_since_limits_rehashing_not_the_other_checks(site):
    old = site.stored_call(ended=NOW - dt.timedelta(days=3), attempted=NOW - dt.timedelta(days=3))
    site.stored_call(ended=NOW)
    site.file(old).write_bytes(b"tampered")
    since = (NOW - dt.timedelta(days=1)).isoformat()
    code, out = site.cli_json("verify", "--since", since)
    assert code == 0 and out["counts"]["recordings_hashed"] == 1
    code, out = site.cli_json("verify")
    assert code == 1 and kinds(out)["recording_altered"][0]["subject"] == old


def test_encrypted_recordings_are_verified_and_a_wrong_key_is_named(make_site, tmp_path):
    site = make_site(recording={"encryption": {"key_file": key_file(tmp_path)}})
    call_id = site.stored_call(ended=NOW)
    path = site.file(call_id)
    assert site.cli("verify").returncode == 0
    data = bytearray(path.read_bytes())
    data[200] ^= 0x40  # one bit of ciphertext: authentication fails
    path.write_bytes(bytes(data))
    code, out = site.cli_json("verify")
    [f] = kinds(out)["recording_undecryptable"]
    assert code == 1 and "failed authentication" in f["detail"] and site.rec(call_id).key_id in f["detail"]
    wrong = make_site(recording={"encryption": {"key_file": key_file(tmp_path, "11" * 32, "w.key")}})
    p = wrong.cli("verify")
    assert p.returncode == 1 and f"no key with id {site.rec(call_id).key_id}" in p.stdout


def test_verify_reports_unusable_storage_configuration(make_site, monkeypatch):
    monkeypatch.delenv("CW_TEST_ABSENT_KEY", raising=False)
    site = make_site(recording={"encryption": {"key_env": "CW_TEST_ABSENT_KEY"}})
    code, out = site.cli_json("verify")
    [f] = kinds(out)["storage_unavailable"]
    assert code == 1 and "CW_TEST_ABSENT_KEY" in f["detail"]


def test_finalizing_claim_in_progress_is_not_reported(site):
    call_id = site.call(ended=NOW - dt.timedelta(hours=1))
    with unit_of_work(site.sessions) as s:
        s.execute(update(Recording).where(Recording.call_id == call_id)
                  .values(status="finalizing", claimed_at=dt.datetime.now(dt.UTC)))
    time.sleep(0.01)
    code, out = site.cli_json("verify")
    assert code == 0, out


def test_decisions_go_on_while_verify_walks_the_chain(site, monkeypatch):
    """`callwarden verify` on a live store: a call decided while it walks the audit chain is
    decided in time (SQLite: the walk must not hold the store's write lock), and the entries
    that call adds after the walk began are not reported as a broken chain (PostgreSQL: the
    walk and the head must be read in one snapshot, not as the head stood after the walk)."""
    import callwarden.service.verify as verify_mod
    from callwarden.policy import CallAttempt

    site.stored_call(ended=NOW)
    decided = []
    seen = verify_mod.has_clear_numbers

    def during_the_walk(*args):  # type: ignore[no-untyped-def]
        if not decided:
            decided.append(site.enforcer.decide(CallAttempt(
                tenant="acme", caller="95512", callee="13800138000", at=NOW, trunk="ct-trunk-1",
                pbx="asterisk", pbx_call_id="live.1")))
        return seen(*args)

    monkeypatch.setattr(verify_mod, "has_clear_numbers", during_the_walk)
    code, out = site.cli_json("verify")
    assert decided and decided[0].decision.codes != ("POLICY_UNAVAILABLE",)
    assert kinds(out).get("audit_chain_broken") is None, out["findings"]
    assert code == 0
    monkeypatch.undo()
    code, out = site.cli_json("verify")  # and the next walk counts that call's entries
    assert code == 0 and out["ok"]


def test_a_recording_finalized_after_the_audit_scan_is_not_unaudited(site, monkeypatch):
    """verify reads the recording_stored / recording_purged entries first and the rows after:
    a recording finalized (or purged) in between has its entry, committed with its row, and
    must not be reported as unaudited; one that really has none still is."""
    from callwarden.service.verify import Verifier

    stored = site.stored_call(ended=NOW)
    monkeypatch.setattr(Verifier, "_recording_audit", lambda self: ({}, set()))  # an early scan
    code, out = site.cli_json("verify")
    assert code == 0 and out["ok"], out["findings"]
    with unit_of_work(site.sessions) as s:
        _drop_guard(s)
        s.execute(text("DELETE FROM audit_log WHERE action = 'recording_stored' AND subject = :c"),
                  {"c": stored})
    code, out = site.cli_json("verify")
    assert [f["subject"] for f in kinds(out)["recording_unaudited"]] == [stored]
