"""The audit log is append-only in the database and any edit breaks the hash chain."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from callwarden.store import audit
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work


def _fill(url: str, n: int = 5):
    factory = make_sessionmaker(make_engine(url))
    for i in range(n):
        with unit_of_work(factory) as s:
            audit.append(s, "tester", "thing.done", f"subject-{i}", {"i": i, "note": "变更"})
    return factory


def _drop_guard(s, dialect: str) -> None:
    """What an attacker with database access would do first."""
    if dialect == "postgresql":
        s.execute(text("DROP TRIGGER audit_log_no_change ON audit_log"))
    else:
        s.execute(text("DROP TRIGGER audit_log_no_update"))
        s.execute(text("DROP TRIGGER audit_log_no_delete"))


def test_a_fresh_chain_verifies(store_url):
    factory = _fill(store_url)
    with factory() as s:
        assert audit.verify_chain(s) == []
        assert s.get(audit.AuditHead, 1).seq == 5


def test_updates_and_deletes_are_refused_by_the_database(store_url):
    factory = _fill(store_url, 2)
    for stmt in ("UPDATE audit_log SET actor='x' WHERE seq=1", "DELETE FROM audit_log WHERE seq=2"):
        with pytest.raises(DBAPIError, match="append-only"), unit_of_work(factory) as s:
            s.execute(text(stmt))


@pytest.mark.parametrize(("stmt", "seq", "problem"), [
    ("UPDATE audit_log SET details='[99]' WHERE seq=3", 3, "entry altered"),
    ("UPDATE audit_log SET actor='someone-else' WHERE seq=2", 2, "entry altered"),
    ("DELETE FROM audit_log WHERE seq=3", 3, "missing"),
    ("DELETE FROM audit_log WHERE seq=5", 5, "entries removed at the end"),
])
def test_tampering_is_detected(store_url, stmt, seq, problem):
    factory = _fill(store_url)
    with unit_of_work(factory) as s:
        _drop_guard(s, s.get_bind().dialect.name)
        s.execute(text(stmt))
    with factory() as s:
        problems = audit.verify_chain(s)
    assert any(p.seq == seq and problem in p.problem for p in problems), problems


def test_rehashing_one_entry_still_breaks_the_next_link(store_url):
    factory = _fill(store_url)
    with unit_of_work(factory) as s:
        _drop_guard(s, s.get_bind().dialect.name)
        e = s.get(audit.AuditEntry, 2)
        e.details = '{"i":42}'
        e.hash = audit.entry_hash(e.prev_hash, e.seq, e.at, e.actor, e.action, e.subject, e.details)
    with factory() as s:
        problems = audit.verify_chain(s)
    assert [(p.seq, p.problem) for p in problems] == [(3, "prev_hash does not link to the previous entry")]


def test_entries_kept_for_the_commit_join_the_chain_then_and_vanish_on_rollback(store_url):
    factory = _fill(store_url, 2)
    with unit_of_work(factory) as s:
        audit.append_at_commit(s, "purger", "cdr_purged", "call-1", {"callee": "13800138000"})
        audit.append_at_commit(s, "purger", "cdr_purged", "call-2")
        assert s.get(audit.AuditHead, 1).seq == 2  # nothing written before the commit
    with pytest.raises(RuntimeError), unit_of_work(factory) as s:
        audit.append_at_commit(s, "purger", "cdr_purged", "call-3")
        raise RuntimeError("the unit of work fails")
    with unit_of_work(factory) as s:  # the same kind of session again: nothing left over
        audit.append(s, "tester", "thing.done", "after")
    with factory() as s:
        assert audit.verify_chain(s) == []
        rows = s.execute(text("SELECT seq, action, subject, details FROM audit_log ORDER BY seq")).all()
    assert [(r.action, r.subject) for r in rows[2:]] == [
        ("cdr_purged", "call-1"), ("cdr_purged", "call-2"), ("thing.done", "after")]
    assert "13800138000" not in str(rows)  # keyed like every other entry


def test_a_long_transaction_holds_the_chain_head_only_for_its_commit(store_url):
    """Decisions on every node lock the head: a purge or detector transaction that is still
    working must not hold it (PostgreSQL: another connection can lock it meanwhile)."""
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite transactions that write are exclusive as a whole")
    factory = _fill(store_url, 1)
    engine = make_engine(store_url)
    with unit_of_work(factory) as s:
        audit.append_at_commit(s, "purger", "cdr_purged", "call-1")
        s.execute(text("SELECT 1"))  # the transaction is open and working
        with engine.connect() as other:
            other.execute(text("SET lock_timeout = '200ms'"))
            seq = other.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")).scalar()
            other.rollback()
        assert seq == 1
    with factory() as s:
        assert s.get(audit.AuditHead, 1).seq == 2
    engine.dispose()


#: Entries whose bodies are awkward to split around the seq or to hash elsewhere than Python:
#: no subject, Chinese, quotes and backslashes, the seq mark's own digits inside strings, a
#: given time and none.
_AWKWARD = [
    audit.NewEntry("pbx:asterisk", "decision", None, {"note": "无主题"}),
    audit.NewEntry("admin", "thing.done", 'quo"te\\back', {"s": '"seq":9007199254740993,'}),
    audit.NewEntry("tester", "thing.done", "9007199254740993", {"n": 9007199254740993},
                   at=dt.datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=dt.UTC)),
    audit.NewEntry("租户", "decision", "subject", {}),
]


def _ready_entries(factory) -> None:
    """The awkward entries through append_ready (linked by the server on PostgreSQL)."""
    with unit_of_work(factory) as s:
        conn = s.connection()
        audit.append_ready(conn, audit.prepare(conn, _AWKWARD))


def test_entries_linked_by_the_server_hash_as_python_does(store_url):
    """PostgreSQL links a decision batch's entries in SQL (sha256 on the server); the chain
    must be the one Python computes and verify_chain checks, between entries Python linked,
    on a new store too (no head yet: the genesis)."""
    factory = make_sessionmaker(make_engine(store_url))
    _ready_entries(factory)  # first of all: the head is made
    with unit_of_work(factory) as s:
        audit.append(s, "tester", "between", "x", {"i": 1})
    _ready_entries(factory)
    with factory() as s:
        assert audit.verify_chain(s) == []
        rows = s.scalars(select(audit.AuditEntry).order_by(audit.AuditEntry.seq)).all()
        assert [r.seq for r in rows] == list(range(1, 10))
        assert rows[0].prev_hash == audit.GENESIS
        for r in rows:  # every hash recomputed by Python, independently of verify_chain
            assert r.hash == audit.entry_hash(r.prev_hash, r.seq, r.at, r.actor, r.action,
                                              r.subject, r.details)
        assert rows[2].at == _AWKWARD[2].at
        head = s.get(audit.AuditHead, 1)
        assert (head.seq, head.hash) == (9, rows[-1].hash)
