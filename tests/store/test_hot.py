"""The decision writer's statements on the driver's cursor (store.hot), on SQLite and PostgreSQL:
the same rows, types, defaults and errors as ``Connection.execute``."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import bindparam, create_engine, insert, literal, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from callwarden.store.hot import HotStatements
from callwarden.store.models import Call, Recording

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
CST = dt.timezone(dt.timedelta(hours=8))


def _row(call_id: str, party: str, at: dt.datetime, decision: str = "allow") -> dict:
    return {"call_id": call_id, "tenant_id": None, "direction": "outbound", "pbx": "asterisk",
            "callee": party, "party": party, "attempted_at": at, "decision": decision,
            "reasons": "", "enforced": True, "caller_hidden": False}


@pytest.fixture
def engine(store_url):
    engine = create_engine(store_url)
    yield engine
    engine.dispose()


def test_rows_types_and_in_lists_match_connection_execute(engine) -> None:
    """Inserted with executemany, read back with IN lists of several lengths: the same rows
    as SQLAlchemy's own execution, datetimes aware and in UTC."""
    rows = [_row(f"c{i}", f"1380000000{i}", T0 + dt.timedelta(minutes=i)) for i in range(5)]
    query = (select(literal("x").label("kind"), Call.call_id, Call.attempted_at, Call.caller_hidden)
             .where(Call.party.in_(bindparam("parties", expanding=True)),
                    Call.attempted_at >= bindparam("since"))
             .order_by(Call.call_id))
    hot_insert, hot_query = HotStatements(insert(Call)), HotStatements(query)
    with engine.begin() as conn:
        hot_insert.executemany(conn, rows)
        for parties in (["13800000001"], ["13800000001", "13800000003", "13800000004"], ["none"]):
            params = {"parties": parties, "since": T0.astimezone(CST)}  # any zone in, UTC out
            expected = [tuple(r) for r in conn.execute(query, params)]
            got = hot_query.execute(conn, params)
            assert got == expected
            assert all(r[2].tzinfo is not None and r[2].utcoffset() == dt.timedelta(0) for r in got)
        assert [r[1] for r in hot_query.execute(conn, {"parties": ["13800000002"], "since": T0})] == ["c2"]


def test_insert_fills_column_defaults_and_update_takes_in_lists(engine) -> None:
    """Columns a row leaves out get their defaults (scalar and callable), as with
    ``Connection.execute``; an UPDATE with an IN list changes exactly its rows."""
    with engine.begin() as conn:
        HotStatements(insert(Call)).executemany(conn, [_row("a", "1", T0), _row("b", "2", T0)])
        HotStatements(insert(Recording)).executemany(conn, [
            {"call_id": "a", "tenant_id": None, "spool_path": "/spool/a.wav", "started_at": T0},
            {"call_id": "b", "tenant_id": None, "spool_path": "/spool/b.wav", "started_at": T0}])
        link = HotStatements(update(Call).where(Call.call_id.in_(bindparam("cids", expanding=True)))
                             .values(recording_id=select(Recording.id)
                                     .where(Recording.call_id == Call.call_id).scalar_subquery()))
        link.execute(conn, {"cids": ["a"]})
        recs = conn.execute(select(Recording.call_id, Recording.status, Recording.encrypted,
                                   Recording.legal_hold, Recording.id).order_by(Recording.call_id)).all()
        assert [(r[0], r[1], r[2], r[3]) for r in recs] == [("a", "recording", False, False),
                                                             ("b", "recording", False, False)]
        linked = dict(conn.execute(select(Call.call_id, Call.recording_id)).all())
        assert linked == {"a": recs[0][4], "b": None}


