"""CSRF protection: a per-session token in every form, checked on every POST, and the Origin
header (when the browser sends one) must be the console's own or a configured one."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from starlette.requests import Request

FIELD = "csrf_token"


def token(session: dict[str, Any]) -> str:
    """This session's token (made on first use)."""
    if not session.get("csrf"):
        session["csrf"] = secrets.token_urlsafe(32)
    return str(session["csrf"])


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def check(request: Request, form: Any, allowed_origins: list[str]) -> str | None:
    """None if the POST may go on, else why it is refused."""
    origin = request.headers.get("origin")
    if origin is not None and origin != own_origin(request) and origin not in allowed_origins:
        return "foreign origin"
    expected = request.session.get("csrf")
    sent = form.get(FIELD) if form is not None else None
    if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent, str(expected)):
        return "missing or wrong CSRF token"
    return None
