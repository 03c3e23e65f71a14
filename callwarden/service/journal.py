"""Decisions taken while the store was unreachable, kept on local disk until it is back.

When the store fails, outbound calls are denied (POLICY_UNAVAILABLE) without a CDR: the journal
holds those denials (one fsynced JSON line each) so that they reach the store, and therefore
the auditors, once it answers again. Replay is crash-safe: the file is renamed before it is
read, a replay interrupted half-way is picked up again, and rows already stored are skipped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class OutageJournal:
    """An append-only JSON-lines file with an atomic hand-over for replay."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.replaying = self.path.with_suffix(self.path.suffix + ".replaying")
        self._lock = threading.Lock()
        self._pending = self.path.exists() or self.replaying.exists()

    @property
    def pending(self) -> bool:
        """True when entries wait for replay (checked without touching the disk)."""
        return self._pending

    def add(self, entry: dict[str, Any]) -> None:
        """Append one entry durably; never raises (a full disk must not break call handling)."""
        line = json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                try:
                    os.write(fd, line.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._pending = True
            except OSError:
                pass  # the caller has already logged the denial; nothing more can be kept

    def set_aside(self) -> Path | None:
        """Move the batch being replayed out of the way (``<journal>.rejected-<UTC time>``):
        the store refused it, and retrying it would block every later replay. Returns where
        it went (None if there was nothing)."""
        with self._lock:
            if not self.replaying.exists():
                return None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = self.path.with_name(f"{self.path.name}.rejected-{stamp}")
            n = 1
            while target.exists():
                n += 1
                target = self.path.with_name(f"{self.path.name}.rejected-{stamp}-{n}")
            os.replace(self.replaying, target)
            self._pending = self.path.exists()
            return target

    def drain(self, store: Callable[[list[dict[str, Any]]], int]) -> int:
        """Hand every pending entry to ``store`` (which must skip ones it already has, and
        returns how many it stored); returns that count.

        The file is removed only after ``store`` returns; if it raises, the entries stay for
        the next attempt (or are :meth:`set_aside`).
        """
        with self._lock:
            if not self.replaying.exists():
                if not self.path.exists():
                    self._pending = False
                    return 0
                os.replace(self.path, self.replaying)
            entries = []
            for line in self.replaying.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a crash mid-write: nothing usable in it
            stored = store(entries)
            self.replaying.unlink()
            self._pending = self.path.exists()
            return stored
