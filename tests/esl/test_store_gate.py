"""The FreeSWITCH adapter's store gate: work handed to its threads is never dropped.

A CDR completion or the correction of a decision the PBX never acted on may wait longer than
its caller (a greenlet with a deadline) is willing to: the caller then gets StoreTimeout, and
the work must still be done when a thread is free. (gevent's own thread pool discards a queued
task whose waiter timed out; the gate must not.)
"""

from __future__ import annotations

import threading
import time

import gevent
import pytest

from callwarden.esl.store_gate import StoreGate, StoreTimeout


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
