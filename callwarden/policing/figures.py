"""Per-tenant figures over rolling windows, measured with a handful of grouped SQL queries.

Windows (all end at the pass's ``now``):

* traffic: the last ``window_minutes`` of outbound attempts (rates, answer rate, short calls,
  denials, refused callees, new and sequential callees);
* edge: the last ``edge_window_hours`` (how much of the traffic sits at the calling window's
  edges only means something over a whole calling day);
* complaints: the last ``complaints_days``;
* relationship: inbound calls within ``relationship_days`` make a callee "known".

An active tenant's windows never reach back past its last status change (from the audit log):
once a suspended tenant is resumed it is judged on what it does afterwards, not re-suspended at
once for the traffic that got it suspended. (A suspended tenant's figures keep the full windows,
so ``tenants risk`` still shows what it did.) Attempts denied
TENANT_SUSPENDED are never counted: they are the suspension working, not the tenant's behaviour.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from sqlalchemy import and_, case, exists, false, func, or_, select
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from callwarden.config import Settings
from callwarden.policing.sequences import callees_of, run_members_query
from callwarden.policing.timeutil import edge_intervals
from callwarden.store.models import AuditEntry, Call, Complaint, Consent, Tenant


@dataclass(frozen=True, slots=True)
class Window:
    start: dt.datetime
    end: dt.datetime

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True, slots=True)
class Epoch:
    """The tenant's last status change (audit sequence number and time); seq 0: never changed."""

    seq: int = 0
    at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class TrafficCounts:
    attempts: int = 0
    completed: int = 0  # went out (allowed, or let through in observe mode) and ended
    answered: int = 0  # of the completed
    timed: int = 0  # answered with a known duration
    short: int = 0  # of the timed, shorter than short_call_s
    no_consent: int = 0
    campaign_denials: int = 0
    refused: int = 0
    distinct_callees: int = 0
    new_callees: int = 0
    sequential_callees: int = 0


@dataclass(frozen=True, slots=True)
class TenantFigures:
    """Everything the score of one tenant is computed from."""

    tenant_id: str
    status: str
    epoch: Epoch
    traffic_window: Window
    edge_window: Window
    complaints_window: Window
    window_hours: float
    traffic: TrafficCounts = field(default_factory=TrafficCounts)
    edge_attempts: int = 0
    edge_sample: int = 0
    complaints: int = 0

    def values(self) -> dict[str, tuple[float | None, int]]:
        """``feature -> (figure, sample)``; the figure is None when its sample is empty."""
        t = self.traffic

        def share(part: int, whole: int) -> tuple[float | None, int]:
            return (part / whole if whole else None, whole)

        return {
            "attempt_rate": (t.attempts / self.window_hours, t.attempts),
            "new_callee_share": share(t.new_callees, t.distinct_callees),
            "answer_rate": share(t.answered, t.completed),
            "short_call_share": share(t.short, t.timed),
            "sequential_share": share(t.sequential_callees, t.distinct_callees),
            "refused_attempts": (float(t.refused), t.refused),
            "no_consent_share": share(t.no_consent, t.attempts),
            "campaign_denial_share": share(t.campaign_denials, t.attempts),
            "window_edge_share": share(self.edge_attempts, self.edge_sample),
            "complaints": (float(self.complaints), self.complaints),
        }

    def counts(self) -> dict[str, int]:
        """The raw counts behind the figures (shown with every score)."""
        t = self.traffic
        return {
            "attempts": t.attempts, "completed": t.completed, "answered": t.answered,
            "answered_timed": t.timed, "short_calls": t.short, "no_consent": t.no_consent,
            "campaign_denials": t.campaign_denials, "refused_attempts": t.refused,
            "distinct_callees": t.distinct_callees, "new_callees": t.new_callees,
            "sequential_callees": t.sequential_callees, "edge_attempts": self.edge_attempts,
            "edge_window_attempts": self.edge_sample, "complaints": self.complaints,
        }


# -- SQL building blocks -------------------------------------------------------------------------

def outbound_in(start: dt.datetime, end: dt.datetime, tenants: Iterable[str] | None = None
                ) -> ColumnElement[bool]:
    """Outbound attempts of known tenants in ``[start, end]``, suspension denials excluded."""
    cond = and_(Call.direction == "outbound", Call.tenant_id.is_not(None),
                Call.attempted_at >= start, Call.attempted_at <= end,
                ~Call.reasons.contains("TENANT_SUSPENDED", autoescape=True))
    if tenants is not None:
        cond = and_(cond, Call.tenant_id.in_(list(tenants)))
    return cond


