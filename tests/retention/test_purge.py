"""`callwarden purge`: only what is past its deadline and not on hold; one audit entry each."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from sqlalchemy import update

from callwarden.policy import CallAttempt
from callwarden.service.locks import exclusive
from callwarden.store.db import unit_of_work
from callwarden.store.models import AuditEntry, Call, Consent, Recording
from tests.retention.conftest import DAY, NOW

US = dt.timedelta(microseconds=1)


def iso(t: dt.datetime) -> str:
    return t.isoformat()


def purge(site, when: dt.datetime | None = None, *extra: str) -> dict:
    args = ["purge", *(["--now", iso(when)] if when else []), *extra]
    code, out = site.cli_json(*args)
    assert code == (0 if out["ok"] else 1)
    return out


def test_recording_deadline_day_29_30_31(make_site):
    site = make_site(retention={"recordings_days": 30, "cdr_days": 90, "consent_days": 30})
    e = NOW - 100 * DAY
    x = site.stored_call(ended=e)
    y = site.stored_call(ended=e - DAY)
    assert site.rec(x).retain_until == e + 30 * DAY
    x_file, y_file = site.file(x), site.file(y)

    out = purge(site, e + 29 * DAY)  # x: day 29; y: exactly at its deadline (day 30)
    assert out["recordings"]["purged"] == 0
    assert site.rec(y).status == "stored" and y_file.exists()

    out = purge(site, e + 29 * DAY + US)  # y: just past its deadline
    assert [i["subject"] for i in out["items"]] == [y]
    assert site.rec(y).status == "purged" and not y_file.exists()
    assert site.rec(x).status == "stored" and x_file.exists()

    assert purge(site, e + 30 * DAY)["recordings"]["purged"] == 0  # x: at its deadline instant
    out = purge(site, e + 31 * DAY)  # x: day 31
    assert [i["subject"] for i in out["items"] if i["kind"] == "recording"] == [x]
    rec = site.rec(x)
    assert rec.status == "purged" and rec.purged_at is not None and not x_file.exists()
    assert rec.sha256 and rec.location  # the row remains as the record of what was removed

    for call_id in (x, y):
        [entry] = site.entries("recording_purged", call_id)
        assert entry.actor == "tester" and '"already_gone":false' in entry.details
    # idempotent: a re-run finds nothing, writes nothing
    before = site.count(AuditEntry)
    assert purge(site, e + 31 * DAY)["recordings"]["purged"] == 0
    assert site.count(AuditEntry) == before
    assert site.cdr(x) is not None  # cdr_days 90: the CDR stays
    assert site.chain_ok()


def test_raising_retention_keeps_what_is_stored_longer(make_site):
    short = make_site(retention={"recordings_days": 30, "cdr_days": 90, "consent_days": 30})
    e = NOW - 100 * DAY
    x = short.stored_call(ended=e)
    longer = make_site(retention={"recordings_days": 60, "cdr_days": 90, "consent_days": 30})
    assert purge(longer, e + 45 * DAY)["recordings"]["purged"] == 0
    assert longer.rec(x).status == "stored"
    assert purge(longer, e + 60 * DAY + US)["recordings"]["purged"] == 1


def test_lowering_retention_never_shortens_what_is_stored(make_site):
    longer = make_site(retention={"recordings_days": 40, "cdr_days": 90, "consent_days": 30})
    e = NOW - 100 * DAY
    x = longer.stored_call(ended=e)
    deadline = longer.rec(x).retain_until
    assert deadline == e + 40 * DAY
    short = make_site(retention={"recordings_days": 30, "cdr_days": 90, "consent_days": 30})
    assert purge(short, e + 31 * DAY)["recordings"]["purged"] == 0
    assert purge(short, deadline)["recordings"]["purged"] == 0  # the stored deadline instant
    assert purge(short, deadline + US)["recordings"]["purged"] == 1


def test_the_purge_clock_cannot_run_ahead(site):
    p = site.cli("purge", "--now", iso(dt.datetime.now(dt.UTC) + DAY))
    assert p.returncode == 2 and "future" in p.stderr


def test_dry_run_changes_nothing_and_sees_the_cascade(site):
    call_id = site.stored_call(ended=NOW - 100 * DAY)
    before = site.count(AuditEntry)
    out = purge(site, None, "--dry-run")
    assert out["dry_run"] and out["recordings"]["would_purge"] == 1
    assert out["cdrs"]["would_purge"] == 1  # goes with its recording in the same run
    assert site.count(AuditEntry) == before and site.rec(call_id).status == "stored"
    assert site.file(call_id).exists()
    out = purge(site)
    assert out["recordings"]["purged"] == 1 and out["cdrs"]["purged"] == 1


def test_holds_of_each_scope_keep_evidence_until_lifted(site):
    old = NOW - 100 * DAY
    by_call = site.stored_call(ended=old)
    by_tenant = site.stored_call(ended=old, tenant="beta", caller="01058001234")
    by_prefix = site.stored_call(ended=old, callee="13912345678")
    by_caller = site.stored_call(ended=old, caller="95513", callee="13800138001")
    flagged = site.stored_call(ended=old)
    free = site.stored_call(ended=old)
    with unit_of_work(site.sessions) as s:
        s.execute(update(Recording).where(Recording.call_id == flagged).values(legal_hold=True))

    ids = []
    for args in (["--call", by_call], ["--tenant", "beta"], ["--number-prefix", "+86 139 123"],
                 ["--number-prefix", "95513"]):
        code, row = site.cli_json("holds", "set", *args, "--reason", "case 2026-17")
        assert code == 0 and row["active"]
        ids.append(row["id"])
    assert [h["value"] for h in site.cli_json("holds", "list")[1]] == ["95513", "139123", "beta", by_call]

    out = purge(site)
    assert {i["subject"] for i in out["items"] if i["result"] == "purged"} == {free}
    assert out["recordings"]["held"] == 5  # (their CDRs stay with them: not due while kept)
    for call_id in (by_call, by_tenant, by_prefix, by_caller, flagged):
        assert site.rec(call_id).status == "stored" and site.file(call_id).exists()
        assert site.cdr(call_id) is not None
    assert site.cdr(free) is None  # its CDR (cdr_days 30) went with it

    for hold_id in ids:
        assert site.cli("holds", "lift", str(hold_id), "--reason", "case closed").returncode == 0
    assert site.cli("holds", "lift", str(ids[0]), "--reason", "again").returncode == 1
    assert site.cli_json("holds", "list")[1] == []
    assert len(site.cli_json("holds", "list", "--all")[1]) == 4

    out = purge(site)
    purged = {i["subject"] for i in out["items"] if i["kind"] == "recording"}
    assert purged == {by_call, by_tenant, by_prefix, by_caller}
    assert site.rec(flagged).status == "stored"  # its own legal_hold flag still holds it
    assert len(site.entries("legal_hold_set")) == 4 and len(site.entries("legal_hold_lifted")) == 4
    for call_id in (free, by_call, by_tenant, by_prefix, by_caller):
        assert len(site.entries("recording_purged", call_id)) == 1
        assert len(site.entries("cdr_purged", call_id)) == 1
    assert site.chain_ok()


def test_cdr_retention(make_site):
    site = make_site(retention={"recordings_days": 60, "cdr_days": 30, "consent_days": 30})
    e = NOW - 100 * DAY
    denied = site.enforcer.decide(CallAttempt(tenant="acme", caller="95512", callee="13900139000",
                                              at=e, pbx="asterisk")).call_id
    recorded = site.stored_call(ended=e)
    failed = site.call(ended=e, write=False)
    assert site.recordings.finalize(failed, wait_s=0).outcome == "failed"
    held = site.stored_call(ended=e, tenant="beta")
    assert site.cli("holds", "set", "--tenant", "beta", "--reason", "inquiry").returncode == 0

    assert purge(site, e + 30 * DAY)["cdrs"]["purged"] == 0  # exactly at the deadline
    out = purge(site, e + 30 * DAY + US)
    assert {i["subject"] for i in out["items"] if i["kind"] == "cdr"} == {denied, failed}
    assert site.cdr(denied) is None and site.cdr(failed) is None
    assert site.count(Recording, Recording.call_id == failed) == 0  # its failed row went too
    assert site.cdr(recorded) is not None  # its recording is kept 60 days: so is the CDR

    out = purge(site, e + 61 * DAY)
    assert {(i["kind"], i["subject"]) for i in out["items"]} == {("recording", recorded),
                                                                 ("cdr", recorded)}
    assert site.cdr(recorded) is None and site.count(Recording, Recording.call_id == recorded) == 0
    [entry] = site.entries("cdr_purged", recorded)
    assert '"status":"purged"' in entry.details and "13800138000" not in entry.details
    assert site.cdr(held) is not None and site.rec(held).status == "stored"
    assert site.chain_ok()


def _consent(site, callee: str, *, tenant: str = "acme", revoked=None, expires=None) -> int:
    with unit_of_work(site.sessions) as s:
        c = Consent(tenant_id=tenant, callee=callee, scopes="callback", evidence_kind="contract",
                    evidence_ref="C-1", evidence_sha256="ab" * 32, obtained_at=NOW - 400 * DAY,
                    revoked_at=revoked, expires_at=expires)
        s.add(c)
        s.flush()
        return c.id


def test_consent_evidence_retention(site):
    r = NOW - 100 * DAY
    revoked = _consent(site, "13600000001", revoked=r)
    expired = _consent(site, "13600000002", expires=r)
    first_end = _consent(site, "13600000003", revoked=r, expires=r + 60 * DAY)
    active = _consent(site, "13600000004")
    not_yet = _consent(site, "13600000005", expires=NOW + DAY)
    cited = _consent(site, "13600000006", revoked=r)
    by_prefix = _consent(site, "13612300007", revoked=r)
    by_tenant = _consent(site, "13600000008", revoked=r, tenant="beta")
    site.stored_call(ended=NOW - DAY, callee="13600000006", consent_id=cited)  # a recent call
    site.cli("holds", "set", "--number-prefix", "136123", "--reason", "complaint 12321")
    site.cli("holds", "set", "--tenant", "beta", "--reason", "inquiry")

    assert purge(site, r + 30 * DAY)["consents"]["purged"] == 0
    out = purge(site, r + 30 * DAY + US)
    gone = {i["subject"] for i in out["items"] if i["kind"] == "consent"}
    assert gone == {f"consent:{i}" for i in (revoked, expired, first_end)}
    assert out["consents"]["held"] == 2
    for i in (active, not_yet, cited, by_prefix, by_tenant):
        assert site.count(Consent, Consent.id == i) == 1
    [entry] = site.entries("consent_purged", f"consent:{revoked}")
    assert '"evidence_sha256":"' + "ab" * 32 in entry.details and "13600000001" not in entry.details


def test_object_lock_refuses_early_deletion_and_nothing_is_lost(make_site, s3_endpoint, s3_client):
    bucket = f"purge-locked-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    site = make_site(recording={"storage": {"kind": "s3", "bucket": bucket,
                                            "endpoint_url": s3_endpoint, "region": "us-east-1"}})
    call_id = site.stored_call(ended=NOW)
    rec = site.rec(call_id)
    # the store thinks it is due (a clock or a restored database disagrees with S3's lock)
    with unit_of_work(site.sessions) as s:
        s.execute(update(Call).where(Call.call_id == call_id).values(ended_at=NOW - 40 * DAY))
        s.execute(update(Recording).where(Recording.id == rec.id)
                  .values(retain_until=NOW - 10 * DAY))
    p = site.cli("purge")
    assert p.returncode == 1 and "LOCKED" in p.stdout and "delete refused" in p.stdout
    code, out = site.cli_json("purge")
    assert code == 1 and out["recordings"]["locked"] == 1 and out["recordings"]["purged"] == 0
    after = site.rec(call_id)
    assert after.status == "stored" and after.location == rec.location
    assert site.entries("recording_purged", call_id) == [] and site.cdr(call_id) is not None
    storage = site.recordings.target.get().storage
    assert storage.exists(rec.location)
    assert site.cli("verify").returncode == 0


def test_purge_deletes_every_version_from_an_unlocked_bucket(make_site, s3_endpoint, s3_client):
    bucket = f"purge-plain-{os.urandom(4).hex()}"
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    site = make_site(recording={"storage": {"kind": "s3", "bucket": bucket,
                                            "endpoint_url": s3_endpoint, "region": "us-east-1"}})
    call_id = site.stored_call(ended=NOW - 100 * DAY)
    assert purge(site)["recordings"]["purged"] == 1
    versions = s3_client.list_object_versions(Bucket=bucket)
    assert not versions.get("Versions") and not versions.get("DeleteMarkers")
    assert site.rec(call_id) is None or site.rec(call_id).status == "purged"


@pytest.mark.parametrize("file_there", [True, False])
def test_an_interrupted_purge_is_finished_by_the_next_run(site, file_there):
    call_id = site.stored_call(ended=NOW - 100 * DAY)
    path = site.file(call_id)
    with unit_of_work(site.sessions) as s:  # as a run killed between intent and deletion left it
        s.execute(update(Recording).where(Recording.call_id == call_id)
                  .values(status="purging", claimed_at=NOW))
    if not file_there:
        path.unlink()  # ... or killed between the deletion and the final commit
    p = site.cli("verify")
    assert p.returncode == 1 and "purge_incomplete" in p.stdout
    out = purge(site)
    assert out["recordings"]["purged"] == 1 and not path.exists()
    [entry] = site.entries("recording_purged", call_id)
    assert '"resumed":true' in entry.details
    assert f'"already_gone":{str(not file_there).lower()}' in entry.details
    assert site.count(Recording, Recording.status == "purging") == 0


def test_an_interrupted_purge_respects_a_hold_set_meanwhile(site):
    call_id = site.stored_call(ended=NOW - 100 * DAY)
    with unit_of_work(site.sessions) as s:
        s.execute(update(Recording).where(Recording.call_id == call_id)
                  .values(status="purging", claimed_at=NOW))
    site.cli("holds", "set", "--call", call_id, "--reason", "subpoena")
    out = purge(site)
    assert out["recordings"]["kept"] == 1 and out["recordings"]["purged"] == 0
    assert site.rec(call_id).status == "stored" and site.file(call_id).exists()
    assert site.entries("recording_purged", call_id) == []


def test_one_purge_at_a_time(site):
    site.stored_call(ended=NOW - 100 * DAY)
    with exclusive(site.enforcer.engine, "purge"):
        p = site.cli("purge")
        assert p.returncode == 1 and "another purge is running" in p.stderr
    assert purge(site)["recordings"]["purged"] == 1


@pytest.mark.parametrize("dry_run", [False, True])
def test_decisions_go_on_while_the_purge_scans(make_site, monkeypatch, dry_run):
    """The purge looks for what is due, and counts what holds keep, in reads over the whole
    store (seconds on millions of CDRs). Those reads must not hold SQLite's write lock: a
    decision made from inside one (after its count, its transaction still open) is answered,
    where a lock held there could only make it wait for its deadline and be refused
    POLICY_UNAVAILABLE, however fast the machine."""
    from callwarden.service.purge import Purger

    site = make_site(frequency={"per_day": 1000, "per_week": 7000})
    old = site.stored_call(ended=NOW - 100 * DAY)
    monday_10am = dt.datetime(2026, 3, 2, 10, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    decided = []
    real = Purger._count_held

    def count_then_decide(self, s, *args):  # noqa: ANN001, ANN202
        held = real(self, s, *args)
        decided.append(site.enforcer.decide(CallAttempt(
            tenant="acme", caller="95512", callee="13800138000", at=monday_10am,
            pbx="asterisk", pbx_call_id=f"during-purge-{len(decided)}")))
        return held

    monkeypatch.setattr(Purger, "_count_held", count_then_decide)
    out = purge(site, None, *(["--dry-run"] if dry_run else []))
    assert len(decided) == 3  # recordings, CDRs, consents
    assert [o.decision.codes for o in decided] == [()] * 3
    assert all(o.decision.allowed for o in decided)
    assert out["recordings"]["would_purge" if dry_run else "purged"] == 1
    assert out["cdrs"]["would_purge" if dry_run else "purged"] == 1
    assert (site.cdr(old) is None) is not dry_run  # its recording, then the CDR (cdr_days 30)
    assert site.chain_ok()
