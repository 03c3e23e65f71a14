"""Retention purge: remove recordings, CDRs and consent evidence past their deadlines.

What is due (``now`` is the run's clock, never later than the real one):

* a **recording** once ``now`` is past both its stored ``retain_until`` and its call's end +
  ``retention.recordings_days`` (raising the setting lengthens retention of what is already
  stored; lowering it never shortens it);
* a **CDR** once ``now`` is past its end (or attempt, if it never ended) + ``cdr_days``, and its
  recording, if any, is no longer kept (failed or purged: a CDR never outlives its evidence);
* a **consent** once ``now`` is past its end (revocation or expiry, whichever came first) +
  ``consent_days``, and no remaining CDR cites it.

Nothing covered by an active legal hold (call, tenant, or number prefix) is due, nor a recording
with ``legal_hold`` set. Each removal writes one audit entry, in the transaction that records it.

A data subject's erasure (``subject=`` digits, ``callwarden subject erase``) runs the same purge
over that number's rows only, with the regulation's floor (``MIN_RETENTION_DAYS`` after the
call's or the consent's end) in place of the configured retention: what the floor or a hold
still requires is kept, everything else goes now.

Crash safety for recordings (the only removal outside the database): the row is first claimed
``stored -> purging`` (committed, hold and deadline re-checked in the same statement), then the
file is deleted, then ``purging -> purged`` is committed with the audit entry. A run killed at
any point leaves at most the rows it was working on in ``purging``; the next run finishes them
(a file already gone counts as deleted) unless a hold now covers one whose file still exists,
which goes back to ``stored``. Runs are serialized by :func:`callwarden.service.locks.exclusive`.

What is due is looked for, and what holds keep is counted, in read-only snapshots
(``audit.snapshot``): on SQLite the store's own sessions begin ``IMMEDIATE``, and a scan over
millions of CDRs holding the write lock would refuse the PBX's decisions meanwhile. Each
removal re-checks, under lock, that its rows are still due.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from callwarden.audit.snapshot import snapshot
from callwarden.config import Settings
from callwarden.config.model import MIN_RETENTION_DAYS
from callwarden.log import get_logger
from callwarden.recorder import LocationNotFound, RetentionLocked, StorageError
from callwarden.service.holds import call_held, held
from callwarden.service.locks import exclusive
from callwarden.service.recording_target import LazyTarget
from callwarden.store import audit
from callwarden.store.db import unit_of_work
from callwarden.store.models import Call, Consent, Recording, utcnow

__all__ = ["PurgeItem", "PurgeReport", "Purger"]

log = get_logger("callwarden.purge")

Kind = Literal["recording", "cdr", "consent"]
Result = Literal["purged", "would_purge", "locked", "error", "kept"]
KINDS: tuple[Kind, ...] = ("recording", "cdr", "consent")


@dataclass(frozen=True, slots=True)
class PurgeItem:
    """One row the run acted on (``subject``: call id, or ``consent:<id>``; never a number)."""

    kind: Kind
    subject: str
    result: Result
    detail: str = ""


@dataclass
class PurgeReport:
    now: dt.datetime
    dry_run: bool
    items: list[PurgeItem] = field(default_factory=list)
    held: Counter[str] = field(default_factory=Counter)  # due but kept by a hold, per kind

    def count(self, kind: Kind, result: Result) -> int:
        return sum(1 for i in self.items if i.kind == kind and i.result == result)

    @property
    def ok(self) -> bool:
        """False when something due could not be removed (object lock, storage error)."""
        return not any(i.result in ("locked", "error") for i in self.items)

    def summary(self) -> dict[str, dict[str, int]]:
        results: tuple[Result, ...] = ("purged", "would_purge", "locked", "error", "kept")
        return {k: {**{r: self.count(k, r) for r in results}, "held": self.held[k]} for k in KINDS}


#: Rows purged per transaction. Every purged row appends to the audit chain, whose head is
#: locked until commit (and SQLite has one writer): short transactions let call decisions,
#: which take the same lock, in between (200 rows held them past their deadline).
ROWS_PER_TRANSACTION = 20


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Purger:
    """One purge run over one store. ``now`` defaults to the real clock and may not exceed it."""

    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker[Session],
                 target: LazyTarget, *, actor: str, now: dt.datetime | None = None,
                 dry_run: bool = False, batch: int = 200, subject: str | None = None) -> None:
        real = utcnow()
        if now is not None and now > real:
            raise ValueError("the purge clock cannot be set in the future: nothing is removed "
                             "before its deadline")
        self.now = (now or real).astimezone(dt.UTC)
        self.settings, self.engine, self.sessions = settings, engine, sessions
        self.target, self.actor, self.dry_run, self.batch = target, actor, dry_run, batch
        self.subject = subject  # canonical digits: only this number's rows, floor retention
        days = settings.retention
        floor = dt.timedelta(days=MIN_RETENTION_DAYS)
        self.rec_cutoff = self.now - (floor if subject else dt.timedelta(days=days.recordings_days))
        self.cdr_cutoff = self.now - (floor if subject else dt.timedelta(days=days.cdr_days))
        self.consent_cutoff = self.now - (floor if subject else dt.timedelta(days=days.consent_days))
        self.report = PurgeReport(self.now, dry_run)

    def _reading(self) -> AbstractContextManager[Session]:
        """A read-only session over one snapshot: never holds SQLite's write lock."""
        return snapshot(self.engine)

    def run(self) -> PurgeReport:
        """Purge everything due; raises locks.Busy if another purge holds the lock."""
        if self.dry_run:
            self._preview()
            return self.report
        with exclusive(self.engine, "purge"):
            if self.subject is None:  # crash recovery is the scheduled purge's job
                self._finish_interrupted()
            self._recordings()
            self._cdrs()
            self._consents()
        return self.report

    # -- what is due ----------------------------------------------------------------------------

    def _subject_calls(self) -> list:  # type: ignore[type-arg]
        return [or_(Call.caller == self.subject, Call.callee == self.subject)] if self.subject else []

    def _recording_due(self) -> list:  # type: ignore[type-arg]
        ended = select(Call.ended_at).where(Call.call_id == Recording.call_id).scalar_subquery()
        if self.subject:  # the floor, not the stored deadline (configured retention)
            mine = exists().where(Call.call_id == Recording.call_id, *self._subject_calls())
            limit = [mine]
        else:
            limit = [Recording.retain_until < self.now]
        return [
            Recording.status == "stored", *limit,
            or_(ended < self.rec_cutoff, and_(ended.is_(None), Recording.finalized_at < self.rec_cutoff)),
        ]

    def _recording_kept(self):  # type: ignore[no-untyped-def]
        return or_(Recording.legal_hold.is_(True), call_held(Recording.call_id))

    def _cdr_due(self, *, preview: bool = False) -> list:  # type: ignore[type-arg]
        kept = [Recording.status.not_in(("failed", "purged"))]
        if preview:  # a dry run: recordings this run would purge first no longer keep their CDR
            kept.append(~and_(*self._recording_due(), ~self._recording_kept()))
        live = exists().where(Recording.call_id == Call.call_id, *kept)
        return [
            Call.attempted_at < self.cdr_cutoff,  # ended_at >= attempted_at: the index prefilter
            or_(Call.ended_at < self.cdr_cutoff, Call.ended_at.is_(None)),
            ~live, *self._subject_calls(),
        ]

    def _cdr_kept(self):  # type: ignore[no-untyped-def]
        return held(Call.call_id, Call.tenant_id, [Call.caller, Call.callee])

    def _consent_due(self, *, preview: bool = False) -> list:  # type: ignore[type-arg]
        going = [~and_(*self._cdr_due(preview=True), ~self._cdr_kept())] if preview else []
        cited = exists().where(Call.consent_id == Consent.id, *going)
        mine = [Consent.callee == self.subject] if self.subject else []
        return [or_(Consent.revoked_at < self.consent_cutoff, Consent.expires_at < self.consent_cutoff),
                ~cited, *mine]

    def _consent_kept(self):  # type: ignore[no-untyped-def]
        return held(None, Consent.tenant_id, [Consent.callee])

    def _count_held(self, s: Session, model: type, due: list, kept) -> int:  # type: ignore[no-untyped-def,type-arg]
        return s.scalar(select(func.count()).select_from(model).where(*due, kept)) or 0

    # -- dry run --------------------------------------------------------------------------------

    def _preview(self) -> None:
        with self._reading() as s:
            for cid in s.scalars(select(Recording.call_id).where(Recording.status == "purging")):
                self._add("recording", cid, "would_purge", "interrupted purge would be finished")
            for cid in s.scalars(select(Recording.call_id).where(*self._recording_due(),
                                                                 ~self._recording_kept())
                                 .order_by(Recording.id)):
                self._add("recording", cid, "would_purge")
            for cid in s.scalars(select(Call.call_id).where(*self._cdr_due(preview=True),
                                                            ~self._cdr_kept())
                                 .order_by(Call.attempted_at)):
                self._add("cdr", cid, "would_purge")
            for cons in s.scalars(select(Consent.id).where(*self._consent_due(preview=True),
                                                           ~self._consent_kept())
                                  .order_by(Consent.id)):
                self._add("consent", f"consent:{cons}", "would_purge")
            self._tally_held(s)

    def _tally_held(self, s: Session) -> None:
        self.report.held["recording"] = self._count_held(s, Recording, self._recording_due(),
                                                         self._recording_kept())
        self.report.held["cdr"] = self._count_held(s, Call, self._cdr_due(), self._cdr_kept())
        self.report.held["consent"] = self._count_held(s, Consent, self._consent_due(),
                                                       self._consent_kept())

    # -- recordings -----------------------------------------------------------------------------

    def _finish_interrupted(self) -> None:
        """Rows a killed run left in ``purging``: finish them, or keep them if now on hold."""
        with self._reading() as s:
            rows = s.execute(select(Recording.id, Recording.call_id, Recording.location,
                                    self._recording_kept().label("kept"))
                             .where(Recording.status == "purging").order_by(Recording.id)).all()
        for rec_id, call_id, location, kept in rows:
            if kept and location and self._exists(location):
                self._set_status(rec_id, "purging", "stored")
                self._add("recording", call_id, "kept", "a legal hold now covers it; not deleted")
                continue
            self._delete_recording(rec_id, call_id, location, resumed=True)

    def _recordings(self) -> None:
        last = 0
        while True:
            with self._reading() as s:
                rows = s.execute(select(Recording.id, Recording.call_id, Recording.location)
                                 .where(*self._recording_due(), ~self._recording_kept(),
                                        Recording.id > last)
                                 .order_by(Recording.id).limit(self.batch)).all()
            if not rows:
                break
            for rec_id, call_id, location in rows:
                last = rec_id
                if self._claim(rec_id):
                    self._delete_recording(rec_id, call_id, location, resumed=False)
        with self._reading() as s:
            self.report.held["recording"] = self._count_held(s, Recording, self._recording_due(),
                                                             self._recording_kept())

    def _claim(self, rec_id: int) -> bool:
        """stored -> purging, re-checking deadline and holds in the same statement."""
        with unit_of_work(self.sessions) as s:
            return s.execute(update(Recording).where(
                Recording.id == rec_id, *self._recording_due(), ~self._recording_kept(),
            ).values(status="purging", claimed_at=utcnow())
             .execution_options(synchronize_session=False)).rowcount == 1

    def _delete_recording(self, rec_id: int, call_id: str, location: str | None, *,
                          resumed: bool) -> None:
        already_gone = False
        try:
            if location:
                self.target.get().storage.delete(location)
            else:
                already_gone = True
        except LocationNotFound:
            already_gone = True
        except RetentionLocked as exc:  # the store's own lock outlasts ours: keep everything
            self._set_status(rec_id, "purging", "stored")
            self._add("recording", call_id, "locked", str(exc))
            log.warning("purge_refused_by_storage", call_id=call_id, detail=str(exc)[:200])
            return
        except Exception as exc:  # storage down, target unusable: leave the intent for next run
            detail = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StorageError) else str(exc)
            self._add("recording", call_id, "error", detail[:300])
            log.error("purge_delete_failed", call_id=call_id, detail=detail[:200],
                      action="left as purging; the next purge retries")
            return
        with unit_of_work(self.sessions) as s:
            rec = s.get(Recording, rec_id, with_for_update=True)
            if rec is None or rec.status != "purging":
                return
            rec.status, rec.purged_at, rec.claimed_at = "purged", utcnow(), None
            audit.append_at_commit(s, self.actor, "recording_purged", call_id, {
                "location": location, "sha256": rec.sha256, "size": rec.size,
                "retain_until": rec.retain_until, "purge_clock": self.now,
                "already_gone": already_gone, "resumed": resumed})
        self._add("recording", call_id, "purged",
                  "file was already gone" if already_gone else "")

    def _exists(self, location: str) -> bool:
        try:
            return self.target.get().storage.exists(location)
        except Exception:
            return True  # cannot tell: keep it

    def _set_status(self, rec_id: int, old: str, new: str) -> None:
        with unit_of_work(self.sessions) as s:
            s.execute(update(Recording).where(Recording.id == rec_id, Recording.status == old)
                      .values(status=new, claimed_at=None)
                      .execution_options(synchronize_session=False))

    # -- CDRs and consents (database rows only: short transactions) -----------------------------

    def _cdrs(self) -> None:
        # Each batch starts after the last row of the one before (by attempted_at, call_id):
        # the rows a hold keeps stay due, and starting from the oldest every time walked all of
        # them again per batch (a tenant's year of CDRs under a legal hold, every 200 purged).
        after: tuple[dt.datetime, str] | None = None
        while True:
            with self._reading() as s:
                q = select(Call.attempted_at, Call.call_id).where(*self._cdr_due(), ~self._cdr_kept())
                if after is not None:
                    q = q.where(Call.attempted_at >= after[0],  # the index's range
                                or_(Call.attempted_at > after[0], Call.call_id > after[1]))
                rows = s.execute(q.order_by(Call.attempted_at, Call.call_id).limit(self.batch)).all()
            if not rows:
                break
            after = (rows[-1].attempted_at, rows[-1].call_id)
            # a row changed since it was read (a hold set) is re-checked, and left, under lock
            for chunk in _chunks([r.call_id for r in rows], ROWS_PER_TRANSACTION):
                for call_id in self._cdr_chunk(chunk):
                    self._add("cdr", call_id, "purged")
        with self._reading() as s:
            self.report.held["cdr"] = self._count_held(s, Call, self._cdr_due(), self._cdr_kept())

    def _cdr_chunk(self, chunk: list[str]) -> list[str]:
        """Delete the CDRs of ``chunk`` still due (re-checked under lock), with their
        recording rows, in one short transaction of set-wise statements; returns their ids.
        Its audit entries join the chain at the commit (the head is not held meanwhile)."""
        with unit_of_work(self.sessions) as s:
            calls = list(s.scalars(select(Call).where(Call.call_id.in_(chunk), *self._cdr_due(),
                                                      ~self._cdr_kept())
                                   .order_by(Call.attempted_at, Call.call_id).with_for_update()))
            if not calls:
                return []
            ids = [c.call_id for c in calls]
            recs: dict[str, list[Recording]] = {}
            for r in s.scalars(select(Recording).where(Recording.call_id.in_(ids))
                               .order_by(Recording.id)):
                recs.setdefault(r.call_id, []).append(r)
            for call in calls:
                audit.append_at_commit(s, self.actor, "cdr_purged", call.call_id, {
                    "tenant": call.tenant_id, "direction": call.direction,
                    "attempted_at": call.attempted_at, "ended_at": call.ended_at,
                    "decision": call.decision, "reasons": call.reason_codes,
                    "recordings": [{"id": r.id, "status": r.status, "sha256": r.sha256}
                                   for r in recs.get(call.call_id, [])],
                    "purge_clock": self.now})
            s.execute(delete(Recording).where(Recording.call_id.in_(ids))
                      .execution_options(synchronize_session=False))
            s.execute(delete(Call).where(Call.call_id.in_(ids))
                      .execution_options(synchronize_session=False))
        return ids

    def _consents(self) -> None:
        last = 0  # after the last batch's rows, as for CDRs
        while True:
            with self._reading() as s:
                ids = list(s.scalars(select(Consent.id).where(*self._consent_due(),
                                                              ~self._consent_kept(),
                                                              Consent.id > last)
                                     .order_by(Consent.id).limit(self.batch)))
            if not ids:
                break
            last = ids[-1]
            for chunk in _chunks(ids, ROWS_PER_TRANSACTION):
                with unit_of_work(self.sessions) as s:
                    for consent_id in chunk:
                        c = s.scalars(select(Consent).where(Consent.id == consent_id,
                                                            *self._consent_due(), ~self._consent_kept())
                                      .with_for_update()).first()
                        if c is None:
                            continue
                        audit.append_at_commit(s, self.actor, "consent_purged", f"consent:{c.id}", {
                            "tenant": c.tenant_id, "scopes": c.scopes, "obtained_at": c.obtained_at,
                            "expires_at": c.expires_at, "revoked_at": c.revoked_at,
                            "evidence_kind": c.evidence_kind, "evidence_ref": c.evidence_ref,
                            "evidence_sha256": c.evidence_sha256, "purge_clock": self.now})
                        s.delete(c)
                        self._add("consent", f"consent:{consent_id}", "purged")
        with self._reading() as s:
            self.report.held["consent"] = self._count_held(s, Consent, self._consent_due(),
                                                           self._consent_kept())

    def _add(self, kind: Kind, subject: str, result: Result, detail: str = "") -> None:
        self.report.items.append(PurgeItem(kind, subject, result, detail))
