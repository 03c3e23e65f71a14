"""Auditor search latency on millions of CDRs in PostgreSQL, and evidence-export throughput.

Search: loads N CDRs (default 5,000,000: 50 tenants, 200,000 callees, six months, 15 % denied
with realistic reason codes) into a dedicated schema with INSERT ... SELECT generate_series,
then times the typical auditor queries, each beside a count(*) of the same range in the same run:
  callee/month    one callee over a month
  tenant/day      one tenant over a day
  reason/week     one reason code over a week
"first page" is ``audit search`` as the CLI runs it (first 100 rows, newest first, ORM rows
turned into output rows); "count(*)" counts every matching row.

Export: stores R recordings of S MiB in local storage (half encrypted at rest), then times
``audit export`` of them (decrypting) beside a plain ``zipfile`` of the same stored files, and
prints MB/s for each.

    python bench/bench_audit.py                     # full size
    python bench/bench_audit.py --rows 200000       # quick run
    python bench/bench_audit.py --keep              # leave the schema for EXPLAIN sessions

PostgreSQL: $CALLWARDEN_BENCH_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
No time asserts: it prints its figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callwarden.audit.access import Scope  # noqa: E402
from callwarden.audit.export import export_bundle  # noqa: E402
from callwarden.audit.filters import SearchFilters  # noqa: E402
from callwarden.audit.pseudonym import ensure_store_key  # noqa: E402
from callwarden.audit.search import count_query, search  # noqa: E402
from callwarden.config import parse_settings  # noqa: E402
from callwarden.recorder import Key, LocalStorage, finalize, make_keyring  # noqa: E402
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work  # noqa: E402
from callwarden.store.migrate import upgrade  # noqa: E402
from callwarden.store.models import Call, Recording  # noqa: E402

# The audit key of the bench's throw-away stores (callwarden db upgrade would create it).
os.environ.setdefault("CALLWARDEN_AUDIT_KEY_FILE",
                      str(Path(tempfile.gettempdir()) / "callwarden-bench-audit.key"))

PG = os.environ.get("CALLWARDEN_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CST = dt.timezone(dt.timedelta(hours=8))
START = dt.datetime(2026, 1, 1, tzinfo=CST)
DAYS = 181
SCHEMA = "bench_audit"

LOAD_SQL = """
INSERT INTO calls (call_id, tenant_id, direction, pbx, pbx_call_id, caller, callee, party, caller_hidden,
                   trunk, purpose, attempted_at, answered_at, ended_at, billsec, disposition, decision,
                   reasons, enforced, consent_basis)
SELECT md5(i::text),
       't' || lpad((i % 50)::text, 2, '0'),
       CASE WHEN i % 10 = 0 THEN 'inbound' ELSE 'outbound' END,
       'asterisk', i::text,
       CASE WHEN i % 10 = 0 THEN '138' || lpad(((i::bigint * 7919) % 200000)::text, 8, '0')
            ELSE '955' || lpad((i % 50)::text, 2, '0') END,
       CASE WHEN i % 10 = 0 THEN '955' || lpad((i % 50)::text, 2, '0')
            ELSE '138' || lpad(((i::bigint * 7919) % 200000)::text, 8, '0') END,
       '138' || lpad(((i::bigint * 7919) % 200000)::text, 8, '0'),
       false, 'trunk-' || (i % 50), 'callback',
       ts, ts + interval '6 seconds', ts + interval '96 seconds', 90, 'ANSWERED',
       CASE WHEN i % 100 < 15 THEN 'deny' ELSE 'allow' END,
       CASE WHEN i % 100 < 15 THEN (ARRAY['QUIET_HOURS', 'FREQUENCY_EXCEEDED', 'NO_CONSENT',
                                          'CALLEE_REFUSED,NO_CONSENT', 'QUIET_HOURS,FREQUENCY_EXCEEDED'])[1 + i % 5]
            ELSE '' END,
       true, CASE WHEN i % 100 < 15 THEN NULL ELSE 'consent' END
FROM (SELECT i, :start + (i::double precision / :n) * interval '{days} days' AS ts
      FROM generate_series(:lo, :hi) AS i) AS g
