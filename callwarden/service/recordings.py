"""Finalizing a call's recording after the call: spool file -> storage, with its proof.

A recording row moves through these states (``recordings.status``)::

    recording --claim--> finalizing --> stored               (sha256, size, duration, deadline)
                                    \\-> failed               (the CDR is flagged: calls.recording_problem)
    failed    --claim--> finalizing ...                      (spool file present again: retry)
    finalizing, claim older than CLAIM_LEASE (finalizer died) --claim--> finalizing ...

A claim is a compare-and-set on (status, claimed_at) committed *before* any file is touched, so
two finalizers (the PBX adapter, ``Enforcer.call_ended``, ``callwarden verify --fix``, on one
node or several) never copy the same file; no transaction is open while a file is copied. The
deadline is the call's end + ``retention.recordings_days`` (the recording's own stop time if
the call has not ended yet; extended when the end arrives later). Nothing is ever dropped: a
missing or empty file after the call ended marks the row ``failed`` with the reason and flags
the CDR, and an audit entry records either outcome.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from callwarden.config import Settings
from callwarden.log import get_logger
from callwarden.policy.reasons import ordered
from callwarden.recorder import (
    FinalizedRecording,
    LocalStorage,
    RecordingError,
    Storage,
    finalize,
    open_recording,
)
from callwarden.recorder.streams import hash_stream
from callwarden.service.native import native_lock
from callwarden.service.recording_target import LazyTarget, RecordingTarget, TargetUnavailable
from callwarden.service.spool import probe, spool_relpath, wait_settled
from callwarden.store import audit
from callwarden.store.db import unit_of_work
from callwarden.store.models import Call, Recording, utcnow

__all__ = [
    "CLAIM_LEASE",
    "FinalizeResult",
    "RecordingService",
    "expected_location",
    "flag_cdr",
    "unflag_cdr",
]

log = get_logger("callwarden.recordings")

#: A ``finalizing`` claim older than this is taken to belong to a finalizer that died.
CLAIM_LEASE = dt.timedelta(minutes=15)
_FLAG = "RECORDING_UNAVAILABLE"

Outcome = Literal["stored", "failed", "pending", "skipped"]


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    """What happened to one call's recording.

    ``stored``/``failed``: this call changed the row. ``pending``: nothing final yet (the file is
    not there or still being written; the row stays ``recording`` for a later attempt).
    ``skipped``: nothing to do (no recording, already final, or another finalizer has it).
    """

    call_id: str
    outcome: Outcome
    detail: str = ""
    reason: str | None = None  # the failure reason (RecordingError.reason, or "lost")
    recording: FinalizedRecording | None = None


@dataclass(frozen=True, slots=True)
class _Row:
    """The recording row and the call facts one finalization needs, read without locks
    (by :meth:`RecordingService._row`, or returned by the statement that ends the call:
    :func:`returned_at_call_end`)."""

    rec_id: int
    call_id: str
    status: str
    spool_path: str | None
    claimed_at: dt.datetime | None
    retain_until: dt.datetime | None
    ended_at: dt.datetime | None
    pbx: str
    problem: str | None  # calls.recording_problem


#: Where each field of :class:`_Row` comes from, in its order (``rec_id`` is the call's link to
#: its recording, which is the recording's id wherever the two are joined).
_ROW_SOURCES = (Call.recording_id, Call.call_id, Recording.status, Recording.spool_path,
                Recording.claimed_at, Recording.retain_until, Call.ended_at, Call.pbx,
                Call.recording_problem)


def returned_at_call_end() -> tuple[Any, ...]:
    """:data:`_ROW_SOURCES` as RETURNING columns of an UPDATE of ``calls`` (the enforcer's
    end-of-call statement): the recording's own through correlated subqueries (NULL for a call
    without one), so that the attempt to store the recording right after reads nothing."""
    return tuple(
        select(c).where(Recording.id == Call.recording_id).scalar_subquery()
        if c.table is Recording.__table__ else c for c in _ROW_SOURCES)


def expected_location(storage: Storage, relpath: str) -> str | None:
    """The location ``storage.put(relpath, ...)`` returns, for the two backends callwarden ships.

    Used to find a copy stored by a finalizer that died before it could record the result.
    """
    if isinstance(storage, LocalStorage):
        return "file:" + relpath
    bucket, prefix = getattr(storage, "bucket", None), getattr(storage, "prefix", None)
    if isinstance(bucket, str) and isinstance(prefix, str):  # S3Storage
        return f"s3://{bucket}/{prefix}{relpath}"
    return None


def flag_cdr(session: Session, call_id: str, reason: str) -> None:
    """Flag the CDR: ``recording_problem`` says why, and RECORDING_UNAVAILABLE joins its reason
    codes (so ``audit search --reason RECORDING_UNAVAILABLE`` finds it; the decision stands)."""
    call = session.get(Call, call_id)
    if call is None:
        return
    call.recording_problem = reason
    if _FLAG not in call.reason_codes:
        call.reasons = ",".join(r.code for r in ordered((*call.reason_codes, _FLAG)))


def unflag_cdr(session: Session, call_id: str) -> None:
    """Undo :func:`flag_cdr` once the recording is stored after all (a retry succeeded).

    Only a flag this module set is undone: ``recording_problem`` is set only by it, and a
    recording that failed to *start* (a RECORDING_UNAVAILABLE deny) is never retried.
    """
    call = session.get(Call, call_id)
    if call is None or call.recording_problem is None:
        return
    call.recording_problem = None
    call.reasons = ",".join(c for c in call.reason_codes if c != _FLAG)


class RecordingService:
    """Finalizes recordings over one store; storage and key are built once, on first use."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        target: RecordingTarget | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.target = LazyTarget(settings, target)
        self.retention = dt.timedelta(days=settings.retention.recordings_days)
        self.settle_s = settings.recording.settle_s
        self.wait_s = settings.recording.finalize_wait_s
        self._busy: set[int] = set()
        self._busy_lock = native_lock()

    # -- entry points -------------------------------------------------------------------------

    def after_call_ended(self, call_id: str, returned: Sequence[Any] | None = None
                         ) -> FinalizeResult | None:
        """The quick attempt made right after a CDR is completed; never raises, never waits.
        ``returned``: the row of :func:`returned_at_call_end` the completion gave (else it is
        read here).

        Stores the recording if its spool file is already there and settled; otherwise leaves
        it ``recording`` for the adapter's own :meth:`finalize` call or the sweep. If it was
        stored before the call's end was known, extends its deadline to end + retention.
        """
        try:
            row = self._row(call_id) if returned is None else _Row(*returned)
            if row is None:
                return None
            if row.status == "stored":
                self._extend_deadline(row)
                return FinalizeResult(call_id, "skipped", "already stored")
            if row.status != "recording":
                return FinalizeResult(call_id, "skipped", f"recording is {row.status}")
            return self._run(row, wait_s=0.0, final=False, actor=f"pbx:{row.pbx}")
        except Exception as exc:  # the CDR is already committed: report, never propagate
            log.error("recording_finalize_error", call_id=call_id, error=type(exc).__name__,
                      detail=str(exc)[:200], action="left for the adapter or the sweep")
            return None

    def finalize(self, call_id: str, *, wait_s: float | None = None,
                 actor: str | None = None) -> FinalizeResult:
        """Wait up to ``wait_s`` (default ``recording.finalize_wait_s``) for the spool file to
        settle, then store it. Once the call has ended, a file still missing or empty then is
        final: the recording is marked failed and the CDR flagged."""
        row = self._row(call_id)
        if row is None:
            return FinalizeResult(call_id, "skipped", "the call has no recording")
        if not self._claimable(row, allow_failed=False):
            return FinalizeResult(call_id, "skipped", f"recording is {row.status}")
        wait = self.wait_s if wait_s is None else wait_s
        return self._run(row, wait_s=wait, final=row.ended_at is not None,
                         actor=actor or f"pbx:{row.pbx}")

    def stuck(self, *, ended_before: dt.datetime, now: dt.datetime | None = None) -> list[str]:
        """Call ids whose recording was left behind: still ``recording`` although the call ended
        before ``ended_before``, or ``finalizing`` under a claim older than the lease."""
        stale = (now or utcnow()) - CLAIM_LEASE
        q = (select(Call.call_id).join(Recording, Recording.id == Call.recording_id)
             .where(or_(and_(Recording.status == "recording", Call.ended_at < ended_before),
                        and_(Recording.status == "finalizing", Recording.claimed_at < stale)))
             .order_by(Recording.id))
        with self.sessions() as s:
            return list(s.scalars(q))

    def finalize_stuck(self, call_id: str, *, actor: str, retry_failed: bool = False) -> FinalizeResult:
        """Finish a left-behind recording now (no waiting): store its spool file, adopt a copy
        stored by a finalizer that died, or mark it failed.

        With ``retry_failed``, a recording that failed *at finalization* (disk full, permission
        denied, storage down, file late) is retried when its spool file holds audio: the spool
        file is that call's evidence. Never a ``conflict`` (a different file is stored there)
        nor a recording that failed to start (that call was denied).
        """
        row = self._row(call_id)
        if row is None:
            return FinalizeResult(call_id, "skipped", "the call has no recording")
        if not self._claimable(row, allow_failed=retry_failed):
            return FinalizeResult(call_id, "skipped", f"recording is {row.status}")
        if row.status == "failed" and not self.retryable(row.problem, row.spool_path):
            return FinalizeResult(call_id, "skipped", "failed, and not retryable")
        return self._run(row, wait_s=0.0, final=row.ended_at is not None, actor=actor)

    def retryable(self, problem: str | None, spool: str | None) -> bool:
        """A failed recording can be retried: failed at finalization, not a conflict, and its
        spool file is there with audio in it."""
        if problem is None or problem in ("conflict", "lost") or not spool:
            return False
        state = probe(spool)
        return state.exists and state.size > 0

    def mark_lost(self, call_id: str, *, actor: str, detail: str) -> bool:
        """A stored recording's file is gone from storage: mark it failed ("lost") and flag the
        CDR. The row keeps its location and sha256 as the record of what was lost."""
        with unit_of_work(self.sessions) as s:
            rec = s.scalars(select(Recording).join(Call, Call.recording_id == Recording.id)
                            .where(Call.call_id == call_id, Recording.status == "stored")).first()
            if rec is None:
                return False
            rec.status, rec.error = "failed", f"lost: {detail}"[:500]
            flag_cdr(s, call_id, "lost")
            audit.append_at_commit(s, actor, "recording_lost", call_id, {
                "location": rec.location, "sha256": rec.sha256, "detail": detail[:500]})
        log.error("recording_lost", call_id=call_id, detail=detail[:200])
        return True

    # -- one finalization ----------------------------------------------------------------------

    def _run(self, row: _Row, *, wait_s: float, final: bool, actor: str) -> FinalizeResult:
        with self._exclusive(row.rec_id) as mine:
            if not mine:
                return FinalizeResult(row.call_id, "skipped", "being finalized by another thread")
            relpath = spool_relpath(self.settings.recording.dir, row.spool_path or "")
            if relpath is None:
                log.error("recording_spool_outside", call_id=row.call_id,
                          action="left in place: check recording.dir")
                return FinalizeResult(row.call_id, "pending",
                                      "spool path is outside the configured recording.dir spool")
            state = (wait_settled(row.spool_path or "", settle_s=self.settle_s, wait_s=wait_s)
                     if wait_s > 0 else probe(row.spool_path or ""))
            if state.exists and not state.settled(self.settle_s):
                return FinalizeResult(row.call_id, "pending", "spool file is still being written")
            if not final and (not state.exists or state.size == 0):
                return FinalizeResult(row.call_id, "pending", "no recorded audio yet")
            try:
                target = self.target.get()
            except TargetUnavailable as exc:
                log.error("recording_storage_unavailable", call_id=row.call_id, detail=str(exc)[:300])
                return FinalizeResult(row.call_id, "pending", str(exc))
            if not state.exists or state.size == 0:
                return self._nothing_to_store(row, target, relpath, empty=state.exists, actor=actor)
            token = self._claim(row)
            if token is None:
                return FinalizeResult(row.call_id, "skipped", "claimed by another finalizer")
            return self._store(row, token, target, relpath, actor)

    def _nothing_to_store(self, row: _Row, target: RecordingTarget, relpath: str, *, empty: bool,
                          actor: str) -> FinalizeResult:
        """The call is over and its spool file is missing or empty: adopt a copy a finalizer
        stored before dying, else mark the recording failed (no claim: nothing to copy)."""
        path = row.spool_path or ""
        if not empty:
            adopted = self._adopt(target, relpath)
            token = self._claim(row) if adopted is not None else None
            if adopted is not None and token is not None:
                deadline = (row.ended_at or utcnow()) + self.retention
                return self._mark_stored(row, token, adopted, deadline, actor, recovered=True)
            return self._mark_failed(row, None, "missing",
                                     f"recording file {path} does not exist", actor)
        return self._mark_failed(row, None, "empty",
                                 f"recording file {path} is empty (nothing was recorded)", actor)

    def _store(self, row: _Row, token: dt.datetime, target: RecordingTarget, relpath: str,
               actor: str) -> FinalizeResult:
        deadline = (row.ended_at or utcnow()) + self.retention
        try:
            stored = finalize(row.spool_path or "", storage=target.storage, relpath=relpath,
                              retain_until=deadline, key=target.key)
        except RecordingError as exc:
            adopted = self._adopt(target, relpath) if exc.reason == "missing" else None
            if adopted is not None:
                return self._mark_stored(row, token, adopted, deadline, actor, recovered=True)
            return self._mark_failed(row, token, exc.reason, str(exc), actor)
        except BaseException:
            self._release(row, token)
            raise
        return self._mark_stored(row, token, stored, deadline, actor)

    def _adopt(self, target: RecordingTarget, relpath: str) -> FinalizedRecording | None:
        """The copy a finalizer stored before dying (its spool file already removed), if any."""
        location = expected_location(target.storage, relpath)
        try:
            if location is None or not target.storage.exists(location):
                return None
            with open_recording(target.storage, location, target.keyring) as reader:
                sha, size = hash_stream(reader)
                key_id = getattr(reader, "key_id", None)
        except Exception as exc:  # unreadable or undecryptable: not ours to adopt; verify shows it
            log.warning("recording_adopt_failed", location=location, error=type(exc).__name__)
            return None
        return FinalizedRecording(location, size, sha, None, key_id is not None, key_id)

    # -- state changes (each one short transaction) ---------------------------------------------

    def _row(self, call_id: str) -> _Row | None:
        q = (select(*_ROW_SOURCES)
             .select_from(Call).join(Recording, Recording.id == Call.recording_id)
             .where(Call.call_id == call_id))
        with self.sessions() as s:
            found = s.execute(q).first()
        return _Row(*found) if found is not None else None

    def _claimable(self, row: _Row, *, allow_failed: bool) -> bool:
        if row.status == "recording" or (allow_failed and row.status == "failed"):
            return True
        return (row.status == "finalizing" and row.claimed_at is not None
                and row.claimed_at < utcnow() - CLAIM_LEASE)

    def _same_state(self, row: _Row) -> list:  # type: ignore[type-arg]
        claimed = (Recording.claimed_at.is_(None) if row.claimed_at is None
                   else Recording.claimed_at == row.claimed_at)
        return [Recording.id == row.rec_id, Recording.status == row.status, claimed]

    def _claim(self, row: _Row) -> dt.datetime | None:
        """Compare-and-set the row to ``finalizing``; the claim time is the token."""
        token = utcnow()
        with unit_of_work(self.sessions) as s:
            done = s.execute(update(Recording).where(*self._same_state(row))
                             .values(status="finalizing", claimed_at=token)
                             .execution_options(synchronize_session=False)).rowcount
        return token if done == 1 else None

    def _ours(self, row: _Row, token: dt.datetime) -> list:  # type: ignore[type-arg]
        return [Recording.id == row.rec_id, Recording.status == "finalizing",
                Recording.claimed_at == token]

    def _release(self, row: _Row, token: dt.datetime) -> None:
        """Give an unfinished claim back (an unexpected error, not a recording failure)."""
        back = "failed" if row.status == "failed" else "recording"
        with contextlib.suppress(Exception), unit_of_work(self.sessions) as s:
            s.execute(update(Recording).where(*self._ours(row, token))
                      .values(status=back, claimed_at=None)
                      .execution_options(synchronize_session=False))

    def _mark_stored(self, row: _Row, token: dt.datetime, stored: FinalizedRecording,
                     deadline: dt.datetime, actor: str, *, recovered: bool = False) -> FinalizeResult:
        with unit_of_work(self.sessions) as s:
            done = s.execute(update(Recording).where(*self._ours(row, token)).values(
                status="stored", location=stored.location, sha256=stored.sha256, size=stored.size,
                duration_s=stored.duration_s, encrypted=stored.encrypted, key_id=stored.key_id,
                finalized_at=utcnow(), retain_until=deadline, error=None, claimed_at=None,
            ).execution_options(synchronize_session=False)).rowcount
            if done != 1:
                log.warning("recording_claim_lost", call_id=row.call_id, location=stored.location)
                return FinalizeResult(row.call_id, "skipped", "claim lost to another finalizer")
            unflag_cdr(s, row.call_id)
            audit.append_at_commit(s, actor, "recording_stored", row.call_id, {
                "location": stored.location, "sha256": stored.sha256, "size": stored.size,
                "duration_s": stored.duration_s, "encrypted": stored.encrypted,
                "key_id": stored.key_id, "retain_until": deadline, "recovered": recovered})
        log.info("recording_stored", call_id=row.call_id, location=stored.location,
                 size=stored.size, sha256=stored.sha256, recovered=recovered)
        return FinalizeResult(row.call_id, "stored", stored.location, recording=stored)

    def _mark_failed(self, row: _Row, token: dt.datetime | None, reason: str, message: str,
                     actor: str) -> FinalizeResult:
        """``token``: our claim; None to compare-and-set straight from the state we read."""
        where = self._ours(row, token) if token is not None else self._same_state(row)
        with unit_of_work(self.sessions) as s:
            done = s.execute(update(Recording).where(*where).values(
                status="failed", error=f"{reason}: {message}"[:500], claimed_at=None,
            ).execution_options(synchronize_session=False)).rowcount
            if done != 1:
                return FinalizeResult(row.call_id, "skipped", "changed by another finalizer")
            flag_cdr(s, row.call_id, reason)
            audit.append_at_commit(s, actor, "recording_failed", row.call_id, {
                "stage": "finalize", "reason": reason, "error": message[:500]})
        log.error("recording_failed", call_id=row.call_id, reason=reason, detail=message[:300])
        return FinalizeResult(row.call_id, "failed", message, reason=reason)

    def _extend_deadline(self, row: _Row) -> None:
        """Stored before the call's end was known: make the deadline end + retention."""
        if row.ended_at is None or row.retain_until is None:
            return
        deadline = row.ended_at + self.retention
        if row.retain_until >= deadline:
            return
        with unit_of_work(self.sessions) as s:
            done = s.execute(update(Recording).where(
                Recording.id == row.rec_id, Recording.retain_until == row.retain_until,
            ).values(retain_until=deadline).execution_options(synchronize_session=False)).rowcount
            if done == 1:
                audit.append_at_commit(s, f"pbx:{row.pbx}", "recording_deadline_extended", row.call_id,
                             {"from": row.retain_until, "to": deadline})

    @contextlib.contextmanager
    def _exclusive(self, rec_id: int) -> Iterator[bool]:
        """In this process, one finalizer per recording at a time (the claim covers the rest)."""
        with self._busy_lock:
            mine = rec_id not in self._busy
            self._busy.add(rec_id)
        try:
            yield mine
        finally:
            if mine:
                with self._busy_lock:
                    self._busy.discard(rec_id)
