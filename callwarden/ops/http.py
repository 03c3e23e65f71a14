"""The operations HTTP endpoint: ``GET /metrics`` (Prometheus) and ``GET /healthz``.

A WSGI application, served by :func:`serve_in_thread` (a small threaded server in daemon
threads, for the asyncio process) or by gevent's WSGI server in the FreeSWITCH process
(:mod:`callwarden.ops.esl_side`). It serves nothing else and reads no request body.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from callwarden.ops.health import Health

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_INDEX = b"callwarden operations endpoint: /metrics (Prometheus), /healthz (JSON)\n"


def make_app(registry: Collector, health: Health) -> WsgiApp:
    """The WSGI application for one process's registry and health checks."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"GET only\n",
                          "text/plain; charset=utf-8", method, [("Allow", "GET, HEAD")])
        if path == "/metrics":
            encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
            return _reply(start_response, "200 OK", encoder(registry), content_type, method)
        if path in ("/healthz", "/health"):
            healthy, body = health.report()
            data = (json.dumps(body, ensure_ascii=False, sort_keys=True) + "\n").encode()
            status = "200 OK" if healthy else "503 Service Unavailable"
            return _reply(start_response, status, data, "application/json", method,
                          [("Cache-Control", "no-store")])
        if path == "/":
            return _reply(start_response, "200 OK", _INDEX, "text/plain; charset=utf-8", method)
        return _reply(start_response, "404 Not Found", b"not found\n", "text/plain; charset=utf-8",
                      method)

    return app


def _reply(start_response: StartResponse, status: str, body: bytes, content_type: str,
           method: str, extra: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + (extra or [])
    start_response(status, headers)
    return [] if method == "HEAD" else [body]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: scrapes every few seconds would drown the JSON log."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


@dataclass
class HttpServer:
    """A running endpoint; :meth:`close` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_in_thread(host: str, port: int, app: WsgiApp) -> HttpServer:
    """Bind ``host:port`` (raises OSError if it cannot) and serve in a daemon thread."""
    server_class = _ThreadingServer6 if ":" in host else _ThreadingServer
    server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="callwarden-ops-http",
                              kwargs={"poll_interval": 0.5}, daemon=True)
    thread.start()
    return HttpServer(host, server.server_address[1], server, thread)
