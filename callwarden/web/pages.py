"""How a page is served: sign-in and idle timeout, role, CSRF on POST, rendering, errors.

Handlers are plain functions ``handler(request) -> Response`` run in a worker thread (the
store is synchronous SQLAlchemy). ``page(...)`` wraps each one; a POST form is read and checked
here, before the handler runs, and left in ``request.state.form``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from callwarden.log import get_logger
from callwarden.web import csrf
from callwarden.web.console import Console
from callwarden.web.i18n import LANGUAGES, translator
from callwarden.web.users import Account, active_account

log = get_logger("callwarden.web")

Handler = Callable[[Request], Response]


class NotFound(Exception):
    """Answer 404: also for records outside the user's tenant (never say they exist)."""


class Forbidden(Exception):
    """Answer 403: the role may not do this."""


def console(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


def account(request: Request) -> Account:
    return request.state.account  # type: ignore[no-any-return]


def lang(request: Request) -> str:
    chosen = request.session.get("lang")
    return chosen if chosen in LANGUAGES else console(request).web.language


def render(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    c = console(request)
    language = lang(request)
    html = c.templates.get_template(template).render(
        request=request, t=translator(language), lang=language, user=getattr(request.state, "account", None),
        csrf_field=csrf.FIELD, csrf_token=csrf.token(request.session), path=request.url.path, **ctx)
    return HTMLResponse(html, status, headers={"Cache-Control": "no-store"})


def error_page(request: Request, status: int) -> HTMLResponse:
    key = {404: "not_found", 403: "forbidden"}.get(status, "not_found")
    return render(request, "error.html", status=status, status_code=status, message_key=key)


def _signed_in(request: Request) -> Account | None:
    """The session's account, unless it timed out or was disabled (then the session ends)."""
    sess = request.session
    uid = sess.get("uid")
    if uid is None:
        return None
    c = console(request)
    now = time.time()
    if now - float(sess.get("seen", 0)) > c.web.idle_timeout_minutes * 60:
        sess.clear()
        sess["expired"] = True
        return None
    with c.sessions() as s:
        acct = active_account(s, int(uid))
    if acct is None:
        sess.clear()
        return None
    sess["seen"] = int(now)
    return acct


def page(handler: Handler, *, roles: tuple[str, ...] | None = None, public: bool = False) -> Callable[..., Any]:
    """Wrap ``handler`` into an endpoint: signed-in (unless ``public``), role, CSRF on POST."""

    async def endpoint(request: Request) -> Response:
        form = None
        if request.method == "POST":
            form = await request.form()
            why = csrf.check(request, form, console(request).web.allowed_origins)
            if why is not None:
                log.warning("web_post_refused", path=request.url.path, why=why)
                return await run_in_threadpool(error_page, request, 403)
        request.state.form = form
        if not public:
            acct = await run_in_threadpool(_signed_in, request)
            if acct is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?next={quote(target)}", 303)
            request.state.account = acct
            if roles is not None and acct.role not in roles:
                return await run_in_threadpool(error_page, request, 403)
        try:
            return await run_in_threadpool(handler, request)
        except NotFound:
            return await run_in_threadpool(error_page, request, 404)
        except Forbidden:
            return await run_in_threadpool(error_page, request, 403)

    endpoint.__name__ = handler.__name__
    return endpoint