def test_update_returning_gives_typed_values_as_connection_execute(engine) -> None:
    """RETURNING columns of an UPDATE, a correlated subquery among them, come back with their
    types applied (SQLite stores datetimes as text): the same rows as SQLAlchemy's own
    execution, which the end-of-call statement relies on."""
    stamp = update(Call).where(Call.call_id == bindparam("cid")).values(
        ended_at=bindparam("end")).returning(
        Call.call_id, Call.ended_at,
        select(Recording.started_at).where(Recording.id == Call.recording_id).scalar_subquery())
    with engine.begin() as conn:
        HotStatements(insert(Call)).executemany(conn, [_row("a", "1", T0), _row("b", "2", T0)])
        HotStatements(insert(Recording)).execute(conn, {
            "call_id": "a", "tenant_id": None, "spool_path": "/spool/a.wav", "started_at": T0})
        conn.execute(update(Call).where(Call.call_id == "a").values(
            recording_id=select(Recording.id).scalar_subquery()))
        got = HotStatements(stamp).execute(conn, {"cid": "a", "end": T0 + dt.timedelta(minutes=3)})
        assert got == [("a", T0 + dt.timedelta(minutes=3), T0)]
        assert all(isinstance(v, dt.datetime) and v.tzinfo is not None for v in got[0][1:])
        expected = [tuple(r) for r in conn.execute(stamp, {"cid": "b", "end": T0})]
        assert HotStatements(stamp).execute(conn, {"cid": "b", "end": T0}) == expected == [("b", T0, None)]


def test_driver_errors_come_back_as_sqlalchemy_errors_and_roll_back(engine) -> None:
    hot = HotStatements(insert(Call))
    with engine.begin() as conn:
        hot.executemany(conn, [_row("dup", "1", T0)])
    with pytest.raises(IntegrityError), engine.begin() as conn:
        hot.executemany(conn, [_row("new", "2", T0), _row("dup", "3", T0)])
    with engine.connect() as conn:
        assert conn.execute(select(Call.call_id)).scalars().all() == ["dup"]


def test_a_lost_postgresql_connection_is_invalidated(engine) -> None:
    """The writer's connection killed under it: a DBAPIError saying the connection was
    invalidated (the pool then replaces it), as ``Connection.execute`` reports it."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to lose")
    hot = HotStatements(select(Call.call_id))
    with engine.connect() as conn:
        pid = conn.execute(text("select pg_backend_pid()")).scalar_one()
        with engine.connect() as killer:
            killer.execute(text("select pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as caught:
            hot.execute(conn)
        assert caught.value.connection_invalidated
        assert conn.invalidated
    with engine.connect() as conn:  # a new connection works
        assert hot.execute(conn) == []


@pytest.mark.parametrize("libpq_pipeline", [True, False], ids=["pipeline", "no-pipeline"])
def test_a_pipeline_commits_its_writes_together_and_fails_them_together(
        engine, libpq_pipeline, monkeypatch) -> None:
    """hot.pipeline + hot.commit (PostgreSQL: psycopg's pipeline mode, the COMMIT queued behind
    the writes, or plain round trips with a libpq too old for pipelines; SQLite: the
    transaction as usual): the writes land together, or, when one fails, none of them and the
    error is SQLAlchemy's."""
    from callwarden.store import hot as hot_mod

    if not libpq_pipeline:
        monkeypatch.setattr(hot_mod, "_pipeline_supported", lambda: False)
    insert_call = HotStatements(insert(Call))
    with engine.begin() as conn, hot_mod.pipeline(conn):
        if engine.dialect.name == "postgresql" and libpq_pipeline:  # really in pipeline mode
            from psycopg import pq
            assert conn.connection.dbapi_connection.pgconn.pipeline_status != pq.PipelineStatus.OFF
        insert_call.executemany(conn, [_row("p1", "1", T0), _row("p2", "2", T0)])
        HotStatements(update(Call).where(Call.call_id == bindparam("cid"))
                      .values(decision="deny")).execute(conn, {"cid": "p2"})
        hot_mod.commit(conn)
    with engine.connect() as other:
        assert dict(other.execute(select(Call.call_id, Call.decision)).all()) == {"p1": "allow", "p2": "deny"}
    with pytest.raises(IntegrityError), engine.begin() as conn, hot_mod.pipeline(conn):
        insert_call.executemany(conn, [_row("p3", "3", T0)])
        insert_call.executemany(conn, [_row("p1", "4", T0)])  # duplicate key
        hot_mod.commit(conn)
    with engine.connect() as other:
        assert sorted(other.execute(select(Call.call_id)).scalars()) == ["p1", "p2"]


