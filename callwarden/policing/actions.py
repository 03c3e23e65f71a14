"""What the detector does about its conclusions: raise alerts once, suspend tenants at once.

Every alert is one ``alerts`` row (its ``dedup_key`` is UNIQUE and inserted with ON CONFLICT DO
NOTHING, so no alert can be raised twice, whatever races), one audit-log entry
(``policing.alert``), one structured log event and, when configured, one webhook POST after
commit. A suspension is ``Registry.set_tenant_status(..., "suspended", reason)`` (its own audit
entry ``tenants.status``) in the same transaction as its alert, whose details carry the
evidence: the score, every contribution with its inputs and weights, the counts, the windows
and sample call ids.

Dedup keys (the episode each alert belongs to):

* ``risk_suspend:<tenant>:<epoch>``: once per status epoch (the audit seq of the tenant's last
  status change); a resumed tenant starts a new epoch.
* ``risk_warn:<tenant>:<epoch>:<local date>``: at most once a day while the score stays high.
* findings: ``filing_overdue:<tenant>:<number>:<changed_at>``, ``filing_missing:<tenant>:number:<n>``,
  ``proof_missing:<tenant>:<number|trunk>:<subject>``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from callwarden.policing.filing import Finding
from callwarden.policing.scoring import Risk
from callwarden.store import audit
from callwarden.store.models import Alert, Tenant, utcnow
from callwarden.store.registry import Registry

AlertLevel = Literal["warn", "suspend"]


@dataclass(frozen=True, slots=True)
class PlannedAlert:
    dedup_key: str
    tenant_id: str
    kind: str  # risk_warn | risk_suspend | filing_overdue | filing_missing | proof_missing
    level: AlertLevel
    score: float | None
    summary: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"dedup_key": self.dedup_key, "tenant": self.tenant_id, "kind": self.kind,
                "level": self.level, "score": self.score, "summary": self.summary}


@dataclass(frozen=True, slots=True)
class RaisedAlert:
    id: int
    planned: PlannedAlert
    raised_at: dt.datetime
    suspended: bool

    def payload(self) -> dict[str, Any]:
        """The webhook body."""
        p = self.planned
        return {"event": "callwarden.alert",
                "alert": {"id": self.id, "dedup_key": p.dedup_key, "tenant": p.tenant_id,
                          "kind": p.kind, "level": p.level, "score": p.score,
                          "raised_at": self.raised_at.isoformat(), "summary": p.summary,
                          "details": p.details},
                "tenant_suspended": self.suspended}


def risk_key(risk: Risk, local_day: dt.date) -> str:
    f = risk.figures
    if risk.level == "suspend":
        return f"risk_suspend:{f.tenant_id}:{f.epoch.seq}"
    return f"risk_warn:{f.tenant_id}:{f.epoch.seq}:{local_day.isoformat()}"


def plan_risk(risk: Risk, local_day: dt.date, as_of: dt.datetime, evidence: dict[str, Any]
              ) -> PlannedAlert:
    f = risk.figures
    level: AlertLevel = "suspend" if risk.level == "suspend" else "warn"
    details = {**risk.as_dict(), "as_of": as_of.isoformat(), "epoch": f.epoch.seq,
               "summary": risk.summary(), "evidence": evidence}
    return PlannedAlert(risk_key(risk, local_day), f.tenant_id, f"risk_{level}", level,
                        risk.score, risk.summary(), details)


def plan_finding(finding: Finding, as_of: dt.datetime) -> PlannedAlert:
    summary = f"{finding.kind}: {finding.subject_kind} {finding.shown_subject()}: {finding.detail}"
    return PlannedAlert(finding.dedup_key, finding.tenant_id, finding.kind, "warn", None, summary,
                        {"summary": summary, "as_of": as_of.isoformat(), "finding": finding.as_dict()})


def existing_keys(session: Session, keys: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(keys), 500):
        found.update(session.scalars(select(Alert.dedup_key).where(Alert.dedup_key.in_(keys[i:i + 500]))))
    return found


def _insert_once(session: Session, p: PlannedAlert, raised_at: dt.datetime) -> int | None:
    """Insert the alert unless its dedup key exists; its id, or None if it was already there."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = Alert.__table__
    stmt = (insert(table)
            .values(dedup_key=p.dedup_key, tenant_id=p.tenant_id, kind=p.kind, level=p.level,
                    score=p.score, raised_at=raised_at,
                    details=json.dumps(p.details, ensure_ascii=False, sort_keys=True, default=str))
            .on_conflict_do_nothing(index_elements=["dedup_key"])
            .returning(table.c.id))
    return session.execute(stmt).scalar_one_or_none()


def suspension_reason(alert_id: int, p: PlannedAlert) -> str:
    return (f"suspended automatically by callwarden policing (alert #{alert_id}, MIIT 2020-81 §5(1)): "
            f"{p.summary}. Evidence: `callwarden alerts show {alert_id}`; "
            f"an administrator resumes with `callwarden tenants resume {p.tenant_id} --reason ...`")


def apply(session: Session, planned: list[PlannedAlert], actor: str, context: dict[str, Any]
          ) -> list[RaisedAlert]:
    """Raise what is not raised yet, inside the caller's (locked) transaction."""
    raised: list[RaisedAlert] = []
    for p in planned:
        if p.kind.startswith("risk_"):
            tenant = session.get(Tenant, p.tenant_id, with_for_update=True)
            if tenant is None or tenant.status != "active":
                continue  # suspended (or changed) since it was measured: nothing to raise
        now = utcnow()
        alert_id = _insert_once(session, p, now)
        if alert_id is None:
            continue
        audit.append_at_commit(session, actor, "policing.alert", p.tenant_id, {
            "alert_id": alert_id, "dedup_key": p.dedup_key, "kind": p.kind, "level": p.level,
            "score": p.score, "summary": p.summary, **context})
        suspended = False
        if p.level == "suspend":
            Registry(session, actor).set_tenant_status(p.tenant_id, "suspended",
                                                       suspension_reason(alert_id, p))
            suspended = True
        raised.append(RaisedAlert(alert_id, p, now, suspended))
    return raised