"""


def _url(schema: str) -> str:
    return f"{PG}?options=-csearch_path%3D{schema}"


def load(n: int, schema: str) -> str:
    admin = create_engine(PG)
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _url(schema)
    engine = make_engine(url)
    upgrade(engine)
    ensure_store_key(parse_settings({"store": {"url": url}}), engine)
    indexes = []
    with engine.begin() as c:  # load without secondary indexes, then build them: much faster
        for name, ddl in c.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :s "
                                        "AND tablename = 'calls' AND indexname <> 'calls_pkey'"), {"s": schema}):
            indexes.append(ddl)
            c.execute(text(f'DROP INDEX "{schema}"."{name}"'))
    t0 = time.perf_counter()
    step = 1_000_000
    for lo in range(0, n, step):
        with engine.begin() as c:
            c.execute(text(LOAD_SQL.format(days=DAYS)), {"start": START, "n": n, "lo": lo, "hi": min(n, lo + step) - 1})
        print(f"  loaded {min(n, lo + step):>10,} rows  {time.perf_counter() - t0:6.1f} s", flush=True)
    with engine.begin() as c:
        for ddl in indexes:
            c.execute(text(ddl))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE calls"))
    print(f"  indexed and analyzed  {time.perf_counter() - t0:6.1f} s", flush=True)
    return url


def _time(fn, reps: int) -> tuple[float, object]:
    fn()  # warm-up
    samples, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples), out


def bench_search(url: str, reps: int) -> None:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with engine.connect() as c:
        callee = c.execute(text("SELECT callee FROM calls WHERE direction = 'outbound' AND attempted_at "
                                ">= '2026-03-10' ORDER BY attempted_at LIMIT 1")).scalar_one()
    queries = {
        "callee/month": dict(callee=callee, since="2026-03-01", until="2026-03-31"),
        "tenant/day": dict(tenant="t07", since="2026-03-10", until="2026-03-10"),
        "reason/week": dict(reason="QUIET_HOURS", since="2026-03-02", until="2026-03-08"),
    }
    scope = Scope("bench")
    print(f"\n{'query':<14} {'matching':>10} {'first page ms':>14} {'count(*) ms':>12}")
    for name, kw in queries.items():
        f = SearchFilters.from_cli(CST, **kw)

        def page(f=f):
            with sessions() as s:
                return search(s, f, scope, limit=100)

        def count(f=f):
            with sessions() as s:
                return s.scalar(count_query(f, scope))

        page_ms, rows = _time(page, reps)
        count_ms, total = _time(count, reps)
        print(f"{name:<14} {total:>10,} {page_ms:>14.2f} {count_ms:>12.2f}   (page of {len(rows)})")


def bench_export(url: str, recordings: int, mib: int) -> None:
    engine = make_engine(url)
    key = Key("bench", b"\x42" * 32)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        storage = LocalStorage(root / "store")
        spool = root / "spool"
        spool.mkdir()
        chunk = os.urandom(1 << 20)
        with unit_of_work(make_sessionmaker(engine)) as s:
            for i in range(recordings):
                call_id = f"x{i:031d}"
                src = spool / f"{call_id}.raw"
                with open(src, "wb") as f:
                    for _ in range(mib):
                        f.write(chunk[i % 256:] + chunk[:i % 256])
                fin = finalize(src, storage=storage, relpath=f"bx/2026/03/02/{call_id}.raw",
                               retain_until=START + dt.timedelta(days=400), key=key if i % 2 else None)
                at = START + dt.timedelta(days=60, minutes=i)
                s.add(Call(call_id=call_id, tenant_id="benchx", direction="outbound", pbx="bench", caller="95599",
                           callee="13800000000", party="13800000000", attempted_at=at, decision="allow", reasons=""))
                s.flush()
                rec = Recording(call_id=call_id, tenant_id="benchx", status="stored", location=fin.location,
                                sha256=fin.sha256, size=fin.size, encrypted=fin.encrypted, key_id=fin.key_id)
                s.add(rec)
                s.flush()
                s.get(Call, call_id).recording_id = rec.id
        total = recordings * mib * (1 << 20)
        files = sorted(p for p in (root / "store").rglob("*") if p.is_file())
        t = time.perf_counter()
        with zipfile.ZipFile(root / "plain.zip", "w", allowZip64=True) as z:
            for p in files:
                z.write(p, p.name, compress_type=zipfile.ZIP_STORED)
        plain_s = time.perf_counter() - t
        t = time.perf_counter()
        res = export_bundle(engine, root / "bundle.zip", SearchFilters(tenant="benchx"), Scope("bench"),
                            storage, make_keyring(key))
        export_s = time.perf_counter() - t
        assert res.recordings == recordings and not res.problems
        print(f"\nexport of {recordings} recordings, {total / 1e6:.0f} MB (half encrypted at rest, decrypted):")
        print(f"  audit export   {export_s:6.2f} s  {total / 1e6 / export_s:8.1f} MB/s  (hash + decrypt + zip + manifest)")
        print(f"  plain zip      {plain_s:6.2f} s  {total / 1e6 / plain_s:8.1f} MB/s  (zipfile, stored, same files)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--recordings", type=int, default=100)
    ap.add_argument("--mib", type=int, default=4, help="MiB per recording")
    ap.add_argument("--schema", default=SCHEMA)
    ap.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = ap.parse_args()
    print(f"loading {args.rows:,} CDRs into PostgreSQL schema {args.schema} ...", flush=True)
    url = load(args.rows, args.schema)
    try:
        bench_search(url, args.reps)
        bench_export(url, args.recordings, args.mib)
    finally:
        if not args.keep:
            with create_engine(PG).begin() as c:
                c.execute(text(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE'))


if __name__ == "__main__":
    main()
