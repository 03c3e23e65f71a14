"""FastAGI outbound decisions per second and latency, beside a bare panoramisk route.

Two servers, each in its own process, driven in turn by the same load generator (the Asterisk
simulator's ``AgiCall``, real TCP, in this process):

  baseline    panoramisk's stock ``Application`` with one route that only answers
              ``SET VARIABLE CALLWARDEN_DECISION allow``: the floor for any AGI-based module
  callwarden  the real server (``AsteriskAdapter``) on SQLite and on PostgreSQL: reads the
              channel variables, decides (facts, CDR row, audit-chain entry, commit), starts
              MixMonitor, sets the result variables

At 1, 50 and 200 concurrent simulated calls, each worker places calls back to back for a fixed
time; a call's latency is the whole FastAGI session as Asterisk sees it, from connect until the
server closes and the dialplan can go on. Prints calls/s, p50 and p99, the outcome mix (a
decision that misses ``decision_timeout_ms`` is denied POLICY_UNAVAILABLE: fail closed), and
callwarden/baseline ratios. No assertions on time. SQLite takes one writer at a time, so its
figures at 50 and 200 concurrent calls are the embedded store's capacity; PostgreSQL decides in
parallel. PostgreSQL: $CALLWARDEN_BENCH_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test),
in a schema of its own that is dropped afterwards.

    python bench/bench_agi.py                           # about 2 minutes
    python bench/bench_agi.py --seconds 2 --backends sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sim.asterisk import AgiCall, AgiTiming, Pbx  # noqa: E402

# The audit key of the bench's throw-away stores (callwarden db upgrade would create it).
os.environ.setdefault("CALLWARDEN_AUDIT_KEY_FILE",
                      str(Path(tempfile.gettempdir()) / "callwarden-bench-audit.key"))

PG_URL = os.environ.get("CALLWARDEN_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CST = dt.timezone(dt.timedelta(hours=8))
MONDAY_10AM = dt.datetime(2026, 3, 2, 10, 0, tzinfo=CST)  # inside calling hours, always
CALLEES = 5000
LEVELS = (1, 50, 200)
TIMING = AgiTiming(env_split_pause=0, usage_pause=0, answer_delay=0, wait_scale=0)
VARIABLES = {"CALLWARDEN_TENANT": "acme", "CALLWARDEN_TRUNK": "ct-trunk-1",
             "CALLWARDEN_CAMPAIGN": "renewals"}


def callee(i: int) -> str:
    return f"138{i:08d}"


def registry() -> dict:
    obtained = "2026-01-05T10:00:00+08:00"
    return {
        "tenants": [{"id": "acme", "name": "ACME", "status": "active",
                     "outbound_commitment": "CMT-1"}],
        "numbers": [{"number": "95512", "tenant": "acme", "carrier": "China Telecom",
                     "purpose": "service", "inbound": True, "outbound": True,
                     "filing": "BA-1", "filed_on": "2026-01-10"}],
        "trunks": [{"name": "ct-trunk-1", "tenant": "acme", "carrier": "China Telecom",
                    "verified": True, "proof": "TRK-1"}],
        "campaigns": [{"id": "renewals", "tenant": "acme", "purpose": "notification",
                       "description": "Remind existing customers that their contract expires",
                       "status": "approved"}],
        "consents": [{"tenant": "acme", "callee": callee(i), "scope": ["callback", "consultation"],
                      "obtained_at": obtained, "evidence": {"kind": "contract", "ref": f"C-{i}"}}
                     for i in range(CALLEES)],
    }


# -- the servers (child processes) -------------------------------------------------------------


def serve_baseline(port_out: mp.Queue) -> None:
    from panoramisk.fast_agi import Application

    async def main() -> None:
        app = Application()

        async def outbound(request) -> None:  # type: ignore[no-untyped-def]
            await request.send_command("SET VARIABLE CALLWARDEN_DECISION allow")

        app.add_route("outbound", outbound)
        server = await asyncio.start_server(app.handler, "127.0.0.1", 0, backlog=1024)
        port_out.put(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_callwarden(port_out: mp.Queue, url: str, workdir: str) -> None:
    from callwarden.agi import AsteriskAdapter
    from callwarden.config import parse_settings
    from callwarden.service.enforcer import Enforcer

    settings = parse_settings({
        "store": {"url": url},
        "recording": {"dir": f"{workdir}/rec"},
        "frequency": {"per_day": 1000, "per_week": 7000},
        "logging": {"format": "json", "level": "warning"},
        "asterisk": {"agi": {"host": "127.0.0.1", "port": 4573}, "ami": None},
    })

    async def main() -> None:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # quiet: the figures tell
        adapter = AsteriskAdapter(settings, Enforcer(settings), clock=lambda: MONDAY_10AM, agi_port=0)
        await adapter.start()
        port_out.put(adapter.agi_port)
        await asyncio.Event().wait()

    asyncio.run(main())


def prepare_store(url: str) -> None:
    from callwarden.audit.pseudonym import ensure_store_key
    from callwarden.config import parse_settings
    from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
    from callwarden.store.migrate import upgrade
    from callwarden.store.registry import Registry

    engine = make_engine(url)
    upgrade(engine)
    ensure_store_key(parse_settings({"store": {"url": url}}), engine)
    with unit_of_work(make_sessionmaker(engine)) as s:
        Registry(s, "bench").import_document(registry())
    engine.dispose()


def start(target, *args) -> tuple[mp.Process, int]:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    port_out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(port_out, *args), daemon=True)
    proc.start()
    return proc, port_out.get(timeout=60)


# -- the load generator ------------------------------------------------------------------------


async def load(port: int, concurrency: int, seconds: float) -> tuple[list[float], Counter]:
    pbx = Pbx(cel=False)
    latencies: list[float] = []
    outcomes: Counter = Counter()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.monotonic() < deadline:
            n = next(counter)
            call = AgiCall(port, script="outbound", args=(callee(n % CALLEES),), pbx=pbx,
                           variables=VARIABLES, callerid_num="95512", timing=TIMING)
            started = time.perf_counter()
            result = await call.run(timeout=15)
            latencies.append(time.perf_counter() - started)
            pbx.channels.clear()
            if result.timed_out or result.status == "FAILURE":
                outcomes["no answer"] += 1
            else:
                v = result.variables
                outcomes[v.get("CALLWARDEN_REASONS") or v.get("CALLWARDEN_DECISION") or "none"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, outcomes


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_levels(servers: dict[str, tuple[mp.Process, int]], seconds: float) -> None:
    for _, port in servers.values():  # warm up: connections, caches, pages
        asyncio.run(load(port, 4, 1.0))
    print(f"{'concurrent':>10} {'server':<11} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}  outcomes")
    for level in LEVELS:
        figures = {}
        for name, (_, port) in servers.items():
            lat, outcomes = asyncio.run(load(port, level, seconds))
            rate = len(lat) / seconds
            figures[name] = (rate, pct(lat, 0.5), pct(lat, 0.99))
            mix = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
            print(f"{level:>10} {name:<11} {rate:>9.0f} {figures[name][1]:>8.2f} "
                  f"{figures[name][2]:>8.2f}  {mix}")
        (b_rate, b50, b99), (c_rate, c50, c99) = figures["baseline"], figures["callwarden"]
        print(f"{'':>10} {'ratio':<11} {c_rate / b_rate:>8.2f}x {c50 / b50:>7.1f}x "
              f"{c99 / b99:>7.1f}x  (callwarden / baseline)")


def bench_backend(label: str, url: str, workdir: str, seconds: float) -> None:
    prepare_store(url)
    servers = {"baseline": start(serve_baseline), "callwarden": start(serve_callwarden, url, workdir)}
    try:
        print(f"\nFastAGI outbound route, {os.cpu_count()} CPUs, {label} store with {CALLEES} "
              f"consented callees; {seconds:g} s per level; latency = whole AGI session "
              "(connect -> server closes)")
        run_levels(servers, seconds)
    finally:
        for proc, _ in servers.values():
            proc.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per level and server")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    with tempfile.TemporaryDirectory(prefix="bench_agi_") as workdir:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                bench_backend("SQLite (WAL)", f"sqlite:///{workdir}/callwarden.db", workdir,
                              args.seconds)
                continue
            schema = "bench_agi_" + uuid.uuid4().hex[:8]
            admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            try:
                bench_backend("PostgreSQL", f"{PG_URL}?options=-csearch_path%3D{schema}", workdir,
                              args.seconds)
            finally:
                with admin.connect() as c:
                    c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


if __name__ == "__main__":
    main()
