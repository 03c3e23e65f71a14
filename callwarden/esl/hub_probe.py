"""How late the gevent hub answers: a greenlet that sleeps a fixed interval in a loop and
records by how much each wake-up came late.

Everything the FreeSWITCH process does for its calls runs on one hub; anything that holds it
(store work done on the hub instead of in a native thread, a long parse, a native thread
keeping the GIL) makes every call wait, and shows here as a late wake-up. How late depends on
the machine; whether the store is used on the hub does not, so :meth:`HubProbe.watch_store`
counts that exactly. Used by ``bench/bench_esl.py`` and the burst test through
``tests.esl.harness --hub-probe``.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from dataclasses import dataclass

import gevent
from sqlalchemy import event
from sqlalchemy.pool import Pool


@dataclass(frozen=True, slots=True)
class ProbeStats:
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    stalls: int  # wake-ups later than the stall threshold
    stall_ms: float
    #: Of the wake-ups more than 5 ms late, where the time went (Linux's per-thread schedstat):
    #: all of it; on the CPU (the hub running code: its own work); runnable but waiting for a
    #: CPU (the machine is overloaded); and the rest, off the CPU by its own doing (waiting for
    #: the GIL held by a native thread, or a blocking call on the hub: what must not happen).
    late_total_ms: float = 0.0
    late_cpu_ms: float = 0.0
    late_runq_ms: float = 0.0
    #: The worst lateness, and the stalls, not counting time spent waiting for a CPU: what
    #: the process itself caused, whatever else runs on the machine.
    max_own_ms: float = 0.0
    stalls_own: int = 0
    max_own_cpu_ms: float = 0.0  # of which on the CPU (the rest: waiting off the CPU)
    #: Store connections checked out on the hub's thread (:meth:`HubProbe.watch_store`): 0.
    store_on_hub: int = 0

    @property
    def late_waiting_ms(self) -> float:
        return round(max(0.0, self.late_total_ms - self.late_cpu_ms - self.late_runq_ms), 1)

    def as_dict(self) -> dict[str, float | int]:
        return {"samples": self.samples, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "max_ms": self.max_ms, "stalls": self.stalls, "stall_ms": self.stall_ms,
                "late_total_ms": self.late_total_ms, "late_cpu_ms": self.late_cpu_ms,
                "late_runq_ms": self.late_runq_ms, "late_waiting_ms": self.late_waiting_ms,
                "max_own_ms": self.max_own_ms, "stalls_own": self.stalls_own,
                "max_own_cpu_ms": self.max_own_cpu_ms, "store_on_hub": self.store_on_hub}


class HubProbe:
    """``start()`` on the hub; :meth:`take` returns the lateness seen since the last take."""

    def __init__(self, interval_s: float = 0.001, stall_ms: float = 50.0,
                 max_samples: int = 600_000):
        self.interval_s = interval_s
        self.stall_ms = stall_ms
        self.max_samples = max_samples  # 10 minutes at 1 kHz: 4.8 MB of doubles at most
        self._late_ms = array("d")
        self._cpu_ms = array("d")  # this thread's CPU time during each interval
        self._runq_ms = array("d")  # and its time runnable, waiting for a CPU
        self._greenlet: gevent.Greenlet | None = None
        self._hub_thread: int | None = None
        self._store_on_hub = 0

    def start(self) -> HubProbe:
        """Start probing; call it on the hub's thread (the process's main thread)."""
        self._hub_thread = threading.get_ident()
        self._greenlet = gevent.spawn(self._run)
        return self

    def watch_store(self) -> HubProbe:
        """Also count the store connections checked out on the hub's thread, from any engine of
        this process (every store operation checks one out of its pool). The FreeSWITCH process
        must do all store work in native threads, so the count must stay 0. It needs the
        process's ``threading`` unpatched (``callwarden.esl.process`` leaves it so), where
        ``get_ident`` names the OS thread, not the greenlet."""
        event.listen(Pool, "checkout", self._checked_out)
        return self

    def _checked_out(self, *_: object) -> None:
        if threading.get_ident() == self._hub_thread:
            self._store_on_hub += 1

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        interval, clock = self.interval_s, time.perf_counter
        try:  # the hub's thread: this greenlet runs on it
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:  # not Linux: lateness only
            fd = -1

        def sched() -> tuple[float, float]:
            if fd < 0:
                return 0.0, 0.0
            on_cpu, runq = os.pread(fd, 128, 0).split()[:2]
            return int(on_cpu) / 1e6, int(runq) / 1e6

        try:
            while True:
                before, (cpu_before, runq_before) = clock(), sched()
                gevent.sleep(interval)
                late = self._late_ms
                if len(late) < self.max_samples:
                    late.append((clock() - before - interval) * 1000)
                    cpu_after, runq_after = sched()
                    self._cpu_ms.append(cpu_after - cpu_before)
                    self._runq_ms.append(runq_after - runq_before)
        finally:
            if fd >= 0:
                os.close(fd)

    def take(self) -> ProbeStats:
        """The figures since the previous take (or start), and start over."""
        samples, cpu_ms, runq_ms = self._late_ms, self._cpu_ms, self._runq_ms
        self._late_ms, self._cpu_ms, self._runq_ms = array("d"), array("d"), array("d")
        store_on_hub, self._store_on_hub = self._store_on_hub, 0
        if not samples:
            return ProbeStats(0, 0.0, 0.0, 0.0, 0, self.stall_ms, store_on_hub=store_on_hub)
        late = sorted(samples)
        n = len(late)

        def pct(q: float) -> float:
            return round(max(0.0, late[min(n - 1, int(q * n))]), 3)

        very = [i for i, x in enumerate(samples) if x > 5.0]
        own = [x - runq_ms[i] for i, x in enumerate(samples)]
        worst = max(range(n), key=own.__getitem__)
        return ProbeStats(n, pct(0.5), pct(0.99), round(max(0.0, late[-1]), 3),
                          sum(1 for x in late if x > self.stall_ms), self.stall_ms,
                          round(sum(samples[i] for i in very), 1),
                          round(sum(cpu_ms[i] for i in very), 1),
                          round(sum(runq_ms[i] for i in very), 1),
                          round(max(0.0, own[worst]), 3), sum(1 for x in own if x > self.stall_ms),
                          round(cpu_ms[worst], 3), store_on_hub)


def report_on_signal(probe: HubProbe, signum: int) -> None:
    """Log ``esl_hub_probe`` (the figures since the last report) each time ``signum`` comes."""
    from callwarden.log import get_logger

    log = get_logger("callwarden.esl")

    def report() -> None:
        log.info("esl_hub_probe", interval_ms=probe.interval_s * 1000, **probe.take().as_dict())

    gevent.signal_handler(signum, report)
