"""CPU per call of the store writes around a decision: the CDR completion at a call's end and
the correction of a decision an adapter gave up on, beside the decision itself (same run).

Every call costs callwarden a decision at its start and a CDR completion at its end; under
overload, decisions committed after their deadline also cost a correction. Times are process
CPU (all threads) and wall time per operation, one at a time, on a seeded store:

  decide            a durable decision (the baseline: what every call pays at its start)
  decide, 10 ms apart  the same with the host idle 10 ms before each (one call at a time)
  call_ended        the CDR completion (``Enforcer.call_ended``)
  correction, ORM   ``Enforcer.decision_abandoned``: a transaction of its own per correction
  correction, batch ``Enforcer.abandon``: queued for the decision writer, made in its next
                    transaction (what both adapters use); timed until every one is stored

    .venv/bin/python bench/bench_call_writes.py [--calls 200] [--backends sqlite,postgresql]

PostgreSQL: $CALLWARDEN_BENCH_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test),
in a schema of its own dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CALLWARDEN_AUDIT_KEY_FILE",
                      str(Path(tempfile.gettempdir()) / "callwarden-bench-audit.key"))
os.environ.setdefault("CALLWARDEN_TEST_PG", os.environ.get(
    "CALLWARDEN_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))

from sqlalchemy import func, select  # noqa: E402

from callwarden.config import parse_settings  # noqa: E402
from callwarden.log import configure  # noqa: E402
from callwarden.policy import CallAttempt  # noqa: E402
from callwarden.service.enforcer import CallEnd, Enforcer, Outcome  # noqa: E402
from callwarden.store.models import Call  # noqa: E402
from tests.conftest import migrated_store, seed  # noqa: E402

CST = dt.timezone(dt.timedelta(hours=8))
AT = dt.datetime(2026, 3, 2, 10, tzinfo=CST)


def timed(n: int, work: Callable[[], None]) -> tuple[float, float]:
    """(CPU ms, wall ms) per operation of ``work``, which does ``n`` of them."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return (time.process_time() - cpu) / n * 1e3, (time.perf_counter() - wall) / n * 1e3


def apart(n: int, gap: float, work: Callable[[int], object]) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of ``work(i)``, the calls ``gap`` seconds apart (the idle time
    not counted): one call at a time through a PBX leaves the host idle between decisions, and
    on a virtual machine an idle CPU comes back with cold caches and a slower wake-up."""
    cpu = wall = 0.0
    for i in range(n):
        time.sleep(gap)
        c, w = time.process_time(), time.perf_counter()
        work(i)
        cpu, wall = cpu + time.process_time() - c, wall + time.perf_counter() - w
    return cpu / n * 1e3, wall / n * 1e3


def run(kind: str, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, migrated_store(kind, Path(tmp)) as url:
        seed(url)
        e = Enforcer(parse_settings({
            "store": {"url": url}, "recording": {"dir": str(Path(tmp) / "rec")},
            "frequency": {"per_day": 1000, "per_week": 7000}}))
        batch = iter(range(10**6))

        def allowed(count: int) -> list[Outcome]:
            k = next(batch)
            out = [e.decide(CallAttempt(tenant="acme", caller="95512", callee="13800138000", at=AT,
                                        trunk="ct-trunk-1", pbx="asterisk",
                                        pbx_call_id=f"b{k}-{i}")) for i in range(count)]
            assert all(o.decision.allowed for o in out)
            return out

        def corrected(outcomes: list[Outcome]) -> None:
            ids = [o.call_id for o in outcomes]
            while True:
                with e.sessions() as s:
                    if s.scalar(select(func.count()).select_from(Call).where(
                            Call.call_id.in_(ids), Call.decision == "deny")) == len(ids):
                        return
                time.sleep(0.001)

        rows: dict[str, tuple[float, float]] = {}
        k = next(batch)
        rows["decide"] = timed(n, lambda: [e.decide(CallAttempt(
            tenant="acme", caller="95512", callee="13800138000", at=AT, trunk="ct-trunk-1",
            pbx="asterisk", pbx_call_id=f"d{k}-{i}")) for i in range(n)])
        rows["decide, 10 ms apart"] = apart(n, 0.010, lambda i: e.decide(CallAttempt(
            tenant="acme", caller="95512", callee="13800138000", at=AT, trunk="ct-trunk-1",
            pbx="asterisk", pbx_call_id=f"g{k}-{i}")))
        rows["call_ended"] = timed(n, lambda: [e.call_ended(CallEnd(
            "asterisk", f"d{k}-{i}", AT + dt.timedelta(minutes=2), AT, 100, "ANSWERED",
            "NORMAL_CLEARING")) for i in range(n)])
        old = allowed(n)
        rows["correction, ORM"] = timed(n, lambda: [e.decision_abandoned(o.call_id) for o in old])
        new = allowed(n)
        rows["correction, batch"] = timed(n, lambda: ([e.abandon(o, "asterisk") for o in new],
                                                      corrected(new)))
        e.engine.dispose()
    base = rows["decide"][0]
    for name, (cpu, wall) in rows.items():
        print(f"{kind:<11} {name:<20} {cpu:8.2f} {wall:8.2f}   {cpu / base:5.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200, help="operations per row")
    p.add_argument("--backends", default="sqlite,postgresql")
    args = p.parse_args()
    configure("console", "error")  # a log line per call (decision, warning) would be timed too
    print(f"store writes per call, {os.cpu_count()} CPUs, {args.calls} of each, one at a time")
    print(f"{'store':<11} {'operation':<20} {'CPU ms':>8} {'wall ms':>8}   CPU / decide")
    for kind in args.backends.split(","):
        run(kind, args.calls)


if __name__ == "__main__":
    main()
