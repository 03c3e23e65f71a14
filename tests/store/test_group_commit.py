"""Group commit and the registry snapshot, on SQLite and PostgreSQL: batches stay exact.

Simultaneous decisions are stored together by one writer thread per enforcer; an enforcer is
one node. These tests hold the properties that batching and caching must not lose: frequency
limits counted across a batch and across nodes, one verifiable audit chain, a registry change
(suspension) seen by every node's next decision, and an abandoned attempt never stored.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text

from callwarden.policy import CallAttempt
from callwarden.service.enforcer import Enforcer
from callwarden.service.group_commit import Pending
from callwarden.store.audit import verify_chain
from callwarden.store.db import make_sessionmaker, unit_of_work
from callwarden.store.models import AuditEntry, Call, Recording
from callwarden.store.registry import Registry
from tests.conftest import at


def attempt(**kw) -> CallAttempt:
    base = dict(tenant="acme", caller="95512", callee="13800138000", at=at("2026-03-02 10:00"),
                trunk="ct-trunk-1", pbx="asterisk")
    base.update(kw)
    return CallAttempt(**base)


def decide_together(enforcers: list[Enforcer], attempts: list[CallAttempt]) -> list:
    """Release every decision at the same instant (one thread each, behind a barrier); the
    enforcers take the attempts in turn."""
    barrier = threading.Barrier(len(attempts))
    outcomes: list = [None] * len(attempts)

    def one(i: int) -> None:
        barrier.wait()
        outcomes[i] = enforcers[i % len(enforcers)].decide(attempts[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(attempts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


@pytest.fixture
def node(seeded_url, make_settings):
    """Enforcers ("nodes") on the one seeded store, each with its own engine and writer."""
    made: list[Enforcer] = []

    def build(**overrides) -> Enforcer:
        e = Enforcer(make_settings(seeded_url, **overrides))
        made.append(e)
        return e

    yield build
    for e in made:
        e.engine.dispose()


def test_simultaneous_decisions_share_transactions_and_one_verifiable_chain(node):
    e = node(frequency={"per_day": 100, "per_week": 700})
    callees = [f"1380013{i:04d}" for i in range(40)]
    outcomes = decide_together([e], [attempt(callee=c, pbx_call_id=f"u-{i}")
                                     for i, c in enumerate(callees)])
    assert len({o.call_id for o in outcomes}) == 40
    assert max(e.writer.batch_sizes) > 1, "40 simultaneous decisions were never batched"
    assert sum(e.writer.batch_sizes) == 40
    with e.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == 40
        assert s.scalar(select(func.count()).select_from(AuditEntry)
                        .where(AuditEntry.action == "decision")) == 40
        assert verify_chain(s) == []
        for o in outcomes:  # each answer is what was stored for that call
            call = s.get(Call, o.call_id)
            assert (call.decision, call.reason_codes) == (o.decision.decision, list(o.decision.codes))
            if o.let_through:
                rec = s.get(Recording, call.recording_id)
                assert rec.call_id == o.call_id and o.recording_relpath.endswith(o.call_id + ".wav")


def test_a_limit_of_one_admits_one_of_many_simultaneous_calls_to_a_callee(node):
    e = node(frequency={"per_day": 1, "per_week": 5})
    outcomes = decide_together([e], [attempt(pbx_call_id=f"u-{i}") for i in range(12)])
    allowed = [o for o in outcomes if o.decision.allowed]
    assert len(allowed) == 1
    assert all(o.decision.codes == ("FREQUENCY_EXCEEDED",) for o in outcomes if o not in allowed)


def test_a_limit_of_one_holds_across_two_nodes_on_one_store(node):
    a = node(frequency={"per_day": 1, "per_week": 5})
    b = node(frequency={"per_day": 1, "per_week": 5})
    for _ in range(3):  # several rounds: the race must never let two through
        callee = f"1390013{time.monotonic_ns() % 10000:04d}"
        with unit_of_work(a.sessions) as s:  # a consent for a fresh callee each round
            Registry(s, "test").import_document({"consents": [{
                "tenant": "acme", "callee": callee, "scope": ["callback"],
                "obtained_at": "2026-01-05T10:00:00+08:00",
                "evidence": {"kind": "recording", "ref": "R-1"}}]})
        outcomes = decide_together([a, b], [attempt(callee=callee, pbx_call_id=f"{callee}-{i}")
                                            for i in range(10)])
        assert sum(o.decision.allowed for o in outcomes) == 1, [o.decision.codes for o in outcomes]


def test_a_suspension_reaches_every_node_on_its_next_decision(node):
    a, b = node(), node()
    assert a.decide(attempt(callee="13800138000")).decision.allowed  # both have the registry
    assert b.check(attempt(callee="13800138000")).allowed
    loads = (a.registry.loads, b.registry.loads)
    for _ in range(5):  # unchanged registry: served from memory, not reloaded
        a.check(attempt())
        b.check(attempt())
    assert (a.registry.loads, b.registry.loads) == loads

    with unit_of_work(make_sessionmaker(a.engine)) as s:  # the CLI's / detector's path
        Registry(s, "admin").set_tenant_status("acme", "suspended", "complaints")
    t0 = time.monotonic()
    assert "TENANT_SUSPENDED" in b.decide(attempt(pbx_call_id="after")).decision.codes
    assert "TENANT_SUSPENDED" in a.check(attempt()).codes
    assert time.monotonic() - t0 < 1.0

    with a.engine.begin() as c:  # SQL by hand moves the version too (database triggers)
        c.execute(text("UPDATE tenants SET status = 'active' WHERE id = 'acme'"))
    assert "TENANT_SUSPENDED" not in b.check(attempt()).codes


def test_registry_writes_of_every_kind_move_the_version(node):
    e = node()

    def version() -> int:
        with e.engine.connect() as c:
            return c.execute(text("SELECT version FROM registry_version")).scalar_one()

    before = version()
    with unit_of_work(e.sessions) as s:
        Registry(s, "test").import_document({
            "tenants": [{"id": "beta", "name": "Beta", "status": "active",
                         "outbound_commitment": "CMT-9"}],
            "numbers": [{"number": "95599", "tenant": "beta", "carrier": "China Unicom",
                         "purpose": "service", "outbound": True, "filing": "BA-9",
                         "filed_on": "2026-01-10"}]})
    after_import = version()
    assert after_import > before
    for sql in ("UPDATE trunks SET verified = verified", "UPDATE campaigns SET status = status",
                "DELETE FROM access_numbers WHERE number = '95599'"):
        with e.engine.begin() as c:
            c.execute(text(sql))
        assert version() > after_import, sql
        after_import = version()
    # the new tenant's number is gone: a decision sees that, not a stale snapshot
    codes = e.check(attempt(tenant="beta", caller="95599")).codes
    assert "CID_NOT_REGISTERED" in codes


def test_an_attempt_withdrawn_before_the_writer_takes_it_is_never_stored(node):
    e = node()
    gate = threading.Event()
    real = e.writer._run_batch

    def held(batch, corrections):  # the writer is busy with an earlier batch
        gate.wait(5)
        real(batch, corrections)

    e.writer._run_batch = held
    first = e.submit(attempt(pbx_call_id="first"), time.monotonic())
    time.sleep(0.05)
    withdrawn = e.submit(attempt(pbx_call_id="withdrawn"), time.monotonic())
    assert withdrawn.cancel()
    gate.set()
    assert first.result(5).decision.allowed
    time.sleep(0.1)
    with e.sessions() as s:
        ids = set(s.scalars(select(Call.pbx_call_id)))
    assert ids == {"first"}


def test_a_batch_the_store_refuses_fails_every_attempt_closed(node, monkeypatch):
    e = node()
    from sqlalchemy.exc import OperationalError

    import callwarden.service.enforcer as mod

    class Broken(mod.BatchFacts):
        def __init__(self, *a, **kw):
            raise OperationalError("SELECT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(mod, "BatchFacts", Broken)
    batch = [Pending(attempt(pbx_call_id=f"x{i}"), time.monotonic(), time.monotonic() + 5,
                     "outbound", f"{i:032x}") for i in range(3)]
    for p in batch:
        assert p.future.set_running_or_notify_cancel()
    e._store_batch(batch)
    assert [p.future.result(1).decision.codes for p in batch] == [("POLICY_UNAVAILABLE",)] * 3
    kept = e.journal.path.read_text().splitlines()  # kept for the store, as any outage denial
    assert len(kept) == 3 and e.journal.pending


def test_sqlite_checkpoints_run_beside_the_decision_writer_not_in_its_commits(node, store_url):
    """SQLite: the enforcer's connections never checkpoint the WAL on commit (one commit in
    ~100 took 4-6 ms doing it); a thread of its own checkpoints after commits instead, so the
    log is still copied back. PostgreSQL: nothing of the kind."""
    e = node()
    if e.engine.dialect.name != "sqlite":
        assert e.checkpoints is None
        return
    assert e.checkpoints is not None
    e.checkpoints._every_s = 0.0  # after every batch that stored something
    for i in range(20):
        e.decide(attempt(callee=f"138001{i:05d}", pbx_call_id=f"ck-{i}"))
    with e.engine.connect() as conn:  # the enforcer's own connections
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    deadline = time.monotonic() + 5
    while e.checkpoints.done == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert e.checkpoints.done >= 1
    e.checkpoints.settle(5)  # the last commit's may still run: two at once, one says busy
    e.checkpoints.run()  # once more, now that the writer is idle: the whole log is copied back
    raw = e.engine.raw_connection()
    try:
        busy, frames, copied = raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        raw.close()
    assert busy == 0 and frames == copied


def test_the_writer_keeps_one_connection_while_calls_come_and_returns_it_in_a_pause(node):
    """Back-to-back batches run on one connection the writer keeps (no pool round trip per
    batch); a pause in the calls returns it to the pool, before the thread itself ends."""
    e = node()
    e.writer.pause_s, e.writer.idle_s = 0.3, 30
    seen = set()
    for i in range(5):
        e.decide(attempt(callee=f"138002{i:05d}", pbx_call_id=f"keep-{i}"))
        assert e._writer_conn is not None
        seen.add(id(e._writer_conn.connection.driver_connection))
    assert len(seen) == 1
    assert e.engine.pool.checkedout() == 1  # the writer's, held between batches
    deadline = time.monotonic() + 5
    while e._writer_conn is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert e._writer_conn is None and e.engine.pool.checkedout() == 0
    assert e.writer._thread is not None, "released in the pause, not at the thread's end"
    e.decide(attempt(callee="13800299999", pbx_call_id="keep-again"))  # and takes one again
    assert e._writer_conn is not None


def _closed(driver_connection) -> bool:  # noqa: ANN001
    if hasattr(driver_connection, "closed"):  # psycopg
        return bool(driver_connection.closed)
    try:  # sqlite3
        driver_connection.execute("SELECT 1")
    except Exception:
        return True
    return False


def test_a_kept_connection_outliving_its_engines_pool_is_closed_not_returned(node):
    """engine.dispose() does not touch checked-out connections; the writer's, released after
    it, is closed rather than parked in the discarded pool (where it would stay open)."""
    e = node()
    e.writer.pause_s = 0.2
    e.decide(attempt(pbx_call_id="kept"))
    raw = e._writer_conn.connection.driver_connection
    e.engine.dispose()
    deadline = time.monotonic() + 5
    while e._writer_conn is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert e._writer_conn is None and _closed(raw)


def test_a_batch_that_breaks_the_kept_connection_fails_closed_and_the_next_reconnects(node):
    """A connection lost between batches fails the batch on it (POLICY_UNAVAILABLE, nothing
    half-stored), is dropped, and the next batch decides on a new one."""
    e = node(frequency={"per_day": 100, "per_week": 700})
    first = e.decide(attempt(pbx_call_id="before"))
    assert first.decision.allowed
    broken = e._writer_conn
    broken.connection.driver_connection.close()  # the server went away underneath it
    denied = e.decide(attempt(pbx_call_id="during"))
    assert denied.decision.codes == ("POLICY_UNAVAILABLE",)
    after = e.decide(attempt(pbx_call_id="after"))
    assert after.decision.allowed and e._writer_conn is not broken
    # The writer replays the journalled denial once "after" is answered: wait for it (the
    # store is dropped when the test ends, and dropping it under the replay deadlocks).
    deadline = time.monotonic() + 10
    while e.journal.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    with e.sessions() as s:
        rows = {c.pbx_call_id: (c.decision, c.reasons) for c in s.scalars(
            select(Call).where(Call.pbx_call_id.in_(["before", "during", "after"])))}
    assert rows["before"][0] == rows["after"][0] == "allow"
    # the failed one is kept only as the denial the PBX got (the outage journal, replayed)
    assert rows["during"] == ("deny", "POLICY_UNAVAILABLE")


def _allowed_then_held(e: Enforcer, gate: threading.Event, seen: list) -> object:
    """One stored allow; afterwards the writer waits for ``gate`` before each batch and notes
    what each batch carried: (decisions, corrections)."""
    first = e.decide(attempt(pbx_call_id="late"))
    assert first.decision.allowed and first.recording_relpath
    real = e.writer._run_batch

    def held(batch, corrections):
        gate.wait(5)
        seen.append((len(batch), [c.call_id for c in corrections]))
        real(batch, corrections)

    e.writer._run_batch = held
    return first


def test_a_decision_given_up_on_is_corrected_in_the_writers_next_transaction(node):
    """The adapter denied a call whose allow then committed: the writer turns the record into
    a POLICY_UNAVAILABLE deny in the same transaction as the next decisions, not in one of
    its own that would compete for the audit head."""
    e = node(frequency={"per_day": 100, "per_week": 700})
    gate, seen = threading.Event(), []
    late = _allowed_then_held(e, gate, seen)
    e.abandon(late, "asterisk")
    nxt = e.submit(attempt(pbx_call_id="next"), time.monotonic())
    gate.set()
    assert nxt.result(5).decision.allowed
    assert seen[0] == (1, [late.call_id]) or seen[:2] == [(0, [late.call_id]), (1, [])]
    with e.sessions() as s:
        call = s.get(Call, late.call_id)
        rec = s.get(Recording, call.recording_id)
        assert (call.decision, call.reasons) == ("deny", "POLICY_UNAVAILABLE")
        assert (rec.status, rec.error) == ("failed", "decision abandoned: the call was denied")
        assert s.get(Call, nxt.result().call_id).decision == "allow"
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(2)).all()[::-1]
        assert [(x.action, x.subject) for x in entries] == [
            ("decision_abandoned", late.call_id), ("decision", nxt.result().call_id)]
        assert entries[0].actor == "pbx:asterisk" and '"POLICY_UNAVAILABLE"' in entries[0].details
        if seen[0][0] == 1:  # one batch: one transaction, one time for both entries
            assert entries[0].at == entries[1].at
        assert verify_chain(s) == []


def test_a_correction_outlives_a_failed_batch_and_is_given_up_after_a_few(node, monkeypatch):
    from sqlalchemy.exc import OperationalError
    from structlog.testing import capture_logs

    import callwarden.service.enforcer as mod

    e = node(frequency={"per_day": 100, "per_week": 700})
    late = e.decide(attempt(pbx_call_id="late"))
    real, failures = mod._correct, [1]

    def flaky(conn, corrections):
        if failures[0] > 0:
            failures[0] -= 1
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        return real(conn, corrections)

    monkeypatch.setattr(mod, "_correct", flaky)
    e.abandon(late, "asterisk")  # fails once, then goes through with the next try

    def decision() -> str:
        with e.sessions() as s:
            return s.get(Call, late.call_id).decision

    deadline = time.monotonic() + 5
    while decision() != "deny" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert decision() == "deny" and failures == [0]

    other = e.decide(attempt(pbx_call_id="other"))
    assert late.decision.allowed and other.decision.allowed
    failures[0] = mod.CORRECTION_TRIES  # never goes through
    with capture_logs() as logs:
        e.abandon(other, "asterisk")
        deadline = time.monotonic() + 5
        while not any(x["event"] == "decision_abandon_failed" for x in logs):
            assert time.monotonic() < deadline, "the correction was never given up"
            time.sleep(0.02)
    assert failures == [0] and decision() == "deny"
    with e.sessions() as s:
        assert s.get(Call, other.call_id).decision == "allow"  # what could not be corrected
        assert verify_chain(s) == []


def test_the_decision_event_says_where_its_time_went(node):
    """``latency_ms`` (arrival to answer) is split into the adapter's part before the hand-over,
    the wait for the writer and the store's part: here the call reached the enforcer 50 ms
    after it arrived, and the writer was busy with an earlier batch for 150 ms."""
    from structlog.testing import capture_logs

    e = node()
    gate = threading.Event()
    real = e.writer._run_batch

    def held(batch, corrections):
        gate.wait(5)
        real(batch, corrections)

    with capture_logs() as logs:
        e.decide(attempt(pbx_call_id="warm"))  # the writer's first connection and reads
        e.writer._run_batch = held
        first = e.submit(attempt(pbx_call_id="first"), time.monotonic())
        time.sleep(0.02)  # the writer has taken "first" and waits at the gate
        later = e.submit(attempt(pbx_call_id="later"), time.monotonic() - 0.05)
        threading.Timer(0.15, gate.set).start()
        # (the decisions themselves do not matter here: one callee, so a frequency limit may deny)
        assert "POLICY_UNAVAILABLE" not in first.result(5).decision.codes + later.result(5).decision.codes
        time.sleep(0.05)  # the log line follows the answer
    [event] = [x for x in logs if x["event"] == "decision" and x["pbx_call_id"] == "later"]
    parts = event["handover_ms"] + event["queued_ms"] + event["store_ms"]
    assert abs(parts - event["latency_ms"]) < 0.1, event
    assert 50 <= event["handover_ms"] < 60, event
    assert event["queued_ms"] >= 100 and event["store_ms"] >= 0, event
