"""Registry views; admins edit by submitting a registry document, loaded by the same code as
``registry import`` (callwarden.store.registry: all or nothing, errors name entry and field,
one audit entry per change, naming the user)."""

from __future__ import annotations

from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from callwarden.audit.access import record_access
from callwarden.audit.jsonable import to_jsonable
from callwarden.store.registry import SECTIONS, Registry, RegistryError, export_document
from callwarden.web.pages import account, console, page, render

#: entries shown per section (a national do-not-call list has millions: `registry export` has all)
SHOWN = 500


def _document(request: Request) -> dict[str, list[dict[str, Any]]]:
    """The registry as ``registry export`` writes it; a tenant-auditor's own tenant only (in the
    queries), at most SHOWN + 1 entries per section (the extra one says there are more)."""
    c, acct = console(request), account(request)
    with c.sessions() as s:
        return to_jsonable(export_document(s, tenant=acct.scope().tenant, limit=SHOWN + 1))  # type: ignore[no-any-return]


def registry_page(request: Request, status: int = 200, **extra: Any) -> Response:
    doc = _document(request)
    extra.setdefault("text", "")
    return render(request, "registry.html", status=status, doc=doc, sections=SECTIONS, shown=SHOWN, **extra)


def registry_view(request: Request) -> Response:
    return registry_page(request)


def registry_edit(request: Request) -> Response:
    c, acct = console(request), account(request)
    form = request.state.form
    text = str(form.get("document", ""))
    dry_run = form.get("dry_run") == "1"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return registry_page(request, 400, text=text, error=f"not valid YAML: {exc}")
    try:
        with c.unit() as s:
            counts = Registry(s, acct.username).import_document(data)
            if dry_run:
                s.rollback()
            else:
                record_access(s, acct.scope(), "web.registry_import", None,
                              {"via": "web", "role": acct.role, "counts": dict(sorted(counts.items()))})
    except RegistryError as exc:
        return registry_page(request, 400, text=text, error=str(exc))
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "—"
    return registry_page(request, text="" if not dry_run else text,
                         message=("registry_checked" if dry_run else "registry_saved"), summary=summary)


routes = [
    Route("/registry", page(registry_view), methods=["GET"]),
    Route("/registry", page(registry_edit, roles=("admin",)), methods=["POST"]),
]
