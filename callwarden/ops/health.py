"""``/healthz``: healthy when the store answers and every configured PBX link is up.

Each check is a small function returning a :class:`CheckResult`. The report is cached for a
second, so a burst of probes (Docker, systemd, a load balancer) costs one store round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, text

from callwarden.ops.runtime import Runtime

T = TypeVar("T")
#: Runs a blocking function (a store query) where blocking is safe (see ops.esl_side: in the
#: gevent process, a native thread) and returns its result.
Blocking = Callable[[Callable[[], Any]], Any]


#: Makes the lock that serializes probes. In the gevent process it must be a gevent lock: a
#: native lock held across a switch to the probe's thread would block the hub for good.
LockFactory = Callable[[], AbstractContextManager[Any]]


def run_here(func: Callable[[], T]) -> T:
    return func()


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


Check = Callable[[], CheckResult]


def store_check(engine: Engine, run_blocking: Blocking = run_here) -> Check:
    """The store answers and holds callwarden's schema (a fresh empty SQLite file does not)."""

    def probe() -> CheckResult:
        started = time.monotonic()
        try:
            with engine.connect() as conn:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception as exc:  # any driver error means: the store does not answer
            first = (str(exc).splitlines() or [""])[0][:200]
            return CheckResult(False, f"{type(exc).__name__}: {first}")
        if revision is None:
            return CheckResult(False, "the store has no schema revision (run `callwarden db upgrade`)")
        return CheckResult(True, f"schema {revision}, answered in "
                                 f"{(time.monotonic() - started) * 1000:.1f} ms")

    def check() -> CheckResult:
        try:
            return run_blocking(probe)
        except Exception as exc:
            return CheckResult(False, f"probe failed: {type(exc).__name__}")

    return check


def link_checks(runtime: Runtime) -> dict[str, Check]:
    """One check per PBX link (``asterisk.ami``, ``freeswitch.esl_inbound``)."""

    def make(index: int) -> Check:
        def check() -> CheckResult:
            reading = runtime.read_links()[index]
            state = "connected to" if reading.up else "not connected to"
            return CheckResult(reading.up, f"{state} {reading.endpoint}")
        return check

    return {f"{link.pbx}.{link.name}": make(i) for i, link in enumerate(runtime.links)}


class Health:
    """Named checks; :meth:`report` runs them all (at most once per ``cache_s``)."""

    def __init__(self, checks: dict[str, Check] | None = None, *, cache_s: float = 1.0,
                 lock: LockFactory = threading.Lock) -> None:
        self.checks: dict[str, Check] = dict(checks or {})
        self.cache_s = cache_s
        self._lock = lock()
        self._cached: tuple[float, bool, dict[str, Any]] | None = None

    def add(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def add_all(self, checks: dict[str, Check]) -> None:
        self.checks.update(checks)

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, JSON-ready body)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self.cache_s:
                return self._cached[1], self._cached[2]
            results: dict[str, CheckResult] = {}
            for name, check in list(self.checks.items()):
                try:
                    results[name] = check()
                except Exception as exc:  # a broken check is a failed check, not a 500
                    results[name] = CheckResult(False, f"check failed: {type(exc).__name__}")
            failed = [name for name, r in results.items() if not r.ok]
            body = {"status": "unhealthy" if failed else "ok", "failed": failed,
                    "checks": {name: r.as_dict() for name, r in results.items()}}
            self._cached = (time.monotonic(), not failed, body)
            return not failed, body
