"""Outbound-ESL benchmark: decisions per second and latency, closed loop, burst and open loop.

    .venv/bin/python bench/bench_esl.py [--seconds 4] [--levels 1,50,200]
        [--burst 200 [--rounds 3]] [--rate 300 --duration 60 [--max-inflight 400]]
        [--backends sqlite,postgresql] [--store-load] [--detector-thread] [--servers stock,floor,full]

Three servers, each in its own process, driven the same way by the FreeSWITCH simulator
(tests/sim/freeswitch.py: FreeSWITCH's ``socket`` application over real TCP) from this one and
its forked driver processes (``--drivers``, default 2, each with a share of the calls):

* ``greenswitch stock``: greenswitch 0.0.19's OutboundESLServer with a handler that only
  answers. Its accept loop polls a non-blocking socket and sleeps 100 ms when nothing waits:
  the "before".
* ``callwarden floor``: callwarden's OutboundServer (event-driven accept, bounded sessions) with
  the same answer-only handler: the floor after the fix, nothing of callwarden's own work.
* ``callwarden full``: the real adapter (tests.esl.harness: production FreeswitchService, fixed
  clock) deciding on a SQLite store: decision, CDR and audit written, record_session confirmed.

Latency is measured at the simulator, from just before it connects (``t0``) to the arrival of
the first command that carries the outcome (``decided``: the floors' ``answer``; callwarden's
first ``uuid_setvar``/``record_session`` after the decision), and to the hand-back (``released``:
``resume`` or the ``hangup``; includes the simulator's own 5 ms app-execution tick). Closed loop:
each concurrent caller places calls back to back for ``--seconds``. Under load the store may
not answer within ``decision_timeout_ms``: those calls are denied POLICY_UNAVAILABLE (fail
closed) and counted in the ``refused`` column. No assertions on time: it prints a table.
Under each full server's ratio line, the server's own ``decision`` events of that run split
its latency (arrival to answer, what the deadline bounds) into the part before the adapter asks
for the decision, the wait for the writer and the store's part (README, "Logs").

Modes: ``--levels`` (closed loop, above); ``--burst N``: N set-ups started at the same instant,
``--rounds`` times; ``--rate R --duration D``: open loop, a set-up started every 1/R s whatever
the answers (at most ``--max-inflight`` at once; a start that finds no room is counted as
``shed``, and the floor shows what this driver itself can push). Every server runs the hub probe
(callwarden.esl.hub_probe: a greenlet waking every 1 ms); ``hub p99/max`` is how late it woke
during the measurement; ``late: cpu/runq/wait``: of the wake-ups over 5 ms late, how the lost
time splits (per-thread schedstat): the hub running code, the hub runnable but without a CPU
(an overloaded machine), the hub off the CPU by its own doing (the GIL held by a native
thread, or a blocking call on the hub); ``own max``: the worst lateness less the time spent
runnable without a CPU (what the process caused itself, whatever else the machine runs). ``--store-load``: while the full server is measured, another process
runs the seat-rental detector (a pass that raises alerts: a list-dialling tenant is reseeded
and resumed before each, the previous round's list deleted) and the retention purge at the
bench's clock (old CDRs reseeded before each) against the same store, back to back; their
counts are printed. The store starts with 400 consented callees and, unless ``--history 0``,
a month of CDRs before the bench's day, analyzed on PostgreSQL as autovacuum keeps a live store
(bench/history.py). PostgreSQL: $CALLWARDEN_BENCH_PG (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), a schema of its own dropped afterwards.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--serve" in sys.argv:  # a server process: gevent patches first
    from callwarden.esl import process  # noqa: F401  (isort: skip)


def serve_floor(kind: str, port: int) -> None:
    """A server that only answers: greenswitch as shipped, or on callwarden's accept loop."""
    import signal

    import gevent
    import greenswitch

    from callwarden import log as cwlog
    from callwarden.esl.frames import execute
    from callwarden.esl.hub_probe import HubProbe, report_on_signal
    from callwarden.esl.outbound import OutboundServer

    cwlog.configure("json", "info")  # stderr: the log file the bench reads the probe from
    report_on_signal(HubProbe().start().watch_store(), signal.SIGUSR2)

    class StockAnswer:  # greenswitch's application contract: connect() already done
        def __init__(self, session):
            self.session = session

        def run(self) -> None:
            self.session.answer()

    class FixedAnswer:  # callwarden's: the application connects (with a deadline)
        def __init__(self, session):
            self.session = session

        def run(self) -> None:
            self.session.connect(timeout=5)
            self.session.send_many([execute("answer")], 5)

    if kind == "stock":
        server = greenswitch.OutboundESLServer(bind_address="127.0.0.1", bind_port=port,
                                               application=StockAnswer, max_connections=2000)
        gevent.spawn(server.listen)
        gevent.sleep(0.3)  # listen() binds inside its loop
    else:
        server = OutboundServer("127.0.0.1", port, FixedAnswer, max_connections=2000)
        server.bind()
        gevent.spawn(server.listen)
    print(f"READY {port}", flush=True)
    gevent.wait()


