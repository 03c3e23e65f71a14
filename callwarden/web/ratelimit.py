"""Login rate limit: at most N failed sign-ins per (client IP, username) per window.

In memory, per console process: enough against password guessing at one console; several
console processes behind a balancer each count on their own (documented in README).
"""

from __future__ import annotations

import threading
import time
from collections import deque


class LoginLimiter:
    def __init__(self, attempts: int, window_s: float, clock=time.monotonic):  # type: ignore[no-untyped-def]
        self.attempts, self.window_s, self._clock = attempts, window_s, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        cutoff = self._clock() - self.window_s
        while q and q[0] <= cutoff:
            q.popleft()
        return q

    def blocked(self, ip: str, username: str) -> bool:
        with self._lock:
            return len(self._recent((ip, username.lower()))) >= self.attempts

    def failed(self, ip: str, username: str) -> None:
        with self._lock:
            self._recent((ip, username.lower())).append(self._clock())
            if len(self._failures) > 100_000:  # bound the memory a flood of names can take
                for k in [k for k, q in self._failures.items() if not q]:
                    del self._failures[k]

    def succeeded(self, ip: str, username: str) -> None:
        with self._lock:
            self._failures.pop((ip, username.lower()), None)
