"""Two nodes on one PostgreSQL wait for each other only where a frequency limit needs it.

A node's decision batch locks its callees before it reads their history, and the audit head
only to link its entries after deciding. So a batch of another node to the same callee waits
(a limit of 1 admits one call, whichever node takes it), and a batch to other callees goes on
while the first is still deciding (nodes do not take turns for their whole batches; that is
what let two nodes carry only as much as one).

Shown without timing: the first node's batch is stopped inside its deciding (the pure core,
patched to wait for the test), with its transaction open and its locks held.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

import callwarden.service.enforcer as enforcer_module
from callwarden.policy import CallAttempt
from callwarden.service.enforcer import Enforcer, Outcome
from callwarden.store.callee_locks import LOCK_CLASS
from callwarden.store.db import make_engine
from tests.conftest import at, seed

LIMIT_ONE = {"per_day": 1, "per_week": 5}
CONSENTED = "13800138000"  # acme's consented callee in the example registry


def attempt(pbx_call_id: str, callee: str = CONSENTED) -> CallAttempt:
    return CallAttempt(tenant="acme", caller="95512", callee=callee, at=at("2026-03-02 10:00"),
                       trunk="ct-trunk-1", pbx="asterisk", pbx_call_id=pbx_call_id)


@pytest.fixture
def nodes(postgresql_url: str, make_settings) -> Iterator[Callable[[], Enforcer]]:
    seed(postgresql_url)
    made: list[Enforcer] = []

    def build() -> Enforcer:
        e = Enforcer(make_settings(postgresql_url, frequency=LIMIT_ONE,
                                   decision_timeout_ms=20_000))
        made.append(e)
        return e

    yield build
    for e in made:
        e.engine.dispose()


@pytest.fixture
def held(monkeypatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(entered, release): the decision of the attempt with PBX id "held" stops in the core
    until ``release`` is set; ``entered`` says it got there."""
    entered, release = threading.Event(), threading.Event()
    real = enforcer_module.decide

    def deciding(a: CallAttempt, *args: Any, **kwargs: Any) -> Any:
        if a.pbx_call_id == "held":
            entered.set()
            release.wait(30)
        return real(a, *args, **kwargs)

    monkeypatch.setattr(enforcer_module, "decide", deciding)
    yield entered, release
    release.set()


def in_thread(e: Enforcer, a: CallAttempt) -> tuple[threading.Thread, list[Outcome]]:
    out: list[Outcome] = []
    t = threading.Thread(target=lambda: out.append(e.decide(a)), daemon=True)
    t.start()
    return t, out


def waiting_callee_locks(url: str) -> int:
    """Backends waiting for a callee lock (any schema: this test's own wait is what counts)."""
    engine = make_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = :cls"), {"cls": LOCK_CLASS}).scalar_one()
    finally:
        engine.dispose()


def test_a_batch_to_other_callees_is_stored_while_another_node_decides(nodes, held) -> None:
    entered, release = held
    a, b = nodes(), nodes()
    b.decide(attempt("warm", callee="13800138001"))  # b's registry and connection ready
    first, first_out = in_thread(a, attempt("held"))
    assert entered.wait(20)

    other, other_out = in_thread(b, attempt("other", callee="13800138002"))
    other.join(15)  # it waits for nothing of a's: with the head locked from the facts, forever
    assert other_out and other_out[0].call_id, "b waited for a's deciding"
    assert first.is_alive() and not first_out  # a is still deciding meanwhile

    release.set()
    first.join(20)
    assert first_out[0].decision.allowed


def test_a_batch_to_the_same_callee_waits_and_counts_the_first_nodes_call(nodes, held,
                                                                          postgresql_url) -> None:
    entered, release = held
    a, b = nodes(), nodes()
    b.decide(attempt("warm", callee="13800138001"))
    first, first_out = in_thread(a, attempt("held"))
    assert entered.wait(20)

    second, second_out = in_thread(b, attempt("second"))
    deadline = time.monotonic() + 15
    while waiting_callee_locks(postgresql_url) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert waiting_callee_locks(postgresql_url) >= 1, "b read the callee's history unlocked"
    assert not second_out

    release.set()
    first.join(20)
    second.join(20)
    assert first_out[0].decision.allowed
    assert second_out[0].decision.codes == ("FREQUENCY_EXCEEDED",)
