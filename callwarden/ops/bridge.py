"""How the FreeSWITCH adapter's process reports to ``callwarden serve``.

With both PBX sections configured, ``callwarden serve`` runs FreeSWITCH in a child process
(``python -m callwarden.esl``, gevent). The child's metrics and link state must still appear in
the one ``/metrics`` and ``/healthz`` the operator scrapes, so:

* ``serve`` makes a private directory (mode 0700) and passes a Unix socket path in
  ``$CALLWARDEN_REPORT_SOCKET`` to the child;
* the child listens there (:mod:`callwarden.ops.esl_side`) and answers every connection with
  one JSON document: its metric families and its PBX links, then closes;
* ``serve`` reads it on each scrape or health probe (:class:`ChildReport`) and merges it
  (:class:`MergedRegistry`). A child that does not answer makes ``freeswitch.adapter``
  unhealthy and ``callwarden_adapter_up{pbx="freeswitch"}`` 0.

Nothing is pushed: a report is read only when someone asks, so the call path pays nothing.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from callwarden.ops.health import Check, CheckResult
from callwarden.ops.runtime import LinkReading, Runtime

ENV_SOCKET = "CALLWARDEN_REPORT_SOCKET"
#: A report is a few kilobytes; anything near this is not our child talking.
MAX_REPORT_BYTES = 8 * 1024 * 1024
READ_TIMEOUT_S = 2.0
#: The checks of one health probe share one read of the child's report.
HEALTH_REUSE_S = 0.5


def encode_report(registry: Collector, runtime: Runtime) -> bytes:
    """The child's answer: metric families and PBX links as one JSON document."""
    families = []
    for family in registry.collect():
        families.append({
            "name": family.name, "documentation": family.documentation, "type": family.type,
            "unit": family.unit,
            "samples": [[s.name, s.labels, _number(s.value)] for s in family.samples],
        })
    links = [link.as_dict() for link in runtime.read_links()]
    return json.dumps({"families": families, "links": links}, separators=(",", ":")).encode()


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # JSON has no inf/nan


def _float(value: float | str) -> float:
    return float(value)


@dataclass(frozen=True, slots=True)
class Report:
    families: list[Metric]
    links: list[LinkReading]


def decode_report(data: bytes) -> Report:
    doc = json.loads(data)
    families = []
    for item in doc["families"]:
        family = Metric(item["name"], item["documentation"], item["type"], item.get("unit", ""))
        for name, labels, value in item["samples"]:
            family.add_sample(name, {str(k): str(v) for k, v in labels.items()}, _float(value))
        families.append(family)
    links = [LinkReading(str(x["pbx"]), str(x["name"]), str(x["endpoint"]), bool(x["up"]),
                         x.get("connects")) for x in doc["links"]]
    return Report(families, links)


class ChildReport:
    """``serve``'s view of one child process (the FreeSWITCH adapter)."""

    def __init__(self, socket_path: str, pbx: str = "freeswitch",
                 timeout_s: float = READ_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self.pbx = pbx
        self.timeout_s = timeout_s
        self.error: str | None = None
        self._lock = threading.Lock()
        self._last: tuple[float, Report | None] | None = None

    def fetch(self, max_age_s: float = 0.0) -> Report | None:
        """The child's report, or None (and :attr:`error` says why). With ``max_age_s``, a
        report read that recently is reused (one health probe reads the child once)."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] <= max_age_s:
                return self._last[1]
            try:
                report: Report | None = decode_report(self._read())
                self.error = None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                report, self.error = None, f"{type(exc).__name__}: {exc}"[:200]
            self._last = (time.monotonic(), report)
            return report

    def _read(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            sock.connect(self.socket_path)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_REPORT_BYTES:
                    raise ValueError("report too large")
                chunks.append(chunk)
        return b"".join(chunks)

    def health_checks(self, links: Iterable[str] = ()) -> dict[str, Check]:
        """``<pbx>.adapter``: the process answers; ``<pbx>.<link>`` for each link it must keep
        (``esl_inbound`` when the config has one)."""

        def adapter() -> CheckResult:
            report = self.fetch(max_age_s=HEALTH_REUSE_S)
            if report is None:
                return CheckResult(False, f"the {self.pbx} adapter process does not answer "
                                          f"({self.error})")
            return CheckResult(True, "the adapter process answers")

        def link_check(name: str) -> Check:
            def check() -> CheckResult:
                report = self.fetch(max_age_s=HEALTH_REUSE_S)
                if report is None:
                    return CheckResult(False, f"unknown: the {self.pbx} adapter process does "
                                              "not answer")
                for x in report.links:
                    if x.name == name:
                        state = "connected to" if x.up else "not connected to"
                        return CheckResult(x.up, f"{state} {x.endpoint}")
                return CheckResult(False, f"the {self.pbx} adapter reports no {name} link")
            return check

        checks: dict[str, Check] = {f"{self.pbx}.adapter": adapter}
        for name in links:
            checks[f"{self.pbx}.{name}"] = link_check(name)
        return checks


class MergedRegistry:
    """This process's registry plus the children's families, merged by metric name.

    Series are told apart by their ``pbx`` label; should a child report a series this process
    also has (same name and labels), this process's value is kept and the child's dropped,
    so the exposition never carries a series twice.
    """

    def __init__(self, local: Collector, children: Iterable[ChildReport]) -> None:
        self.local = local
        self.children = list(children)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for family in self.local.collect():
            families[family.name] = family
        up = GaugeMetricFamily("callwarden_adapter_up",
                               "1 when the PBX adapter's child process answers its report.",
                               labels=("pbx",))
        for child in self.children:
            report = child.fetch()
            up.add_metric((child.pbx,), 0.0 if report is None else 1.0)
            for family in report.families if report is not None else []:
                mine = families.get(family.name)
                if mine is None:
                    families[family.name] = family
                    continue
                if mine.type != family.type:
                    continue  # a different kind of metric under one name: keep ours only
                seen = {(s.name, tuple(sorted(s.labels.items()))) for s in mine.samples}
                mine.samples.extend(s for s in family.samples
                                    if (s.name, tuple(sorted(s.labels.items()))) not in seen)
        if self.children:
            families[up.name] = up
        return list(families.values())
