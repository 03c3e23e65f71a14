"""How late the gevent hub answers: a greenlet that sleeps a fixed interval in a loop and
records by how much each wake-up came late.

Everything the FreeSWITCH process does for its calls runs on one hub; anything that holds it
(store work done on the hub instead of in a native thread, a long parse, a native thread
keeping the GIL) makes every call wait, and shows here as a late wake-up. Used by
``bench/bench_esl.py`` and the burst test through ``tests.esl.harness --hub-probe``.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass

import gevent


@dataclass(frozen=True, slots=True)
class ProbeStats:
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    stalls: int  # wake-ups later than the stall threshold
    stall_ms: float

    def as_dict(self) -> dict[str, float | int]:
        return {"samples": self.samples, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "max_ms": self.max_ms, "stalls": self.stalls, "stall_ms": self.stall_ms}


class HubProbe:
    """``start()`` on the hub; :meth:`take` returns the lateness seen since the last take."""

    def __init__(self, interval_s: float = 0.001, stall_ms: float = 50.0,
                 max_samples: int = 600_000):
        self.interval_s = interval_s
        self.stall_ms = stall_ms
        self.max_samples = max_samples  # 10 minutes at 1 kHz: 4.8 MB of doubles at most
        self._late_ms = array("d")
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> HubProbe:
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        interval, clock = self.interval_s, time.perf_counter
        while True:
            before = clock()
            gevent.sleep(interval)
            late = self._late_ms
            if len(late) < self.max_samples:
                late.append((clock() - before - interval) * 1000)

    def take(self) -> ProbeStats:
        """The figures since the previous take (or start), and start over."""
        late, self._late_ms = sorted(self._late_ms), array("d")
        if not late:
            return ProbeStats(0, 0.0, 0.0, 0.0, 0, self.stall_ms)
        n = len(late)

        def pct(q: float) -> float:
            return round(max(0.0, late[min(n - 1, int(q * n))]), 3)

        return ProbeStats(n, pct(0.5), pct(0.99), round(max(0.0, late[-1]), 3),
                          sum(1 for x in late if x > self.stall_ms), self.stall_ms)


def report_on_signal(probe: HubProbe, signum: int) -> None:
    """Log ``esl_hub_probe`` (the figures since the last report) each time ``signum`` comes."""
    from callwarden.log import get_logger

    log = get_logger("callwarden.esl")

    def report() -> None:
        log.info("esl_hub_probe", interval_ms=probe.interval_s * 1000, **probe.take().as_dict())

    gevent.signal_handler(signum, report)
