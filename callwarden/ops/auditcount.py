"""Metrics counted from the audit log: events that happen in more than one process.

Recording failures are written by both adapters and by the recording service, purges by
``callwarden purge`` (often a systemd timer), detector runs by ``callwarden police`` or by
``serve`` itself. Every one of them lands in the hash-chained audit log, so the one process
that is scraped counts them there, for every process at once.

Counting is incremental: the first read counts each tracked action over the whole log (an
index range on ``audit_log.action``); later reads only look at entries past the last sequence
number seen (a primary-key range), at most once per ``min_interval_s``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, bindparam, func, select

from callwarden.log import get_logger
from callwarden.ops.health import Blocking, LockFactory, run_here
from callwarden.store.models import AuditEntry

log = get_logger("callwarden.metrics")


@dataclass(frozen=True, slots=True)
class Tracked:
    """An audit action and the metric it feeds: ``family{label=value}``."""

    action: str
    family: str  # counter family name, without _total
    documentation: str
    label: tuple[str, str] | None = None  # e.g. ("kind", "recording")
    last_family: str | None = None  # gauge: Unix time of the newest such entry
    last_documentation: str = ""


@dataclass(slots=True)
class _Tally:
    count: int = 0
    last_at: dt.datetime | None = None


class AuditCounter:
    """Per-action entry counts and newest timestamps, kept up to date from the audit log."""

    def __init__(self, engine: Engine, tracked: Iterable[Tracked], *,
                 run_blocking: Blocking = run_here, min_interval_s: float = 5.0,
                 lock: LockFactory = threading.Lock) -> None:
        self.engine = engine
        self.tracked = list(tracked)
        self.run_blocking = run_blocking
        self.min_interval_s = min_interval_s
        self._actions = sorted({t.action for t in self.tracked})
        self._tallies = {a: _Tally() for a in self._actions}
        self._last_seq: int | None = None  # None: nothing read yet
        self._read_at = float("-inf")
        self._ok = False
        self._lock = lock()
        self._top = select(func.max(AuditEntry.seq))
        self._since = (select(AuditEntry.action, func.count(), func.max(AuditEntry.at))
                       .where(AuditEntry.action.in_(self._actions),
                              AuditEntry.seq > bindparam("low"), AuditEntry.seq <= bindparam("top"))
                       .group_by(AuditEntry.action))

    @property
    def ever_read(self) -> bool:
        return self._last_seq is not None

    def refresh(self) -> bool:
        """Read what is new (at most once per ``min_interval_s``); False if the store failed."""
        with self._lock:
            if time.monotonic() - self._read_at < self.min_interval_s:
                return self._ok
            try:
                self.run_blocking(self._read)
                self._ok = True
            except Exception as exc:  # the store is down: keep the last figures, say so once
                if self._ok or self._last_seq is None:
                    log.warning("audit_metrics_unavailable", error=type(exc).__name__)
                self._ok = False
            self._read_at = time.monotonic()
            return self._ok

    def _read(self) -> None:
        with self.engine.connect() as conn, conn.begin():
            top = conn.execute(self._top).scalar() or 0
            low = self._last_seq or 0
            if top > low:
                for action, count, last_at in conn.execute(self._since, {"low": low, "top": top}):
                    tally = self._tallies[action]
                    tally.count += int(count)
                    if last_at is not None:
                        last_at = _aware(last_at)
                        if tally.last_at is None or last_at > tally.last_at:
                            tally.last_at = last_at
            self._last_seq = top

    def families(self) -> Iterator[Metric]:
        counters: dict[str, CounterMetricFamily] = {}
        gauges: dict[str, GaugeMetricFamily] = {}
        for t in self.tracked:
            labels = (t.label[0],) if t.label else ()
            values = (t.label[1],) if t.label else ()
            if t.family not in counters:
                counters[t.family] = CounterMetricFamily(t.family, t.documentation, labels=labels)
            tally = self._tallies[t.action]
            counters[t.family].add_metric(values, tally.count)
            if t.last_family:
                if t.last_family not in gauges:
                    gauges[t.last_family] = GaugeMetricFamily(
                        t.last_family, t.last_documentation, labels=labels)
                if tally.last_at is not None:
                    gauges[t.last_family].add_metric(values, tally.last_at.timestamp())
        yield from counters.values()
        yield from gauges.values()


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


class AuditCollector:
    """A prometheus collector over an :class:`AuditCounter` (nothing when never read)."""

    def __init__(self, counter: AuditCounter) -> None:
        self.counter = counter

    def collect(self) -> Iterable[Metric]:
        ok = self.counter.refresh()
        if not ok and not self.counter.ever_read:
            return []
        return list(self.counter.families())


_PURGED = ("Records deleted by the retention purge (callwarden purge), by kind, counted from "
           "the audit log (one entry per deletion).")
_PURGED_LAST = ("Unix time of the newest purge deletion of that kind. With a daily timer, an age "
                "well past a day while records are due means the purge is not running.")

#: What callwarden counts from its audit log. ``recording_failed`` is written when a recording
#: cannot start (an outbound call is then denied) and when a file never reaches storage.
TRACKED: tuple[Tracked, ...] = (
    Tracked("recording_failed", "callwarden_recording_failures",
            "Recordings that failed (could not start, or never reached storage), counted from "
            "the audit log over every process."),
    *(Tracked(f"{kind}_purged", "callwarden_purged", _PURGED, ("kind", kind),
              "callwarden_purge_last_deletion_timestamp_seconds", _PURGED_LAST)
      for kind in ("recording", "cdr", "consent")),
    Tracked("policing.alert", "callwarden_policing_alerts",
            "Alerts raised by the seat-rental detector (warnings and suspensions), counted from "
            "the audit log over every process."),
)
