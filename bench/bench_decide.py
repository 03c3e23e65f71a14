"""Decision latency on a realistic registry, beside a primary-key lookup on the same store.

Loads N tenants (each with a filed 400 number and a verified trunk), consents and CDRs, then
times, per backend:
  baseline   one indexed primary-key lookup (Tenant by id) in its own session
  check      a full decision, read-only (what `callwarden check` does)
  decide     a full durable decision: facts, CDR row, audit-chain entry, commit
  decide xN  the same from N threads at once (--concurrency): the decision writer stores all
             the decisions waiting at a moment in one transaction (group commit)
and prints p50/p99 latency, operations per second and the ratio to the baseline.

    python bench/bench_decide.py                       # full size: 10k tenants, 1M consents, 5M CDRs
    python bench/bench_decide.py --scale 0.01          # quick run
    python bench/bench_decide.py --backends sqlite

PostgreSQL: $CALLWARDEN_BENCH_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test);
the bench uses its own schema and drops it afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import create_engine, insert, text

from callwarden.audit.pseudonym import ensure_store_key
from callwarden.config import parse_settings
from callwarden.policy import CallAttempt
from callwarden.service.enforcer import Enforcer
from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.migrate import upgrade
from callwarden.store.models import AccessNumber, Call, Consent, Tenant, Trunk

# The audit key of the bench's throw-away stores (callwarden db upgrade would create it).
os.environ.setdefault("CALLWARDEN_AUDIT_KEY_FILE",
                      str(Path(tempfile.gettempdir()) / "callwarden-bench-audit.key"))

PG_URL = os.environ.get("CALLWARDEN_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CST = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2026, 3, 16, 10, 0, tzinfo=CST)
BATCH = 50_000


def mobile(i: int) -> str:
    return f"13{i % 7 + 3}{i:08d}"[:11]


def tenant_id(i: int) -> str:
    return f"t{i:05d}"


def rows_tenants(n: int) -> Iterator[dict]:
    for i in range(n):
        yield {"id": tenant_id(i), "name": f"Tenant {i}", "status": "active", "outbound_commitment": f"CMT-{i}",
               "created_at": NOW, "updated_at": NOW}


def rows_numbers(n: int) -> Iterator[dict]:
    for i in range(n):
        num = f"400{i:07d}"
        yield {"number": num, "as_filed": num, "tenant_id": tenant_id(i), "carrier": "China Telecom",
               "purpose": "service", "inbound": True, "outbound": True, "filing_ref": f"BA-{i}",
               "active": True, "created_at": NOW, "updated_at": NOW}


def rows_trunks(n: int) -> Iterator[dict]:
    for i in range(n):
        yield {"name": f"trunk-{i}", "tenant_id": tenant_id(i), "carrier": "China Telecom", "verified": True,
               "proof_ref": f"TRK-{i}", "created_at": NOW, "updated_at": NOW}


def rows_consents(n: int, tenants: int) -> Iterator[dict]:
    obtained = NOW - dt.timedelta(days=60)
    for i in range(n):
        yield {"tenant_id": tenant_id(i % tenants), "callee": mobile(i), "scopes": "callback,consultation",
               "obtained_at": obtained, "evidence_kind": "contract", "evidence_ref": f"C-{i}", "created_at": NOW}


def rows_calls(n: int, tenants: int, consents: int, rng: random.Random) -> Iterator[dict]:
    for _ in range(n):
        c = rng.randrange(consents)
        t = c % tenants
        at = NOW - dt.timedelta(seconds=rng.randrange(30 * 86400))
        yield {"call_id": uuid.UUID(int=rng.getrandbits(128)).hex, "tenant_id": tenant_id(t),
               "direction": "outbound", "pbx": "asterisk", "caller": f"400{t:07d}", "callee": mobile(c),
               "party": mobile(c), "caller_hidden": False, "attempted_at": at, "decision": "allow",
               "reasons": "", "enforced": True, "billsec": rng.randrange(300), "disposition": "ANSWERED"}


def load_batches(engine, model, rows: Iterator[dict]) -> None:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            with engine.begin() as c:
                c.execute(insert(model), batch)
            batch.clear()
    if batch:
        with engine.begin() as c:
            c.execute(insert(model), batch)


def copy_calls_pg(engine, rows: Iterator[dict]) -> None:
    """COPY is an order of magnitude faster than INSERT for millions of rows."""
    cols = ["call_id", "tenant_id", "direction", "pbx", "caller", "callee", "party", "caller_hidden",
            "attempted_at", "decision", "reasons", "enforced", "billsec", "disposition"]
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy(f"COPY calls ({', '.join(cols)}) FROM STDIN") as cp:
            for r in rows:
                vals = [r[c] for c in cols]
                vals[8] = vals[8].isoformat()
                cp.write_row(vals)
        raw.commit()
    finally:
        raw.close()


def load(url: str, args, rng: random.Random) -> None:
    engine = make_engine(url)
    upgrade(engine)
    ensure_store_key(parse_settings({"store": {"url": url}}), engine)
    t0 = time.perf_counter()
    load_batches(engine, Tenant, rows_tenants(args.tenants))
    load_batches(engine, AccessNumber, rows_numbers(args.tenants))
    load_batches(engine, Trunk, rows_trunks(args.tenants))
    load_batches(engine, Consent, rows_consents(args.consents, args.tenants))
    calls = rows_calls(args.cdrs, args.tenants, args.consents, rng)
    if engine.dialect.name == "postgresql":
        copy_calls_pg(engine, calls)
        with engine.begin() as c:
            c.execute(text("ANALYZE"))
    else:
        load_batches(engine, Call, calls)
        with engine.begin() as c:
            c.execute(text("ANALYZE"))
    print(f"  loaded {args.tenants:,} tenants, {args.consents:,} consents, {args.cdrs:,} CDRs "
          f"in {time.perf_counter() - t0:.0f} s")


def timed(n: int, op: Callable[[int], object]) -> tuple[list[float], float]:
    for i in range(min(50, n)):  # warm caches and the connection pool
        op(i)
    lat = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        op(i)
        lat.append((time.perf_counter() - t) * 1000)
    return lat, time.perf_counter() - start


def timed_concurrently(n: int, threads: int, op: Callable[[int], object]) -> tuple[list[float], float]:
    """``n`` operations from ``threads`` threads started together; per-op latency and wall."""
    import threading

    lat: list[float] = []
    barrier = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        barrier.wait()
        for i in range(k, n, threads):
            t = time.perf_counter()
            op(i)
            lat.append((time.perf_counter() - t) * 1000)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return lat, time.perf_counter() - start


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) >= 100 else max(values)


def bench_backend(name: str, url: str, args) -> list[tuple]:
    rng = random.Random(81)
    print(f"[{name}] loading ...")
    load(url, args, rng)
    settings = parse_settings({"store": {"url": url}, "decision_timeout_ms": 5000,
                               "calling_hours": {"window": "00:00-24:00"},
                               "frequency": {"per_day": 1000, "per_week": 1000},
                               "recording": {"dir": tempfile.mkdtemp()},
                               "logging": {"level": "error"}})
    from callwarden import log

    log.configure("json", "error")
    enforcer = Enforcer(settings)
    sessions = make_sessionmaker(enforcer.engine)

    def attempt(i: int) -> CallAttempt:
        c = rng.randrange(args.consents)
        t = c % args.tenants
        return CallAttempt(tenant=tenant_id(t), caller=f"400{t:07d}", callee=mobile(c), at=NOW,
                           trunk=f"trunk-{t}", pbx="bench")

    def baseline(i: int) -> None:
        with sessions() as s:
            s.get(Tenant, tenant_id(rng.randrange(args.tenants)))

    def check(i: int) -> None:
        d = enforcer.check(attempt(i))
        assert d.allowed, d.codes  # a wrong data set would measure the wrong path

    def decide(i: int) -> None:
        assert enforcer.decide(attempt(i)).decision.allowed

    results = []
    base_lat, base_wall = timed(args.decisions, baseline)
    conc_label = f"decide x{args.concurrency}"
    for label, op, lat_wall in (("baseline pk lookup", None, (base_lat, base_wall)),
                                ("check (read-only)", check, None),
                                ("decide (durable)", decide, None),
                                (conc_label, decide, None)):
        if op is None:
            lat, wall = lat_wall
        elif label == conc_label:
            lat, wall = timed_concurrently(args.decisions, args.concurrency, op)
        else:
            lat, wall = timed(args.decisions, op)
        results.append((name, label, statistics.median(lat), pct(lat, 99), args.decisions / wall,
                        statistics.median(lat) / statistics.median(base_lat)))
    enforcer.engine.dispose()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the data set (0.01 = quick)")
    p.add_argument("--decisions", type=int, default=2000)
    p.add_argument("--backends", default="sqlite,postgresql")
    p.add_argument("--concurrency", type=int, default=64, help="threads deciding at once")
    args = p.parse_args()
    args.tenants = max(10, int(10_000 * args.scale))
    args.consents = max(100, int(1_000_000 * args.scale))
    args.cdrs = max(100, int(5_000_000 * args.scale))
    results = []
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as d:
                results += bench_backend("sqlite", f"sqlite:///{Path(d) / 'bench.db'}", args)
        else:
            schema = "bench_" + uuid.uuid4().hex[:8]
            admin = create_engine(PG_URL)
            with admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                results += bench_backend("postgresql", f"{PG_URL}?options=-csearch_path%3D{schema}", args)
            finally:
                with admin.begin() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    out = io.StringIO()
    out.write(f"\n{'backend':<11} {'operation':<20} {'p50 ms':>8} {'p99 ms':>8} {'ops/s':>9} {'p50 / baseline':>15}\n")
    for name, label, p50, p99, rate, ratio in results:
        out.write(f"{name:<11} {label:<20} {p50:>8.3f} {p99:>8.3f} {rate:>9.0f} {ratio:>14.1f}x\n")
    print(out.getvalue())


if __name__ == "__main__":
    main()
