"""Evidence for an alert: sample call ids behind each figure that scored, and the runs found.

Fetched only for tenants that cross a threshold (a few small, indexed queries each), so the
administrator and the tenant can look the calls up (``callwarden audit search``) and see for
themselves what the score is made of. Callee numbers appear masked only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from callwarden.config import Settings
from callwarden.policing.figures import (
    ANSWERED,
    CAMPAIGN_DENIAL,
    COMPLETED,
    NO_CONSENT,
    REFUSED,
    in_spans,
    no_relationship,
    outbound_in,
    short_call,
)
from callwarden.policing.scoring import Risk
from callwarden.policing.sequences import find_runs
from callwarden.policing.timeutil import edge_intervals
from callwarden.store.models import Call, Complaint

SAMPLE_SIZE = 5
MAX_RUNS_SHOWN = 3


def _call_ids(session: Session, window: ColumnElement[bool], cond: ColumnElement[bool],
              n: int = SAMPLE_SIZE) -> list[str]:
    q = select(Call.call_id).where(window, cond).order_by(Call.attempted_at.desc()).limit(n)
    return list(session.scalars(q))


def collect(session: Session, settings: Settings, risk: Risk) -> dict[str, Any]:
    """``{"samples": {feature: [call ids]}, "runs": [...], "complaint_ids": [...]}``."""
    f = risk.figures
    cfg = settings.policing
    tw = f.traffic_window
    window = outbound_in(tw.start, tw.end, [f.tenant_id])
    scoring = {c.feature for c in risk.contributions if c.points > 0}
    samples: dict[str, list[str]] = {}
    conditions: dict[str, ColumnElement[bool]] = {
        "no_consent_share": NO_CONSENT,
        "campaign_denial_share": CAMPAIGN_DENIAL,
        "refused_attempts": REFUSED,
        "short_call_share": short_call(cfg.short_call_s),
        "answer_rate": and_(COMPLETED, ~ANSWERED),
        "new_callee_share": and_(Call.party.is_not(None),
                                 no_relationship(tw.end, cfg.relationship_days, Call.tenant_id, Call.party)),
        "attempt_rate": Call.call_id.is_not(None),
    }
    for feature, cond in conditions.items():
        if feature in scoring:
            samples[feature] = _call_ids(session, window, cond)
    if "window_edge_share" in scoring:
        ew = f.edge_window
        spans = edge_intervals(ew.start, ew.end, settings.tz, settings.calling_hours.window,
                               cfg.edge_minutes)
        samples["window_edge_share"] = _call_ids(
            session, outbound_in(ew.start, ew.end, [f.tenant_id]), in_spans(spans))
    runs_out: list[dict[str, Any]] = []
    if "sequential_share" in scoring:
        parties = session.scalars(select(Call.party).where(window, Call.party.is_not(None)).distinct())
        runs = find_runs(parties, cfg.sequence.max_gap, cfg.sequence.min_run)
        runs_out = [r.describe() for r in runs[:MAX_RUNS_SHOWN]]
        if runs:
            samples["sequential_share"] = _call_ids(
                session, window, Call.party.in_(runs[0].members[:200]))
    complaint_ids: list[int] = []
    if "complaints" in scoring:
        cw = f.complaints_window
        complaint_ids = list(session.scalars(
            select(Complaint.id).where(Complaint.tenant_id == f.tenant_id,
                                       Complaint.received_at >= cw.start, Complaint.received_at <= cw.end)
            .order_by(Complaint.received_at.desc()).limit(SAMPLE_SIZE)))
    return {"samples": samples, "runs": runs_out, "complaint_ids": complaint_ids}
