"""Benchmark: one policing detector pass over 1,000 tenants and 5,000,000 CDRs on PostgreSQL,
beside a single aggregate query over the same rows, in the same run.

Loads a dedicated schema (``bench_policing`` by default; dropped and rebuilt) server-side with
``generate_series`` (no rows cross the wire), in time order as a PBX writes them: every CDR falls
inside the detector's traffic window, so the pass has to read all of them (the worst case:
``--window-minutes``, default 24 h).
Most tenants are customer-service centres calling back a pool of customers who called in;
``--telemarketers`` of them dial sequential lists, with half their attempts denied NO_CONSENT.

Then, ``--rounds`` times, in this order:

  aggregate     one GROUP BY tenant query over the window's outbound CDRs (count, answered,
                denials, distinct callees), with the pass's work_mem: the floor any per-tenant
                detector must pay
  assess        the detector's measurement + scoring + registry findings (``tenants risk``)
  pass          a full detector pass under the advisory lock (``police --once``); the first
                round raises the alerts and suspends the telemarketers, later rounds find
                nothing new
  pass@60min    the same pass with the default 60-minute traffic window

and prints the median of each, plus where the pass's SQL time goes (per statement kind).
Nothing asserts on time: this prints figures only.

    PYTHONPATH=. .venv/bin/python bench/bench_policing.py [--rows 5000000] [--tenants 1000]
        [--telemarketers 20] [--rounds 3] [--window-minutes 1440]
        [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--schema bench_policing] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from callwarden import log as cwlog
from callwarden.audit.pseudonym import ensure_store_key
from callwarden.config import parse_settings
from callwarden.policing.runner import Detector
from callwarden.store.db import make_engine
from callwarden.store.migrate import upgrade

# The audit key of the bench's throw-away stores (callwarden db upgrade would create it).
os.environ.setdefault("CALLWARDEN_AUDIT_KEY_FILE",
                      str(Path(tempfile.gettempdir()) / "callwarden-bench-audit.key"))


def load(engine: Engine, rows: int, tenants: int, telemarketers: int, window: dt.timedelta,
         now: dt.datetime) -> dict[str, float]:
    """Tenants, numbers, trunks, proofs, consents, complaints and ``rows`` CDRs."""
    took: dict[str, float] = {}
    with engine.begin() as c:
        t = time.perf_counter()
        c.execute(text("""
            INSERT INTO tenants (id, name, status, outbound_commitment, created_at, updated_at)
            SELECT 't' || lpad(i::text, 4, '0'), 'Tenant ' || i, 'active', 'CMT-' || i, :now, :now
            FROM generate_series(0, :n - 1) i"""), {"n": tenants, "now": now})
        c.execute(text("""
            INSERT INTO access_numbers (number, as_filed, tenant_id, carrier, purpose, inbound,
                                        outbound, filing_ref, filed_on, active, created_at, updated_at,
                                        filing_changed_at)
            SELECT n, n, 't' || lpad(i::text, 4, '0'), 'China Telecom', 'customer service', true, true,
                   'BA-' || i, DATE '2026-01-10', true, :now, :now,
                   CASE WHEN i % 100 = 7 THEN :now - interval '40 days' END
            FROM (SELECT i, (4000000000 + i)::text AS n FROM generate_series(0, :n - 1) i) x"""),
            {"n": tenants, "now": now})
        c.execute(text("""
            INSERT INTO trunks (name, tenant_id, carrier, verified, proof_ref, created_at, updated_at)
            SELECT 'trunk-' || i, 't' || lpad(i::text, 4, '0'), 'China Telecom', true,
                   CASE WHEN i % 50 = 3 THEN NULL ELSE 'TRK-' || i END, :now, :now
            FROM generate_series(0, :n - 1) i"""), {"n": tenants, "now": now})
        c.execute(text("""
            INSERT INTO proof_documents (tenant_id, subject_kind, subject, ref, added_at)
            SELECT 't' || lpad(i::text, 4, '0'), 'number', (4000000000 + i)::text, 'CERT-' || i, :now
            FROM generate_series(0, :n - 1) i WHERE i % 25 <> 1"""), {"n": tenants, "now": now})
        took["registry"] = time.perf_counter() - t

        # Consents for a tenth of each customer pool; complaints against a few tenants.
        t = time.perf_counter()
        c.execute(text("""
            INSERT INTO consents (tenant_id, callee, scopes, obtained_at, evidence_kind, created_at)
            SELECT 't' || lpad((i % :n)::text, 4, '0'),
                   (13000000000 + (i % :n) * 100000 + (i / :n) * 37)::text,
                   'callback,consultation', :now - interval '60 days', 'contract', :now
            FROM generate_series(0, :n * 200 - 1) i"""), {"n": tenants, "now": now})
        c.execute(text("""
            INSERT INTO complaints (tenant_id, callee, received_at, source, created_at)
            SELECT 't' || lpad((i % 37)::text, 4, '0'), (13900000000 + i)::text,
                   :now - (i % 600) * interval '1 hour', '12321', :now
            FROM generate_series(0, 2999) i"""), {"now": now})
        took["consents+complaints"] = time.perf_counter() - t

    # CDRs, in chunks (progress, and bounded transactions). Tenants 0..telemarketers-1 dial
    # sequential lists; the others call back a pool of 2,000 customers each, 10% inbound.
    # The secondary indexes are dropped for the load and built afterwards (much faster).
    with engine.begin() as c:
        indexes = c.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            "AND tablename = 'calls' AND indexname <> 'calls_pkey'")).all()
        for name, _ in indexes:
            c.execute(text(f'DROP INDEX "{name}"'))
    chunk = 1_000_000
    t = time.perf_counter()
    for lo in range(0, rows, chunk):
        hi = min(rows, lo + chunk)
        with engine.begin() as c:
            c.execute(text("""
                INSERT INTO calls (call_id, tenant_id, direction, pbx, pbx_call_id, caller, callee,
                                   party, caller_hidden, attempted_at, answered_at, ended_at, billsec,
                                   disposition, decision, reasons, enforced, purpose, consent_basis)
                SELECT lpad(to_hex(g), 32, '0'), tenant, direction, 'asterisk', g::text,
                       CASE WHEN direction = 'outbound' THEN access ELSE party END,
                       CASE WHEN direction = 'outbound' THEN party ELSE access END,
                       party, false, at,
                       CASE WHEN answered THEN at + interval '4 seconds' END,
                       at + (CASE WHEN answered THEN billsec + 4 ELSE 25 END) * interval '1 second',
                       CASE WHEN decision = 'allow' THEN (CASE WHEN answered THEN billsec ELSE 0 END) END,
                       CASE WHEN decision = 'allow' THEN (CASE WHEN answered THEN 'ANSWERED' ELSE 'NO ANSWER' END)
                            ELSE 'FAILED' END,
                       decision, reasons, true, 'callback',
                       CASE WHEN decision = 'allow' THEN 'consent' END
                FROM (
                  SELECT g, tenant, access, at, direction, party, decision, reasons,
                         decision = 'allow' AND r2 < CASE WHEN tm THEN 0.10 ELSE 0.75 END AS answered,
                         CASE WHEN tm THEN 8 + (r3 * 5)::int ELSE 30 + (r3 * 400)::int END AS billsec
                  FROM (
                    SELECT g, ti, tm, 't' || lpad(ti::text, 4, '0') AS tenant,
                           (4000000000 + ti)::text AS access,
                           :now - (:window_s * (1 - g::float8 / :rows) + random() * 30) * interval '1 second' AS at,
                           CASE WHEN NOT tm AND (g / :tenants) % 10 = 0 THEN 'inbound' ELSE 'outbound' END AS direction,
                           CASE WHEN tm THEN (13800000000 + ti * 1000000 + g / :tenants)::text
                                ELSE (13000000000 + ti * 100000 + (random() * 2000)::int * 37)::text
                           END AS party,
                           CASE WHEN NOT tm AND (g / :tenants) % 10 = 0 THEN 'allow'
                                WHEN r1 < CASE WHEN tm THEN 0.5 ELSE 0.01 END THEN 'deny'
                                ELSE 'allow' END AS decision,
                           CASE WHEN NOT tm AND (g / :tenants) % 10 = 0 THEN ''
                                WHEN r1 < CASE WHEN tm THEN 0.5 ELSE 0.01 END THEN 'NO_CONSENT'
                                ELSE '' END AS reasons,
                           r2, r3
                    FROM (SELECT g, g % :tenants AS ti, (g % :tenants) < :tm AS tm,
                                 random() AS r1, random() AS r2, random() AS r3
                          FROM generate_series(:lo, :hi - 1) g) base
                  ) shaped
                ) final"""),
                {"lo": lo, "hi": hi, "tenants": tenants, "tm": telemarketers, "now": now,
                 "rows": rows, "window_s": window.total_seconds() - 60})
        print(f"  loaded {hi:>10,} CDRs  ({time.perf_counter() - t:6.1f} s)", flush=True)
    took["cdrs"] = time.perf_counter() - t
    t = time.perf_counter()
    with engine.begin() as c:
        c.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        for _, definition in indexes:
            c.execute(text(definition))
    took[f"{len(indexes)} indexes"] = time.perf_counter() - t
    t = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
    took["vacuum analyze"] = time.perf_counter() - t
    return took


AGGREGATE = text("""
    SELECT tenant_id, count(*) AS attempts,
           sum(CASE WHEN answered_at IS NOT NULL THEN 1 ELSE 0 END) AS answered,
           sum(CASE WHEN reasons LIKE '%NO_CONSENT%' THEN 1 ELSE 0 END) AS no_consent,
           count(DISTINCT party) AS callees
    FROM calls
    WHERE direction = 'outbound' AND tenant_id IS NOT NULL
      AND attempted_at >= :start AND attempted_at <= :now
    GROUP BY tenant_id""")


class SqlTimer:
    """Sums the time of each SQL statement kind the engine runs (first line, trimmed)."""

    def __init__(self, engine: Engine):
        self.totals: collections.Counter[str] = collections.Counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.on = False

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            conn.info["t0"] = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            if self.on:
                key = _kind(statement)
                self.totals[key] += time.perf_counter() - conn.info.pop("t0", time.perf_counter())
                self.counts[key] += 1


def _kind(sql: str) -> str:
    s = " ".join(sql.split())
    for needle, name in (
        ("pg_try_advisory_xact_lock", "advisory lock"),
        ("WITH callees AS", "callee figures (distinct, new, runs)"),
        ("NOT (EXISTS", "evidence samples"),
        ("coalesce(sum(CASE WHEN (calls.ended_at", "traffic aggregate"),
        ("coalesce(sum(CASE WHEN (calls.attempted_at", "edge-of-window aggregate"),
        ("FROM complaints", "complaints"),
        ("FROM audit_log", "audit (epochs / appends)"),
        ("access_numbers", "filing/proof findings"),
        ("trunks", "filing/proof findings"),
        ("INSERT INTO alerts", "alerts"),
        ("FROM alerts", "alerts"),
        ("SELECT calls.call_id", "evidence samples"),
        ("SELECT DISTINCT calls.party", "evidence samples"),
    ):
        if needle in s:
            return name
    return s[:60]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--schema", default="bench_policing")
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--telemarketers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window-minutes", type=int, default=1440)
    ap.add_argument("--keep", action="store_true", help="Keep the schema afterwards (for EXPLAIN).")
    args = ap.parse_args()
    cwlog.configure("console", "error")

    admin = create_engine(args.url)
    url = f"{args.url}?options=-csearch_path%3D{args.schema}"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    window = dt.timedelta(minutes=args.window_minutes)
    with admin.connect() as c:
        version = c.execute(text("SHOW server_version")).scalar()
    print(f"PostgreSQL {version}; Python {platform.python_version()}; {platform.machine()}")
    print(f"schema {args.schema}: {args.tenants:,} tenants ({args.telemarketers} telemarketers), "
          f"{args.rows:,} CDRs within the last {args.window_minutes} min")
    engine = make_engine(url)
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE'))
        c.execute(text(f'CREATE SCHEMA "{args.schema}"'))
    upgrade(engine)
    ensure_store_key(parse_settings({"store": {"url": url}}), engine)
    print("loading ...", flush=True)
    took = load(engine, args.rows, args.tenants, args.telemarketers, window, now)
    print("load: " + ", ".join(f"{k} {v:.1f} s" for k, v in took.items()))
    with engine.connect() as c:
        size = c.execute(text("SELECT pg_size_pretty(pg_total_relation_size('calls'))")).scalar()
    print(f"calls table with indexes: {size}\n")

    settings = parse_settings({"store": {"url": url}, "logging": {"level": "error"},
                               "policing": {"window_minutes": args.window_minutes}})
    default_window = parse_settings({"store": {"url": url}, "logging": {"level": "error"}})
    pass_engine = make_engine(url, pool_size=2)
    timer = SqlTimer(pass_engine)
    detector = Detector(settings, engine=pass_engine)
    detector60 = Detector(default_window, engine=pass_engine)
    start = now - window
    rows: dict[str, list[float]] = collections.defaultdict(list)
    first_pass = None
    for i in range(args.rounds):
        with engine.begin() as c:  # the same work_mem the detector gives its pass
            c.execute(text(f"SET LOCAL work_mem = '{settings.policing.work_mem_mb}MB'"))
            secs, result = timed(lambda: c.execute(AGGREGATE, {"start": start, "now": now}).all())
        rows["aggregate"].append(secs)
        secs, assessment = timed(lambda: detector.assess(now))
        rows["assess"].append(secs)
        timer.on = i == 0
        secs, passed = timed(lambda: detector.run_pass(now=now))
        timer.on = False
        rows["pass"].append(secs)
        first_pass = first_pass or passed
        secs, _ = timed(lambda: detector60.run_pass(now=now))
        rows["pass@60min"].append(secs)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in rows.items()), flush=True)

    assert first_pass is not None
    levels = collections.Counter(r.level for r in first_pass.assessment.risks)
    print(f"\naggregate: {len(result):,} tenant rows; detector: {len(assessment.risks):,} tenants scored "
          f"({dict(levels)}), {len(first_pass.assessment.findings)} findings; first pass raised "
          f"{len(first_pass.raised)} alerts, suspended {len(first_pass.suspended)} tenants")
    print("\nmedian of", args.rounds, "rounds:")
    base = statistics.median(rows["aggregate"])
    for name, values in rows.items():
        med = statistics.median(values)
        print(f"  {name:<12} {med:8.2f} s   ({med / base:5.1f} x the aggregate)")
    print("\nfirst pass, SQL time by statement kind:")
    for kind, secs in timer.totals.most_common():
        print(f"  {kind:<38} {secs:8.2f} s  ({timer.counts[kind]} statements)")
    detector.close()
    detector60.close()
    pass_engine.dispose()
    engine.dispose()
    if not args.keep:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{args.schema}" CASCADE'))
    admin.dispose()


if __name__ == "__main__":
    main()
