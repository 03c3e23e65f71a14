"""The spool: where the PBX writes live recordings, and how to tell when one is finished.

A PBX may still be flushing a file for a moment after it reports the hangup, so a spool file is
only taken once it has not changed for ``settle_s`` seconds ("settled"). Paths and names come
from :mod:`callwarden.recorder.naming`; this module only inverts and observes them.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from callwarden.recorder.naming import check_relpath, spool_path
from callwarden.service.native import native_sleep

__all__ = ["SpoolFile", "iter_spool_files", "probe", "spool_relpath", "spool_root", "wait_settled"]

_POLL_S = 0.1


def spool_root(recording_dir: str | os.PathLike[str]) -> Path:
    """The spool directory under ``recording_dir`` (as :func:`spool_path` lays it out)."""
    return spool_path(recording_dir, "_").parent


def spool_relpath(recording_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> str | None:
    """The storage relpath of a spool file (inverse of :func:`spool_path`); None if outside."""
    root, p = spool_root(recording_dir), Path(path)
    for base, target in ((root, p), (root.resolve(), p.resolve())):
        try:
            return check_relpath(target.relative_to(base).as_posix())
        except ValueError:
            continue
    return None


@dataclass(frozen=True, slots=True)
class SpoolFile:
    """What a spool path holds right now."""

    exists: bool  # a regular file is there
    size: int = 0
    age_s: float = 0.0  # seconds since it last changed

    def settled(self, settle_s: float) -> bool:
        """True once the file has been left alone for ``settle_s`` seconds."""
        return self.exists and self.age_s >= settle_s


def probe(path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> SpoolFile:
    """Look at ``path`` once (a directory or other non-file counts as absent)."""
    try:
        st = os.stat(path)
    except OSError:
        return SpoolFile(False)
    if not stat.S_ISREG(st.st_mode):
        return SpoolFile(False)
    return SpoolFile(True, st.st_size, max(0.0, clock() - st.st_mtime))


def wait_settled(path: str | os.PathLike[str], *, settle_s: float, wait_s: float) -> SpoolFile:
    """Wait up to ``wait_s`` for ``path`` to exist and settle; return what it holds then."""
    deadline = time.monotonic() + wait_s
    while True:
        state = probe(path)
        if state.settled(settle_s):
            return state
        left = deadline - time.monotonic()
        if left <= 0:
            return state
        pause = max(0.01, settle_s - state.age_s) if state.exists else _POLL_S
        native_sleep(min(left, pause))  # callers wait in worker threads (gevent's too)


def iter_spool_files(recording_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Every regular, non-hidden file under the spool (hidden names are writers' temp files)."""
    root = spool_root(recording_dir)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and path.is_file() and not path.is_symlink():
                yield path