# -- the store load (a process of its own; never imports gevent) -----------------------------


def store_load(url: str, at_iso: str, every: float = 0.0) -> None:
    """Detector passes and purges on ``url`` until stdin closes, a round every ``every`` s
    (0: back to back); prints counts."""
    import datetime as dt
    import random
    import select
    import time

    from sqlalchemy import delete, insert

    from callwarden import log as cwlog
    from callwarden.config import parse_settings
    from callwarden.policing.runner import Detector
    from callwarden.service.purge import Purger
    from callwarden.service.recording_target import LazyTarget
    from callwarden.store.db import make_engine, make_sessionmaker
    from callwarden.store.models import Call
    from callwarden.store.registry import Registry
    from tests.policing.helpers import cdr, session_for, telemarketing

    cwlog.configure("json", "warning", stream=sys.stderr)  # stdout carries the counts
    at = dt.datetime.fromisoformat(at_iso)
    settings = parse_settings({"store": {"url": url}})
    engine = make_engine(url)
    detector = Detector(settings, engine=engine)
    rng = random.Random(7)
    passes = alerts = purged = 0
    first = 13700000001
    previous: list[str] = []
    print("READY 0", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        started = time.monotonic()
        # A list-dialling tenant (beta, the example registry's second) for the pass to find.
        rows = telemarketing("beta", at - dt.timedelta(minutes=50), at - dt.timedelta(minutes=1),
                             rng, access="01058001234", per_minute=30, first=first)
        first += len(rows)
        old = [cdr("acme", f"1360000{i:04d}", at - dt.timedelta(days=800 + i % 30),
                   access="95512", pbx="freeswitch") for i in range(300)]
        # The reseeding is the bench's, not the product's: in short transactions, as the
        # decisions themselves write CDRs, so that it does not hold SQLite's write lock.
        # The previous round's list goes first, so that each pass reads one round's: the purge
        # runs at the bench's clock (below), where those rows are not past retention.
        for i in range(0, len(previous), 50):
            with session_for(url) as s:
                s.execute(delete(Call).where(Call.call_id.in_(previous[i:i + 50])))
            time.sleep(0.002)
        previous = [r["call_id"] for r in rows]
        seeded = rows + old
        for i in range(0, len(seeded), 50):
            with session_for(url) as s:
                s.execute(insert(Call), seeded[i:i + 50])
            time.sleep(0.002)
        with session_for(url) as s:
            Registry(s, "bench").set_tenant_status("beta", "active", "bench: reseeded")
        result = detector.run_pass(now=at)
        passes += 1
        alerts += len(result.raised)
        # At the bench's clock, as bench_agi's: at the wall clock's, every row seeded before the
        # bench's day (months ago) was past retention and went, the history (bench/history.py) too.
        report = Purger(settings, engine, make_sessionmaker(engine), LazyTarget(settings),
                        actor="bench", now=at).run()
        purged += sum(c.get("purged", 0) for c in report.summary().values())
        select.select([sys.stdin], [], [], max(0.05, every - (time.monotonic() - started)))
    print(f"{passes} {alerts} {purged}", flush=True)
    engine.dispose()


# -- the driving side (plain threads; never imports gevent) ----------------------------------


def _split(hub: dict) -> str:  # type: ignore[type-arg]
    # Store connections checked out on the hub's thread: must be none (HubProbe.watch_store).
    on_hub = f", STORE ON THE HUB x{n}" if (n := hub.get("store_on_hub")) else ""
    total = hub.get("late_total_ms") or 0.0
    if not total:
        return "-" + on_hub
    cpu, runq = hub.get("late_cpu_ms", 0.0), hub.get("late_runq_ms", 0.0)
    wait = max(0.0, total - cpu - runq)
    return (f"{100 * cpu / total:.0f}/{100 * runq / total:.0f}/{100 * wait / total:.0f}% of "
            f"{total:.0f} ms{on_hub}")


def main() -> None:
    import argparse
    import collections
    import datetime as dt
    import json
    import os
    import platform
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile
    import threading
    import time
    import uuid
    from collections.abc import Callable
    from pathlib import Path

    import yaml
    from sqlalchemy import create_engine, text

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from history import DEFAULT_CALLS, describe, seed_history  # bench/, beside this script
    from proc_cpu import cpu_seconds

    from tests.conftest import EXAMPLE_REGISTRY, migrate, seed
    from tests.sim.freeswitch import CallProfile, FsCall

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per level")
    parser.add_argument("--levels", default="1,50,200", help="closed-loop concurrency levels ('' none)")
    parser.add_argument("--burst", default="", help="N simultaneous set-ups (comma-separated list)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per size")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: set-ups per second")
    parser.add_argument("--duration", type=float, default=10.0, help="open loop: seconds")
    parser.add_argument("--max-inflight", type=int, default=400,
                        help="open loop: set-ups in flight at most, over all drivers (each runs "
                             "one Python thread per call: far beyond this they are their own "
                             "bottleneck)")
    parser.add_argument("--drivers", type=int, default=2,
                        help="driver processes sharing the load (the FreeSWITCH simulator)")
    parser.add_argument("--backends", default="sqlite", help="sqlite,postgresql")
    parser.add_argument("--servers", default="stock,floor,full")
    parser.add_argument("--store-load-every", type=float, default=0.0,
                        help="seconds from one store-load round's start to the next (0: back to "
                             "back)")
    parser.add_argument("--store-load", action="store_true",
                        help="detector passes and purges against the store during full runs")
    parser.add_argument("--history", type=int, default=DEFAULT_CALLS,
                        help="CDRs of history seeded before the calls (bench/history.py; 0: an "
                             "empty, never analyzed store, as before 2026-12-06)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (server logs, SQLite store) and print it")
    parser.add_argument("--detector-thread", action="store_true",
                        help="also run detector passes back to back in a native thread of the "
                             "adapter's process (as a FreeSWITCH-only `callwarden serve` does)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]
    bursts = [int(x) for x in args.burst.split(",") if x]
    servers_wanted = args.servers.split(",")
    at = "2026-03-02T10:00:00+08:00"
    pg_url = os.environ.get("CALLWARDEN_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

    work = Path(tempfile.mkdtemp(prefix="bench-esl-"))
    callees = [f"138{i:08d}" for i in range(10_000, 10_400)]  # 400 consented callees

    def make_store(backend: str) -> tuple[str, str | None]:
        schema = None
        if backend == "sqlite":
            url = f"sqlite:///{work / 'bench.db'}"
        else:
            schema = "bench_esl_" + uuid.uuid4().hex[:8]
            admin = create_engine(pg_url)
            with admin.begin() as c:
                c.execute(text(f'CREATE SCHEMA "{schema}"'))
            admin.dispose()
            url = f"{pg_url}?options=-csearch_path%3D{schema}"
        migrate(url)  # schema + the audit key (tests.conftest)
        registry = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))
        template = registry["consents"][0]
        registry["consents"] += [{**template, "callee": c} for c in callees]
        seed(url, registry)
        if args.history:
            seed_history(url, "acme", "95512", dt.datetime.fromisoformat(at),
                         calls=args.history, known=callees)
        return url, schema

    def drop_schema(schema: str | None) -> None:
        if schema:
            admin = create_engine(pg_url)
            with admin.begin() as c:
                c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()

    def write_config(url: str, name: str) -> Path:
        config = work / name
        config.write_text(yaml.safe_dump({
            "store": {"url": url}, "recording": {"dir": str(work / "rec")},
            "logging": {"format": "json", "level": "info"},
            "frequency": {"per_day": 1000, "per_week": 7000},
            "freeswitch": {"esl_outbound": {"host": "127.0.0.1", "port": 8084}, "esl_inbound": None},
        }))
        return config

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    class Server:
        def __init__(self, argv: list[str], log_name: str):
            self.log = work / log_name
            with self.log.open("w") as log:
                self.proc = subprocess.Popen([sys.executable, *argv], cwd=root, stdout=subprocess.PIPE,
                                             stderr=log, text=True,
                                             env={**os.environ, "PYTHONPATH": str(root)})
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line.startswith("READY "):
                self.proc.kill()
                raise SystemExit(f"server {argv} did not start; see {self.log}")
            self.port = int(line.split()[1])
            self._mark = 0  # where decision_split starts reading the log

        def hub(self) -> dict[str, float]:
            """The hub probe's figures since the previous call."""
            before = self.log.read_text(errors="replace").count('"esl_hub_probe"')
            self.proc.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                lines = [ln for ln in self.log.read_text(errors="replace").splitlines()
                         if '"esl_hub_probe"' in ln]
                if len(lines) > before:
                    return json.loads(lines[-1])
                time.sleep(0.05)
            return {"p99_ms": float("nan"), "max_ms": float("nan")}

        def mark(self) -> None:
            """Start counting decision events here (:meth:`decision_split`)."""
            self._mark = self.log.stat().st_size

        def decision_split(self) -> str:
            """Where the decisions logged since :meth:`mark` spent their time, from the
            server's own ``decision`` events: p50/p90 of each part ('' for a floor server,
            which decides nothing)."""
            with self.log.open("rb") as f:
                f.seek(self._mark)
                events = [json.loads(ln) for ln in f.read().decode(errors="replace").splitlines()
                          if '"event": "decision"' in ln]
            parts = ("latency_ms", "handover_ms", "queued_ms", "store_ms")
            events = [e for e in events if all(k in e for k in parts)]
            if not events:
                return ""
            ordered = {k: sorted(e[k] for e in events) for k in parts}
            latency, handover, queued, store = (f"{pct(v, 0.5):.1f}/{pct(v, 0.9):.1f}"
                                                for v in ordered.values())
            return (f"latency {latency} ms = before asking {handover} + queued {queued} + "
                    f"store {store} (p50/p90 of {len(events)} decisions)")

        def stop(self) -> None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    class TimedCall(FsCall):
        def _dial(self) -> None:
            self.t0 = time.time()
            super()._dial()

    def new_call(port: int, i: int) -> TimedCall:
        prof = CallProfile(caller_id_number="95512", destination_number=callees[i % 400],
                           variables={"callwarden_tenant": "acme", "callwarden_trunk": "ct-trunk-1",
                                      "callwarden_campaign": "renewals"})
        return TimedCall("127.0.0.1", port, profile=prof, write_gap=0.0, poll=0.005)

    def failure(call: TimedCall) -> str:
        """Why a call has no timings (for the errors column)."""
        r = call.result
        if r.error:
            return r.error.split(":")[0]
        return "timed out" if r.timed_out else f"no command after connect ({r.closed_by or '?'} closed)"

    def timings(call: TimedCall) -> tuple[float, float, str] | None:
        r = call.result
        if r.error or r.timed_out:
            return None
        after = [c for c in r.commands if c.text not in ("connect", "myevents")
                 and not c.text.startswith(("event ", "filter "))]
        if not after:
            return None
        # When the command's bytes arrived, not when the simulator got round to parsing it
        # (behind the subscription commands sent in the same write, each answered first).
        decided = after[0].arrived - call.t0
        released = next((c.arrived for c in after if c.text == "resume"
                         or c.header("execute-app-name") == "hangup"), after[-1].arrived) - call.t0
        reasons = r.variables_set.get("callwarden_reasons") or ""
        return decided * 1000, released * 1000, reasons

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")

    def summary(samples: list[tuple[float, float, str]], failed: collections.Counter[str],
                elapsed: float, hub: dict[str, float], **extra: float) -> dict[str, float]:
        """One row's figures; ``failed``: why calls had no timings, with how many each."""
        decided = sorted(s[0] for s in samples)
        released = sorted(s[1] for s in samples)
        return {"calls": len(samples), "rate": len(samples) / max(elapsed, 1e-9),
                "p50": pct(decided, 0.5), "p99": pct(decided, 0.99), "rel50": pct(released, 0.5),
                "refused": sum(1 for s in samples if "POLICY_UNAVAILABLE" in s[2]),
                "errors": sum(failed.values()),
                "why": ", ".join(f"{n} {reason}" for reason, n in failed.most_common(3)),
                "hub_p99": hub.get("p99_ms", float("nan")), "hub_max": hub.get("max_ms", float("nan")),
                "hub_own": hub.get("max_own_ms", float("nan")), "hub_split": _split(hub), **extra}

    # Each load shape runs split across --drivers processes (forked: the closures come along),
    # each with a share of the calls: one process with a thread per call in flight spent most of
    # its CPU on the GIL's hand-offs (strace: ~1,200 futex calls per call at 50 at once).
    Part = dict  # what one driver process reports: samples, failed, placed, and per shape

    def in_drivers(share: Callable[[int, int], Part]) -> tuple[list[Part], float]:
        """Run ``share(j, k)`` for j in 0..k-1, each in a driver process of its own; their
        reports and the CPU they used (seconds, all of them)."""
        import multiprocessing as mp

        k = max(1, args.drivers)
        ctx = mp.get_context("fork")
        out = ctx.Queue()

        def child(j: int) -> None:
            try:
                part = share(j, k)
            except BaseException:  # the parent must not wait for a report that never comes
                import traceback

                part = {"crashed": traceback.format_exc()}
            part["cpu"] = time.process_time()  # a forked child's counters start at zero
            out.put(part)

        procs = [ctx.Process(target=child, args=(j,), daemon=True) for j in range(k)]
        for proc in procs:
            proc.start()
        parts = [out.get(timeout=600) for _ in procs]
        for proc in procs:
            proc.join(10)
        for part in parts:
            if "crashed" in part:
                raise SystemExit(f"a driver process failed:\n{part['crashed']}")
        return parts, sum(part.pop("cpu") for part in parts)

    def merged(parts: list[Part]) -> tuple[list[tuple[float, float, str]], collections.Counter[str], int]:
        """The drivers' samples, failures and calls placed, together."""
        return ([t for part in parts for t in part["samples"]],
                sum((part["failed"] for part in parts), collections.Counter()),
                sum(part["placed"] for part in parts))

    def closed_loop(server: Server, concurrency: int, seconds: float) -> dict[str, float]:
        measure_from = time.monotonic() + 1.0  # the drivers' start-up, then a warm-up
        stop_at = measure_from + seconds

        def share(j: int, k: int) -> Part:
            samples: list[tuple[float, float, str]] = []
            placed, failed = [0], collections.Counter()
            lock = threading.Lock()

            def worker(n: int) -> None:
                i = n
                while time.monotonic() < stop_at:
                    call = new_call(server.port, i)
                    i += concurrency
                    started = time.monotonic()
                    call.run_here(timeout=20)
                    t = timings(call)
                    with lock:
                        placed[0] += 1
                        if started < measure_from:
                            continue
                        if t is None:
                            failed[failure(call)] += 1
                        else:
                            samples.append(t)

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(j, concurrency, k)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return {"samples": samples, "failed": failed, "placed": placed[0]}

        began = time.monotonic()
        server.hub()
        parts, cpu = in_drivers(share)
        hub = server.hub()
        elapsed = min(time.monotonic(), stop_at) - max(began, measure_from)
        samples, failed, placed = merged(parts)
        return summary(samples, failed, elapsed, hub, placed=placed, driver_cpu=cpu)

    def burst(server: Server, size: int, rounds: int) -> dict[str, float]:
        samples: list[tuple[float, float, str]] = []
        failed: collections.Counter[str] = collections.Counter()
        elapsed, hubs, cpu = 0.0, [], 0.0
        for r in range(rounds):
            at = time.monotonic() + 1.0  # every driver's calls start at this instant

            def share(j: int, k: int, r: int = r, at: float = at) -> Part:
                calls = [new_call(server.port, r * size + i) for i in range(j, size, k)]
                time.sleep(max(0.0, at - time.monotonic()))
                for c in calls:
                    c.start(timeout=30)
                for c in calls:
                    c.join(40)
                ended = time.monotonic()
                got = [timings(c) for c in calls]
                return {"samples": [t for t in got if t is not None], "placed": len(calls),
                        "failed": collections.Counter(
                            failure(c) for c, t in zip(calls, got, strict=True) if t is None),
                        "ended": ended}

            server.hub()
            parts, used = in_drivers(share)
            hubs.append(server.hub())
            elapsed += max(part["ended"] for part in parts) - at
            got, lost, _ = merged(parts)
            samples += got
            failed += lost
            cpu += used
            time.sleep(0.5)
        hub = {"p99_ms": max(h["p99_ms"] for h in hubs), "max_ms": max(h["max_ms"] for h in hubs),
               "max_own_ms": max(h.get("max_own_ms", float("nan")) for h in hubs),
               "late_total_ms": sum(h.get("late_total_ms", 0) for h in hubs),
               "late_cpu_ms": sum(h.get("late_cpu_ms", 0) for h in hubs),
               "late_runq_ms": sum(h.get("late_runq_ms", 0) for h in hubs),
               "store_on_hub": sum(h.get("store_on_hub", 0) for h in hubs)}
        return summary(samples, failed, elapsed, hub, placed=size * rounds, driver_cpu=cpu)

    def open_loop(server: Server, rate: float, duration: float, max_inflight: int) -> dict[str, float]:
        n = int(rate * duration)
        began = time.monotonic() + 1.0  # set-up i is due at began + i / rate, in driver i % k

        def share(j: int, k: int) -> Part:
            samples: list[tuple[float, float, str]] = []
            shed, failed = [0], collections.Counter()
            lock = threading.Lock()
            room_for = max_inflight // k + (j < max_inflight % k)
            room = threading.BoundedSemaphore(room_for)

            def one(i: int) -> None:
                try:
                    call = new_call(server.port, i)
                    call.run_here(timeout=20)
                    t = timings(call)
                    with lock:
                        if t is None:
                            failed[failure(call)] += 1
                        else:
                            samples.append(t)
                finally:
                    room.release()

            late = 0.0
            for i in range(j, n, k):
                due = began + i / rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late = max(late, -wait)
                if not room.acquire(blocking=False):
                    shed[0] += 1
                    continue
                threading.Thread(target=one, args=(i,), daemon=True).start()
            for _ in range(room_for):  # wait for the calls in flight
                room.acquire(timeout=30)
            return {"samples": samples, "failed": failed, "shed": shed[0], "late": late,
                    "placed": len(range(j, n, k)) - shed[0]}

        server.hub()
        parts, cpu = in_drivers(share)
        elapsed = time.monotonic() - began
        hub = server.hub()
        samples, failed, placed = merged(parts)
        return summary(samples, failed, elapsed, hub, shed=sum(p["shed"] for p in parts), offered=n,
                       start_lag_ms=max(p["late"] for p in parts) * 1000, placed=placed,
                       driver_cpu=cpu)

    class StoreLoad:
        def __init__(self, url: str):
            self.proc = subprocess.Popen([sys.executable, __file__, "--store-load-on", url, at,
                                          str(args.store_load_every)],
                                         cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=(work / "store-load.log").open("w"), text=True,
                                         env={**os.environ, "PYTHONPATH": str(root)})
            assert self.proc.stdout is not None and self.proc.stdout.readline().startswith("READY")

        def stop(self) -> str:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline().split()
            self.proc.wait(60)
            if len(line) != 3:
                return f"store load failed; see {work / 'store-load.log'}"
            return f"{line[0]} detector passes ({line[1]} alerts raised), {line[2]} rows purged"

    def measure(server: Server, url: str | None) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        plan: list[tuple[str, object]] = [(f"closed c={c}", lambda c=c: closed_loop(server, c, args.seconds))
                                          for c in levels]
        plan += [(f"burst {b}", lambda b=b: burst(server, b, args.rounds)) for b in bursts]
        if args.rate:
            plan.append((f"open {args.rate:.0f}/s {args.duration:.0f}s",
                         lambda: open_loop(server, args.rate, args.duration, args.max_inflight)))
        for name, run in plan:
            load = StoreLoad(url) if url and args.store_load else None
            server.mark()
            cpu = cpu_seconds(server.proc.pid)
            try:
                out[name] = run()  # type: ignore[operator]
                r, after = out[name], cpu_seconds(server.proc.pid)
                per_call = 1000 / max(1, r["placed"])
                r["srv_cpu"] = (after - cpu) * per_call if after and cpu else float("nan")
                r["drv_cpu"] = r.pop("driver_cpu") * per_call
            finally:
                if load is not None:
                    out[name]["store_load"] = load.stop()  # type: ignore[assignment]
            out[name]["split"] = server.decision_split()  # type: ignore[assignment]
        return out

    from importlib.metadata import version

    import gevent
    import greenswitch  # noqa: F401 (only for the version in the header)

    print(f"callwarden outbound ESL benchmark: {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, gevent {gevent.__version__}, greenswitch "
          f"{version('greenswitch')}; {args.seconds:.0f} s per closed-loop level"
          + (f"; bursts of {args.burst} x{args.rounds}" if bursts else "")
          + (f"; open loop {args.rate:.0f}/s for {args.duration:.0f} s" if args.rate else "")
          + ("; detector + purge running during full runs" if args.store_load else "")
          + ("; detector passes in a thread of the adapter" if args.detector_thread else "")
          + ("; " + describe(args.history) if "full" in servers_wanted else "") + "\n")
    results: dict[str, dict[str, dict[str, float]]] = {}
    floors = [("greenswitch stock (answer only)", "stock"), ("callwarden floor (answer only)", "fixed")]
    for name, kind in floors:
        if kind.replace("fixed", "floor") not in servers_wanted:
            continue
        server = Server([__file__, "--serve", kind, str(free_port())], f"{kind}.log")
        try:
            results[name] = measure(server, None)
        finally:
            server.stop()
    if "full" in servers_wanted:
        for backend in args.backends.split(","):
            url, schema = make_store(backend)
            label = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[backend]
            server = Server(["-m", "tests.esl.harness", "--config", str(write_config(url, f"{backend}.yaml")),
                             "--at", at, "--hub-probe"]
                            + (["--detector-thread"] if args.detector_thread else []),
                            f"full-{backend}.log")
            try:
                results[f"callwarden full ({label})"] = measure(server, url)
            finally:
                server.stop()
                drop_schema(schema)

    header = (f"{'server':34} {'mode':>18} {'calls':>6} {'calls/s':>8} {'decided p50':>11} "
              f"{'p99 ms':>8} {'released p50':>12} {'refused':>8} {'hub p99':>8} {'hub max':>8} {'own max':>8}  late: cpu/runq/wait")
    print(header)
    print("-" * len(header))
    modes = list(next(iter(results.values())).keys()) if results else []
    for mode in modes:
        for name, by_mode in results.items():
            r = by_mode[mode]
            refused = f"{r['refused']:.0f}" if name.startswith("callwarden full") else "-"
            extra = ""
            if r["errors"]:
                extra += f"  ({r['errors']:.0f} errors: {r['why']})"
            if "shed" in r:
                extra += (f"  (offered {r['offered']:.0f}, shed {r['shed']:.0f}, "
                          f"start lag max {r['start_lag_ms']:.0f} ms)")
            if "store_load" in r:
                extra += f"  [{r['store_load']}]"
            print(f"{name:34} {mode:>18} {r['calls']:>6.0f} {r['rate']:>8.0f} {r['p50']:>8.2f} ms "
                  f"{r['p99']:>8.2f} {r['rel50']:>9.2f} ms {refused:>8} {r['hub_p99']:>5.1f} ms "
                  f"{r['hub_max']:>5.1f} ms {r['hub_own']:>5.1f} ms  {r['hub_split']}{extra}")
        print()
    floor = results.get("callwarden floor (answer only)")
    for name, by_mode in results.items():
        if name.startswith("callwarden full"):
            for mode, r in by_mode.items():
                f = floor[mode] if floor else None
                print(f"{name}, {mode}: decided p50 {r['p50']:.2f} ms" + (
                      f" vs floor {f['p50']:.2f} ms ({r['p50'] / f['p50']:.1f}x), {r['rate']:.0f} vs "
                      f"{f['rate']:.0f} calls/s, hub max {r['hub_max']:.1f} vs {f['hub_max']:.1f} ms"
                      if f else f", {r['rate']:.0f} calls/s, hub max {r['hub_max']:.1f} ms"))
                if r.get("split"):
                    print(f"    {r['split']}")
    print("\nCPU per call placed (ms; user + system, all threads): the server process, and the "
          "driver processes together (the FreeSWITCH simulator, on the same CPUs)")
    for mode in modes:
        print(f"  {mode:>18}: " + "; ".join(
            f"{name.replace('callwarden ', '')} {by_mode[mode]['srv_cpu']:.2f} / driver "
            f"{by_mode[mode]['drv_cpu']:.2f}" for name, by_mode in results.items()))
    if args.keep:
        print(f"server logs and store kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve_floor(sys.argv[sys.argv.index("--serve") + 1], int(sys.argv[-1]))
    elif "--store-load-on" in sys.argv:
        i = sys.argv.index("--store-load-on")
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        store_load(sys.argv[i + 1], sys.argv[i + 2], float(sys.argv[i + 3]))
    else:
        main()
