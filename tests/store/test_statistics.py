"""PostgreSQL's planner statistics of the calls table (callwarden.store.statistics): what counts
as missing, the warning at start-up, and the ANALYZE that ``db upgrade`` runs."""

from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import text
from structlog.testing import capture_logs

from callwarden.service.enforcer import Enforcer
from callwarden.store.db import make_engine
from callwarden.store.statistics import MIN_ROWS, CallsStatistics, analyze, calls_statistics
from tests.policing.helpers import cdr, insert_calls

AT = dt.datetime(2026, 3, 2, 10, tzinfo=dt.UTC)


def unanalyzed_calls(url: str, rows: int = MIN_ROWS) -> None:
    """``rows`` CDRs in a calls table that nothing analyzes (autovacuum off for it), once
    PostgreSQL's statistics system counts them (backends report when idle or at exit)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE calls SET (autovacuum_enabled = false)"))
        before = calls_statistics(engine)
        assert before is not None
        insert_calls(url, [cdr("acme", f"138{i:08d}", AT - dt.timedelta(minutes=i))
                           for i in range(rows)])
        deadline = time.monotonic() + 10
        while True:
            stats = calls_statistics(engine)
            assert stats is not None
            if stats.rows + stats.changed >= before.rows + before.changed + rows:
                return
            assert time.monotonic() < deadline, stats
            time.sleep(0.1)
    finally:
        engine.dispose()


def test_what_counts_as_missing_statistics() -> None:
    never = CallsStatistics(rows=MIN_ROWS, changed=0, analyzed_at=None, autovacuum=True)
    assert "has never been analyzed" in (never.problem() or "")
    assert CallsStatistics(MIN_ROWS - 1, 0, None, True).problem() is None  # small: any plan will do
    assert CallsStatistics(0, MIN_ROWS, None, True).problem() is not None  # counted as changes only
    fresh = CallsStatistics(100_000, 19_999, AT, autovacuum=False)
    assert fresh.problem() is None  # under a fifth changed since the ANALYZE
    assert "autovacuum is off" in (CallsStatistics(100_000, 20_000, AT, False).problem() or "")
    assert CallsStatistics(100_000, 90_000, AT, autovacuum=True).problem() is None  # it will run


def test_sqlite_has_none_to_read_or_refresh(sqlite_url) -> None:
    engine = make_engine(sqlite_url)
    try:
        assert calls_statistics(engine) is None
        assert analyze(engine) is False
        with engine.connect() as conn:
            assert conn.execute(text(
                "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")).scalar() == 0
    finally:
        engine.dispose()


def test_start_up_warns_of_a_never_analyzed_calls_table_until_it_is_analyzed(
        postgresql_url, make_settings) -> None:
    unanalyzed_calls(postgresql_url)
    enforcer = Enforcer(make_settings(postgresql_url))
    try:
        with capture_logs() as logs:
            enforcer.warm_up("asterisk", AT)
        [warning] = [e for e in logs if e["event"] == "store_statistics_missing"]
        assert warning["log_level"] == "warning"
        assert "has never been analyzed" in warning["detail"] and "ANALYZE calls" in warning["detail"]

        assert analyze(enforcer.engine) is True
        stats = calls_statistics(enforcer.engine)
        assert stats is not None and stats.analyzed_at is not None and stats.rows >= MIN_ROWS
        with enforcer.engine.connect() as conn:  # the planner has the party column's figures now
            assert conn.execute(text(
                "SELECT n_distinct FROM pg_stats WHERE schemaname = current_schema() "
                "AND tablename = 'calls' AND attname = 'party'")).scalar() is not None
        with capture_logs() as logs:
            enforcer.warm_up("asterisk", AT)
        assert not [e for e in logs if e["event"].startswith("store_statistics")]
    finally:
        enforcer.engine.dispose()
