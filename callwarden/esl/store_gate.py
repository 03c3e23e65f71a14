"""Blocking enforcer calls from greenlets: native threads, hard deadlines, fail closed.

The enforcer blocks on the database (SQLite, or psycopg whose C wait loop gevent cannot patch),
so the hub never calls it directly. Outbound decisions go to the enforcer's decision writer (one
native thread that stores every waiting decision in one transaction: group commit); the
greenlet waits for the writer's future through a libev async watcher, so a 200-call burst
needs neither 200 threads nor a blocked hub. Everything after the decision (CDR completion,
caller-ID checks, opt-outs, inbound logging) runs in a native thread pool of its own, so a
burst of hangups never delays a decision. A decision that misses ``decision_timeout_ms`` (queueing included) is
a POLICY_UNAVAILABLE deny; if it still commits an allow after we gave up, the record is
corrected (``Enforcer.abandon``: by the decision writer, in its next transaction) so the CDR
never claims an allow for a denied call.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

import gevent
from gevent.event import AsyncResult

from callwarden.log import get_logger
from callwarden.policy import CallAttempt, denial
from callwarden.service.enforcer import DecisionResult, Enforcer, Outcome
from callwarden.service.native import NativeExecutor

log = get_logger("callwarden.esl")

T = TypeVar("T")


class StoreTimeout(Exception):
    """A background store call did not finish in time (it may still finish later)."""


class StoreGate:
    """The FreeSWITCH adapter's only way to reach the enforcer."""

    def __init__(self, enforcer: Enforcer, *, decision_timeout_s: float,
                 background_workers: int = 2, recording_workers: int = 2):
        self.enforcer = enforcer
        self.decision_timeout_s = decision_timeout_s
        # Not gevent's ThreadPool: that one silently drops a queued task whose waiter timed
        # out, and a CDR completion or a decision correction must still happen when the
        # caller stopped waiting for it.
        self._background = NativeExecutor(background_workers, thread_name_prefix="callwarden-store")
        # Finalizing a recording hashes and copies audio (seconds): never in front of a CDR.
        self._recordings = NativeExecutor(recording_workers, thread_name_prefix="callwarden-recording")

    def decide(self, attempt: CallAttempt, started: float, route: str = "outbound") -> DecisionResult:
        """Decide before ``started + decision_timeout_s`` (``started``: ``time.monotonic()`` when
        the call reached us: under overload a call is denied early rather than decided too
        late to finish its session; time queued for the decision writer counts too). A
        decision already stored when the deadline is noticed is used, not corrected."""
        submitted = time.monotonic()
        remaining = started + self.decision_timeout_s - submitted
        job: concurrent.futures.Future[Outcome] | None = None
        try:
            with gevent.Timeout(max(0.0, remaining)):
                job = self.enforcer.submit(attempt, started, route)
                outcome = _result(job)
        except gevent.Timeout:
            if job is not None and _stored(job):
                # Stored in time, but the hub woke us after the deadline (a busy hub runs the
                # timer before the wake-up): the decision stands, nothing to correct.
                outcome = job.result()
                return DecisionResult(outcome, outcome.decision, _ms_since(started))
            if job is not None and not job.cancel():  # being decided: it may still commit
                gevent.spawn(self._late_decision, job, attempt.pbx)
            else:  # never decided: keep the denial for the store (journal file)
                self._background.submit(self.enforcer.journal_denial, attempt, route)
            # handover_ms: how much of the deadline had gone before the decision was asked for
            # (the call's first exchange with FreeSWITCH, and waiting for the hub)
            log.error("decision_timeout", route=route, tenant=attempt.tenant,
                      pbx_call_id=attempt.pbx_call_id,
                      timeout_ms=round(self.decision_timeout_s * 1000),
                      handover_ms=round((submitted - started) * 1000, 2),
                      action="outbound call denied POLICY_UNAVAILABLE (fail closed)")
            return DecisionResult(None, denial("POLICY_UNAVAILABLE"), _ms_since(started))
        except Exception as exc:  # an enforcer bug must deny, never let the call through
            log.error("decision_failed", route=route, tenant=attempt.tenant,
                      pbx_call_id=attempt.pbx_call_id, error=type(exc).__name__,
                      action="outbound call denied POLICY_UNAVAILABLE (fail closed)")
            return DecisionResult(None, denial("POLICY_UNAVAILABLE"), _ms_since(started))
        return DecisionResult(outcome, outcome.decision, _ms_since(started))

    def _late_decision(self, job: concurrent.futures.Future[Outcome], pbx: str) -> None:
        """A greenlet: wait for a decision the adapter gave up on; have it undone if it let
        the call through (the PBX was told deny)."""
        try:
            with gevent.Timeout(LATE_DECISION_WAIT_S):
                outcome = _result(job)
        except (gevent.Timeout, Exception):
            return
        if outcome.decision.allowed or outcome.let_through:
            self.enforcer.abandon(outcome, pbx)

    def call(self, fn: Callable[..., T], *args: object, timeout: float,
             pool: Literal["background", "recordings"] = "background") -> T:
        """Run ``fn(*args)`` in a non-decision pool; StoreTimeout after ``timeout`` seconds (the
        work is not withdrawn: it runs, and is stored, whenever a thread gets to it)."""
        threads = self._recordings if pool == "recordings" else self._background
        job = threads.submit(fn, *args)
        try:
            with gevent.Timeout(timeout):
                return _result(job)
        except gevent.Timeout:
            raise StoreTimeout(getattr(fn, "__name__", "store call")) from None

    def close(self) -> None:
        """Take no more work; what is queued still runs in its threads (a correction or a CDR
        completion is not dropped at shutdown)."""
        self._background.shutdown(wait=False)
        self._recordings.shutdown(wait=False)


#: How long to wait for a decision the adapter gave up on, to correct its record.
LATE_DECISION_WAIT_S = 60.0


def _stored(job: concurrent.futures.Future[Outcome]) -> bool:
    """The writer has answered with a decision (it stores before it answers)."""
    return job.done() and not job.cancelled() and job.exception() is None


def _result(job: concurrent.futures.Future[T]) -> T:
    """The future's result, waited for by this greenlet only: the writer thread's completion
    wakes the hub through an async watcher (thread-safe), never by blocking it."""
    if not job.done():
        hub = gevent.get_hub()
        watcher = hub.loop.async_()
        done = AsyncResult()
        watcher.start(done.set)
        lock = threading.Lock()  # native: closing and sending never overlap
        closed = []

        def wake(_: object) -> None:  # in the thread that finished the job
            with lock:
                if not closed:
                    watcher.send()

        try:
            job.add_done_callback(wake)
            done.get()
        finally:
            with lock:
                closed.append(True)
                watcher.close()
    return job.result()


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
