"""Outbound-ESL benchmark: decisions per second and latency at 1, 50 and 200 concurrent calls.

    .venv/bin/python bench/bench_esl.py [--seconds 4] [--levels 1,50,200]

Three servers, each in its own process, driven the same way by the FreeSWITCH simulator
(tests/sim/freeswitch.py: FreeSWITCH's ``socket`` application over real TCP) from this one:

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
closed) and counted in the ``fail-closed`` column. No assertions on time: it prints a table.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--serve" in sys.argv:  # a server process: gevent patches first
    from callwarden.esl import process  # noqa: F401  (isort: skip)


def serve_floor(kind: str, port: int) -> None:
    """A server that only answers: greenswitch as shipped, or on callwarden's accept loop."""
    import gevent
    import greenswitch

    from callwarden.esl.frames import execute
    from callwarden.esl.outbound import OutboundServer

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


# -- the driving side (plain threads; never imports gevent) ----------------------------------


def main() -> None:
    import argparse
    import os
    import platform
    import shutil
    import signal
    import socket
    import statistics
    import subprocess
    import tempfile
    import threading
    import time
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from tests.conftest import EXAMPLE_REGISTRY, migrate, seed
    from tests.sim.freeswitch import CallProfile, FsCall

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured time per level")
    parser.add_argument("--levels", default="1,50,200")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    work = Path(tempfile.mkdtemp(prefix="bench-esl-"))
    callees = [f"138{i:08d}" for i in range(10_000, 10_400)]  # 400 consented callees
    url = f"sqlite:///{work / 'bench.db'}"
    migrate(url)  # schema + the audit key (tests.conftest)
    registry = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))
    template = registry["consents"][0]
    registry["consents"] += [{**template, "callee": c} for c in callees]
    seed(url, registry)
    config = work / "callwarden.yaml"
    config.write_text(yaml.safe_dump({
        "store": {"url": url}, "recording": {"dir": str(work / "rec")},
        "logging": {"format": "json", "level": "info"},
        "frequency": {"per_day": 1000, "per_week": 7000},
        "freeswitch": {"esl_outbound": {"host": "127.0.0.1", "port": 8084}, "esl_inbound": None},
    }))

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def start(argv: list[str], log_name: str) -> tuple[subprocess.Popen[str], int]:
        log = (work / log_name).open("w")
        proc = subprocess.Popen([sys.executable, *argv], cwd=root, stdout=subprocess.PIPE,
                                stderr=log, text=True, env={**os.environ, "PYTHONPATH": str(root)})
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("READY "):
            proc.kill()
            raise SystemExit(f"server {argv} did not start; see {work / log_name}")
        return proc, int(line.split()[1])

    class TimedCall(FsCall):
        def _dial(self) -> None:
            self.t0 = time.time()
            super()._dial()

    def timings(call: TimedCall) -> tuple[float, float, str] | None:
        r = call.result
        if r.error or r.timed_out:
            return None
        after = [c for c in r.commands if c.text not in ("connect", "myevents")
                 and not c.text.startswith("event ")]
        if not after:
            return None
        decided = after[0].at - call.t0
        released = next((c.at for c in after if c.text == "resume"
                         or c.header("execute-app-name") == "hangup"), after[-1].at) - call.t0
        reasons = r.variables_set.get("callwarden_reasons") or ""
        return decided * 1000, released * 1000, reasons

    def run_level(port: int, concurrency: int, seconds: float) -> dict[str, float]:
        samples: list[tuple[float, float, str]] = []
        errors = [0]
        lock = threading.Lock()
        measure_from = time.monotonic() + 0.5  # warm-up first
        stop_at = measure_from + seconds

        def worker(n: int) -> None:
            i = n
            while time.monotonic() < stop_at:
                prof = CallProfile(caller_id_number="95512", destination_number=callees[i % 400],
                                   variables={"callwarden_tenant": "acme",
                                              "callwarden_trunk": "ct-trunk-1",
                                              "callwarden_campaign": "renewals"})
                i += concurrency
                call = TimedCall("127.0.0.1", port, profile=prof, write_gap=0.0, poll=0.005)
                started = time.monotonic()
                call.run(timeout=20)
                t = timings(call)
                if started < measure_from:
                    continue
                with lock:
                    if t is None:
                        errors[0] += 1
                    else:
                        samples.append(t)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = min(time.monotonic(), stop_at) - max(began, measure_from)
        decided = sorted(s[0] for s in samples)
        released = sorted(s[1] for s in samples)
        failed_closed = sum(1 for s in samples if s[2] == "POLICY_UNAVAILABLE")
        pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")  # noqa: E731
        return {"calls": len(samples), "rate": len(samples) / max(elapsed, 1e-9),
                "p50": statistics.median(decided) if decided else float("nan"),
                "p99": pct(decided, 0.99), "rel50": pct(released, 0.5),
                "closed": 100.0 * failed_closed / max(1, len(samples)), "errors": errors[0]}

    servers = [
        ("greenswitch stock (answer only)",
         lambda: start([__file__, "--serve", "stock", str(free_port())], "stock.log")),
        ("callwarden floor (answer only)",
         lambda: start([__file__, "--serve", "fixed", str(free_port())], "fixed.log")),
        ("callwarden full (SQLite)",
         lambda: start(["-m", "tests.esl.harness", "--config", str(config),
                        "--at", "2026-03-02T10:00:00+08:00"], "full.log")),
    ]
    from importlib.metadata import version

    import gevent
    import greenswitch  # noqa: F401 (only for the version in the header)

    print(f"callwarden outbound ESL benchmark: {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, gevent {gevent.__version__}, greenswitch "
          f"{version('greenswitch')}; {args.seconds:.0f} s per level, closed loop\n")
    header = (f"{'server':34} {'conc':>4} {'calls':>6} {'calls/s':>8} {'decided p50':>11} "
              f"{'p99 ms':>8} {'released p50':>12} {'fail-closed':>11}")
    rows: dict[tuple[str, int], dict[str, float]] = {}
    results_by_server = {}
    for name, launch in servers:
        proc, port = launch()
        try:
            results_by_server[name] = {c: run_level(port, c, args.seconds) for c in levels}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(header)
    print("-" * len(header))
    for c in levels:
        for name, _ in servers:
            r = results_by_server[name][c]
            rows[(name, c)] = r
            closed = f"{r['closed']:.0f}%" if name.startswith("callwarden full") else "-"
            print(f"{name:34} {c:>4} {r['calls']:>6.0f} {r['rate']:>8.0f} {r['p50']:>8.2f} ms "
                  f"{r['p99']:>8.2f} {r['rel50']:>9.2f} ms {closed:>11}"
                  + (f"  ({r['errors']:.0f} errors)" if r["errors"] else ""))
        print()
    one = levels[0]
    stock, floor, full = (rows[(name, one)] for name, _ in servers)
    print(f"accept path, {one} call at a time: greenswitch stock p50 {stock['p50']:.2f} ms -> "
          f"callwarden's accept loop {floor['p50']:.2f} ms; full decision {full['p50']:.2f} ms "
          f"({full['p50'] - floor['p50']:.2f} ms above the floor: store, CDR, audit)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve_floor(sys.argv[sys.argv.index("--serve") + 1], int(sys.argv[-1]))
    else:
        main()
