"""Registry findings a provider must fix before an inspector finds them (§2(2), §5(1)1).

* ``filing_overdue``: a number's filing data changed (carrier, purpose, inbound/outbound;
  ``AccessNumber.filing_changed_at``) and no new filing is on record (``filed_on`` before the
  change) once the deadline, ``refiling.working_days`` working days after the change, has passed.
* ``filing_missing``: an active number with no filing reference at all.
* ``proof_missing``: an active number with no proof document, or a trunk with neither a proof
  reference nor a proof document (§5(1)1: keep proof that the tenant obtained them lawfully).

Terminated tenants are left out. Each finding raises one ``warn`` alert, once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from callwarden.config import Settings
from callwarden.numbers import mask
from callwarden.policing.timeutil import WorkingCalendar
from callwarden.store.models import AccessNumber, ProofDocument, Tenant, Trunk

FindingKind = Literal["filing_overdue", "filing_missing", "proof_missing"]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    tenant_id: str
    subject_kind: Literal["number", "trunk"]
    subject: str  # canonical number or trunk name
    detail: str
    facts: dict[str, Any]

    @property
    def dedup_key(self) -> str:
        if self.kind == "filing_overdue":
            return f"filing_overdue:{self.tenant_id}:{self.subject}:{self.facts['changed_at']}"
        return f"{self.kind}:{self.tenant_id}:{self.subject_kind}:{self.subject}"

    def shown_subject(self) -> str:
        return mask(self.subject) if self.subject_kind == "number" else self.subject

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "tenant": self.tenant_id, "subject_kind": self.subject_kind,
                "subject": self.subject, "detail": self.detail, **self.facts}


def calendar_for(settings: Settings) -> WorkingCalendar:
    r = settings.policing.refiling
    return WorkingCalendar(holidays=[*settings.calling_hours.holidays, *r.holidays], workdays=r.workdays)


def refiling_findings(session: Session, settings: Settings, now: dt.datetime,
                      tenant_ids: list[str] | None = None) -> list[Finding]:
    cal = calendar_for(settings)
    days = settings.policing.refiling.working_days
    today = now.astimezone(settings.tz).date()
    q = (select(AccessNumber).join(Tenant, Tenant.id == AccessNumber.tenant_id)
         .where(AccessNumber.active.is_(True), Tenant.status != "terminated")
         .order_by(AccessNumber.tenant_id, AccessNumber.number))
    if tenant_ids is not None:
        q = q.where(AccessNumber.tenant_id.in_(tenant_ids))
    out: list[Finding] = []
    for n in session.scalars(q):
        if not n.filing_ref:
            out.append(Finding("filing_missing", n.tenant_id, "number", n.number,
                               "no filing (备案) on record: the number cannot call out (NUMBER_NOT_FILED)",
                               {}))
            continue
        if n.filing_changed_at is None:
            continue
        changed_on = n.filing_changed_at.astimezone(settings.tz).date()
        if n.filed_on is not None and n.filed_on >= changed_on:
            continue  # re-filed on or after the change
        due = cal.add_working_days(changed_on, days)
        if today <= due:
            continue
        late = cal.working_days_between(due, today)
        out.append(Finding(
            "filing_overdue", n.tenant_id, "number", n.number,
            f"filing data changed on {changed_on}; re-filing was due by {due} "
            f"({days} working days); {late} working day(s) overdue",
            {"changed_at": n.filing_changed_at.isoformat(), "changed_on": changed_on.isoformat(),
             "due_on": due.isoformat(), "working_days_overdue": late,
             "filed_on": n.filed_on.isoformat() if n.filed_on else None,
             "filing_ref": n.filing_ref}))
    return out


def proof_findings(session: Session, tenant_ids: list[str] | None = None) -> list[Finding]:
    number_proof = exists().where(ProofDocument.subject_kind == "number",
                                  ProofDocument.subject == AccessNumber.number)
    qn = (select(AccessNumber.tenant_id, AccessNumber.number)
          .join(Tenant, Tenant.id == AccessNumber.tenant_id)
          .where(AccessNumber.active.is_(True), Tenant.status != "terminated", ~number_proof)
          .order_by(AccessNumber.tenant_id, AccessNumber.number))
    trunk_proof = exists().where(ProofDocument.subject_kind == "trunk", ProofDocument.subject == Trunk.name)
    qt = (select(Trunk.tenant_id, Trunk.name, Trunk.verified)
          .join(Tenant, Tenant.id == Trunk.tenant_id)
          .where(Tenant.status != "terminated",
                 and_(Trunk.proof_ref.is_(None) | (Trunk.proof_ref == ""), ~trunk_proof))
          .order_by(Trunk.tenant_id, Trunk.name))
    if tenant_ids is not None:
        qn = qn.where(AccessNumber.tenant_id.in_(tenant_ids))
        qt = qt.where(Trunk.tenant_id.in_(tenant_ids))
    out = [Finding("proof_missing", tid, "number", number,
                   "no proof document on file that the number was lawfully obtained", {})
           for tid, number in session.execute(qn)]
    out += [Finding("proof_missing", tid, "trunk", name,
                    "no proof document on file that the trunk was lawfully obtained",
                    {"verified": bool(verified)})
            for tid, name, verified in session.execute(qt)]
    return out


def all_findings(session: Session, settings: Settings, now: dt.datetime,
                 tenant_ids: list[str] | None = None) -> list[Finding]:
    return refiling_findings(session, settings, now, tenant_ids) + proof_findings(session, tenant_ids)
