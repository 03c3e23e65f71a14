"""The FreeSWITCH adapter's store gate: work handed to its threads is never dropped.

A CDR completion or the correction of a decision the PBX never acted on may wait longer than
its caller (a greenlet with a deadline) is willing to: the caller then gets StoreTimeout, and
the work must still be done when a thread is free. (gevent's own thread pool discards a queued
task whose waiter timed out; the gate must not.)
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import threading
import time

import gevent
import pytest

from callwarden.esl.store_gate import StoreGate, StoreTimeout
from callwarden.policy import CallAttempt, Decision
from callwarden.service.enforcer import Outcome


class _Enforcer:
    """Only what the gate touches outside decisions."""


def test_work_whose_caller_stopped_waiting_still_runs() -> None:
    gate = StoreGate(_Enforcer(), decision_timeout_s=0.5, background_workers=1)  # type: ignore[arg-type]
    release = threading.Event()
    done: list[str] = []

    def busy() -> str:  # holds the only thread
        release.wait(5)
        return "busy"

    def correction(call_id: str) -> str:
        done.append(call_id)
        return call_id

    first = gevent.spawn(gate.call, busy, timeout=5)
    gevent.sleep(0.05)
    for i in range(5):  # queued behind `busy`: each caller gives up
        with pytest.raises(StoreTimeout):
            gate.call(correction, f"c-{i}", timeout=0.05)
    release.set()
    assert first.get(timeout=5) == "busy"
    give_up = time.monotonic() + 5
    while len(done) < 5 and time.monotonic() < give_up:
        gevent.sleep(0.01)
    assert done == [f"c-{i}" for i in range(5)]
    assert gate.call(correction, "c-5", timeout=5) == "c-5"  # an answer in time is returned


def test_errors_come_back_to_the_caller_and_the_gate_closes_without_dropping_work() -> None:
    gate = StoreGate(_Enforcer(), decision_timeout_s=0.5, background_workers=1)  # type: ignore[arg-type]

    def fails() -> None:
        raise KeyError("unknown call id")

    with pytest.raises(KeyError):
        gate.call(fails, timeout=5)
    done: list[int] = []
    gate._background.submit(time.sleep, 0.2)
    gate._background.submit(done.append, 1)
    gate.close()
    give_up = time.monotonic() + 5
    while not done and time.monotonic() < give_up:
        time.sleep(0.01)
    assert done == [1]


class _Deciding:
    """An enforcer whose decision is stored just as the adapter's deadline is noticed."""

    def __init__(self) -> None:
        self.abandoned: list[str] = []
        self.journaled = 0

    def submit(self, attempt, started, route):  # noqa: ANN001, ANN201
        job: concurrent.futures.Future = concurrent.futures.Future()
        job.set_running_or_notify_cancel()
        return job

    def abandon(self, outcome, pbx) -> None:  # noqa: ANN001
        self.abandoned.append(outcome.call_id)

    def journal_denial(self, attempt, route) -> None:  # noqa: ANN001
        self.journaled += 1


def test_a_decision_stored_when_the_deadline_is_noticed_stands(monkeypatch) -> None:
    """A busy hub can run the deadline's timer before the writer's wake-up: if the decision
    is stored by then, the call gets it (no POLICY_UNAVAILABLE, no correction, no journal)."""
    import callwarden.esl.store_gate as mod

    outcome = Outcome("c" * 32, Decision(allowed=True, reasons=(), purpose="callback"), let_through=True,
                      recording_relpath="acme/2026/03/02/x.wav")

    def stored_then_timer(job):  # noqa: ANN001, ANN202
        job.set_result(outcome)  # the writer answered...
        raise gevent.Timeout()  # ...but the hub ran the timer first

    monkeypatch.setattr(mod, "_result", stored_then_timer)
    enforcer = _Deciding()
    gate = StoreGate(enforcer, decision_timeout_s=0.5)  # type: ignore[arg-type]
    attempt = CallAttempt(tenant="acme", caller="95512", callee="13800138000",
                          at=dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC), pbx="freeswitch")
    result = gate.decide(attempt, time.monotonic())
    assert result.outcome is outcome and result.decision.allowed
    gevent.sleep(0.05)
    assert enforcer.abandoned == [] and enforcer.journaled == 0
    gate.close()


def test_a_timeout_says_how_much_of_the_deadline_went_before_the_decision_was_asked_for() -> None:
    """The call arrived 300 ms before the gate was reached (its first exchange, a busy hub):
    the decision_timeout event says so, so that an operator can tell a slow store from a
    starved adapter. Nothing is answered in time here: the writer never takes the attempt."""
    from structlog.testing import capture_logs

    class _Silent(_Deciding):
        def submit(self, attempt, started, route):  # noqa: ANN001, ANN201
            return concurrent.futures.Future()  # queued, never taken

    enforcer = _Silent()
    gate = StoreGate(enforcer, decision_timeout_s=0.5)  # type: ignore[arg-type]
    attempt = CallAttempt(tenant="acme", caller="95512", callee="13800138000",
                          at=dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC), pbx="freeswitch")
    with capture_logs() as logs:
        result = gate.decide(attempt, time.monotonic() - 0.3)
    assert result.outcome is None and result.decision.codes == ("POLICY_UNAVAILABLE",)
    [event] = [e for e in logs if e["event"] == "decision_timeout"]
    assert 300 <= event["handover_ms"] < 500 and event["timeout_ms"] == 500
    gevent.sleep(0.05)
    assert enforcer.journaled == 1  # never decided: the denial is kept for the store
    gate.close()


class _WaitsForTheHub(_Deciding):
    """An enforcer whose store work (in a native thread, as the decision writer's) finishes
    only once another greenlet has run: if the gate blocked the hub while waiting for it,
    that greenlet could not run before the work gave up waiting (5 s)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__()
        self.outcome = outcome
        self.hub_ran = threading.Event()  # native: this process is not monkey-patched
        self.order: list[str] = []

    def work(self) -> Outcome:
        self.order.append("hub ran" if self.hub_ran.wait(5) else "hub blocked")
        return self.outcome

    def submit(self, attempt, started, route):  # noqa: ANN001, ANN201
        job: concurrent.futures.Future = concurrent.futures.Future()
        job.set_running_or_notify_cancel()
        threading.Thread(target=lambda: job.set_result(self.work())).start()
        return job


@pytest.mark.parametrize("path", ["decide", "call"])
def test_the_hub_runs_other_calls_while_the_store_works(path: str) -> None:
    """The FreeSWITCH adapter serves every call on one hub: waiting for a decision, or for
    other store work, must let the other calls' greenlets run (the burst test counts store
    connections used on the hub; this one covers a blocking wait for a native thread)."""
    outcome = Outcome("c" * 32, Decision(allowed=True, reasons=(), purpose="callback"),
                      let_through=True, recording_relpath="acme/2026/03/02/x.wav")
    enforcer = _WaitsForTheHub(outcome)
    gate = StoreGate(enforcer, decision_timeout_s=10)  # type: ignore[arg-type]
    other = gevent.spawn(enforcer.hub_ran.set)  # another call's greenlet, ready to run
    if path == "decide":
        attempt = CallAttempt(tenant="acme", caller="95512", callee="13800138000",
                              at=dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC), pbx="freeswitch")
        got = gate.decide(attempt, time.monotonic()).outcome
    else:
        got = gate.call(enforcer.work, timeout=10)
    assert got is outcome and other.dead
    assert enforcer.order == ["hub ran"]
    gate.close()
