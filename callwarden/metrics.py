"""Prometheus metrics of one callwarden process, in a registry of its own (never the global
default registry, so tests and several servers in one process never share counters).

What is measured, and where:

* decisions (``callwarden_decisions_total``, ``callwarden_decision_reasons_total``,
  ``callwarden_decision_duration_seconds``): counted by the :class:`Metrics` object that
  ``instrument()`` installs as the Enforcer's observer. Two counter increments and one
  histogram observation per call, on label children cached after the first call;
* open sessions and PBX links (``callwarden_sessions_open``, ``callwarden_pbx_link_up`` ...):
  read from the adapters' own state at scrape time (:mod:`callwarden.ops.runtime`), so the
  call path pays nothing for them;
* detector passes run inside ``serve``: the detector's observer (:meth:`Metrics.detector_pass`);
* recording failures, purge deletions and policing alerts: from the audit log, at scrape time
  (:mod:`callwarden.ops.auditcount`): they happen in several processes (the adapters,
  ``callwarden purge`` under a systemd timer ...) and the audit log sees them all.

Every metric of the decision path carries a ``pbx`` label: the FreeSWITCH adapter runs in a
process of its own, and ``callwarden serve`` merges its metrics into one scrape
(:mod:`callwarden.ops.bridge`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from callwarden import __version__
from callwarden.log import get_logger
from callwarden.ops.runtime import Runtime

if TYPE_CHECKING:
    from callwarden.policing.runner import PassResult
    from callwarden.service.enforcer import Enforcer, Outcome

log = get_logger("callwarden.metrics")

#: Decision latency buckets (seconds): call setup budgets are counted in milliseconds, and the
#: default ``decision_timeout_ms`` (500 ms) must fall on a bucket boundary.
DECISION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: ``reason`` label of an allowed call (Prometheus has no empty label value).
NO_REASON = "none"


class EnforcerObserver(Protocol):
    """What the Enforcer tells its observer. Must be fast and must not raise."""

    def decided(self, route: str, pbx: str, outcome: Outcome, seconds: float) -> None: ...


class Metrics:
    """The metrics of one process: decisions, recordings, runtime state, process figures."""

    def __init__(self, *, mode: str, runtime: Runtime | None = None,
                 process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.runtime = runtime or Runtime()
        r = self.registry
        self.decisions = Counter(
            "callwarden_decisions",
            "Outbound call decisions by PBX, route, decision, first reason code (the one that "
            "picks the hangup cause; 'none' for an allow) and whether the call was let "
            "through (observe mode lets denied calls through).",
            ("pbx", "route", "decision", "reason", "let_through"), registry=r)
        self.reasons = Counter(
            "callwarden_decision_reasons",
            "Failing rules of denied decisions: every reason code of every denial.",
            ("pbx", "route", "reason"), registry=r)
        self.latency = Histogram(
            "callwarden_decision_duration_seconds",
            "Time from the call reaching callwarden to its decision being durable (CDR and "
            "audit entry committed), or to the fail-closed deny.",
            ("pbx", "route"), buckets=DECISION_BUCKETS, registry=r)
        self.detector_runs = Counter(
            "callwarden_detector_runs",
            "Seat-rental detector passes run inside this process (policing.enabled), by outcome: "
            "ok, skipped (another node held the pass lock) or failed (see policing_pass_failed).",
            ("outcome",), registry=r)
        self.detector_last_success = Gauge(
            "callwarden_detector_last_success_timestamp_seconds",
            "Unix time the last detector pass of this process completed (0: none yet).",
            registry=r)
        self.detector_duration = Gauge(
            "callwarden_detector_last_duration_seconds",
            "How long the last completed detector pass took.", registry=r)
        info = Gauge("callwarden_info", "Version and enforcement mode of this process (value 1).",
                     ("version", "mode"), registry=r)
        info.labels(__version__, mode).set(1)
        r.register(RuntimeCollector(self.runtime))
        if process_metrics:
            ProcessCollector(registry=r)
        self._children: dict[tuple[str, str, str, str, bool], tuple[object, ...]] = {}
        self._reason_children: dict[tuple[str, str, str], Any] = {}
        self._failed = False

    def instrument(self, enforcer: Enforcer) -> Enforcer:
        """Make this object the Enforcer's observer; returns the enforcer."""
        enforcer.observer = self
        return enforcer

    # -- EnforcerObserver -----------------------------------------------------------------------

    def decided(self, route: str, pbx: str, outcome: Outcome, seconds: float) -> None:
        try:
            self._count(route, pbx, outcome, seconds)
        except Exception:  # a metrics bug must never turn into a failed call decision
            if not self._failed:
                self._failed = True
                log.exception("metrics_observer_failed", note="further failures not logged")

    def _count(self, route: str, pbx: str, outcome: Outcome, seconds: float) -> None:
        d = outcome.decision
        codes = d.codes
        key = (pbx, route, d.decision, codes[0] if codes else NO_REASON, outcome.let_through)
        children = self._children.get(key)
        if children is None:  # first call with these labels: resolve the children once
            children = (self.decisions.labels(pbx, route, key[2], key[3],
                                              "true" if key[4] else "false"),
                        self.latency.labels(pbx, route))
            self._children[key] = children
        counter, histogram = children
        counter.inc()  # type: ignore[attr-defined]
        histogram.observe(seconds)  # type: ignore[attr-defined]
        for code in codes:
            reason_child = self._reason_children.get((pbx, route, code))
            if reason_child is None:
                reason_child = self._reason_children[(pbx, route, code)] = \
                    self.reasons.labels(pbx, route, code)
            reason_child.inc()


    def detector_pass(self, result: PassResult | None) -> None:
        """The policing detector's observer (callwarden.policing.runner.Detector.observer)."""
        try:
            if result is None:
                self.detector_runs.labels("failed").inc()
            elif not result.ran:
                self.detector_runs.labels("skipped").inc()
            else:
                self.detector_runs.labels("ok").inc()
                self.detector_last_success.set_to_current_time()
                self.detector_duration.set(result.duration_s)
        except Exception:  # never let metrics break the detector's schedule
            log.exception("metrics_observer_failed", observer="detector")


