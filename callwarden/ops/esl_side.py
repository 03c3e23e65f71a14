"""The operations side of the FreeSWITCH adapter's process (gevent).

Two ways to run, chosen by ``$CALLWARDEN_REPORT_SOCKET`` (see :mod:`callwarden.ops.bridge`):

* a child of ``callwarden serve`` (both PBXes configured): answer the parent's report socket
  with this process's metrics and links; the parent serves the one ``/metrics``;
* on its own (``callwarden serve`` with only ``freeswitch:``): serve ``/metrics`` and
  ``/healthz`` at ``metrics: {host, port}`` itself.

Everything here runs on the gevent hub (greenlets), except store queries, which go to a
native thread of their own: SQLite and psycopg block in C, and must not stall the hub that
answers calls. Import this module only in the gevent process.
"""

from __future__ import annotations

import contextlib
import os
import socket as stdsocket
from typing import TYPE_CHECKING, Any

import gevent
from gevent import socket
from gevent.lock import Semaphore
from gevent.pywsgi import WSGIServer
from gevent.server import StreamServer
from gevent.threadpool import ThreadPool

from callwarden.config import Settings
from callwarden.log import get_logger
from callwarden.metrics import Metrics
from callwarden.ops.bridge import ENV_SOCKET, encode_report
from callwarden.ops.health import link_checks
from callwarden.ops.http import make_app
from callwarden.ops.runtime import LinkState, ServerState
from callwarden.ops.service import endpoint_checks, probe_engine

if TYPE_CHECKING:
    from callwarden.esl.service import FreeswitchService

log = get_logger("callwarden.ops")


class EslOperations:
    """Create before ``service.start()`` (decisions are counted from the first call), then
    :meth:`start` once the service runs; :meth:`stop` at shutdown."""

    def __init__(self, settings: Settings, service: FreeswitchService,
                 report_socket: str | None = None) -> None:
        self.settings = settings
        self.service = service
        self.report_socket = report_socket if report_socket is not None else os.environ.get(ENV_SOCKET)
        self.metrics = Metrics(mode=settings.mode, process_metrics=not self.report_socket)
        self.metrics.instrument(service.enforcer)
        server = service.server
        self.metrics.runtime.add_server(ServerState("freeswitch", "esl_outbound",
                                                    lambda: server.connection_count))
        listener = service.listener
        inbound = settings.freeswitch.esl_inbound if settings.freeswitch else None
        if listener is not None and inbound is not None:
            self.metrics.runtime.add_link(LinkState(
                "freeswitch", "esl_inbound", f"{inbound.host}:{inbound.port}",
                lambda: listener.connected.is_set(), lambda: listener.connections))
        self._servers: list[Any] = []
        self._pool: ThreadPool | None = None
        self._engine: Any = None

    def start(self) -> None:
        if self.report_socket:
            self._serve_report(self.report_socket)
        elif self.settings.metrics is not None:
            self._serve_http(self.settings.metrics.host, self.settings.metrics.port)

    def _serve_report(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a previous child that died; the directory is ours
        listener = socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(16)
        registry, runtime = self.metrics.registry, self.metrics.runtime

        def answer(conn: Any, _address: Any) -> None:
            try:
                conn.sendall(encode_report(registry, runtime))
            except OSError:
                pass  # the parent gave up waiting
            finally:
                conn.close()

        server = StreamServer(listener, answer)
        server.start()
        self._servers.append(server)
        log.info("report_socket_listening", path=path)

    def _serve_http(self, host: str, port: int) -> None:
        self._pool = ThreadPool(1)
        pool = self._pool

        def run_blocking(func: Any) -> Any:
            return pool.apply(func)

        self._engine = probe_engine(self.settings)
        served, health = endpoint_checks(self._engine, self.metrics.registry, run_blocking,
                                         lock=Semaphore)
        health.add_all(link_checks(self.metrics.runtime))
        server = WSGIServer((host, port), make_app(served, health), log=None)
        try:
            server.start()
        except OSError as exc:
            log.error("metrics_listen_failed", host=host, port=port,
                      error=exc.strerror or type(exc).__name__,
                      action="serving calls without /metrics and /healthz")
            return
        self._servers.append(server)
        log.info("metrics_listening", host=host, port=server.server_port,
                 paths=["/metrics", "/healthz"])

    @property
    def http_port(self) -> int | None:
        for server in self._servers:
            if isinstance(server, WSGIServer):
                return int(server.server_port)
        return None

    def stop(self) -> None:
        for server in self._servers:
            server.stop(timeout=1)
        self._servers.clear()
        if self.report_socket:
            with contextlib.suppress(OSError):
                os.unlink(self.report_socket)
        if self._pool is not None:
            self._pool.kill()
        if self._engine is not None:
            self._engine.dispose()
        gevent.sleep(0)
