"""Store outages: the outbound route answers deny POLICY_UNAVAILABLE within the decision
timeout (fail closed), the event loop keeps serving meanwhile, and nothing decided after the
deadline is left standing as an allow."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time

from sqlalchemy import func, select

from callwarden.agi.store_gate import StoreGate
from callwarden.policy import CallAttempt, Decision, reason
from callwarden.service.enforcer import Enforcer, Outcome
from callwarden.store.models import Call, Recording
from tests.agi.harness import (
    CALLER,
    CAMPAIGN,
    CONSENTED,
    MONDAY_10AM,
    TENANT,
    TRUNK,
    asterisk_settings,
    free_port,
    rig,
    run,
)
from tests.conftest import seed

TIMEOUT_MS = 400
POLICY_UNAVAILABLE_CAUSE = reason("POLICY_UNAVAILABLE").cause_code


async def loop_lag_probe(stop: asyncio.Event, lags: list[float]) -> None:
    """Measures how late the event loop runs a 10 ms timer (a blocked loop shows up here)."""
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - t - 0.01)


async def denied_in_time(r, calls: int = 1) -> None:
    stop, lags = asyncio.Event(), []
    probe = asyncio.ensure_future(loop_lag_probe(stop, lags))
    started = time.monotonic()
    results = await asyncio.gather(*(r.agi_call().run(timeout=10) for _ in range(calls)))
    took = time.monotonic() - started
    stop.set()
    await probe
    for result in results:
        v = result.variables
        assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == ("deny", "POLICY_UNAVAILABLE")
        assert (result.hangup_source, result.hangup_cause) == ("agi", POLICY_UNAVAILABLE_CAUSE)
    assert took < TIMEOUT_MS / 1000 + 0.5, f"denied after {took:.2f} s"
    assert max(lags) < 0.25, "the event loop was blocked by the store"  # a wait would be >= 0.4 s


def test_postgresql_on_a_closed_port(make_settings) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/callwarden"

    async def body() -> None:
        async with rig(make_settings, url, with_ami=False, decision_timeout_ms=TIMEOUT_MS) as r:
            await denied_in_time(r, calls=20)

    run(body())


def test_postgresql_that_accepts_but_never_answers(make_settings) -> None:
    """libpq waits at least 2 s to connect: the adapter's own deadline must cut that short,
    and calls queued behind the stuck ones must be denied, not run later."""

    async def body() -> None:
        held: list[asyncio.StreamWriter] = []

        async def blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)

        server = await asyncio.start_server(blackhole, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/callwarden"
        try:
            async with rig(make_settings, url, with_ami=False, decision_timeout_ms=TIMEOUT_MS,
                           store={"url": url, "pool_size": 2}) as r:
                await denied_in_time(r, calls=10)
        finally:
            for w in held:
                w.close()
            server.close()

    run(body())


def test_locked_sqlite(make_settings, sqlite_url) -> None:
    seed(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")

    async def body() -> None:
        async with rig(make_settings, sqlite_url, with_ami=False, decision_timeout_ms=TIMEOUT_MS) as r:
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
            try:
                await denied_in_time(r, calls=5)
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            result = await r.agi_call().run(timeout=10)  # the store is back: calls go out again
            assert result.variables["CALLWARDEN_DECISION"] == "allow"
            # the writer replays the outage journal just after answering that call
            give_up = time.monotonic() + 5
            while r.enforcer.journal.pending and time.monotonic() < give_up:
                await asyncio.sleep(0.01)
            with r.enforcer.sessions() as s:
                rows = s.execute(select(Call.decision, Call.reasons)).all()
            # no late allows; the five denials reached the store from the outage journal
            assert sorted(rows) == [("allow", "")] + [("deny", "POLICY_UNAVAILABLE")] * 5

    run(body())


def attempt(uniqueid: str) -> CallAttempt:
    return CallAttempt(tenant=TENANT, caller=CALLER, callee=CONSENTED, at=MONDAY_10AM,
                       trunk=TRUNK, campaign=CAMPAIGN, pbx="asterisk", pbx_call_id=uniqueid)


def test_queued_decisions_are_cancelled_at_the_deadline(make_settings, sqlite_url) -> None:
    seed(sqlite_url)
    settings = asterisk_settings(make_settings, sqlite_url, ami_port=None, decision_timeout_ms=300)
    enforcer = Enforcer(settings)
    lock = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)

    async def body() -> None:
        gate = StoreGate(enforcer, decision_timeout_s=0.3)
        lock.execute("BEGIN IMMEDIATE")
        try:
            results = await asyncio.gather(*(gate.decide(attempt(f"1795480861.{n}")) for n in range(4)))
        finally:
            lock.execute("ROLLBACK")
        assert [x.decision.codes for x in results] == [("POLICY_UNAVAILABLE",)] * 4
        assert all(x.outcome is None or not x.let_through for x in results)
        await asyncio.sleep(0.5)  # anything still queued would run now
        gate.close()

    try:
        run(body())
        with enforcer.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Call)) == 0
    finally:
        lock.close()
        enforcer.engine.dispose()


def test_a_decision_committed_after_the_deadline_is_corrected(make_settings, seeded_url) -> None:
    """The commit itself can outlast the deadline (the enforcer checks just before it): when
    such an allow lands after the adapter denied, the CDR is turned into what the PBX did."""
    settings = asterisk_settings(make_settings, seeded_url, ami_port=None)
    enforcer = Enforcer(settings)
    gate = StoreGate(enforcer, decision_timeout_s=0.5)
    try:
        outcome = enforcer.decide_since(attempt("1795480861.99"), time.monotonic())
        assert outcome.decision.allowed
        late: concurrent.futures.Future = concurrent.futures.Future()
        late.set_result(outcome)
        gate._late_decision("asterisk", late)  # what the gate runs when a timed-out decision completes
        deadline = time.monotonic() + 5
        while True:
            with enforcer.sessions() as s:
                call = s.get(Call, outcome.call_id)
                rec = s.get(Recording, call.recording_id)
            if call.decision == "deny" or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert (call.decision, call.reasons, rec.status) == ("deny", "POLICY_UNAVAILABLE", "failed")
    finally:
        gate.close()
        enforcer.engine.dispose()


class _StoredAtOnce:
    """An enforcer whose decision is already stored when the adapter first looks."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome, self.abandoned, self.journaled = outcome, [], 0

    def submit(self, attempt, started, route):  # noqa: ANN001, ANN201
        job: concurrent.futures.Future = concurrent.futures.Future()
        job.set_running_or_notify_cancel()
        job.set_result(self.outcome)
        return job

    def abandon(self, outcome, pbx) -> None:  # noqa: ANN001
        self.abandoned.append(outcome.call_id)

    def journal_denial(self, attempt, route) -> None:  # noqa: ANN001
        self.journaled += 1


def test_a_decision_stored_when_the_deadline_is_noticed_stands() -> None:
    """The loop can run the deadline before the writer's wake-up (here: a deadline already
    due): a decision stored by then is the call's answer, with nothing to correct."""
    outcome = Outcome("d" * 32, Decision(allowed=True, reasons=(), purpose="callback"),
                      let_through=True, recording_relpath="acme/2026/03/02/x.wav")
    enforcer = _StoredAtOnce(outcome)

    async def body() -> None:
        gate = StoreGate(enforcer, decision_timeout_s=0.0)  # type: ignore[arg-type]
        result = await gate.decide(attempt("1795480861.7"))
        assert result.outcome is outcome and result.decision.allowed
        await asyncio.sleep(0.05)
        gate.close()

    run(body())
    assert enforcer.abandoned == [] and enforcer.journaled == 0
