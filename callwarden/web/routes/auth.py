"""Sign in, sign out, language switch."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from callwarden.web import csrf
from callwarden.web.i18n import LANGUAGES
from callwarden.web.pages import console, log, page, render
from callwarden.web.users import account_of, authenticate


def _safe_next(target: str | None) -> str:
    """Only a path on this console (no //host or scheme: no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/calls"
    return target


def login_form(request: Request) -> Response:
    expired = request.session.pop("expired", False)
    return render(request, "login.html", next=_safe_next(request.query_params.get("next")),
                  error="session_expired" if expired else None)


def login(request: Request) -> Response:
    c = console(request)
    form = request.state.form
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    ip = request.client.host if request.client else "?"
    if c.limiter.blocked(ip, username):
        log.warning("web_login_limited", user=username, ip=ip)
        return render(request, "login.html", status=429, next=target, error="login_limited")
    with c.unit() as s:
        u = authenticate(s, username, password)
        acct = account_of(u) if u is not None else None
    if acct is None:
        c.limiter.failed(ip, username)
        log.warning("web_login_failed", user=username, ip=ip)
        return render(request, "login.html", status=401, next=target, error="login_failed")
    c.limiter.succeeded(ip, username)
    lang = request.session.get("lang")
    request.session.clear()  # a new session on sign-in (no fixation)
    request.session.update({"uid": acct.id, "seen": int(time.time()), "lang": lang})
    csrf.token(request.session)
    c.audit(acct, "web.login", acct.username, {"ip": ip})
    log.info("web_login", user=acct.username, role=acct.role)
    return RedirectResponse(target, 303)


def logout(request: Request) -> Response:
    lang = request.session.get("lang")
    request.session.clear()
    request.session["lang"] = lang
    return RedirectResponse("/login", 303)


def switch_language(request: Request) -> Response:
    code = request.path_params["code"]
    if code in LANGUAGES:
        request.session["lang"] = code
    return RedirectResponse(_safe_next(request.query_params.get("next")), 303)


routes = [
    Route("/login", page(login_form, public=True), methods=["GET"]),
    Route("/login", page(login, public=True), methods=["POST"]),
    Route("/logout", page(logout, public=True), methods=["POST"]),
    Route("/lang/{code}", page(switch_language, public=True), methods=["GET"]),
]
