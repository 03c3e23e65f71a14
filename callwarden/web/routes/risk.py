"""Tenant risk dashboard: the policing detector's scores with the figures behind them
(callwarden.policing.runner.Detector.assess, as ``tenants risk``), open alerts, and
suspend/resume for admins with a required reason (callwarden.store.registry, audit-logged)."""

from __future__ import annotations

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from callwarden.policing.complaints import parse_time
from callwarden.policing.runner import Detector
from callwarden.store.models import Alert, Tenant
from callwarden.store.registry import Registry, RegistryError
from callwarden.web.pages import NotFound, account, console, page, render

_STATUS = {"suspend": "suspended", "resume": "active"}


def _detector(request: Request) -> Detector:
    state = request.app.state
    if getattr(state, "detector", None) is None:
        c = console(request)
        state.detector = Detector(c.settings, engine=c.engine, run_by="web")
    return state.detector  # type: ignore[no-any-return]


def dashboard(request: Request, message: str | None = None, error: str | None = None, status: int = 200
              ) -> Response:
    c, acct = console(request), account(request)
    only = acct.scope().tenant
    at_text = request.query_params.get("at", "").strip()
    try:  # as of another instant, like `tenants risk --now`
        as_of = parse_time(at_text, c.settings.tz) if at_text else None
    except ValueError:
        as_of, error, status = None, "bad_time", 400
    a = _detector(request).assess(as_of, None if only is None else [only])
    risks = sorted(a.risks, key=lambda r: (-r.score, r.tenant_id))
    with c.sessions() as s:
        q = select(Alert).order_by(Alert.raised_at.desc()).limit(100)
        tq = select(Tenant).order_by(Tenant.id)
        if only is not None:
            q, tq = q.where(Alert.tenant_id == only), tq.where(Tenant.id == only)
        alerts = list(s.scalars(q))
        tenants = list(s.scalars(tq))
    findings = [f for f in a.findings if only is None or f.tenant_id == only]
    return render(request, "risk.html", status=status, risks=risks, alerts=alerts, tenants=tenants,
                  findings=findings, as_of=a.as_of, at=at_text, cfg=c.settings.policing, message=message,
                  error=error)


def risk_page(request: Request) -> Response:
    return dashboard(request, message=request.query_params.get("done"))


def set_status(request: Request) -> Response:
    c, acct = console(request), account(request)
    tenant = request.path_params["tenant"]
    form = request.state.form
    action = str(form.get("action", ""))
    reason = str(form.get("reason", "")).strip()
    if action not in _STATUS:
        raise NotFound
    if not reason:
        return dashboard(request, error="reason_missing", status=400)
    try:
        with c.unit() as s:
            Registry(s, acct.username).set_tenant_status(tenant, _STATUS[action], reason)
    except RegistryError:
        raise NotFound from None
    return RedirectResponse("/risk?done=status_changed", 303)


routes = [
    Route("/risk", page(risk_page), methods=["GET"]),
    Route("/risk/{tenant}/status", page(set_status, roles=("admin",)), methods=["POST"]),
]
