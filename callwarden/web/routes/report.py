"""The per-tenant compliance report (callwarden.audit.report, rendered as ``callwarden report``
renders it, charts included); each report shown is an audit-log entry."""

from __future__ import annotations

import datetime as dt
import hashlib

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from callwarden.audit.access import AccessDenied
from callwarden.audit.filters import FilterError, parse_time
from callwarden.audit.report import UnknownTenant, compute_report, report_rules
from callwarden.audit.report_render import FORMATS
from callwarden.audit.report_render import render as render_report
from callwarden.audit.snapshot import snapshot
from callwarden.store.models import Tenant
from callwarden.web.pages import NotFound, account, console, page, render

_TYPES = {"html": "text/html; charset=utf-8", "json": "application/json", "csv": "text/csv; charset=utf-8"}


def report_form(request: Request) -> Response:
    c, acct = console(request), account(request)
    with c.sessions() as s:
        q = select(Tenant.id).order_by(Tenant.id)
        if acct.scope().tenant:
            q = q.where(Tenant.id == acct.scope().tenant)
        tenants = list(s.scalars(q))
    today = dt.datetime.now(c.settings.tz).date()
    return render(request, "report_form.html", tenants=tenants, formats=FORMATS,
                  default_from=(today - dt.timedelta(days=30)).isoformat(), default_to=today.isoformat())


def report_view(request: Request) -> Response:
    c, acct = console(request), account(request)
    p = request.query_params
    tenant, fmt = p.get("tenant", ""), p.get("format", "html")
    scope = acct.scope()
    if scope.tenant is not None and tenant != scope.tenant:
        raise NotFound  # another tenant's report: as if it did not exist
    if fmt not in FORMATS:
        fmt = "html"
    tz = c.settings.tz
    try:
        start, end = parse_time(p.get("from"), tz, "from"), parse_time(p.get("to"), tz, "to", upper=True)
        if start is None or end is None or start >= end:
            raise FilterError("from must be before to")
        with snapshot(c.engine) as s:
            data = compute_report(s, tenant, start, end, tz, scope, report_rules(c.settings))
    except FilterError as exc:
        return render(request, "error.html", status=400, status_code=400, message_key=str(exc))
    except (AccessDenied, UnknownTenant):
        raise NotFound from None
    text = render_report(data, fmt)
    digest = hashlib.sha256(text.encode()).hexdigest()
    c.audit(acct, "report.generate", tenant, {"tenant": tenant, "from": data.period["from"],
                                              "to": data.period["to"], "format": fmt, "sha256": digest,
                                              "attempts": data.outbound["attempts"]})
    headers = {"Cache-Control": "no-store"}
    if fmt != "html":
        headers["Content-Disposition"] = f'attachment; filename="report-{tenant}.{fmt}"'
        return Response(text, media_type=_TYPES[fmt], headers=headers)
    return HTMLResponse(text, headers=headers)


routes = [
    Route("/report", page(report_form), methods=["GET"]),
    Route("/report/view", page(report_view), methods=["GET"]),
]