def _count_if(cond: ColumnElement[bool]) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)


WENT_OUT = or_(Call.decision == "allow", Call.enforced.is_(False))
ANSWERED = or_(Call.answered_at.is_not(None), Call.billsec > 0)
COMPLETED = and_(Call.ended_at.is_not(None), or_(WENT_OUT, ANSWERED))
NO_CONSENT = Call.reasons.contains("NO_CONSENT", autoescape=True)
CAMPAIGN_DENIAL = Call.reasons.contains("CAMPAIGN_", autoescape=True)
REFUSED = Call.reasons.contains("CALLEE_REFUSED", autoescape=True)


def short_call(short_s: int) -> ColumnElement[bool]:
    return and_(COMPLETED, ANSWERED, Call.billsec.is_not(None), Call.billsec < short_s)


def no_relationship(now: dt.datetime, relationship_days: int, tenant_col, party_col  # type: ignore[no-untyped-def]
                    ) -> ColumnElement[bool]:
    """No inbound call from the party within ``relationship_days`` and no consent on file."""
    inbound = aliased(Call)
    rel_start = now - dt.timedelta(days=relationship_days)
    called_in = exists().where(inbound.tenant_id == tenant_col, inbound.party == party_col,
                               inbound.direction == "inbound", inbound.attempted_at >= rel_start,
                               inbound.attempted_at <= now)
    consented = exists().where(Consent.tenant_id == tenant_col, Consent.callee == party_col,
                               Consent.revoked_at.is_(None), Consent.obtained_at <= now,
                               or_(Consent.expires_at.is_(None), Consent.expires_at > now))
    return and_(~called_in, ~consented)


def in_spans(spans: list[tuple[dt.datetime, dt.datetime]]) -> ColumnElement[bool]:
    if not spans:
        return false()
    return or_(*(and_(Call.attempted_at >= a, Call.attempted_at < b) for a, b in spans))


# -- the measurement -------------------------------------------------------------------------

