"""``callwarden verify``: prove the evidence is whole, and say exactly where it is not.

Checks, each producing :class:`Finding` rows (``kind`` values are documented in
docs/recordings.md and stable for scripts):

* the audit log's hash chain, entry by entry;
* every stored recording: its file exists, its sha256 and size (of the plaintext: encrypted files
  are decrypted with the configured keys) still match the row, and the row still matches the
  ``recording_stored`` audit entry written when it was finalized (a file *and* row replaced
  together is caught there); it has a retention deadline;
* recordings that never arrived (failed), are stuck (call over, never finalized), or were left
  half-purged; purged recordings without their audit entry; CDRs pointing at no recording row;
* every file in storage that no recording row references, and every spool file that is not a
  live recording (orphans and leftovers).

``fix=True`` applies only fixes whose outcome is certain, each audit-logged by the code that
makes it: finalize a stuck spool file whose call has ended (or mark it failed if it is gone),
retry a finalization that failed for a reason that is gone now (disk full, permission, storage
down) when its spool file still holds audio, mark a stored recording whose file is gone as
``failed``/``lost`` and flag its CDR, and remove a spool leftover that is byte-identical to the
stored copy (or empty, for a recording already failed as empty).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from callwarden.audit.pseudonym import has_clear_numbers
from callwarden.audit.snapshot import snapshot
from callwarden.config import Settings
from callwarden.log import get_logger
from callwarden.recorder import DecryptionError, LocationNotFound, hash_location
from callwarden.recorder.streams import hash_stream
from callwarden.service.recording_target import RecordingTarget, TargetUnavailable
from callwarden.service.recordings import CLAIM_LEASE, RecordingService, expected_location
from callwarden.service.spool import iter_spool_files, spool_relpath
from callwarden.store import audit
from callwarden.store.db import unit_of_work
from callwarden.store.models import AuditEntry, AuditHead, Call, Recording, utcnow

__all__ = ["Finding", "VerifyReport", "Verifier"]

log = get_logger("callwarden.verify")

Severity = Literal["error", "notice"]
#: A call that has not ended this long after it started is reported (its hangup was lost).
OPEN_TOO_LONG = dt.timedelta(hours=24)
_BATCH = 1000


@dataclass
class Finding:
    """One thing wrong (``error``) or worth knowing (``notice``). Never names a phone number."""

    kind: str
    severity: Severity
    subject: str | None
    detail: str
    fixed: bool = False
    fix: str | None = None  # what --fix did about it


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    audit_entries: int = 0
    audit_head: str | None = None

    @property
    def ok(self) -> bool:
        """True when no error is left unfixed."""
        return not any(f.severity == "error" and not f.fixed for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok,
                "audit_log": {"entries": self.audit_entries, "head": self.audit_head},
                "counts": dict(self.counts),
                "findings": [asdict(f) for f in self.findings]}


@dataclass(frozen=True, slots=True)
class _Rec:
    id: int
    call_id: str
    status: str
    location: str | None
    sha256: str | None
    size: int | None
    spool_path: str | None
    started_at: dt.datetime
    retain_until: dt.datetime | None
    claimed_at: dt.datetime | None
    error: str | None
    ended_at: dt.datetime | None
    answered_at: dt.datetime | None
    billsec: int | None
    problem: str | None


class Verifier:
    """One verification pass; ``since`` limits re-hashing to recordings started since then."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session],
                 recordings: RecordingService, *, actor: str, fix: bool = False,
                 since: dt.datetime | None = None, stuck_after: dt.timedelta = dt.timedelta(minutes=5),
                 now: dt.datetime | None = None) -> None:
        self.settings, self.sessions, self.recordings = settings, sessions, recordings
        self.actor, self.fix, self.since, self.stuck_after = actor, fix, since, stuck_after
        self.now = now or utcnow()
        self.report = VerifyReport()
        self.target: RecordingTarget | None = None
        self.referenced: set[str] = set()  # locations rows account for (stored, purging, in flight)

    def run(self) -> VerifyReport:
        try:
            self.target = self.recordings.target.get()
        except TargetUnavailable as exc:
            self._add("storage_unavailable", "error", None,
                      f"{exc}: recording files cannot be checked")
        if self.fix and self.target is not None:
            self._fix_left_behind()
        self._audit_chain()
        self._recordings()
        self._cdrs_without_recording_row()
        if self.target is not None:
            self._storage_files()
            self._spool_files()
        return self.report

    def _add(self, kind: str, severity: Severity, subject: str | None, detail: str, *,
             fixed: bool = False, fix: str | None = None) -> Finding:
        finding = Finding(kind, severity, subject, detail, fixed, fix)
        self.report.findings.append(finding)
        return finding

    def _reading(self) -> AbstractContextManager[Session]:
        """A read-only session over one snapshot of the store (``audit.snapshot``): on SQLite
        it never takes the write lock that call decisions wait for (the store's own sessions
        begin ``IMMEDIATE``), on PostgreSQL every statement in it sees the same data."""
        return snapshot(self.sessions.kw["bind"])

    def _audit_entry(self, call_id: str, action: str) -> dict[str, Any] | None:
        """The latest ``action`` entry about ``call_id`` as the store has it now: a recording
        finalized or purged while :meth:`_recording_audit` was reading is not unaudited (its
        row and its entry commit together, so the row seen means the entry is there)."""
        with self._reading() as s:
            details = s.scalars(select(AuditEntry.details)
                                .where(AuditEntry.action == action, AuditEntry.subject == call_id)
                                .order_by(AuditEntry.seq.desc()).limit(1)).first()
        return None if details is None else _details(details)

    # -- fixes that run first (so the checks below see the result) -----------------------------

    def _fix_left_behind(self) -> None:
        for call_id in self.recordings.stuck(ended_before=self.now - self.stuck_after, now=self.now):
            result = self.recordings.finalize_stuck(call_id, actor=self.actor)
            done = result.outcome in ("stored", "failed")
            self._add("recording_stuck", "error", call_id,
                      "call is over but its recording was never finalized",
                      fixed=done, fix=f"{result.outcome}: {result.detail}"[:300])
        with self.sessions() as s:
            failed = s.execute(select(Call.call_id, Call.recording_problem, Recording.spool_path)
                               .join(Recording, Recording.id == Call.recording_id)
                               .where(Recording.status == "failed",
                                      Call.recording_problem.is_not(None))).all()
        for call_id, problem, spool in failed:
            if not self.recordings.retryable(problem, spool):
                continue
            result = self.recordings.finalize_stuck(call_id, actor=self.actor, retry_failed=True)
            self._add("recording_retried", "notice", call_id,
                      f"finalization had failed ({problem}); its spool file is still there",
                      fixed=result.outcome == "stored", fix=f"{result.outcome}: {result.detail}"[:300])

    # -- the audit log ------------------------------------------------------------------------

    def _audit_chain(self) -> None:
        clear: list[int] = []  # first seq, last seq, count

        def numbers_in_clear(e: AuditEntry) -> None:
            if has_clear_numbers(e.action, e.subject, e.details):
                clear[:] = [clear[0] if clear else e.seq, e.seq, (clear[2] if clear else 0) + 1]

        # One snapshot for the entries and the head: on a live store decisions go on adding
        # entries while the walk runs, and must neither wait for it nor look like a break.
        with self._reading() as s:
            for p in audit.verify_chain(s, inspect=numbers_in_clear):
                self._add("audit_chain_broken", "error", f"audit:{p.seq}", p.problem)
            head = s.get(AuditHead, 1)
        if clear:  # both forms verify; these are the entries from before numbers were keyed
            self._add("audit_numbers_in_clear", "notice", f"audit:{clear[0]}..{clear[1]}",
                      f"{clear[2]} audit entries hold phone numbers in clear (written before "
                      "numbers were keyed, schema revision 0008); the chain cannot be edited, "
                      "they stay as written (README: 'Personal data in the audit log')")
        self.report.audit_entries = head.seq if head else 0
        self.report.audit_head = head.hash if head else None

    def _recording_audit(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """call id -> details of its latest ``recording_stored`` entry; ids with a purge entry."""
        stored: dict[str, dict[str, Any]] = {}
        purged: set[str] = set()
        q = (select(AuditEntry.subject, AuditEntry.action, AuditEntry.details)
             .where(AuditEntry.action.in_(("recording_stored", "recording_purged")))
             .order_by(AuditEntry.seq).execution_options(yield_per=_BATCH))
        with self._reading() as s:
            for subject, action, details in s.execute(q):
                if action == "recording_purged":
                    purged.add(subject)
                else:
                    stored[subject] = _details(details)
        return stored, purged

    # -- recording rows -----------------------------------------------------------------------

    def _rows(self) -> Iterator[list[_Rec]]:
        q = (select(Recording.id, Recording.call_id, Recording.status, Recording.location,
                    Recording.sha256, Recording.size, Recording.spool_path, Recording.started_at,
                    Recording.retain_until, Recording.claimed_at, Recording.error, Call.ended_at,
                    Call.answered_at, Call.billsec, Call.recording_problem)
             .join(Call, Call.call_id == Recording.call_id).order_by(Recording.id))
        last = 0
        while True:
            with self._reading() as s:  # short reads: no snapshot held while files are hashed
                batch = [_Rec(*r) for r in s.execute(q.where(Recording.id > last).limit(_BATCH))]
            if not batch:
                return
            last = batch[-1].id
            yield batch

    def _recordings(self) -> None:
        stored_audit, purged_audit = self._recording_audit()
        for batch in self._rows():
            for rec in batch:
                self.report.counts[f"recordings_{rec.status}"] += 1
                check = getattr(self, f"_check_{rec.status}", None)
                if check is not None:
                    check(rec, stored_audit, purged_audit)

    def _check_stored(self, rec: _Rec, stored_audit: dict[str, dict[str, Any]], _: set[str]) -> None:
        if rec.location:
            self.referenced.add(rec.location)
        if rec.retain_until is None:
            self._add("recording_no_deadline", "error", rec.call_id,
                      "stored recording has no retention deadline")
        entry = stored_audit.get(rec.call_id)
        if entry is None:  # finalized after the audit scan? its entry is there now
            entry = self._audit_entry(rec.call_id, "recording_stored")
        if entry is None:
            self._add("recording_unaudited", "error", rec.call_id,
                      "stored recording has no recording_stored audit entry")
        elif (entry.get("sha256"), entry.get("location")) != (rec.sha256, rec.location):
            self._add("recording_row_altered", "error", rec.call_id,
                      "recording row no longer matches its audit entry (sha256 or location "
                      "changed after finalization)")
        if self.target is not None and (self.since is None or rec.started_at >= self.since):
            self._check_file(rec)

    def _check_file(self, rec: _Rec) -> None:
        assert self.target is not None
        self.report.counts["recordings_hashed"] += 1
        where = rec.location or "(no location)"
        try:
            sha, size = hash_location(self.target.storage, rec.location or "", self.target.keyring)
        except LocationNotFound:
            finding = self._add("recording_missing", "error", rec.call_id,
                                f"file is gone from storage: {where}")
            if self.fix and self.recordings.mark_lost(rec.call_id, actor=self.actor,
                                                       detail=f"verify: file missing at {where}"):
                finding.fixed, finding.fix = True, "marked failed (lost); CDR flagged"
            return
        except DecryptionError as exc:
            self._add("recording_undecryptable", "error", rec.call_id, f"{where}: {exc}")
            return
        except Exception as exc:  # StorageError, OSError, ValueError (foreign location)
            self._add("recording_unreadable", "error", rec.call_id,
                      f"{where}: {type(exc).__name__}: {exc}"[:400])
            return
        if (sha, size) != (rec.sha256, rec.size):
            self._add("recording_altered", "error", rec.call_id,
                      f"{where}: content differs from what was stored (sha256 {sha[:16]}..., "
                      f"{size} bytes; expected {(rec.sha256 or '')[:16]}..., {rec.size} bytes)")

    def _check_purging(self, rec: _Rec, *_: object) -> None:
        if rec.location:
            self.referenced.add(rec.location)
        self._add("purge_incomplete", "error", rec.call_id,
                  "a purge was interrupted on this recording: run `callwarden purge` to finish it")

    def _in_flight(self, rec: _Rec) -> None:
        relpath = spool_relpath(self.settings.recording.dir, rec.spool_path or "")
        if self.target is not None and relpath is not None:
            location = expected_location(self.target.storage, relpath)
            if location:
                self.referenced.add(location)

    def _check_finalizing(self, rec: _Rec, *_: object) -> None:
        self._in_flight(rec)
        if rec.claimed_at is not None and rec.claimed_at < self.now - CLAIM_LEASE:
            self._add("recording_stuck", "error", rec.call_id,
                      "finalizer died while storing this recording (--fix completes it)")

    def _check_recording(self, rec: _Rec, *_: object) -> None:
        self._in_flight(rec)
        if rec.ended_at is not None and rec.ended_at < self.now - self.stuck_after:
            self._add("recording_stuck", "error", rec.call_id,
                      "call is over but its recording was never finalized (--fix finalizes it)")
        elif rec.ended_at is None and rec.started_at < self.now - OPEN_TOO_LONG:
            self._add("call_not_ended", "error", rec.call_id,
                      "no hangup recorded for over 24 h: its recording cannot be finalized until "
                      "the PBX adapter reconciles the call")

    def _check_failed(self, rec: _Rec, *_: object) -> None:
        unanswered = rec.answered_at is None and not rec.billsec
        retry = " (spool file still there: --fix retries it)" if self.recordings.retryable(
            rec.problem, rec.spool_path) else ""
        self._add("recording_never_arrived", "notice" if unanswered else "error", rec.call_id,
                  f"{'unanswered call, ' if unanswered else ''}recording failed: "
                  f"{(rec.error or 'no reason recorded')[:300]}{retry}")

    def _check_purged(self, rec: _Rec, _: dict[str, dict[str, Any]], purged_audit: set[str]) -> None:
        if rec.call_id not in purged_audit and self._audit_entry(rec.call_id, "recording_purged") is None:
            self._add("purged_unaudited", "error", rec.call_id,
                      "recording is marked purged but no recording_purged audit entry exists")

    def _cdrs_without_recording_row(self) -> None:
        q = (select(Call.call_id).outerjoin(Recording, Recording.id == Call.recording_id)
             .where(Call.recording_id.is_not(None), Recording.id.is_(None)))
        with self._reading() as s:
            for call_id in s.scalars(q):
                self._add("cdr_recording_row_missing", "error", call_id,
                          "CDR points at a recording row that does not exist")

    # -- files ----------------------------------------------------------------------------------

    def _rows_for(self, call_ids: set[str]) -> dict[str, _Rec]:
        """Recording rows by call id (files are named after their call: recorder.naming)."""
        found: dict[str, _Rec] = {}
        ids = sorted(call_ids)
        for i in range(0, len(ids), _BATCH):
            with self._reading() as s:
                for r in s.execute(select(
                        Recording.id, Recording.call_id, Recording.status, Recording.location,
                        Recording.sha256, Recording.size, Recording.spool_path,
                        Recording.started_at, Recording.retain_until, Recording.claimed_at,
                        Recording.error, Call.ended_at, Call.answered_at, Call.billsec,
                        Call.recording_problem)
                        .join(Call, Call.call_id == Recording.call_id)
                        .where(Recording.call_id.in_(ids[i:i + _BATCH]))):
                    found[r.call_id] = _Rec(*r)
        return found

    def _storage_files(self) -> None:
        assert self.target is not None
        unexpected: list[str] = []
        try:
            for location in self.target.storage.iter_locations():
                self.report.counts["storage_files"] += 1
                if location not in self.referenced:
                    unexpected.append(location)
        except Exception as exc:
            self._add("storage_unavailable", "error", None,
                      f"cannot list {self.target.storage.describe()}: {exc}"[:400])
            return
        rows = self._rows_for({_stem(loc) for loc in unexpected})
        for location in unexpected:
            rec = rows.get(_stem(location))
            whose = (f"named for call {rec.call_id}, whose recording is {rec.status}"
                     if rec else "no recording row references it")
            self._add("unexpected_file", "error", location, f"file in storage: {whose}")

    def _spool_files(self) -> None:
        files = list(iter_spool_files(self.settings.recording.dir))
        self.report.counts["spool_files"] = len(files)
        rows = self._rows_for({f.stem for f in files})
        for path in files:
            rec = rows.get(path.stem)
            if rec is None or not _same_file(rec.spool_path, path):
                self._add("spool_orphan", "error", str(path),
                          "file in the spool that no recording row expects")
            elif rec.status in ("stored", "purged", "failed"):
                self._spool_leftover(rec, path)

    def _spool_leftover(self, rec: _Rec, path: Path) -> None:
        if rec.status == "failed" and self.recordings.retryable(rec.problem, str(path)):
            return  # reported (and retried by --fix) with the failed recording itself
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                sha, _ = hash_stream(f)
        except OSError as exc:
            self._add("spool_leftover", "error", str(path), f"unreadable: {exc.strerror}")
            return
        certain = (rec.status in ("stored", "purged") and sha == rec.sha256) or (
            rec.status == "failed" and size == 0)
        if rec.status == "failed":
            what = "empty" if size == 0 else "holding audio that was never stored"
        else:
            what = f"{'identical to' if sha == rec.sha256 else 'different from'} the recording"
        finding = self._add("spool_leftover", "error", str(path),
                            f"spool file of call {rec.call_id} (recording {rec.status}) is still "
                            f"there, {what}")
        if self.fix and certain:
            try:
                os.unlink(path)
            except OSError as exc:
                finding.fix = f"could not remove: {exc.strerror}"
                return
            with unit_of_work(self.sessions) as s:
                audit.append(s, self.actor, "spool_leftover_removed", rec.call_id,
                             {"path": str(path), "sha256": sha, "size": size,
                              "recording_status": rec.status})
            finding.fixed, finding.fix = True, "removed"


def _stem(location: str) -> str:
    """The file name without extension (recordings are named ``<call id>.<ext>``)."""
    return Path(location.rsplit("/", 1)[-1].removeprefix("file:")).stem


def _same_file(spool_path: str | None, path: Path) -> bool:
    if not spool_path:
        return False
    return Path(spool_path) == path or Path(spool_path).resolve() == path.resolve()


def _details(text: str) -> dict[str, Any]:
    """An audit entry's details; {} when they are not JSON (they then match nothing)."""
    try:
        return json.loads(text)
    except ValueError:
        return {}
