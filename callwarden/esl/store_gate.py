"""Blocking enforcer calls from greenlets: native threads, hard deadlines, fail closed.

The enforcer blocks on the database (SQLite, or psycopg whose C wait loop gevent cannot patch),
so every call runs in one of gevent's native thread pools: the hub's pool, reserved for
outbound decisions (call setup waits on them), and a second pool for everything after the
decision (CDR completion, caller-ID checks, opt-outs, inbound logging), so a burst of hangups
never delays a decision. A decision that misses ``decision_timeout_ms`` (queueing included) is
a POLICY_UNAVAILABLE deny; if it still commits an allow after we gave up, the record is
corrected (``decision_abandoned``) so the CDR never claims an allow for a denied call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

import gevent
from gevent.event import AsyncResult
from gevent.threadpool import ThreadPool

from callwarden.log import get_logger
from callwarden.policy import CallAttempt, denial
from callwarden.service.enforcer import DecisionResult, Enforcer, Outcome

log = get_logger("callwarden.esl")

T = TypeVar("T")


class StoreTimeout(Exception):
    """A background store call did not finish in time (it may still finish later)."""


class StoreGate:
    """The FreeSWITCH adapter's only way to reach the enforcer."""

    def __init__(self, enforcer: Enforcer, *, decision_timeout_s: float, decision_workers: int,
                 background_workers: int = 2, recording_workers: int = 2):
        self.enforcer = enforcer
        self.decision_timeout_s = decision_timeout_s
        self._decisions = gevent.get_hub().threadpool
        self._decisions.maxsize = decision_workers
        self._background = ThreadPool(background_workers)
        # Finalizing a recording hashes and copies audio (seconds): never in front of a CDR.
        self._recordings = ThreadPool(recording_workers)

    def decide(self, attempt: CallAttempt, started: float, route: str = "outbound") -> DecisionResult:
        """Decide before ``started + decision_timeout_s`` (``started``: ``time.monotonic()`` when
        the call reached us, so time spent waiting for a worker counts)."""
        remaining = started + self.decision_timeout_s - time.monotonic()
        job: AsyncResult | None = None
        try:
            with gevent.Timeout(max(0.0, remaining)):
                # spawn() itself waits for a free worker; a timeout there queues nothing.
                job = self._decisions.spawn(_captured, self.enforcer.decide_since,
                                            attempt, started, route)
                outcome: Outcome = _unwrap(job.get())
        except gevent.Timeout:
            if job is not None:
                job.rawlink(self._late_decision)
            else:  # never queued: keep the denial for the store (journal file)
                self._background.spawn(self.enforcer.journal_denial, attempt, route)
            log.error("decision_timeout", route=route, tenant=attempt.tenant,
                      pbx_call_id=attempt.pbx_call_id,
                      timeout_ms=round(self.decision_timeout_s * 1000),
                      action="outbound call denied POLICY_UNAVAILABLE (fail closed)")
            return DecisionResult(None, denial("POLICY_UNAVAILABLE"), _ms_since(started))
        except Exception as exc:  # an enforcer bug must deny, never let the call through
            log.error("decision_failed", route=route, tenant=attempt.tenant,
                      pbx_call_id=attempt.pbx_call_id, error=type(exc).__name__,
                      action="outbound call denied POLICY_UNAVAILABLE (fail closed)")
            return DecisionResult(None, denial("POLICY_UNAVAILABLE"), _ms_since(started))
        return DecisionResult(outcome, outcome.decision, _ms_since(started))

    def _late_decision(self, job: AsyncResult) -> None:
        """Runs in the hub when an abandoned decision finishes: undo a late allow."""
        if not job.successful() or isinstance(job.value, _Failed):
            return
        outcome: Outcome = job.value
        if outcome.decision.allowed or outcome.let_through:
            gevent.spawn(self._abandon, outcome.call_id)

    def _abandon(self, call_id: str) -> None:
        try:
            self.call(self.enforcer.decision_abandoned, call_id, timeout=30.0)
        except Exception as exc:  # the store is in trouble; the call itself was denied
            log.error("decision_abandon_failed", call_id=call_id, error=type(exc).__name__)

    def call(self, fn: Callable[..., T], *args: object, timeout: float,
             pool: Literal["background", "recordings"] = "background") -> T:
        """Run ``fn(*args)`` in a non-decision pool; StoreTimeout after ``timeout`` seconds."""
        threads = self._recordings if pool == "recordings" else self._background
        try:
            with gevent.Timeout(timeout):
                job = threads.spawn(_captured, fn, *args)
                return _unwrap(job.get())
        except gevent.Timeout:
            raise StoreTimeout(getattr(fn, "__name__", "store call")) from None

    def close(self) -> None:
        """Stop the non-decision pools; running jobs finish in their threads."""
        self._background.kill()
        self._recordings.kill()


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


class _Failed:
    """An exception raised in a pool thread, carried back as a value: gevent's thread pool
    prints the traceback of anything a task raises, and these are expected (a store that is
    down); the caller decides what to log."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


def _captured(fn: Callable[..., T], *args: object) -> T | _Failed:
    try:
        return fn(*args)
    except Exception as exc:
        return _Failed(exc)


def _unwrap(value: T | _Failed) -> T:
    if isinstance(value, _Failed):
        raise value.error
    return value
