"""Decisions taken while the store was unreachable, kept on local disk until it is back.

When the store fails, outbound calls are denied (POLICY_UNAVAILABLE) without a CDR: the journal
holds those denials (JSON lines, fsynced before the calls are answered) so that they reach the store, and therefore
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
        self.add_many([entry])

    def add_many(self, entries: list[dict[str, Any]]) -> None:
        """Append entries durably with one write and one fsync: a batch of late decisions
        must not cost the decision writer an fsync each. Never raises, as :meth:`add`."""
        if not entries:
            return
        data = "".join(json.dumps(e, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"
                       for e in entries).encode()
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._pending = True
            except OSError:
                pass  # the caller has already logged the denials; nothing more can be kept

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

    def drain(self, store: Callable[[list[dict[str, Any]]], int], limit: int | None = None) -> int:
        """Hand pending entries to ``store`` (which must skip ones it already has, and returns
        how many it stored); returns that count. ``limit``: at most that many entries this
        time (the rest stay for the next call), so that a long outage's journal is replayed
        in pieces between decisions, not in one transaction they would wait behind.

        Entries are removed only after ``store`` returns; if it raises, they stay for the next
        attempt (or are :meth:`set_aside`).
        """
        with self._lock:
            if not self.replaying.exists():
                if not self.path.exists():
                    self._pending = False
                    return 0
                os.replace(self.path, self.replaying)
            lines = self.replaying.read_text(encoding="utf-8", errors="replace").splitlines()
            now, rest = (lines, []) if limit is None else (lines[:limit], lines[limit:])
            entries = []
            for line in now:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a crash mid-write: nothing usable in it
            stored = store(entries)
            if rest:
                _rewrite(self.replaying, rest)
            else:
                self.replaying.unlink()
            self._pending = bool(rest) or self.path.exists()
            return stored


def _rewrite(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines``, atomically and durably."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
