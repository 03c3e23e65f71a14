"""A data subject's requests about one phone number: export what is held, erase what may go.

*Export* gathers every row about the number (CDRs where it is caller or callee, their
recordings, consents, do-not-call entries, complaints, legal holds naming it, and the audit
entries about it) into one JSON document.

*Erase* removes what nothing requires to keep, using the retention purge itself
(``Purger(subject=...)``: same claims, same storage deletion, one audit entry per removal):

- CDRs, recordings and consent evidence go unless a legal hold covers them, or the regulation's
  floor (30 days after the call's or the consent's end, MIIT 2020-81 §4(2)) has not passed;
  an active consent is revoked first (it is the subject's withdrawal) and then kept for the floor;
- complaints the number made go unless a legal hold covers them (tenant or number prefix);
- do-not-call entries are kept: deleting them would let the number be called again (the
  subject's own request; ``callwarden refusals remove`` if that is really what they ask).

Every kept row is reported with its reason. One ``subject.erased`` audit entry sums it up (the
number keyed and masked, as in every entry).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from callwarden.audit.access import Scope
from callwarden.audit.entries import entries_for_number, entry_row
from callwarden.audit.jsonable import to_jsonable
from callwarden.audit.pseudonym import AuditKey
from callwarden.audit.search import call_row
from callwarden.config import MIN_RETENTION_DAYS, Settings
from callwarden.numbers import Number
from callwarden.service.holds import covering_holds, held
from callwarden.service.purge import Purger, PurgeReport
from callwarden.service.recording_target import LazyTarget
from callwarden.store import audit
from callwarden.store.db import unit_of_work
from callwarden.store.models import (
    Call,
    Complaint,
    Consent,
    Recording,
    Refusal,
    utcnow,
)
from callwarden.store.registry import Registry

FLOOR = dt.timedelta(days=MIN_RETENTION_DAYS)
FLOOR_RULE = f"retention floor: at least {MIN_RETENTION_DAYS} days after its end (MIIT 2020-81 §4(2))"


def _calls(number: Number):  # type: ignore[no-untyped-def]
    return or_(Call.caller == number.digits, Call.callee == number.digits)


def export_subject(session: Session, key: AuditKey, number: Number, scope: Scope) -> dict[str, Any]:
    """Everything the store holds about ``number`` (in ``scope``), as plain JSON values."""
    tenant = scope.tenant
    calls = select(Call, Recording).outerjoin(Recording, Recording.id == Call.recording_id).where(
        _calls(number)).order_by(Call.attempted_at)
    consents = select(Consent).where(Consent.callee == number.digits).order_by(Consent.id)
    refusals = select(Refusal).where(Refusal.callee == number.digits).order_by(Refusal.id)
    complaints = select(Complaint).where(Complaint.callee == number.digits).order_by(Complaint.id)
    if tenant is not None:
        calls = calls.where(Call.tenant_id == tenant)
        consents = consents.where(Consent.tenant_id == tenant)
        refusals = refusals.where(Refusal.tenant_id.in_((tenant, "*")))
        complaints = complaints.where(Complaint.tenant_id == tenant)
    call_rows, recordings = [], []
    for call, rec in session.execute(calls):
        call_rows.append(call_row(call, rec, full_numbers=True))
        for r in session.scalars(select(Recording).where(Recording.call_id == call.call_id)
                                 .order_by(Recording.id)):
            recordings.append({"call_id": r.call_id, "status": r.status, "sha256": r.sha256,
                               "size": r.size, "duration_s": r.duration_s, "location": r.location,
                               "started_at": r.started_at, "retain_until": r.retain_until,
                               "legal_hold": r.legal_hold, "purged_at": r.purged_at})
    doc = {
        "number": number.digits,
        "exported_at": utcnow(),
        "scope": scope.as_dict(),
        "calls": call_rows,
        "recordings": recordings,
        "consents": [{"id": c.id, "tenant": c.tenant_id, "scopes": c.scopes.split(","),
                      "obtained_at": c.obtained_at, "expires_at": c.expires_at,
                      "revoked_at": c.revoked_at, "evidence": {"kind": c.evidence_kind,
                      "ref": c.evidence_ref, "sha256": c.evidence_sha256}}
                     for c in session.scalars(consents)],
        "refusals": [{"id": r.id, "tenant": r.tenant_id, "source": r.source,
                      "created_at": r.created_at} for r in session.scalars(refusals)],
        "complaints": [{"id": c.id, "tenant": c.tenant_id, "received_at": c.received_at,
                        "source": c.source, "call_id": c.call_id, "note": c.note}
                       for c in session.scalars(complaints)],
        "legal_holds": [{"id": h.id, "scope": h.scope, "value": h.value, "reason": h.reason,
                         "set_at": h.set_at} for h in covering_holds(session, None, None, [number.digits])]
        if tenant is None else [],
        "audit_entries": [entry_row(e) for e in entries_for_number(session, key, number.digits, scope)],
    }
    return to_jsonable(doc)


def export_counts(doc: dict[str, Any]) -> dict[str, int]:
    return {k: len(v) for k, v in doc.items() if isinstance(v, list)}


@dataclass(frozen=True, slots=True)
class Kept:
    kind: str  # cdr, recording, consent, refusal, complaint
    subject: str  # call id, consent:<id>, refusal:<id>, complaint:<id>: never the number
    reason: str


@dataclass
class EraseReport:
    now: dt.datetime
    removed: dict[str, int] = field(default_factory=dict)
    kept: list[Kept] = field(default_factory=list)
    revoked_consents: list[int] = field(default_factory=list)
    purge: PurgeReport | None = None

    @property
    def ok(self) -> bool:
        return self.purge is None or self.purge.ok

    def as_dict(self) -> dict[str, Any]:
        return {"now": self.now, "ok": self.ok, "removed": self.removed,
                "revoked_consents": self.revoked_consents,
                "kept": [{"kind": k.kind, "subject": k.subject, "reason": k.reason} for k in self.kept]}


class SubjectEraser:
    """One erasure of one number over one store."""

    def __init__(self, settings: Settings, engine: Engine, sessions: sessionmaker[Session],
                 target: LazyTarget, *, actor: str, number: Number) -> None:
        self.settings, self.engine, self.sessions, self.target = settings, engine, sessions, target
        self.actor, self.number = actor, number
        self.report = EraseReport(utcnow())

    def run(self) -> EraseReport:
        """Raises locks.Busy when a purge is running."""
        self._revoke_consents()
        purger = Purger(self.settings, self.engine, self.sessions, self.target, actor=self.actor,
                        now=self.report.now, subject=self.number.digits)
        self.report.purge = purger.run()
        for kind in ("recording", "cdr", "consent"):
            self.report.removed[kind] = self.report.purge.count(kind, "purged")  # type: ignore[arg-type]
        self.report.removed["complaint"] = self._complaints()
        with self.sessions() as s:
            self._explain_kept(s)
        with unit_of_work(self.sessions) as s:
            audit.append(s, self.actor, "subject.erased", None, {
                "number": self.number.digits, "removed": self.report.removed,
                "revoked_consents": self.report.revoked_consents,
                "kept": [{"kind": k.kind, "subject": k.subject, "reason": k.reason}
                         for k in self.report.kept]})
        return self.report

    def _revoke_consents(self) -> None:
        with unit_of_work(self.sessions) as s:
            reg = Registry(s, self.actor)
            for c in s.scalars(select(Consent).where(Consent.callee == self.number.digits,
                                                     Consent.revoked_at.is_(None))):
                if c.expires_at is None or c.expires_at > self.report.now:
                    reg.revoke_consent(c.id, "data subject's erasure request")
                    self.report.revoked_consents.append(c.id)

    def _complaints(self) -> int:
        kept = held(None, Complaint.tenant_id, [Complaint.callee])
        with unit_of_work(self.sessions) as s:
            rows = list(s.scalars(select(Complaint).where(Complaint.callee == self.number.digits,
                                                          ~kept).with_for_update()))
            for c in rows:
                audit.append(s, self.actor, "complaint_erased", f"complaint:{c.id}", {
                    "tenant": c.tenant_id, "callee": c.callee, "received_at": c.received_at,
                    "source": c.source, "call_id": c.call_id})
            if rows:
                s.execute(delete(Complaint).where(Complaint.id.in_([c.id for c in rows]))
                          .execution_options(synchronize_session=False))
        return len(rows)

    # -- what stayed, and why ---------------------------------------------------------------------

    def _hold_reason(self, s: Session, call_id: str | None, tenant: str | None,
                     numbers: list[str | None]) -> str | None:
        holds = covering_holds(s, call_id, tenant, numbers)
        return f"legal hold {holds[0].id} ({holds[0].scope}): {holds[0].reason}" if holds else None

    def _floor_reason(self, end: dt.datetime | None) -> str | None:
        if end is not None and end > self.report.now - FLOOR:
            return f"{FLOOR_RULE}; may go from {(end + FLOOR).date().isoformat()}"
        return None

    def _explain_kept(self, s: Session) -> None:
        add = self.report.kept.append
        failed = {i.subject: i.detail for i in self.report.purge.items  # type: ignore[union-attr]
                  if i.result in ("locked", "error")}
        for call in s.scalars(select(Call).where(_calls(self.number)).order_by(Call.attempted_at)):
            rec = s.get(Recording, call.recording_id) if call.recording_id else None
            reason = (self._hold_reason(s, call.call_id, call.tenant_id, [call.caller, call.callee])
                      or (rec is not None and rec.legal_hold and "recording marked legal_hold")
                      or self._floor_reason(call.ended_at or call.attempted_at)
                      or (f"recording could not be deleted: {failed[call.call_id]}"
                          if call.call_id in failed else None)
                      or (f"its recording is {rec.status} (not yet stored): kept until it is"
                          if rec is not None and rec.status in ("recording", "finalizing") else None)
                      or "not removed (see the purge log)")
            if rec is not None and rec.status not in ("purged", "failed"):
                add(Kept("recording", call.call_id, reason))
            add(Kept("cdr", call.call_id, reason if rec is None or rec.status in ("purged", "failed")
                     else "its recording is kept (a CDR never outlives its recording)"))
        for c in s.scalars(select(Consent).where(Consent.callee == self.number.digits).order_by(Consent.id)):
            end = min(t for t in (c.revoked_at, c.expires_at) if t is not None) \
                if (c.revoked_at or c.expires_at) else None
            cited = s.scalar(select(Call.call_id).where(Call.consent_id == c.id).limit(1))
            reason = (self._hold_reason(s, None, c.tenant_id, [c.callee]) or self._floor_reason(end)
                      or (f"cited by call {cited}, which is kept" if cited else None)
                      or "not removed (see the purge log)")
            add(Kept("consent", f"consent:{c.id}", reason))
        for r in s.scalars(select(Refusal).where(Refusal.callee == self.number.digits).order_by(Refusal.id)):
            add(Kept("refusal", f"refusal:{r.id}",
                     "do-not-call entry: removing it would let the number be called again "
                     "(`callwarden refusals remove` if the subject asks for exactly that)"))
        for c in s.scalars(select(Complaint).where(Complaint.callee == self.number.digits)):
            add(Kept("complaint", f"complaint:{c.id}",
                     self._hold_reason(s, None, c.tenant_id, [c.callee]) or "legal hold"))
