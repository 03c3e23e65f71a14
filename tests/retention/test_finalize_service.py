"""After the hangup: the spool file is finalized into storage, or the CDR is flagged."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from callwarden.policy import CallAttempt
from callwarden.recorder import DecryptionError, Key, hash_location, spool_path
from callwarden.recorder.crypto import MAGIC
from callwarden.service import recording_target
from callwarden.service.enforcer import CallEnd
from callwarden.service.recordings import CLAIM_LEASE
from callwarden.store.db import unit_of_work
from callwarden.store.models import AuditEntry, Recording
from tests.conftest import at
from tests.recorder.conftest import write_wav
from tests.retention.conftest import NOW, key_file


def _age(path, seconds: float = 30.0) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_decide_record_hang_up_stores_the_recording_with_its_hash(site):
    """The whole path: Enforcer.decide -> PBX writes the spool file -> call_ended -> stored."""
    e = site.enforcer
    out = e.decide(CallAttempt(tenant="acme", caller="95512", callee="13800138000",
                               at=at("2026-03-02 10:00"), trunk="ct-trunk-1", pbx="asterisk",
                               pbx_call_id="1795480861.25"))
    assert out.let_through and out.recording_relpath
    spool = spool_path(site.settings.recording.dir, out.recording_relpath)
    write_wav(spool, 3.0)
    _age(spool, 5)  # the PBX closed it a few seconds ago
    audio = spool.read_bytes()
    ended = at("2026-03-02 10:03")
    assert e.call_ended(CallEnd("asterisk", "1795480861.25", ended, at("2026-03-02 10:00:05"),
                                175, "ANSWERED", "NORMAL_CLEARING")) == out.call_id
    rec = site.rec(out.call_id)
    assert rec.status == "stored" and rec.location == f"file:{out.recording_relpath}"
    assert rec.sha256 == hashlib.sha256(audio).hexdigest() and rec.size == len(audio)
    assert rec.duration_s == pytest.approx(3.0)
    assert rec.retain_until == ended + dt.timedelta(days=30)  # end of call + recordings_days
    assert (site.store / out.recording_relpath).read_bytes() == audio
    assert not spool.exists()
    [entry] = site.entries("recording_stored", out.call_id)
    assert entry.actor == "pbx:asterisk" and rec.sha256 in entry.details
    assert site.cdr(out.call_id).recording_problem is None and site.chain_ok()
    # the adapters' own finalize_recording call afterwards is harmless
    assert e.finalize_recording(out.call_id) is None
    assert len(site.entries("recording_stored", out.call_id)) == 1


def test_a_file_still_being_written_is_not_taken_at_hangup(site):
    call_id = site.call(ended=NOW, age_s=0)  # written this instant
    spool = site.rec(call_id).spool_path
    site.recordings.after_call_ended(call_id)
    assert site.rec(call_id).status == "recording"  # left for the adapter / sweep
    assert os.path.exists(spool)
    # the adapter's patient call waits for it to settle (settle_s 0.5) and then stores it
    started = time.monotonic()
    stored = site.enforcer.finalize_recording(call_id)
    assert stored is not None and time.monotonic() - started >= 0.3
    assert site.rec(call_id).status == "stored"


def test_a_late_file_is_waited_for(make_site):
    site = make_site(recording={"finalize_wait_s": 5, "settle_s": 0.2})
    call_id = site.call(ended=NOW, write=False)
    spool = site.rec(call_id).spool_path
    writer = threading.Timer(0.5, lambda: write_wav(Path(spool), 1.0))
    writer.start()
    try:
        assert site.enforcer.finalize_recording(call_id) is not None
    finally:
        writer.join()
    assert site.rec(call_id).status == "stored"


def test_missing_file_after_the_call_fails_the_recording_and_flags_the_cdr(site):
    call_id = site.call(ended=NOW, write=False)
    site.recordings.after_call_ended(call_id)
    assert site.rec(call_id).status == "recording"  # the quick path never fails a recording
    assert site.enforcer.finalize_recording(call_id) is None  # waits finalize_wait_s, then gives up
    rec, cdr = site.rec(call_id), site.cdr(call_id)
    assert rec.status == "failed" and rec.error.startswith("missing: ")
    assert cdr.recording_problem == "missing" and cdr.decision == "allow"
    assert "RECORDING_UNAVAILABLE" in cdr.reason_codes  # what `audit search --reason` finds
    [entry] = site.entries("recording_failed", call_id)
    assert '"reason":"missing"' in entry.details and '"stage":"finalize"' in entry.details
    # idempotent: nothing more happens on a second call
    assert site.recordings.finalize(call_id).outcome == "skipped"
    assert len(site.entries("recording_failed", call_id)) == 1


def test_missing_file_before_the_call_ended_is_not_a_failure_yet(site):
    call_id = site.call(ended=None, write=False)
    result = site.recordings.finalize(call_id, wait_s=0.1)
    assert result.outcome == "pending" and site.rec(call_id).status == "recording"


def test_empty_file_fails_as_empty(site):
    call_id = site.call(ended=NOW, write="empty")
    result = site.recordings.finalize(call_id, wait_s=0)
    assert (result.outcome, result.reason) == ("failed", "empty")
    assert site.cdr(call_id).recording_problem == "empty"


def _no_number_in(text: str) -> None:
    for number in ("13800138000", "138 0013 8000", "95512"):
        assert number not in text, text


@pytest.mark.parametrize("err, reason, words", [
    (errno.ENOSPC, "no_space", "no space left on device"),
    (errno.EACCES, "permission_denied", "permission denied"),
])
def test_disk_full_or_permission_denied_is_reported_and_recoverable(site, monkeypatch, caplog,
                                                                    err, reason, words):
    import callwarden.recorder.storage.local as local

    def refuse(*a, **kw):
        raise OSError(err, os.strerror(err))

    call_id = site.call(ended=NOW)
    spool = site.rec(call_id).spool_path
    audio = Path(spool).read_bytes()
    monkeypatch.setattr(local.tempfile, "mkstemp", refuse)  # creating the stored copy fails
    with caplog.at_level(logging.ERROR):
        result = site.recordings.finalize(call_id, wait_s=0)
    assert (result.outcome, result.reason) == ("failed", reason)
    rec, cdr = site.rec(call_id), site.cdr(call_id)
    assert rec.status == "failed" and rec.error.startswith(f"{reason}: ") and words in rec.error
    assert cdr.recording_problem == reason and "RECORDING_UNAVAILABLE" in cdr.reason_codes
    assert os.path.exists(spool)  # the evidence stays in the spool
    [entry] = site.entries("recording_failed", call_id)
    for text in (rec.error, entry.details, result.detail, caplog.text):
        _no_number_in(text)
    p = site.cli("verify")
    assert p.returncode == 1 and "recording_never_arrived" in p.stdout and "--fix retries" in p.stdout
    _no_number_in(p.stdout)
    # the disk is fixed: verify --fix stores it, and the CDR flag goes away
    monkeypatch.undo()
    p = site.cli("verify", "--fix")
    assert "FIXED" in p.stdout and "recording_retried" in p.stdout, p.stdout
    rec, cdr = site.rec(call_id), site.cdr(call_id)
    assert rec.status == "stored" and rec.sha256 == hashlib.sha256(audio).hexdigest()
    assert cdr.recording_problem is None and "RECORDING_UNAVAILABLE" not in cdr.reason_codes
    assert not os.path.exists(spool)
    assert site.cli("verify").returncode == 0


def test_a_failed_start_is_never_retried_or_unflagged(site):
    """A RECORDING_UNAVAILABLE deny (recording never started) keeps its reason for good."""
    call_id = site.call(ended=NOW)
    site.enforcer.recording_failed(call_id, "MixMonitor returned -1")
    assert site.recordings.finalize_stuck(call_id, actor="t", retry_failed=True).outcome == "skipped"
    site.cli("verify", "--fix")
    cdr = site.cdr(call_id)
    assert site.rec(call_id).status == "failed" and cdr.reason_codes == ["RECORDING_UNAVAILABLE"]


def test_encrypted_round_trip_and_verify_with_the_key(make_site, tmp_path):
    site = make_site(recording={"encryption": {"key_file": key_file(tmp_path)}})
    call_id = site.call(ended=NOW, seconds=2.0)
    audio = Path(site.rec(call_id).spool_path).read_bytes()
    result = site.recordings.finalize(call_id, wait_s=0)
    rec = site.rec(call_id)
    assert result.outcome == "stored" and rec.encrypted and rec.key_id
    assert rec.sha256 == hashlib.sha256(audio).hexdigest() and rec.size == len(audio)
    raw = site.file(call_id).read_bytes()
    assert raw.startswith(MAGIC) and audio[100:400] not in raw  # a stolen disk leaks no voice
    code, out = site.cli_json("verify")
    assert code == 0 and out["ok"] and out["counts"]["recordings_hashed"] == 1


def test_wrong_key_is_reported_clearly_and_old_keys_still_read(make_site, tmp_path):
    old_key = key_file(tmp_path, name="old.key")
    site = make_site(recording={"encryption": {"key_file": old_key}})
    call_id = site.stored_call(ended=NOW)
    key_id = site.rec(call_id).key_id
    # the key file was replaced by another key: verify cannot decrypt, and says with which key id
    new_key = key_file(tmp_path, "ab" * 32, name="new.key")
    rotated = make_site(recording={"encryption": {"key_file": new_key}})
    code, out = rotated.cli_json("verify")
    assert code == 1
    [f] = [f for f in out["findings"] if f["kind"] == "recording_undecryptable"]
    assert f["subject"] == call_id and key_id in f["detail"] and "no key" in f["detail"]
    # a key with the right id but the wrong bytes: authentication fails, said plainly
    with pytest.raises(DecryptionError, match="wrong key"):
        hash_location(site.recordings.target.get().storage, site.rec(call_id).location,
                      {key_id: Key(key_id, bytes(32))})
    # key rotation: the old key in recording.keyring reads old recordings, new ones use the new key
    both = make_site(recording={"encryption": {"key_file": new_key},
                                "keyring": [{"key_file": old_key}]})
    second = both.stored_call(ended=NOW)
    assert both.rec(second).key_id != key_id
    assert both.cli("verify").returncode == 0


def test_storage_and_key_are_built_once(site, monkeypatch):
    calls = []
    real = recording_target.build_target

    def counting(settings):
        calls.append(1)
        return real(settings)

    monkeypatch.setattr(recording_target, "build_target", counting)
    site.recordings.target._target = None  # as constructed: nothing built yet
    for _ in range(3):
        site.stored_call(ended=NOW)
    assert calls == [1]


def test_unusable_key_leaves_the_recording_pending_not_failed(make_site, tmp_path, monkeypatch):
    monkeypatch.delenv("CW_TEST_NO_SUCH_KEY", raising=False)
    site = make_site(recording={"encryption": {"key_env": "CW_TEST_NO_SUCH_KEY"}})
    call_id = site.call(ended=NOW)
    result = site.recordings.finalize(call_id, wait_s=0)
    assert result.outcome == "pending" and "CW_TEST_NO_SUCH_KEY" in result.detail
    assert site.rec(call_id).status == "recording" and site.cdr(call_id).recording_problem is None
    monkeypatch.setenv("CW_TEST_NO_SUCH_KEY", "cd" * 32)  # fixed: the next attempt works
    assert site.recordings.finalize(call_id, wait_s=0).outcome == "stored"


def test_concurrent_finalizers_store_once(site):
    call_ids = [site.call(ended=NOW) for _ in range(4)]
    others = [type(site.recordings)(site.settings, site.sessions) for _ in range(3)]
    results: list = []
    threads = [threading.Thread(target=lambda svc=svc, c=c: results.append(svc.finalize(c, wait_s=0)))
               for c in call_ids for svc in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.outcome for r in results).count("stored") == len(call_ids)
    for c in call_ids:
        assert site.rec(c).status == "stored" and len(site.entries("recording_stored", c)) == 1
    assert site.chain_ok()


def test_a_finalizer_that_died_after_storing_is_completed_by_verify_fix(site):
    """Killed between the copy and the commit: the stored copy is adopted, not lost or doubled."""
    from callwarden.recorder import finalize, recording_relpath

    call_id = site.call(ended=NOW - dt.timedelta(hours=1))
    rec = site.rec(call_id)
    audio = Path(rec.spool_path).read_bytes()
    relpath = recording_relpath("acme", call_id, rec.started_at)
    assert rec.spool_path.endswith(relpath)
    finalize(rec.spool_path, storage=site.recordings.target.get().storage, relpath=relpath,
             retain_until=NOW + dt.timedelta(days=30))  # stored, spool removed ... then killed
    with unit_of_work(site.sessions) as s:
        s.execute(update(Recording).where(Recording.id == rec.id).values(
            status="finalizing", claimed_at=NOW - CLAIM_LEASE - dt.timedelta(minutes=1)))
    code, out = site.cli_json("verify")
    assert code == 1 and {"recording_stuck"} <= {f["kind"] for f in out["findings"]}
    p = site.cli("verify", "--fix")
    assert "FIXED" in p.stdout, p.stdout
    rec = site.rec(call_id)
    assert rec.status == "stored" and rec.sha256 == hashlib.sha256(audio).hexdigest()
    [entry] = site.entries("recording_stored", call_id)
    assert '"recovered":true' in entry.details
    assert site.cli("verify").returncode == 0


def test_deadline_follows_a_call_end_reported_after_the_recording_stopped(site):
    """FreeSWITCH sends RECORD_STOP before the hangup: stored first, deadline set at the end."""
    e = site.enforcer
    call_id = site.call(ended=None)
    stored = e.finalize_recording(call_id)
    assert stored is not None
    first = site.rec(call_id).retain_until
    assert first >= NOW + dt.timedelta(days=30)
    ended = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)
    cdr = site.cdr(call_id)
    e.call_ended(CallEnd("asterisk", cdr.pbx_call_id, ended))
    assert site.rec(call_id).retain_until == ended + dt.timedelta(days=30)
    [entry] = site.entries("recording_deadline_extended", call_id)
    assert entry.actor == "pbx:asterisk"


def test_call_ended_survives_a_broken_finalizer(site, monkeypatch):
    """The CDR completion commits first; a crash in finalization does not undo or raise."""
    call_id = site.call(ended=None)

    def boom(*a, **kw):
        raise RuntimeError("disk controller on fire")

    monkeypatch.setattr(site.recordings, "_run", boom)
    cdr = site.cdr(call_id)
    assert site.enforcer.call_ended(CallEnd("asterisk", cdr.pbx_call_id, NOW)) == call_id
    assert site.cdr(call_id).ended_at == NOW and site.rec(call_id).status == "recording"


def test_finalize_into_s3_with_object_lock(make_site, s3_endpoint, s3_client):
    bucket = f"svc-locked-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    site = make_site(recording={"storage": {"kind": "s3", "bucket": bucket, "prefix": "rec",
                                            "endpoint_url": s3_endpoint, "region": "us-east-1"}})
    ended = NOW
    call_id = site.call(ended=ended)
    audio = Path(site.rec(call_id).spool_path).read_bytes()
    assert site.recordings.finalize(call_id, wait_s=0).outcome == "stored"
    rec = site.rec(call_id)
    assert rec.location.startswith(f"s3://{bucket}/rec/acme/")
    storage = site.recordings.target.get().storage
    assert storage.retention(rec.location) == ("COMPLIANCE", ended + dt.timedelta(days=30))
    assert rec.sha256 == hashlib.sha256(audio).hexdigest()
    assert site.cli("verify").returncode == 0


def test_expected_location_matches_what_each_backend_returns(site, s3_endpoint, s3_client, tmp_path):
    import io

    from callwarden.recorder import LocalStorage, S3Storage
    from callwarden.service.recordings import expected_location

    bucket = f"svc-plain-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    for storage in (LocalStorage(tmp_path / "st"),
                    S3Storage(bucket, prefix="p/q", endpoint_url=s3_endpoint, region="us-east-1"),
                    S3Storage(bucket, endpoint_url=s3_endpoint, region="us-east-1")):
        rel = f"acme/2026/03/02/{os.urandom(4).hex()}.wav"
        assert storage.put(rel, io.BytesIO(b"x"), until) == expected_location(storage, rel)


def test_audit_entries_written_by_finalization_carry_no_phone_numbers(site):
    site.stored_call(ended=NOW)
    site.recordings.finalize(site.call(ended=NOW, write=False), wait_s=0)
    with site.sessions() as s:
        for e in s.query(AuditEntry).filter(AuditEntry.action.like("recording%")):
            _no_number_in(e.details)