class Measurer:
    """Measures every tenant (or the ones asked for) as of ``now``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cfg = settings.policing

    def windows(self, now: dt.datetime, epoch: Epoch) -> tuple[Window, Window, Window]:
        def since(length: dt.timedelta) -> Window:
            start = now - length
            if epoch.at is not None and epoch.at > start:
                start = min(epoch.at, now)
            return Window(start, now)

        return (since(dt.timedelta(minutes=self.cfg.window_minutes)),
                since(dt.timedelta(hours=self.cfg.edge_window_hours)),
                since(dt.timedelta(days=self.cfg.complaints_days)))

    def measure(self, session: Session, now: dt.datetime, tenant_ids: Iterable[str] | None = None
                ) -> dict[str, TenantFigures]:
        now = now.astimezone(dt.UTC)
        wanted = None if tenant_ids is None else sorted(set(tenant_ids))
        q = select(Tenant.id, Tenant.status).order_by(Tenant.id)
        if wanted is not None:
            q = q.where(Tenant.id.in_(wanted))
        tenants = dict(session.execute(q).all())
        if not tenants:
            return {}
        epochs = self._epochs(session, tenants)
        figures: dict[str, TenantFigures] = {}
        for tid, status in tenants.items():
            slate = epochs.get(tid, Epoch()) if status == "active" else Epoch()
            traffic, edge, complaints = self.windows(now, slate)
            figures[tid] = TenantFigures(tid, status, epochs.get(tid, Epoch()), traffic, edge,
                                         complaints, self.cfg.window_minutes / 60)

        def groups(attr: str) -> dict[dt.datetime, list[str] | None]:
            """Tenants sharing a window start: one query each (the default start: all of them)."""
            default = now - {"traffic_window": dt.timedelta(minutes=self.cfg.window_minutes),
                             "edge_window": dt.timedelta(hours=self.cfg.edge_window_hours),
                             "complaints_window": dt.timedelta(days=self.cfg.complaints_days)}[attr]
            out: dict[dt.datetime, list[str] | None] = {default: wanted}
            for tid, f in figures.items():
                start = getattr(f, attr).start
                if start != default:
                    out.setdefault(start, []).append(tid)  # type: ignore[union-attr]
            return out

        for start, ids in groups("traffic_window").items():
            for tid, counts in self._traffic(session, start, now, ids).items():
                if tid in figures and figures[tid].traffic_window.start == start:
                    figures[tid] = replace(figures[tid], traffic=counts)
        for start, ids in groups("edge_window").items():
            for tid, (edge, sample) in self._edges(session, start, now, ids).items():
                if tid in figures and figures[tid].edge_window.start == start:
                    figures[tid] = replace(figures[tid], edge_attempts=edge, edge_sample=sample)
        for start, ids in groups("complaints_window").items():
            for tid, n in self._complaints(session, start, now, ids).items():
                if tid in figures and figures[tid].complaints_window.start == start:
                    figures[tid] = replace(figures[tid], complaints=n)
        return figures

    # -- the queries -------------------------------------------------------------------------

    @staticmethod
    def _epochs(session: Session, tenants: dict[str, str]) -> dict[str, Epoch]:
        last = (select(AuditEntry.subject.label("subject"), func.max(AuditEntry.seq).label("seq"))
                .where(AuditEntry.action == "tenants.status").group_by(AuditEntry.subject).subquery())
        rows = session.execute(select(AuditEntry.subject, AuditEntry.seq, AuditEntry.at)
                               .join(last, AuditEntry.seq == last.c.seq))
        return {subject: Epoch(seq, at) for subject, seq, at in rows if subject in tenants}

    def _traffic(self, session: Session, start: dt.datetime, end: dt.datetime,
                 tenants: list[str] | None) -> dict[str, TrafficCounts]:
        window = outbound_in(start, end, tenants)
        agg = select(
            Call.tenant_id, func.count(), _count_if(COMPLETED), _count_if(and_(COMPLETED, ANSWERED)),
            _count_if(and_(COMPLETED, ANSWERED, Call.billsec.is_not(None))),
            _count_if(short_call(self.cfg.short_call_s)), _count_if(NO_CONSENT),
            _count_if(CAMPAIGN_DENIAL), _count_if(REFUSED),
        ).where(window).group_by(Call.tenant_id)
        rows = {r[0]: [int(v) for v in r[1:]] for r in session.execute(agg)}
        if not rows:
            return {}

        # One statement for the callee figures: the distinct callees are computed once (a CTE
        # used three times) and counted, anti-joined against relationships, and run-detected.
        callees = callees_of(window).cte("callees")
        totals = select(callees.c.tenant_id, func.count().label("n")).group_by(callees.c.tenant_id).subquery("t")
        new = (select(callees.c.tenant_id, func.count().label("n"))
               .where(no_relationship(end, self.cfg.relationship_days, callees.c.tenant_id, callees.c.party))
               .group_by(callees.c.tenant_id).subquery("n"))
        seq = self.cfg.sequence
        pg = session.get_bind().dialect.name == "postgresql"
        runs = run_members_query(callees, seq.max_gap, seq.min_run,
                                 bytewise_collation="C" if pg else None).subquery("s")
        q = (select(totals.c.tenant_id, totals.c.n, func.coalesce(new.c.n, 0), func.coalesce(runs.c.n, 0))
             .outerjoin(new, new.c.tenant_id == totals.c.tenant_id)
             .outerjoin(runs, runs.c.tenant_id == totals.c.tenant_id))
        callee_counts = {tid: (int(n), int(fresh), int(inrun)) for tid, n, fresh, inrun in session.execute(q)}
        return {
            tid: TrafficCounts(*vals, *callee_counts.get(tid, (0, 0, 0)))
            for tid, vals in rows.items()
        }

    def _edges(self, session: Session, start: dt.datetime, end: dt.datetime,
               tenants: list[str] | None) -> dict[str, tuple[int, int]]:
        spans = edge_intervals(start, end, self.settings.tz, self.settings.calling_hours.window,
                               self.cfg.edge_minutes)
        q = (select(Call.tenant_id, _count_if(in_spans(spans)), func.count())
             .where(outbound_in(start, end, tenants)).group_by(Call.tenant_id))
        return {tid: (int(edge), int(total)) for tid, edge, total in session.execute(q)}

    @staticmethod
    def _complaints(session: Session, start: dt.datetime, end: dt.datetime,
                    tenants: list[str] | None) -> dict[str, int]:
        q = (select(Complaint.tenant_id, func.count())
             .where(Complaint.received_at >= start, Complaint.received_at <= end)
             .group_by(Complaint.tenant_id))
        if tenants is not None:
            q = q.where(Complaint.tenant_id.in_(tenants))
        return {tid: int(n) for tid, n in session.execute(q)}
