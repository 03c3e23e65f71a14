"""Small helpers for the operations tests: free ports, HTTP over real sockets, Prometheus text."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.sim.asterisk import AmiServer


def free_port() -> int:
    """A TCP port nothing listens on right now (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, ctype, body = http_get(f"http://127.0.0.1:{port}/healthz")
    assert ctype == "application/json", ctype
    return status, json.loads(body)


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, keyed by (sample name, labels); parsing proves the
    exposition is valid Prometheus text."""
    status, ctype, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"series exposed twice: {key}"
            out[key] = s.value
    return out


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


AMI_USER, AMI_SECRET = "callwarden", "s3cret"


class AmiThread:
    """tests/sim's AmiServer on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: AmiServer = self.run(AmiServer(users={AMI_USER: AMI_SECRET},
                                                    login_failure_delay=0).start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def logged_in(self) -> int:
        return self.server.logged_in

    def close(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
