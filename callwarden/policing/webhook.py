"""Optional webhook for alerts: POSTed from a background thread, after the pass has committed.

Nothing waits for it: the pass hands the payload over and returns (so a dead or slow endpoint
can neither delay the pass nor, much less, a call decision). Each delivery is tried
``1 + retries`` times with a ``timeout_s`` per try and exponential backoff; 2xx is success,
4xx other than 408/429 is final. The body is JSON; with ``secret`` set, the header
``X-Callwarden-Signature: sha256=<hex HMAC-SHA256 of the body>`` lets the receiver verify it;
credentials in the URL (``https://user:pw@host/...``) are sent as HTTP Basic authentication.
Stdlib HTTP only (``urllib``): no extra dependency for a few POSTs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from callwarden import __version__
from callwarden.config.model import WebhookConfig
from callwarden.log import get_logger

log = get_logger("callwarden.policing.webhook")

QUEUE_LIMIT = 1000


@dataclass
class DeliveryStats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)


class WebhookNotifier:
    """A queue and one daemon thread that delivers alert payloads to ``cfg.url``."""

    def __init__(self, cfg: WebhookConfig):
        self.cfg = cfg
        self.stats = DeliveryStats()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._url, self._auth = _split_credentials(cfg.url)

    def notify(self, payload: dict[str, Any]) -> None:
        """Queue one payload; never blocks (a full queue drops it, with a log line)."""
        self._start()
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.stats.dropped += 1
            log.error("webhook_dropped", reason="queue full", alert=payload.get("alert", {}).get("id"))

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to drain; True if it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return self._queue.unfinished_tasks == 0

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._worker, name="callwarden-webhook",
                                                daemon=True)
                self._thread.start()

    def _worker(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                self._deliver(payload)
            finally:
                self._queue.task_done()

    def _deliver(self, payload: dict[str, Any]) -> bool:
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str).encode()
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": f"callwarden/{__version__}",
                   "X-Callwarden-Event": str(payload.get("event", "alert"))}
        if self._auth:
            headers["Authorization"] = self._auth
        if self.cfg.secret:
            digest = hmac.new(self.cfg.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Callwarden-Signature"] = f"sha256={digest}"
        alert_id = payload.get("alert", {}).get("id")
        attempts = 1 + self.cfg.retries
        error = ""
        for attempt in range(1, attempts + 1):
            final = False
            try:
                req = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:  # noqa: S310
                    resp.read(65536)
                    status = resp.status
                if 200 <= status < 300:
                    self.stats.delivered += 1
                    log.info("webhook_delivered", alert=alert_id, status=status, attempt=attempt)
                    return True
                error = f"HTTP {status}"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                final = 400 <= exc.code < 500 and exc.code not in (408, 429)
            except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS, bad URL
                error = f"{type(exc).__name__}: {exc}"[:200]
            log.warning("webhook_attempt_failed", alert=alert_id, attempt=attempt, of=attempts,
                        error=error)
            if final or attempt == attempts or self._closed.is_set():
                break
            self._closed.wait(self.cfg.backoff_s * (2 ** (attempt - 1)))
        self.stats.failed += 1
        self.stats.errors.append(error)
        log.error("webhook_failed", alert=alert_id, error=error, url=_safe_url(self.cfg.url))
        return False


def _split_credentials(url: str) -> tuple[str, str | None]:
    """``http://user:pw@host/p`` -> (``http://host/p``, a Basic ``Authorization`` value)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


def _safe_url(url: str) -> str:
    """The URL without credentials or query (which may carry tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
