"""Blocking enforcer calls, run off the event loop with bounded threads and hard deadlines.

The enforcer's methods block on the store. The event loop that serves every FastAGI connection
and the AMI stream must never wait on them. Outbound decisions go to the enforcer's decision
writer (one native thread that stores every waiting decision in one transaction: group
commit), awaited as futures, so a burst of calls needs no thread per call. Everything that
happens after the decision (CDR completion, opt-outs) runs in a small thread pool, and
recording finalization (hashing and copying audio can take seconds) in another, so neither a
burst of hangups nor a large recording can delay a decision. Each call is bounded by a
deadline; a decision that misses it is a POLICY_UNAVAILABLE deny (fail closed), and a decision
still queued when the deadline passes is withdrawn before it can run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from functools import partial
from typing import Literal, TypeVar

from callwarden.log import get_logger
from callwarden.policy import CallAttempt, denial
from callwarden.service.enforcer import DecisionResult, Enforcer, Outcome

log = get_logger("callwarden.agi")

T = TypeVar("T")


class StoreGate:
    """The adapter's only way to reach the enforcer."""

    def __init__(self, enforcer: Enforcer, *, decision_timeout_s: float,
                 background_workers: int = 4, recording_workers: int = 2):
        self.enforcer = enforcer
        self.decision_timeout_s = decision_timeout_s
        self._background = concurrent.futures.ThreadPoolExecutor(
            max_workers=background_workers, thread_name_prefix="callwarden-store")
        self._recordings = concurrent.futures.ThreadPoolExecutor(
            max_workers=recording_workers, thread_name_prefix="callwarden-recording")

    async def decide(self, attempt: CallAttempt, route: str = "outbound") -> DecisionResult:
        """Decide within ``decision_timeout_s``, counted from now (queueing included); a
        decision already stored when the deadline is noticed is used, not corrected."""
        started = time.monotonic()
        job = self.enforcer.submit(attempt, started, route)
        await _done_or_due(job, self.decision_timeout_s)
        if job.done() and not job.cancelled():
            # Possibly noticed after the deadline (the loop ran the timer before the writer's
            # wake-up): a stored decision stands, nothing to correct. An enforcer error is
            # raised here, into the route's failure path (deny).
            outcome = job.result()
        else:
            if not job.cancel():  # already running: it may still commit after we gave up
                job.add_done_callback(partial(self._late_decision, attempt.pbx))
            else:  # never ran: keep the denial for the store (journal file, off the loop)
                self._background.submit(self.enforcer.journal_denial, attempt, route)
            log.error("decision_timeout", route=route, tenant=attempt.tenant,
                      pbx_call_id=attempt.pbx_call_id, timeout_ms=self.decision_timeout_s * 1000,
                      action="outbound call denied POLICY_UNAVAILABLE (fail closed)")
            return DecisionResult(None, denial("POLICY_UNAVAILABLE"), _ms_since(started))
        return DecisionResult(outcome, outcome.decision, _ms_since(started))

    def _late_decision(self, pbx: str, job: concurrent.futures.Future[Outcome]) -> None:
        """A decision committed after the adapter had already denied: have the record
        corrected (by the decision writer, in its next transaction; run in the writer's
        thread, this only queues it)."""
        if job.cancelled() or job.exception() is not None:
            return
        outcome = job.result()
        if outcome.decision.allowed or outcome.let_through:
            self.enforcer.abandon(outcome, pbx)

    async def call(self, fn: Callable[..., T], *args: object, timeout: float,
                   pool: Literal["background", "recordings"] = "background") -> T:
        """Run a blocking enforcer call in a non-decision pool within ``timeout`` seconds.
        Raises TimeoutError (the job is cancelled if it has not started)."""
        executor = self._recordings if pool == "recordings" else self._background
        job = executor.submit(partial(fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(_wrap(job)), timeout)
        except TimeoutError:
            job.cancel()
            raise

    def close(self) -> None:
        """Stop taking work; queued jobs are dropped, running ones finish in their threads."""
        self._background.shutdown(wait=False, cancel_futures=True)
        self._recordings.shutdown(wait=False, cancel_futures=True)


async def _done_or_due(job: concurrent.futures.Future[Outcome], timeout: float) -> None:
    """Wait until ``job`` is done or ``timeout`` seconds have passed, whichever comes first.

    One loop future woken from the writer thread and one timer: what ``wait_for(shield(
    wrap_future(job)))`` did with four futures, their callbacks and a task (~8% of the loop's
    CPU per call at 50 calls at once)."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object) -> None:  # in the writer thread
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody waits
            loop.call_soon_threadsafe(_settle, waiter)

    job.add_done_callback(wake)
    timer = loop.call_later(timeout, _settle, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _wrap(job: concurrent.futures.Future[T]) -> asyncio.Future[T]:
    """An awaitable for ``job`` whose late exception (after we stopped waiting) is consumed
    instead of being reported as "never retrieved"."""
    wrapped = asyncio.wrap_future(job)
    wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
    return wrapped


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)
