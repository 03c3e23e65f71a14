"""Call search and the call page: the same search as ``audit search`` (callwarden.audit.search),
scoped to the user's tenant in the query itself; numbers masked unless asked for in full
(each such view is an audit-log entry)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from callwarden.audit.access import AccessDenied
from callwarden.audit.filters import DECISIONS, DIRECTIONS, FilterError, SearchFilters
from callwarden.audit.search import search
from callwarden.audit.snapshot import snapshot
from callwarden.policy.reasons import REASONS
from callwarden.store.models import AuditEntry, Consent, Tenant
from callwarden.web.pages import NotFound, account, console, page, render

#: query parameter -> SearchFilters.from_cli keyword
FILTER_PARAMS = {"tenant": "tenant", "caller": "caller", "callee": "callee", "from": "since", "to": "until",
                 "direction": "direction", "decision": "decision", "reason": "reason", "campaign": "campaign",
                 "trunk": "trunk", "call_id": "call_id", "recording": "has_recording"}


def filter_values(params: Any) -> dict[str, str]:
    """The filter fields present in a query string or form, as given (for links and forms)."""
    return {k: str(params.get(k)).strip() for k in FILTER_PARAMS if str(params.get(k) or "").strip()}


def parse_filters(request: Request, values: dict[str, str]) -> SearchFilters:
    kw: dict[str, Any] = {FILTER_PARAMS[k]: v for k, v in values.items()}
    if "has_recording" in kw:
        kw["has_recording"] = {"yes": True, "no": False}.get(kw["has_recording"])
    for k in ("direction", "decision"):
        if k in kw and kw[k] not in (DIRECTIONS if k == "direction" else DECISIONS):
            raise FilterError(f"{k}: must be one of {', '.join(DIRECTIONS if k == 'direction' else DECISIONS)}")
    return SearchFilters.from_cli(console(request).settings.tz, **kw)


def _tenants(request: Request) -> list[str]:
    acct = account(request)
    if acct.scope().tenant:
        return [acct.scope().tenant]  # type: ignore[list-item]
    with console(request).sessions() as s:
        return list(s.scalars(select(Tenant.id).order_by(Tenant.id)))


def search_page(request: Request) -> Response:
    c, acct = console(request), account(request)
    values = filter_values(request.query_params)
    full = request.query_params.get("full") == "1"
    try:
        offset = max(0, int(request.query_params.get("offset", "0")))
    except ValueError:
        offset = 0
    size = c.web.page_size
    ctx: dict[str, Any] = {"values": values, "full": full, "offset": offset, "size": size,
                           "reasons": list(REASONS), "tenants": _tenants(request), "rows": [], "error": None,
                           "more": False}
    try:
        filters = parse_filters(request, values)
        scope = acct.scope()
        with snapshot(c.engine) as s:
            rows = search(s, filters, scope, limit=size + 1, offset=offset, full_numbers=full)
    except FilterError as exc:
        ctx["error"] = str(exc).replace("--", "")
        return render(request, "calls.html", status=400, **ctx)
    except AccessDenied:
        raise NotFound from None
    ctx["more"], ctx["rows"] = len(rows) > size, rows[:size]
    c.audit(acct, "audit.full_numbers" if full else "audit.search", scope.tenant or filters.tenant, {
        "filters": filters.describe(), "limit": size, "offset": offset, "rows": len(ctx["rows"]),
        "full_numbers": full, "format": "web"})

    def link(**over: Any) -> str:
        q = {**values, **({"full": "1"} if full else {}), "offset": offset, **over}
        return "/calls?" + urlencode({k: v for k, v in q.items() if v not in (None, "", 0)})

    ctx["link"] = link
    ctx["query"] = urlencode(values)
    return render(request, "calls.html", **ctx)


def find_call(request: Request, call_id: str, full: bool = False) -> dict[str, Any]:
    """The call as a search row, if it is visible to the user (else NotFound, as if absent)."""
    c = console(request)
    try:
        filters = SearchFilters(call_id=call_id)
    except FilterError:
        raise NotFound from None
    with snapshot(c.engine) as s:
        rows = search(s, filters, account(request).scope(), limit=1, full_numbers=full)
    if not rows:
        raise NotFound
    return rows[0]


def call_page(request: Request) -> Response:
    c, acct = console(request), account(request)
    call_id = request.path_params["call_id"]
    full = request.query_params.get("full") == "1"
    row = find_call(request, call_id, full)
    with snapshot(c.engine) as s:
        consent = None
        if row["consent_id"] is not None:
            consent = s.scalar(select(Consent).where(Consent.id == row["consent_id"],
                                                     Consent.tenant_id == row["tenant"]))
        timeline = list(s.scalars(select(AuditEntry).where(AuditEntry.subject == call_id,
                                                           AuditEntry.actor.like("pbx:%"))
                                  .order_by(AuditEntry.seq)))
    if full:
        c.audit(acct, "audit.full_numbers", call_id, {"tenant": row["tenant"], "view": "call"})
    reasons = [REASONS[code] for code in row["reasons"] if code in REASONS]
    return render(request, "call.html", row=row, full=full, reasons=reasons, consent=consent,
                  timeline=timeline)


routes = [
    Route("/calls", page(search_page), methods=["GET"]),
    Route("/calls/{call_id}", page(call_page), methods=["GET"]),
]