def test_statements_started_together_are_read_in_any_order(engine) -> None:
    """``start`` sends a statement and reads its rows later: two reads started one after the
    other inside a pipeline (PostgreSQL: one round trip for both) each get their own rows,
    whichever is read first, and the second sees what the first locked and read."""
    from callwarden.store import hot as hot_mod

    with engine.begin() as conn:
        HotStatements(insert(Call)).executemany(conn, [_row("s1", "1", T0), _row("s2", "2", T0)])
    first = HotStatements(select(Call.call_id).where(Call.call_id == bindparam("cid"))
                          .with_for_update())
    second = HotStatements(select(Call.call_id, Call.attempted_at).order_by(Call.call_id))
    with engine.begin() as conn, hot_mod.pipeline(conn):
        locked = first.start(conn, {"cid": "s2"})
        everything = second.start(conn)
        assert everything() == [("s1", T0), ("s2", T0)]
        assert locked() == [("s2",)]


def test_a_connection_reuses_its_cursors_and_each_statement_reads_its_own_rows(
        engine, monkeypatch) -> None:
    """A decision batch runs nine statements; making a psycopg cursor for each cost ~15% of
    the statement's own CPU. A connection keeps the cursors of statements that are done (read,
    or, in a pipeline, synced) for the next batch. Reused, a cursor still gives each statement
    its own rows, also after a batch that failed in its pipeline."""
    from callwarden.store import hot as hot_mod

    made: list = []  # the cursors themselves: kept alive, no id is reused
    real = hot_mod._cursor

    def counting(conn):  # noqa: ANN001, ANN202
        cursor = real(conn)
        made.append(cursor)
        return cursor

    monkeypatch.setattr(hot_mod, "_cursor", counting)
    insert_call = HotStatements(insert(Call))
    one = HotStatements(select(Call.call_id).where(Call.call_id == bindparam("cid"))
                        .with_for_update())
    allow = HotStatements(update(Call).where(Call.call_id == bindparam("cid"))
                          .values(decision="allow").returning(Call.call_id, Call.decision))
    listed = HotStatements(select(Call.call_id, Call.decision).order_by(Call.call_id))

    def batch(n: int) -> tuple[list, list, list, list]:
        del made[:]
        with engine.begin() as conn, hot_mod.pipeline(conn):
            hot_mod.begin(conn)
            insert_call.executemany(conn, [_row(f"b{n}", str(n), T0, decision="deny")])
            locked = one.start(conn, {"cid": f"b{n}"})
            everything = listed.start(conn)
            rows = everything()
            allowed = allow.execute(conn, {"cid": f"b{n}"})
            result = (locked(), rows, allowed)
            hot_mod.commit(conn)
        return (*result, list(made))

    locked, rows, allowed, first = batch(1)
    assert (locked, rows, allowed) == ([("b1",)], [("b1", "deny")], [("b1", "allow")])
    locked, rows, allowed, second = batch(2)
    assert (locked, rows, allowed) == ([("b2",)], [("b1", "allow"), ("b2", "deny")],
                                       [("b2", "allow")])
    assert second and all(any(c is f for f in first) for c in second)  # no new cursor

    with pytest.raises(IntegrityError), engine.begin() as conn, hot_mod.pipeline(conn):
        insert_call.executemany(conn, [_row("b1", "9", T0)])  # duplicate key
        hot_mod.commit(conn)
    locked, rows, allowed, _ = batch(3)
    assert (locked, rows, allowed) == ([("b3",)], [("b1", "allow"), ("b2", "allow"),
                                                   ("b3", "deny")], [("b3", "allow")])
