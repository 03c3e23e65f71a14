"""Call decisions while the store's other jobs run, each job as an operator runs it.

In this process a thread decides one outbound call every ``--every`` ms (the product's
``Enforcer``, ``decision_timeout_ms`` 500: a decision that misses it is denied
POLICY_UNAVAILABLE), while one job runs in a process of its own on the same store:

  none       nothing beside it, for ``--baseline-seconds`` (the baseline, same run)
  purge      ``callwarden purge`` (due: ``--purgeable`` old CDRs; kept: ``--held`` old CDRs
             under a tenant's legal hold, which every run counts)
  consents   ``callwarden consents import`` of a CSV of ``--consents`` rows
  police     ``callwarden police --once`` (the seat-rental detector: it finds a tenant's
             telemarketing and raises alerts)
  verify     ``callwarden verify`` (walks the audit chain, scans the audit log and the CDRs;
             it exits 1 here: the bench's decided calls never hang up, which it reports)

For each store and job it prints the job's wall time and exit status, the decisions made
meanwhile, their latency (p50, p99, max) and how many were refused POLICY_UNAVAILABLE. A job
that holds what decisions need (SQLite's write lock, PostgreSQL's audit head) shows in the max
and in the refusals; one that does not leaves them near the baseline's.

``--jobs-from DIR`` runs the jobs' CLI from another checkout of callwarden (``git worktree add
DIR <commit>``; its code is put first on PYTHONPATH, and the script checks that it is the one
imported); the decisions stay this checkout's. So a job's before and after are measured in one
run:

    python bench/bench_beside.py                                  # both stores, about 2 minutes
    python bench/bench_beside.py --backends sqlite --jobs purge --held 300000
    git worktree add /tmp/old bd98922
    python bench/bench_beside.py --jobs none,purge --jobs-from /tmp/old   # the purge before

PostgreSQL: $CALLWARDEN_BENCH_PG, in a schema of its own dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from bench_agi import (  # noqa: E402
    CALLEES,
    MONDAY_10AM,
    RENTER,
    Figures,
    callee,
    pct,
    pg_schema,
    prepare_store,
)
from bench_decide import load_batches  # noqa: E402

JOBS = ("none", "purge", "consents", "police", "verify")
HOLDER = RENTER  # the tenant under legal hold: its old CDRs are kept, and counted by every purge
#: When the jobs run (``--now``): the day after the decisions' own time, so that those are
#: not due for purging and the old CDRs below are.
JOBS_NOW = MONDAY_10AM + dt.timedelta(days=1)
OLD = MONDAY_10AM - dt.timedelta(days=400)  # past the default 180-day retention


class Decider:
    """Decides one call every ``every`` seconds, on its own thread, until stopped."""

    def __init__(self, url: str, workdir: str, every: float, label: str):
        import structlog
        from bench_agi import bench_settings

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # the figures tell

        from callwarden.service.enforcer import Enforcer

        self.enforcer = Enforcer(bench_settings(url, workdir))
        self.every, self.label = every, label
        self._n = 0
        self.decide()  # the writer's connection and caches, before anything is measured

    def decide(self) -> tuple[float, tuple[str, ...]]:
        from callwarden.policy import CallAttempt

        self._n += 1
        attempt = CallAttempt("acme", "95512", callee(self._n % CALLEES), MONDAY_10AM,
                              trunk="ct-trunk-1", campaign="renewals", pbx="asterisk",
                              pbx_call_id=f"beside-{self.label}-{self._n}")
        started = time.perf_counter()
        codes = self.enforcer.decide(attempt).decision.codes
        return time.perf_counter() - started, codes

    def during(self, stop: threading.Event) -> Figures:
        figures = Figures()

        def run() -> None:
            due = time.perf_counter()
            while not stop.is_set():
                latency, codes = self.decide()
                figures.record(latency, ",".join(codes) or "allow")
                due += self.every
                time.sleep(max(0.0, due - time.perf_counter()))

        self._thread = threading.Thread(target=run, name="bench-decider")
        self._thread.start()
        return figures

    def join(self) -> None:
        self._thread.join()

    def close(self) -> None:
        self.enforcer.engine.dispose()


def old_calls(tenant: str, n: int, rng: random.Random) -> Iterator[dict]:
    """Ended outbound CDRs past retention."""
    for i in range(n):
        at = OLD - dt.timedelta(seconds=rng.randrange(30 * 86400))
        yield {"call_id": uuid.UUID(int=rng.getrandbits(128)).hex, "tenant_id": tenant,
               "direction": "outbound", "pbx": "asterisk", "caller": "95512",
               "callee": callee(i % CALLEES), "party": callee(i % CALLEES),
               "caller_hidden": False, "attempted_at": at, "answered_at": at,
               "ended_at": at + dt.timedelta(seconds=60), "decision": "allow", "reasons": "",
               "enforced": True, "billsec": 60, "disposition": "ANSWERED"}


def prepare(url: str, args: argparse.Namespace) -> None:
    """The registry (acme's callees consented), a tenant's telemarketing for the detector, old
    CDRs: ``--held`` of the held tenant and ``--purgeable`` of acme."""
    from sqlalchemy import text

    from callwarden.store.db import make_engine
    from callwarden.store.models import Call

    prepare_store(url, history=0)  # its own held and purgeable CDRs are the history here
    engine = make_engine(url)
    rng = random.Random(7)
    load_batches(engine, Call, old_calls(HOLDER, args.held, rng))
    load_batches(engine, Call, old_calls("acme", args.purgeable, rng))
    with engine.begin() as c:  # as autovacuum would have by now (the plans depend on it)
        c.execute(text("ANALYZE"))
    engine.dispose()


class Jobs:
    """The jobs' command lines, from this checkout or another (``--jobs-from``)."""

    def __init__(self, url: str, workdir: Path, jobs_from: Path | None, consents: int):
        self.workdir = workdir
        self.config = workdir / "callwarden.yaml"
        self.config.write_text(yaml.safe_dump({
            "store": {"url": url}, "recording": {"dir": str(workdir / "rec")},
            "logging": {"format": "json", "level": "warning"}}))
        self.env = dict(os.environ)  # run in ``workdir``: the current directory comes first
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(jobs_from)] if jobs_from else []) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.jobs_from = jobs_from
        self.csv = workdir / "consents.csv"
        self.csv.write_text(
            "tenant,callee,scope,obtained_at,expires_at,evidence_kind,evidence_ref,evidence_sha256\n"
            + "".join(f"acme,139{i:08d},callback,2026-02-01T10:00:00+08:00,,recording,rec-{i},\n"
                      for i in range(consents)))

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-c", "from callwarden.cli.main import main; main()",
                "--config", str(self.config), "--actor", "bench", *args]

    def check_code(self) -> str:
        """Which callwarden the jobs import (a worktree missing its code must not pass unseen)."""
        out = subprocess.run([sys.executable, "-c", "import callwarden; print(callwarden.__file__)"],
                             env=self.env, cwd=self.workdir, capture_output=True, text=True,
                             check=True).stdout.strip()
        if self.jobs_from and not Path(out).resolve().is_relative_to(self.jobs_from.resolve()):
            raise SystemExit(f"--jobs-from {self.jobs_from}: the jobs would import {out}")
        return out

    def hold(self) -> None:
        subprocess.run(self.cli("holds", "set", "--tenant", HOLDER, "--reason", "bench: case 1"),
                       env=self.env, cwd=self.workdir, check=True, capture_output=True)

    def command(self, job: str) -> list[str]:
        now = JOBS_NOW.isoformat()
        return {
            "purge": self.cli("purge", "--now", now),
            "consents": self.cli("consents", "import", str(self.csv)),
            "police": self.cli("police", "--once", "--now", MONDAY_10AM.isoformat()),
            "verify": self.cli("verify"),
        }[job]


