"""The console's ASGI application (Starlette): ``create_app(settings)``; callwarden.web.serving
serves it with uvicorn."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from callwarden.config import Settings
from callwarden.web.console import Console, load_secret
from callwarden.web.pages import error_page
from callwarden.web.routes import auth, calls, evidence, recording, registry, report, risk

SESSION_COOKIE = "cw_session"


async def _home(request: Request) -> Response:
    return RedirectResponse("/calls", 303)


async def _not_found(request: Request, exc: Exception) -> Response:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(error_page, request, 404)


class _SecurityHeaders:
    """No framing, no sniffing, no referrer leaks; scripts and styles from the console only."""

    HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"same-origin"),
               (b"content-security-policy",
                b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                b"script-src 'self'; media-src 'self'; frame-ancestors 'none'; form-action 'self'")]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                names = {k for k, _ in message["headers"]}
                message["headers"] += [(k, v) for k, v in self.HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings, engine: Engine | None = None) -> Starlette:
    console = Console.from_settings(settings, engine)
    web = console.web
    routes = [Route("/", _home), *auth.routes, *calls.routes, *recording.routes, *evidence.routes,
              *report.routes, *risk.routes, *registry.routes,
              Mount("/static", StaticFiles(packages=[("callwarden.web", "static")]), name="static")]
    middleware = [
        Middleware(_SecurityHeaders),
        # itsdangerous-signed cookie; HttpOnly always; no max_age: it ends with the browser, and the
        # idle timeout (callwarden.web.pages) ends it on the server's side
        Middleware(SessionMiddleware, secret_key=load_secret(web.session_secret_file).decode(),
                   session_cookie=SESSION_COOKIE, max_age=None, same_site="strict", https_only=web.https_only),
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={404: _not_found})
    app.state.console = console
    app.state.detector = None
    return app

