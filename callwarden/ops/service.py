"""The operations side of ``callwarden serve`` in its main (asyncio) process: one metrics
registry, the health checks, and the HTTP endpoint at ``metrics: {host, port}``.

The endpoint is an observer, never a gate: if its port cannot be bound, ``serve`` logs an
error and goes on answering calls (a dialplan that cannot reach callwarden fails closed, so a
stale process holding the metrics port must not stop enforcement). ``callwarden doctor``
reports the port, and the Docker/systemd health checks notice the missing endpoint.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from prometheus_client.registry import Collector
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import NullPool

from callwarden.config import Settings
from callwarden.log import get_logger
from callwarden.metrics import Metrics
from callwarden.ops.auditcount import TRACKED, AuditCollector, AuditCounter
from callwarden.ops.bridge import ChildReport, MergedRegistry
from callwarden.ops.health import (
    Blocking,
    Health,
    LockFactory,
    link_checks,
    run_here,
    store_check,
)
from callwarden.ops.http import HttpServer, make_app, serve_in_thread
from callwarden.ops.runtime import LinkState, ServerState

if TYPE_CHECKING:
    from callwarden.agi.adapter import AsteriskAdapter
    from callwarden.service.enforcer import Enforcer

log = get_logger("callwarden.ops")

#: Store probes (health, audit counts, doctor) wait at most this long.
PROBE_TIMEOUT_MS = 2000


def probe_engine(settings: Settings, timeout_ms: int = PROBE_TIMEOUT_MS) -> Engine:
    """An engine for probes, apart from the decisions' one: a fresh connection per probe (a
    store that went away is noticed, not hidden by a pooled connection), read-only, bounded
    by ``timeout_ms``. On SQLite it never creates a missing database file and never takes the
    write lock (callwarden's own engines begin with ``BEGIN IMMEDIATE``; a probe reading under
    that lock would hold up decisions)."""
    url = make_url(settings.store.url)
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path in ("", ":memory:"):
            raise ValueError("store.url: a probe needs an SQLite database file")
        target = f"file:{quote(str(Path(path).resolve()))}?mode=rw"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(target, uri=True, timeout=timeout_ms / 1000,
                                   check_same_thread=False)
            conn.isolation_level = None  # transactions are begun below, deferred
            conn.execute("PRAGMA query_only=ON")
            return conn

        engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)

        @event.listens_for(engine, "begin")
        def _deferred(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN")  # a read snapshot, no write lock

        return engine
    options = url.query.get("options", "")
    return create_engine(url, poolclass=NullPool, connect_args={
        "connect_timeout": max(2, math.ceil(timeout_ms / 1000)),
        "options": f"{options} -c statement_timeout={timeout_ms}".strip()})


def endpoint_checks(engine: Engine, registry: Collector, run_blocking: Blocking = run_here,
                    lock: LockFactory = threading.Lock) -> tuple[Collector, Health]:
    """The registry served (with the audit-log counts) and the store check, for any process."""
    counter = AuditCounter(engine, TRACKED, run_blocking=run_blocking, lock=lock)
    merged = _WithExtra(registry, [AuditCollector(counter)])
    health = Health({"store": store_check(engine, run_blocking)}, lock=lock)
    return merged, health


class _WithExtra:
    """A registry plus collectors that are not registered in it (they are scraped, not
    described: the audit counts must not query the store at registration time)."""

    def __init__(self, registry: Collector, extra: Iterable[Collector]) -> None:
        self.registry = registry
        self.extra = list(extra)

    def collect(self):  # type: ignore[no-untyped-def]
        yield from self.registry.collect()
        for collector in self.extra:
            yield from collector.collect()


class Operations:
    """Metrics, health and the HTTP endpoint of the ``serve`` process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(mode=settings.mode)
        self.runtime = self.metrics.runtime
        self.children: list[tuple[ChildReport, list[str]]] = []
        self.http: HttpServer | None = None
        self._engine: Engine | None = None
        self._report_dir: str | None = None

    def instrument(self, enforcer: Enforcer) -> Enforcer:
        return self.metrics.instrument(enforcer)

    def watch_asterisk(self, adapter: AsteriskAdapter) -> None:
        """Sessions of the FastAGI server and the AMI link, read from the running adapter."""
        agi = adapter.agi
        if agi is not None:
            self.runtime.add_server(ServerState("asterisk", "fastagi", lambda: agi.active,
                                                lambda: agi.refused))
        ami, config = adapter.ami, adapter.config.ami
        if ami is not None and config is not None:
            self.runtime.add_link(LinkState("asterisk", "ami", f"{config.host}:{config.port}",
                                            lambda: ami.connected, lambda: ami.sessions))

    def child_report_socket(self, pbx: str = "freeswitch") -> str:
        """A private socket path for a child adapter process to report on (see ops.bridge)."""
        if self._report_dir is None:
            self._report_dir = tempfile.mkdtemp(prefix="callwarden-report-")  # mode 0700
        path = os.path.join(self._report_dir, f"{pbx}.sock")
        links = ["esl_inbound"] if (pbx == "freeswitch" and self.settings.freeswitch is not None
                                    and self.settings.freeswitch.esl_inbound is not None) else []
        self.children.append((ChildReport(path, pbx), links))
        return path

    def start(self) -> HttpServer | None:
        """Start the endpoint (None when ``metrics: null`` or when it cannot bind)."""
        where = self.settings.metrics
        if where is None:
            log.info("metrics_disabled", note="metrics: null in the config")
            return None
        self._engine = probe_engine(self.settings)
        registry: Collector = self.metrics.registry
        if self.children:
            registry = MergedRegistry(registry, [child for child, _ in self.children])
        served, health = endpoint_checks(self._engine, registry)
        health.add_all(link_checks(self.runtime))
        for child, links in self.children:
            health.add_all(child.health_checks(links))
        try:
            self.http = serve_in_thread(where.host, where.port, make_app(served, health))
        except OSError as exc:
            log.error("metrics_listen_failed", host=where.host, port=where.port,
                      error=exc.strerror or type(exc).__name__,
                      action="serving calls without /metrics and /healthz")
            return None
        log.info("metrics_listening", host=where.host, port=self.http.port,
                 paths=["/metrics", "/healthz"])
        return self.http

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._report_dir is not None:
            shutil.rmtree(self._report_dir, ignore_errors=True)
            self._report_dir = None
