"""FastAGI outbound decisions per second and latency, beside a bare panoramisk route.

Two servers, each in its own process, driven in turn by the same load generator (the Asterisk
simulator's ``AgiCall``, real TCP, in this process):

  baseline    panoramisk's stock ``Application`` with one route that only answers
              ``SET VARIABLE CALLWARDEN_DECISION allow``: the floor for any AGI-based module
  callwarden  the real server (``AsteriskAdapter``) on SQLite and on PostgreSQL: takes the
              channel values from the AGI arguments as the shipped subroutine passes them
              (``--read-values``: reads them, one round trip more), decides (facts, CDR row,
              audit-chain entry, commit), starts MixMonitor, sets the result variables

Modes (all print the baseline beside callwarden, from the same run; no assertions on time):

* closed loop (default ``--levels 1,50,200``): at each level, that many workers place calls
  back to back for ``--seconds``;
* open loop (``--rate 300 --duration 60``): set-ups start at a fixed rate whatever the
  completions, at most ``--max-inflight`` at once (a set-up due while that many are in flight
  is counted as skipped, not queued); reports the achieved rate and how late the generator
  started set-ups (if it lags, the figures are the generator's, not the server's);
* burst (``--burst 200``): that many set-ups at the same instant;
* ``--background``: while the open-loop and burst runs load the server, a separate process
  on the same store runs the real seat-rental detector pass (``Detector.run_pass``, against
  another tenant's telemarketing so that it raises alerts), the store writes an AMI-less
  reconciliation makes (``Enforcer.open_calls`` then ``Enforcer.call_ended`` for each open
  call, as ``agi/ami/reconcile.py`` does for channels gone), and a retention purge
  (``Purger.run`` over CDRs past retention, inserted as it goes), over and over
  (``--background-every S``: one round every S seconds instead of back to back);
* ``--nodes 2`` (PostgreSQL): two callwarden server processes on one store, the closed-loop
  load at ``--nodes-concurrency`` split between them, against one node.

The store starts with 5,000 consented callees and, unless ``--history 0``, a month of CDRs
before the bench's day, analyzed on PostgreSQL as autovacuum keeps a live store
(bench/history.py: on a never-analyzed table the decision's history lookup took the wrong
index and grew slower with every call placed, which no production store shows).

A call's latency is the whole FastAGI session as Asterisk sees it, from connect until the
server closes and the dialplan can go on. Outcomes: a decision that misses
``decision_timeout_ms`` (500 ms) is denied POLICY_UNAVAILABLE (fail closed). "srv CPU" is the
server process's CPU time (user + system, all threads, from /proc) per call placed: less noisy
than rates on a shared machine. "gen CPU" is this process's own (the load generator: one
asyncio loop, so at ~1,000 ms per second of run it, not the server, sets the pace; the bare
route's closed-loop rates reach that). SQLite takes one writer at a time; PostgreSQL decides in
parallel. PostgreSQL: $CALLWARDEN_BENCH_PG (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), in a schema of its own dropped afterwards.

    python bench/bench_agi.py                           # about 2 minutes
    python bench/bench_agi.py --seconds 2 --backends sqlite
    python bench/bench_agi.py --levels none --rate 300 --duration 60 --burst 200 --background
    python bench/bench_agi.py --levels none --backends postgresql --nodes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from history import DEFAULT_CALLS, describe, seed_history  # noqa: E402  (bench/, beside this script)
from proc_cpu import cpu_seconds  # noqa: E402

from callwarden.agi.routes.outbound import ARGUMENT_KEYS  # noqa: E402
from tests.sim.asterisk import AgiCall, AgiTiming, Pbx  # noqa: E402

# The audit key of the bench's throw-away stores (callwarden db upgrade would create it).
os.environ.setdefault("CALLWARDEN_AUDIT_KEY_FILE",
                      str(Path(tempfile.gettempdir()) / "callwarden-bench-audit.key"))

PG_URL = os.environ.get("CALLWARDEN_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CST = dt.timezone(dt.timedelta(hours=8))
MONDAY_10AM = dt.datetime(2026, 3, 2, 10, 0, tzinfo=CST)  # inside calling hours, always
CALLEES = 5000
TIMING = AgiTiming(env_split_pause=0, usage_pause=0, answer_delay=0, wait_scale=0)
VARIABLES = {"CALLWARDEN_TENANT": "acme", "CALLWARDEN_TRUNK": "ct-trunk-1",
             "CALLWARDEN_CAMPAIGN": "renewals"}
#: What the shipped subroutine (config/asterisk/extensions_callwarden.conf) passes after the
#: callee: the four values as arguments, which spares callwarden the round trip reading them.
#: ``--read-values`` passes the callee alone (a dialplan calling AGI() directly).
PASSED = tuple(f"{key}={VARIABLES.get(name, '')}" for key, name in ARGUMENT_KEYS.items())
AGI_ARGS = {"passed": PASSED}
#: The tenant whose telemarketing the background detector pass finds (never called here).
RENTER, RENTER_ACCESS = "beta", "01058001234"
#: CDRs past retention the background purge deletes, inserted per round.
PURGE_BATCH = 300


def callee(i: int) -> str:
    return f"138{i:08d}"


def registry() -> dict:
    obtained = "2026-01-05T10:00:00+08:00"
    return {
        "tenants": [{"id": "acme", "name": "ACME", "status": "active",
                     "outbound_commitment": "CMT-1"},
                    {"id": RENTER, "name": "Beta Rentals", "status": "active",
                     "outbound_commitment": "CMT-2"}],
        "numbers": [{"number": "95512", "tenant": "acme", "carrier": "China Telecom",
                     "purpose": "service", "inbound": True, "outbound": True,
                     "filing": "BA-1", "filed_on": "2026-01-10"},
                    {"number": RENTER_ACCESS, "tenant": RENTER, "carrier": "China Mobile",
                     "purpose": "service", "inbound": True, "outbound": True,
                     "filing": "BA-2", "filed_on": "2026-01-10"}],
        "trunks": [{"name": "ct-trunk-1", "tenant": "acme", "carrier": "China Telecom",
                    "verified": True, "proof": "TRK-1"}],
        "campaigns": [{"id": "renewals", "tenant": "acme", "purpose": "notification",
                       "description": "Remind existing customers that their contract expires",
                       "status": "approved"}],
        "consents": [{"tenant": "acme", "callee": callee(i), "scope": ["callback", "consultation"],
                      "obtained_at": obtained, "evidence": {"kind": "contract", "ref": f"C-{i}"}}
                     for i in range(CALLEES)],
    }


def bench_settings(url: str, workdir: str):  # type: ignore[no-untyped-def]
    from callwarden.config import parse_settings

    return parse_settings({
        "store": {"url": url},
        "recording": {"dir": f"{workdir}/rec"},
        "frequency": {"per_day": 1000, "per_week": 7000},
        "logging": {"format": "json", "level": "warning"},
        "asterisk": {"agi": {"host": "127.0.0.1", "port": 4573}, "ami": None},
    })


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
    from callwarden.service.enforcer import Enforcer

    settings = bench_settings(url, workdir)

    async def main() -> None:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # quiet: the figures tell
        adapter = AsteriskAdapter(settings, Enforcer(settings), clock=lambda: MONDAY_10AM, agi_port=0)
        await adapter.start()
        port_out.put(adapter.agi_port)
        await asyncio.Event().wait()

    asyncio.run(main())


def prepare_store(url: str, history: int = DEFAULT_CALLS) -> None:
    from callwarden.audit.pseudonym import ensure_store_key
    from callwarden.config import parse_settings
    from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
    from callwarden.store.migrate import upgrade
    from callwarden.store.registry import Registry
    from tests.policing.helpers import insert_calls, telemarketing

    engine = make_engine(url)
    upgrade(engine)
    ensure_store_key(parse_settings({"store": {"url": url}}), engine)
    with unit_of_work(make_sessionmaker(engine)) as s:
        Registry(s, "bench").import_document(registry())
    engine.dispose()
    # what the background detector pass finds: 50 minutes of a generated list, another tenant
    insert_calls(url, telemarketing(RENTER, MONDAY_10AM - dt.timedelta(minutes=50),
                                    MONDAY_10AM - dt.timedelta(minutes=1), random.Random(81),
                                    access=RENTER_ACCESS, first=13700000001))
    if history:  # a month of calls before these, and PostgreSQL's statistics (bench/history.py)
        seed_history(url, "acme", "95512", MONDAY_10AM, calls=history,
                     known=[callee(i) for i in range(CALLEES)], pbx="asterisk")


def start(target, *args) -> tuple[mp.Process, int]:  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    port_out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(port_out, *args), daemon=True)
    proc.start()
    return proc, port_out.get(timeout=60)


# -- the background work (a child process on the same store) -----------------------------------


def background_work(url: str, workdir: str, ready: mp.Event, stop: mp.Event, out: mp.Queue,
                    every: float = 0.0) -> None:
    """Detector passes, reconciliation writes and purges, round after round, until ``stop``.
    Store time is the bench's (MONDAY_10AM), not the wall clock's."""
    import structlog

    from callwarden.agi.ami.reconcile import CAUSE_NOT_SEEN
    from callwarden.policing.runner import Detector
    from callwarden.service.enforcer import CallEnd, Enforcer
    from callwarden.service.purge import Purger
    from callwarden.service.recording_target import LazyTarget
    from callwarden.store.db import make_engine, make_sessionmaker
    from tests.policing.helpers import cdr, insert_calls

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    settings = bench_settings(url, workdir)
    detector = Detector(settings, engine=make_engine(url))
    enforcer = Enforcer(settings)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    done: Counter = Counter()
    busy = 0.0
    # the pass looks at the store as of just before the bench's calls (all at MONDAY_10AM), so
    # the tenant under load is judged on its seeded history only
    police_at = MONDAY_10AM - dt.timedelta(seconds=1)
    stale = MONDAY_10AM - dt.timedelta(days=settings.retention.cdr_days + 30)

    def step(name: str, work) -> None:  # type: ignore[no-untyped-def]
        """A store failure is counted and the round goes on, as the real callers retry later."""
        try:
            work()
        except Exception as exc:
            done[f"{name} failed ({type(exc).__name__})"] += 1

    def police() -> None:
        result = detector.run_pass(now=police_at)
        done["detector passes"] += 1
        done["alerts raised"] += len(result.raised)

    def reconcile() -> None:
        for _call_id, uniqueid in enforcer.open_calls("asterisk", None):
            if stop.is_set():
                break
            enforcer.call_ended(CallEnd(pbx="asterisk", pbx_call_id=uniqueid,
                                        ended_at=MONDAY_10AM, disposition="UNKNOWN",
                                        hangup_cause=CAUSE_NOT_SEEN))
            done["calls reconciled"] += 1

    def purge() -> None:
        insert_calls(url, [cdr("acme", callee(i), stale, access="95512")
                           for i in range(PURGE_BATCH)])
        report = Purger(settings, engine, sessions, LazyTarget(settings), actor="bench-purge",
                        now=MONDAY_10AM).run()
        done["purge runs"] += 1
        done["CDRs purged"] += report.count("cdr", "purged")

    ready.set()
    while not stop.is_set():
        t0 = time.monotonic()
        step("detector pass", police)
        step("reconciliation", reconcile)
        step("purge", purge)
        busy += time.monotonic() - t0
        if every:  # a round every `every` s, as a site's timers run them; 0: back to back
            stop.wait(max(0.0, every - (time.monotonic() - t0)))
    done["busy s"] = round(busy, 1)
    out.put(dict(done))
    detector.close()
    detector.engine.dispose()
    enforcer.engine.dispose()
    engine.dispose()


class Background:
    """``with Background(url, workdir) as bg:`` runs :func:`background_work` for the block."""

    def __init__(self, url: str | None, workdir: str, every: float = 0.0):
        self.url, self.workdir, self.every = url, workdir, every
        self.summary: dict | None = None

    def __enter__(self) -> Background:
        if self.url is None:
            return self
        ctx = mp.get_context("spawn")
        ready, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(target=background_work,
                                 args=(self.url, self.workdir, ready, self._stop, self._out,
                                       self.every),
                                 daemon=True)
        self._proc.start()
        if not ready.wait(120):
            raise RuntimeError("the background process did not start")
        time.sleep(0.2)  # its first detector pass is under way when the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.url is None:
            return
        self._stop.set()
        try:
            self.summary = self._out.get(timeout=120)
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()

    def describe(self) -> str:
        if self.summary is None:
            return ""
        return "  background: " + ", ".join(f"{k} {v}" for k, v in self.summary.items())


# -- the load generator ------------------------------------------------------------------------


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    started: int = 0
    skipped: int = 0
    lag_max: float = 0.0  # how late the generator started a set-up (s)
    gen_cpu: float | None = None  # the generator's own CPU ms per call placed

    def gen(self) -> str:
        return _cpu(self.gen_cpu)

    def record(self, latency: float, outcome: str) -> None:
        self.latencies.append(latency)
        self.outcomes[outcome] += 1

    def mix(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.outcomes.most_common())


async def place(pbx: Pbx, port: int, n: int, figures: Figures) -> None:
    """One outbound set-up; its latency and outcome go into ``figures``."""
    call = AgiCall(port, script="outbound", args=(callee(n % CALLEES), *AGI_ARGS["passed"]),
                   pbx=pbx, variables=VARIABLES, callerid_num="95512", timing=TIMING)
    started = time.perf_counter()
    result = await call.run(timeout=15)
    latency = time.perf_counter() - started
    pbx.remove_channel(call.channel)
    if result.timed_out or result.status == "FAILURE":
        figures.record(latency, "no answer")
    else:
        v = result.variables
        figures.record(latency, v.get("CALLWARDEN_REASONS") or v.get("CALLWARDEN_DECISION") or "none")


async def closed_loop(ports: list[int], concurrency: int, seconds: float) -> Figures:
    pbx = Pbx(cel=False, keep_events=False)
    figures = Figures()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker(port: int) -> None:
        while time.monotonic() < deadline:
            await place(pbx, port, next(counter), figures)

    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(concurrency)))
    return figures


async def open_loop(ports: list[int], rate: float, seconds: float, max_inflight: int) -> Figures:
    """Set-ups due every 1/rate s from the start, whether or not earlier ones finished."""
    pbx = Pbx(cel=False, keep_events=False)
    figures = Figures()
    loop = asyncio.get_running_loop()
    inflight: set[asyncio.Task[None]] = set()
    begin = loop.time()
    n = 0
    while (due := begin + n / rate) < begin + seconds:
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        figures.lag_max = max(figures.lag_max, loop.time() - due)
        if len(inflight) >= max_inflight:
            figures.skipped += 1
        else:
            task = asyncio.create_task(place(pbx, ports[n % len(ports)], n, figures))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            figures.started += 1
        n += 1
    await asyncio.gather(*inflight)
    return figures


async def burst(ports: list[int], size: int) -> Figures:
    pbx = Pbx(cel=False, keep_events=False)
    figures = Figures(started=size)
    await asyncio.gather(*(place(pbx, ports[n % len(ports)], n, figures) for n in range(size)))
    return figures


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def measured(servers: dict[str, tuple[mp.Process, int]], name: str, run) -> tuple[Figures, float | None]:  # type: ignore[no-untyped-def]
    """Run ``run(ports)`` against one server; also its CPU ms per call placed (and, in the
    figures, the generator's: one process on one CPU, so near 1,000 ms per second it is the
    limit, not the server)."""
    proc, port = servers[name]
    before, gen_before = cpu_seconds(proc.pid), time.process_time()
    figures = asyncio.run(run([port]))
    after, gen_after = cpu_seconds(proc.pid), time.process_time()
    placed = len(figures.latencies)
    if placed:
        figures.gen_cpu = (gen_after - gen_before) * 1000 / placed
    cpu = (after - before) * 1000 / placed if before is not None and after is not None and placed else None
    return figures, cpu


def _cpu(cpu: float | None) -> str:
    return f"{cpu:>7.2f}" if cpu is not None else f"{'n/a':>7}"


def run_levels(servers: dict[str, tuple[mp.Process, int]], levels: list[int], seconds: float) -> None:
    print(f"\nclosed loop, {seconds:g} s per level and server")
    print(f"{'concurrent':>10} {'server':<11} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'srv CPU':>7} {'gen CPU':>7}  outcomes   (ms CPU per call of the server and of "
          "this load generator)")
    for level in levels:
        figures = {}
        for name in servers:
            f, cpu = measured(servers, name, lambda ports, lv=level: closed_loop(ports, lv, seconds))
            rate = len(f.latencies) / seconds
            figures[name] = (rate, pct(f.latencies, 0.5), pct(f.latencies, 0.99), cpu)
            print(f"{level:>10} {name:<11} {rate:>9.0f} {figures[name][1]:>8.2f} "
                  f"{figures[name][2]:>8.2f} {_cpu(cpu)} {f.gen()}  {f.mix()}")
        (b_rate, b50, b99, bcpu), (c_rate, c50, c99, ccpu) = figures["baseline"], figures["callwarden"]
        cpu_ratio = f"{ccpu / bcpu:>6.1f}x" if bcpu and ccpu else f"{'':>7}"
        print(f"{'':>10} {'ratio':<11} {c_rate / b_rate:>8.2f}x {c50 / b50:>7.1f}x "
              f"{c99 / b99:>7.1f}x {cpu_ratio}  (callwarden / baseline)")


def run_open(servers: dict[str, tuple[mp.Process, int]], rate: float, seconds: float,
             max_inflight: int, background: Background) -> None:
    print(f"\nopen loop: {rate:g} set-ups/s for {seconds:g} s, at most {max_inflight} in flight"
          + (" (background work on the store)" if background.url else ""))
    print(f"{'server':<11} {'started':>8} {'done/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'skipped':>8} {'gen lag':>8} {'srv CPU':>7} {'gen CPU':>7}  outcomes")
    for name in servers:
        with Background(background.url if name == "callwarden" else None, background.workdir,
                        background.every) as bg:
            f, cpu = measured(servers, name, lambda ports: open_loop(ports, rate, seconds, max_inflight))
        print(f"{name:<11} {f.started:>8} {len(f.latencies) / seconds:>8.0f} "
              f"{pct(f.latencies, 0.5):>8.2f} {pct(f.latencies, 0.99):>8.2f} "
              f"{pct(f.latencies, 1.0):>8.1f} {f.skipped:>8} {f.lag_max * 1000:>7.0f}ms {_cpu(cpu)} {f.gen()}"
              f"  {f.mix()}; POLICY_UNAVAILABLE {f.outcomes['POLICY_UNAVAILABLE']}")
        if bg.summary:
            print(bg.describe())


def run_burst(servers: dict[str, tuple[mp.Process, int]], size: int, background: Background) -> None:
    print(f"\nburst: {size} set-ups at the same instant"
          + (" (background work on the store)" if background.url else ""))
    print(f"{'server':<11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'srv CPU':>7} {'gen CPU':>7}  outcomes")
    for name in servers:
        with Background(background.url if name == "callwarden" else None, background.workdir,
                        background.every) as bg:
            f, cpu = measured(servers, name, lambda ports: burst(ports, size))
        print(f"{name:<11} {pct(f.latencies, 0.5):>8.2f} {pct(f.latencies, 0.99):>8.2f} "
              f"{pct(f.latencies, 1.0):>8.1f} {_cpu(cpu)} {f.gen()}  {f.mix()}; "
              f"POLICY_UNAVAILABLE {f.outcomes['POLICY_UNAVAILABLE']}")
        if bg.summary:
            print(bg.describe())


class BackendStates:
    """Samples PostgreSQL's ``pg_stat_activity`` every 20 ms from a thread: how many of the
    store's backends were, on average, running, waiting for another transaction's lock (the
    audit head every decision batch locks, from its facts to its commit, on every node),
    in I/O (here mostly the commits' WAL flushes), or waiting for their client."""

    KINDS = (("running", "CPU"), ("lock wait", "Lock"), ("I/O", "IO"),
             ("client", "Client"))

    def __init__(self, url: str):
        from sqlalchemy import create_engine

        self._engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self._stop = threading.Event()
        self._counts: Counter = Counter()
        self._samples = 0

    def __enter__(self) -> BackendStates:
        self._thread = threading.Thread(target=self._run, name="pg-states", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._engine.dispose()

    def _run(self) -> None:
        from sqlalchemy import text

        query = text("SELECT coalesce(wait_event_type, 'CPU'), count(*) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND state = 'active' "
                     "AND pid <> pg_backend_pid() GROUP BY 1")
        with self._engine.connect() as c:
            while not self._stop.wait(0.02):
                for kind, n in c.execute(query):
                    self._counts[kind] += n
                self._samples += 1

    def describe(self) -> str:
        n = max(1, self._samples)
        return ", ".join(f"{label} {self._counts[kind] / n:.2f}" for label, kind in self.KINDS)


def run_nodes(url: str, workdir: str, nodes: int, concurrency: int, seconds: float,
              first: tuple[mp.Process, int]) -> None:
    """Closed loop at ``concurrency`` on one node, then split over ``nodes`` nodes."""
    extra = [start(serve_callwarden, url, workdir) for _ in range(nodes - 1)]
    try:
        ports = [first[1]] + [port for _, port in extra]
        asyncio.run(closed_loop(ports, 4 * nodes, 1.0))  # warm up the new nodes
        print(f"\nnodes: callwarden servers sharing the store, closed loop at {concurrency} "
              f"concurrent calls split between them, {seconds:g} s each")
        print(f"{'nodes':>6} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}  outcomes; PostgreSQL "
              "backends on average: running, waiting for a lock, in I/O, for their client")
        rates = {}
        for count in (1, nodes):
            with BackendStates(url) as states:
                f = asyncio.run(closed_loop(ports[:count], concurrency, seconds))
            rates[count] = len(f.latencies) / seconds
            print(f"{count:>6} {rates[count]:>9.0f} {pct(f.latencies, 0.5):>8.2f} "
                  f"{pct(f.latencies, 0.99):>8.2f}  {f.mix()}; {states.describe()}")
        print(f"{'ratio':>6} {rates[nodes] / rates[1]:>8.2f}x  ({nodes} nodes / 1 node; "
              f"{os.cpu_count()} CPUs on this machine, shared with the load generator)")
    finally:
        for proc, _ in extra:
            proc.terminate()


def bench_backend(label: str, url: str, workdir: str, args: argparse.Namespace) -> None:
    prepare_store(url, args.history)
    servers = {"baseline": start(serve_baseline), "callwarden": start(serve_callwarden, url, workdir)}
    try:
        print(f"\nFastAGI outbound route, {os.cpu_count()} CPUs, {label} store with {CALLEES} "
              f"consented callees, {describe(args.history)}; latency = whole AGI session (connect "
              "-> server closes); AGI "
              + ("arguments: the callee and the four values, as the shipped subroutine passes"
                 if AGI_ARGS["passed"] else "argument: the callee alone (values read)"))
        for _, port in servers.values():  # warm up: connections, caches, pages
            asyncio.run(closed_loop([port], 4, 1.0))
        background = Background(url if args.background else None, workdir,
                                args.background_every)
        if args.levels:
            run_levels(servers, args.levels, args.seconds)
        if args.rate:
            run_open(servers, args.rate, args.duration, args.max_inflight, background)
        if args.burst:
            run_burst(servers, args.burst, background)
        if args.nodes > 1:
            if url.startswith("sqlite"):
                print("\n--nodes: PostgreSQL only (SQLite is one node's embedded store)")
            else:
                run_nodes(url, workdir, args.nodes, args.nodes_concurrency, args.seconds,
                          servers["callwarden"])
    finally:
        for proc, _ in servers.values():
            proc.terminate()


@contextlib.contextmanager
def pg_schema(prefix: str) -> Iterator[str]:
    """The URL of a PostgreSQL schema of its own on $CALLWARDEN_BENCH_PG, dropped afterwards."""
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _levels(text: str) -> list[int]:
    return [] if text in ("", "none") else [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="per closed-loop level and server (and per --nodes run)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--levels", type=_levels, default=[1, 50, 200],
                        help="closed-loop concurrency levels, comma-separated, or 'none'")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: set-ups per second")
    parser.add_argument("--duration", type=float, default=60.0, help="open loop: seconds")
    parser.add_argument("--max-inflight", type=int, default=1000,
                        help="open loop: set-ups in flight at most (more are skipped)")
    parser.add_argument("--burst", type=int, default=0, help="simultaneous set-ups")
    parser.add_argument("--background", action="store_true",
                        help="detector pass + reconciliation writes + purge during --rate/--burst")
    parser.add_argument("--background-every", type=float, default=0.0,
                        help="seconds from one background round's start to the next (0: back "
                             "to back, a whole CPU of store writes)")
    parser.add_argument("--nodes", type=int, default=1, help="PostgreSQL: callwarden servers")
    parser.add_argument("--nodes-concurrency", type=int, default=50)
    parser.add_argument("--history", type=int, default=DEFAULT_CALLS,
                        help="CDRs of history seeded before the calls (bench/history.py; 0: an "
                             "empty, never analyzed store, as before 2026-12-06)")
    parser.add_argument("--read-values", action="store_true",
                        help="AGI arguments: the callee alone, not the shipped subroutine's "
                             "four values too (callwarden reads them: one round trip more)")
    args = parser.parse_args()
    if args.read_values:
        AGI_ARGS["passed"] = ()

    with tempfile.TemporaryDirectory(prefix="bench_agi_") as workdir:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                bench_backend("SQLite (WAL)", f"sqlite:///{workdir}/callwarden.db", workdir, args)
                continue
            with pg_schema("bench_agi") as url:
                bench_backend("PostgreSQL", url, workdir, args)


if __name__ == "__main__":
    main()