class RuntimeCollector:
    """Open sessions and PBX links, read from the adapters when scraped."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def describe(self) -> Iterable[Metric]:
        return self._families([], [])

    def collect(self) -> Iterable[Metric]:
        return self._families(self.runtime.read_servers(), self.runtime.read_links())

    @staticmethod
    def _families(servers: list, links: list) -> Iterator[Metric]:  # type: ignore[type-arg]
        sessions = GaugeMetricFamily(
            "callwarden_sessions_open",
            "PBX conversations in progress (FastAGI sessions, outbound Event Socket channels).",
            labels=("pbx", "server"))
        refused = CounterMetricFamily(
            "callwarden_sessions_refused",
            "Connections closed on arrival because the server was at its session limit.",
            labels=("pbx", "server"))
        up = GaugeMetricFamily(
            "callwarden_pbx_link_up",
            "1 while the connection to the PBX (AMI, inbound Event Socket) is up and logged in.",
            labels=("pbx", "link"))
        connects = CounterMetricFamily(
            "callwarden_pbx_link_connects",
            "Sessions established on the PBX link since start (more than one: reconnections).",
            labels=("pbx", "link"))
        for s in servers:
            if s.open_sessions is not None:
                sessions.add_metric((s.pbx, s.name), s.open_sessions)
            if s.refused is not None:
                refused.add_metric((s.pbx, s.name), s.refused)
        for link in links:
            up.add_metric((link.pbx, link.name), 1.0 if link.up else 0.0)
            if link.connects is not None:
                connects.add_metric((link.pbx, link.name), link.connects)
        yield from (sessions, refused, up, connects)
