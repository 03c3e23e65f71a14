"""The figures of a per-tenant compliance report (自查自纠报告) for one period.

One streamed pass over the tenant's CDRs of the period (narrow columns, any number of rows)
plus a few small queries. Definitions (docs/auditors.md, "Compliance report"):

- *attempts*: outbound CDRs attempted in the period;
- *allowed* / *denied*: decision allow / deny where the decision was enforced;
- *would have denied*: decision deny in observe mode (``enforced`` false): the call went out;
- *placed*: calls that went out: allowed, let through in observe mode, or answered;
- *answer rate*: answered / placed; *average duration*: mean billable seconds of answered calls;
- *consent coverage*: placed calls with a consent basis (a consent record or the inbound
  callback window) / placed; *recording coverage*: placed calls with a stored recording / placed;
- *denials by reason*: enforced denials per reason code (a call with two codes counts under both);
- *quiet-hours* and *frequency* attempts: outbound attempts that failed QUIET_HOURS or
  FREQUENCY_EXCEEDED, enforced or not;
- *suspensions*: tenant status changes in the audit log and policing alerts raised in the period.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from callwarden import __version__
from callwarden.audit.access import Scope
from callwarden.policy.reasons import REASONS
from callwarden.store.models import (
    AccessNumber,
    Alert,
    AuditEntry,
    AuditHead,
    Call,
    Campaign,
    Complaint,
    Recording,
    Tenant,
    Trunk,
)

QUIET = "QUIET_HOURS"
FREQUENCY = "FREQUENCY_EXCEEDED"
STATUS_ACTIONS = ("tenants.status",)


class UnknownTenant(LookupError):
    pass


def ratio(part: int, whole: int) -> float | None:
    """``part / whole`` rounded to 4 places, None when there is nothing to divide."""
    return round(part / whole, 4) if whole else None


@dataclass
class Day:
    date: str
    attempts: int = 0
    allowed: int = 0
    denied: int = 0
    would_have_denied: int = 0
    answered: int = 0


@dataclass
class ReportData:
    """Everything the report shows; ``as_dict`` is the JSON format."""

    tenant: dict[str, Any]
    period: dict[str, Any]
    generated: dict[str, Any]
    outbound: dict[str, Any]
    inbound: dict[str, Any]
    daily: list[Day]
    denials_by_reason: list[dict[str, Any]]
    consent: dict[str, Any]
    recording: dict[str, Any]
    quiet_hours: dict[str, Any]
    frequency: dict[str, Any]
    observe: dict[str, Any]
    suspensions: dict[str, Any]
    complaints: dict[str, Any]
    registry: dict[str, Any]
    rules: dict[str, Any]
    findings: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reason_rows(counter: Counter[str]) -> list[dict[str, Any]]:
    rows = []
    for code, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
        r = REASONS.get(code)
        rows.append({"code": code, "clause": r.clause if r else "", "message_zh": r.message_zh if r else "",
                     "message_en": r.message_en if r else "", "calls": n})
    return rows


def _iso(t: dt.datetime | None, tz: ZoneInfo) -> str | None:
    return t.astimezone(tz).isoformat(timespec="seconds") if t else None


def report_rules(settings: Any) -> dict[str, Any]:
    """The configured rules the report prints beside its figures (CLI and console alike)."""
    return {"calling window 呼叫时段": str(settings.calling_hours.window),
            "per day 每日上限": settings.frequency.per_day, "per week 每周上限": settings.frequency.per_week,
            "mode 模式": settings.mode}


def compute_report(session: Session, tenant_id: str, since: dt.datetime, until: dt.datetime, tz: ZoneInfo,
                   scope: Scope, rules: dict[str, Any] | None = None, batch: int = 5000) -> ReportData:
    """The report of ``tenant_id`` for calls attempted in ``[since, until)``."""
    scope.check_tenant(tenant_id)
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise UnknownTenant(f"unknown tenant {tenant_id!r}")
    head = session.get(AuditHead, 1)

    days: dict[dt.date, Day] = {}
    d = since.astimezone(tz).date()
    last = (until - dt.timedelta(microseconds=1)).astimezone(tz).date()
    while d <= last:
        days[d] = Day(d.isoformat())
        d += dt.timedelta(days=1)

    c: Counter[str] = Counter()
    denials: Counter[str] = Counter()
    observed: Counter[str] = Counter()
    rec_status: Counter[str] = Counter()
    billsec_sum = 0
    q = (select(Call.attempted_at, Call.direction, Call.decision, Call.reasons, Call.enforced, Call.answered_at,
                Call.billsec, Call.consent_basis, Recording.status)
         .outerjoin(Recording, Recording.id == Call.recording_id)
         .where(Call.tenant_id == tenant_id, Call.attempted_at >= since, Call.attempted_at < until)
         .execution_options(yield_per=batch))
    for attempted_at, direction, decision, reasons, enforced, answered_at, billsec, basis, rstatus in session.execute(q):
        if direction != "outbound":
            c["inbound"] += 1
            continue
        day = days.setdefault(attempted_at.astimezone(tz).date(), Day(attempted_at.astimezone(tz).date().isoformat()))
        codes = [x for x in (reasons or "").split(",") if x]
        c["attempts"] += 1
        day.attempts += 1
        if decision == "allow":
            c["allowed"] += 1
            day.allowed += 1
        elif enforced:
            c["denied"] += 1
            day.denied += 1
            denials.update(codes)
        else:
            c["would_have_denied"] += 1
            day.would_have_denied += 1
            observed.update(codes)
        for code, key in ((QUIET, "quiet"), (FREQUENCY, "frequency")):
            if code in codes:
                c[f"{key}_attempts"] += 1
                c[f"{key}_{'enforced' if enforced else 'observe'}"] += 1
        placed = decision == "allow" or not enforced or answered_at is not None
        if not placed:
            continue
        c["placed"] += 1
        if answered_at is not None:
            c["answered"] += 1
            day.answered += 1
            billsec_sum += billsec or 0
        if basis == "consent":
            c["consent_record"] += 1
        elif basis == "inbound-callback":
            c["consent_callback"] += 1
        elif basis:
            c["consent_other"] += 1
        rec_status[rstatus or "none"] += 1

    placed = c["placed"]
    covered = c["consent_record"] + c["consent_callback"] + c["consent_other"]
    stored = rec_status["stored"]
    status_changes = [
        {"at": _iso(e.at, tz), "actor": e.actor, **{k: v for k, v in json.loads(e.details).items()
                                                     if k in ("from", "to", "reason")}}
        for e in session.scalars(select(AuditEntry).where(
            AuditEntry.subject == tenant_id, AuditEntry.action.in_(STATUS_ACTIONS),
            AuditEntry.at >= since, AuditEntry.at < until).order_by(AuditEntry.seq))]
    alerts = [{"raised_at": _iso(a.raised_at, tz), "kind": a.kind, "level": a.level, "score": a.score,
               "acknowledged_by": a.acknowledged_by}
              for a in session.scalars(select(Alert).where(
                  Alert.tenant_id == tenant_id, Alert.raised_at >= since, Alert.raised_at < until)
                  .order_by(Alert.raised_at))]
    complaints = session.scalar(select(func.count()).select_from(Complaint).where(
        Complaint.tenant_id == tenant_id, Complaint.received_at >= since, Complaint.received_at < until)) or 0

    data = ReportData(
        tenant={"id": tenant.id, "name": tenant.name, "status": tenant.status,
                "status_reason": tenant.status_reason, "outbound_commitment": tenant.outbound_commitment},
        period={"from": _iso(since, tz), "to": _iso(until, tz), "timezone": str(tz), "days": len(days),
                "first_day": since.astimezone(tz).date().isoformat(), "last_day": last.isoformat()},
        generated={"at": _iso(dt.datetime.now(dt.UTC), tz), "by": scope.actor, "scope": scope.as_dict(),
                   "generator": f"callwarden {__version__}",
                   "audit_head": {"seq": head.seq if head else 0, "hash": head.hash if head else None}},
        outbound={"attempts": c["attempts"], "allowed": c["allowed"], "denied": c["denied"],
                  "would_have_denied": c["would_have_denied"], "placed": placed, "answered": c["answered"],
                  "answer_rate": ratio(c["answered"], placed), "total_billsec": billsec_sum,
                  "avg_duration_s": round(billsec_sum / c["answered"], 1) if c["answered"] else None,
                  "denial_rate": ratio(c["denied"], c["attempts"])},
        inbound={"calls": c["inbound"]},
        daily=[days[k] for k in sorted(days)],
        denials_by_reason=_reason_rows(denials),
        consent={"placed": placed, "consent_record": c["consent_record"], "inbound_callback": c["consent_callback"],
                 "other": c["consent_other"], "without_basis": placed - covered, "coverage": ratio(covered, placed)},
        recording={"placed": placed, "stored": stored, "failed": rec_status["failed"],
                   "purged": rec_status["purged"], "in_progress": rec_status["recording"],
                   "none": rec_status["none"], "coverage": ratio(stored, placed)},
        quiet_hours={"attempts": c["quiet_attempts"], "denied": c["quiet_enforced"],
                     "let_through_observe": c["quiet_observe"]},
        frequency={"attempts": c["frequency_attempts"], "denied": c["frequency_enforced"],
                   "let_through_observe": c["frequency_observe"]},
        observe={"would_have_denied": c["would_have_denied"], "by_reason": _reason_rows(observed)},
        suspensions={"status_changes": status_changes, "alerts": alerts,
                     "suspended_times": sum(1 for s in status_changes if s.get("to") in ("suspended", "terminated"))},
        complaints={"count": complaints},
        registry=_registry_summary(session, tenant_id),
        rules=rules or {},
    )
    data.findings = findings(data)
    return data


def _registry_summary(session: Session, tenant_id: str) -> dict[str, Any]:
    numbers = [{"number": n.number, "outbound": n.outbound, "filing": n.filing_ref, "active": n.active}
               for n in session.scalars(select(AccessNumber).where(AccessNumber.tenant_id == tenant_id)
                                        .order_by(AccessNumber.number))]
    trunks = [{"name": t.name, "carrier": t.carrier, "verified": t.verified}
              for t in session.scalars(select(Trunk).where(Trunk.tenant_id == tenant_id).order_by(Trunk.name))]
    campaigns = [{"id": cp.id, "purpose": cp.purpose, "status": cp.status}
                 for cp in session.scalars(select(Campaign).where(Campaign.tenant_id == tenant_id)
                                           .order_by(Campaign.id))]
    return {"numbers": numbers, "trunks": trunks, "campaigns": campaigns}


def findings(r: ReportData) -> list[dict[str, str]]:
    """The conclusions of the self-inspection, worst first: level ``fail``, ``warn`` or ``ok``."""
    out: list[dict[str, str]] = []

    def add(level: str, zh: str, en: str) -> None:
        out.append({"level": level, "zh": zh, "en": en})

    cov = r.recording["coverage"]
    if cov is not None and cov < 1:
        add("fail", f"录音覆盖率 {cov:.1%}:有 {r.recording['placed'] - r.recording['stored']} 通已呼出电话没有存档录音(§4(2))",
            f"recording coverage {cov:.1%}: {r.recording['placed'] - r.recording['stored']} placed calls have no stored recording (§4(2))")
    cons = r.consent["coverage"]
    if cons is not None and cons < 1:
        add("fail", f"同意凭证覆盖率 {cons:.1%}:{r.consent['without_basis']} 通已呼出电话没有同意依据(§1(2)、§3(2))",
            f"consent coverage {cons:.1%}: {r.consent['without_basis']} placed calls had no consent basis (§1(2), §3(2))")
    if r.observe["would_have_denied"]:
        add("warn", f"观察模式下有 {r.observe['would_have_denied']} 通本应拦截的电话被放行",
            f"{r.observe['would_have_denied']} calls that would have been denied went out in observe mode")
    if r.quiet_hours["attempts"]:
        add("warn", f"有 {r.quiet_hours['attempts']} 次在禁止时段内的外呼尝试(§4(2))",
            f"{r.quiet_hours['attempts']} outbound attempts in quiet hours (§4(2))")
    if r.frequency["attempts"]:
        add("warn", f"有 {r.frequency['attempts']} 次超过频次限制的外呼尝试(§3(2))",
            f"{r.frequency['attempts']} outbound attempts over the frequency limits (§3(2))")
    if r.suspensions["suspended_times"] or r.suspensions["alerts"]:
        add("warn", f"本期租户被暂停 {r.suspensions['suspended_times']} 次,风险预警 {len(r.suspensions['alerts'])} 条",
            f"tenant suspended {r.suspensions['suspended_times']} times, {len(r.suspensions['alerts'])} risk alerts in the period")
    if r.complaints["count"]:
        add("warn", f"本期收到投诉 {r.complaints['count']} 件", f"{r.complaints['count']} complaints received")
    if cov == 1:
        add("ok", "所有已呼出电话均有存档录音", "every placed call has a stored recording")
    if cons == 1:
        add("ok", "所有已呼出电话均有同意依据", "every placed call had a consent basis")
    if not r.outbound["attempts"]:
        add("ok", "本期无外呼", "no outbound calls in the period")
    return out