def run_job(decider: Decider, jobs: Jobs, job: str, baseline_s: float) -> tuple[Figures, float, str]:
    stop = threading.Event()
    figures = decider.during(stop)
    started = time.perf_counter()
    if job == "none":
        time.sleep(baseline_s)
        status = "-"
    else:
        proc = subprocess.run(jobs.command(job), env=jobs.env, cwd=jobs.workdir,
                              capture_output=True, text=True)
        status = f"exit {proc.returncode}"
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines() or [""]
            status += f": {last[-1].removeprefix('verify: ')[:40]}"
    wall = time.perf_counter() - started
    stop.set()
    decider.join()
    return figures, wall, status


def bench_backend(label: str, url: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-beside-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        prepare(url, args)
        jobs = Jobs(url, workdir, args.jobs_from, args.consents)
        code = jobs.check_code()
        jobs.hold()
        print(f"\n{label}: {args.held:,} old CDRs under a legal hold, {args.purgeable:,} due; "
              f"prepared in {time.perf_counter() - t0:.0f} s; the jobs run {code}")
        print(f"{'job':<10} {'job time':>9} {'status':<24} {'decisions':>9} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'max ms':>8} {'POLICY_UNAVAILABLE':>18}")
        decider = Decider(url, str(workdir), args.every / 1000, label)
        try:
            for job in args.jobs:
                f, wall, status = run_job(decider, jobs, job, args.baseline_seconds)
                refused = sum(n for codes, n in f.outcomes.items() if "POLICY_UNAVAILABLE" in codes)
                other = {k: v for k, v in f.outcomes.items() if k != "allow" and "POLICY_UNAVAILABLE" not in k}
                print(f"{job:<10} {wall:>8.2f}s {status:<24} {len(f.latencies):>9} {pct(f.latencies, 0.5):>8.2f} "
                      f"{pct(f.latencies, 0.99):>8.2f} {pct(f.latencies, 1.0):>8.1f} {refused:>18}"
                      + (f"  other outcomes: {other}" if other else ""))
        finally:
            decider.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--jobs", default=",".join(JOBS),
                        type=lambda s: [j for j in s.split(",") if j],
                        help=f"comma-separated, in order, from {', '.join(JOBS)}")
    parser.add_argument("--every", type=float, default=10.0, help="ms between decisions")
    parser.add_argument("--baseline-seconds", type=float, default=3.0)
    parser.add_argument("--held", type=int, default=100_000, help="old CDRs under a legal hold")
    parser.add_argument("--purgeable", type=int, default=2_000, help="old CDRs the purge deletes")
    parser.add_argument("--consents", type=int, default=5_000, help="rows of the consents import")
    parser.add_argument("--jobs-from", type=Path, default=None,
                        help="run the jobs' CLI from this checkout (before/after in one run)")
    args = parser.parse_args()
    unknown = set(args.jobs) - set(JOBS)
    if unknown:
        parser.error(f"--jobs: unknown {', '.join(sorted(unknown))}")
    print(f"decisions beside the store's other jobs: {os.cpu_count()} CPUs, Python "
          f"{sys.version.split()[0]}; one decision every {args.every:g} ms (deadline 500 ms)")
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="bench-beside-db-") as d:
                bench_backend("SQLite (WAL)", f"sqlite:///{d}/store.db", args)
        elif backend == "postgresql":
            with pg_schema("bench_beside") as url:
                bench_backend("PostgreSQL", url, args)
        else:
            parser.error(f"--backends: unknown {backend}")


if __name__ == "__main__":
    main()
