"""PostgreSQL's planner statistics of the store: refreshing them, and telling when they are missing.

The decision reads a callee's recent calls through ``ix_calls_party`` (tenant, party,
direction, time). On a ``calls`` table PostgreSQL has never analyzed (a restored dump: before
PostgreSQL 18 ``pg_restore`` brings no statistics; a bulk load with autovacuum off) the planner
has only default selectivities and picks ``ix_calls_tenant_attempted`` (tenant, time) instead:
every decision batch then reads all of the tenant's calls of the week, and its cost grows with
each call stored (measured: 0.25 ms more per 1,000 calls of the tenant). Autovacuum analyzes a
changing table on its own; these helpers cover the time before it does, and installations
where it is off. SQLite keeps no statistics unless asked, and callwarden never asks: its
planner chooses by the indexes' shape, which already favours ``ix_calls_party``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, text

#: A never-analyzed ``calls`` table smaller than this costs little whatever the plan.
MIN_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class CallsStatistics:
    """What PostgreSQL knows about its ``calls`` table's statistics."""

    rows: int  # live rows, as the statistics system counts them
    changed: int  # rows inserted, updated or deleted since the last ANALYZE
    analyzed_at: dt.datetime | None  # the last ANALYZE, by hand or by autovacuum
    autovacuum: bool  # on for the server and not switched off for the table

    def problem(self, min_rows: int = MIN_ROWS) -> str | None:
        """Why the decisions may be planned without statistics; None when they are not."""
        if self.analyzed_at is None and self.rows + self.changed >= min_rows:
            return (f"calls ({self.rows:,} rows) has never been analyzed: PostgreSQL plans the "
                    "decisions' call-history lookup without statistics and can read a tenant's "
                    "whole week of calls per decision; run `callwarden db upgrade` (it "
                    "analyzes) or ANALYZE calls")
        if not self.autovacuum and self.changed >= max(min_rows, self.rows // 5):
            return (f"autovacuum is off for calls and {self.changed:,} of its rows changed since "
                    "the last ANALYZE: its statistics go stale; turn autovacuum on, or ANALYZE "
                    "calls regularly")
        return None


def analyze(engine: Engine) -> bool:
    """Refresh the planner's statistics of every table of the store (PostgreSQL's ANALYZE, in
    the connection's schema); False on SQLite, where callwarden keeps none."""
    if engine.dialect.name != "postgresql":
        return False
    # Autocommit: each table's ANALYZE commits on its own, holding no lock across the others.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        tables = conn.execute(text(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()"
        )).scalars().all()
        for table in tables:
            conn.execute(text(f"ANALYZE {table}"))
    return True


def calls_statistics(engine: Engine) -> CallsStatistics | None:
    """PostgreSQL's record of the ``calls`` table's statistics; None on SQLite or when the
    table is not there."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT s.n_live_tup, s.n_mod_since_analyze, "
            "       greatest(s.last_analyze, s.last_autoanalyze), "
            "       current_setting('autovacuum') = 'on' "
            "       AND coalesce(NOT ('autovacuum_enabled=false' = ANY(c.reloptions)), true) "
            "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
            "WHERE s.schemaname = current_schema() AND s.relname = 'calls'")).first()
    if row is None:
        return None
    rows, changed, analyzed_at, autovacuum = row
    return CallsStatistics(int(rows or 0), int(changed or 0), analyzed_at, bool(autovacuum))
