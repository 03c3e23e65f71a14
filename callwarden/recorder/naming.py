"""Names of recording files: the one place that decides where a recording lives.

Layout (relative to a storage root): ``{tenant}/{YYYY}/{MM}/{DD}/{call_id}.{ext}``, the date
taken in the zone of the aware ``started_at`` given. The PBX writes the live file under a
spool area (``<recording dir>/spool/<relpath>``); :func:`finalize` moves it into storage,
whose default local root is ``<recording dir>/store``.
"""

from __future__ import annotations

import functools
import os
import re
from datetime import datetime
from pathlib import Path

__all__ = [
    "SPOOL_DIRNAME",
    "STORE_DIRNAME",
    "check_relpath",
    "recording_relpath",
    "spool_file",
    "spool_path",
    "store_root",
]

SPOOL_DIRNAME = "spool"
STORE_DIRNAME = "store"

_MAX_ID_BYTES = 200  # leaves room for ".ext" and temp-file decorations under NAME_MAX (255)
_EXT_RE = re.compile(r"[A-Za-z0-9]{1,16}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _check_component(value: object, what: str) -> str:
    """Return ``value`` if it is safe as one path component, else raise ValueError.

    Messages say which rule failed but never echo the value (it comes from the PBX).
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if value.startswith("."):
        raise ValueError(f"{what} must not start with '.' (no '.', '..' or hidden names)")
    if "/" in value or "\\" in value:
        raise ValueError(f"{what} must not contain a path separator")
    if _CONTROL_RE.search(value):  # a regex, not a loop per character: on every call set-up
        raise ValueError(f"{what} must not contain NUL or control characters")
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
        raise ValueError(f"{what} is longer than {_MAX_ID_BYTES} bytes")
    return value


def recording_relpath(tenant: str, call_id: str, started_at: datetime, ext: str = "wav") -> str:
    """Relative path of a call's recording: ``tenant/YYYY/MM/DD/call_id.ext``."""
    _check_component(tenant, "tenant id")
    _check_component(call_id, "call id")
    if not isinstance(ext, str) or not _EXT_RE.fullmatch(ext):
        raise ValueError("extension must be 1-16 ASCII letters or digits")
    if started_at.tzinfo is None or started_at.utcoffset() is None:
        raise ValueError("started_at must be a timezone-aware datetime")
    return f"{tenant}/{started_at:%Y/%m/%d}/{call_id}.{ext}"


def check_relpath(relpath: str) -> str:
    """Return ``relpath`` if it is a relative POSIX path that stays inside its root."""
    if not isinstance(relpath, str) or not relpath:
        raise ValueError("relative path must be a non-empty string")
    if relpath.startswith("/") or "\\" in relpath:
        raise ValueError("relative path must be relative and use '/' separators")
    for part in relpath.split("/"):
        _check_component(part, "path component")
    return relpath


def spool_path(recording_dir: str | os.PathLike[str], relpath: str) -> Path:
    """Where the PBX writes the live file: ``<recording_dir>/spool/<relpath>``."""
    return Path(recording_dir) / SPOOL_DIRNAME / check_relpath(relpath)


def spool_file(recording_dir: str | os.PathLike[str], relpath: str) -> str:
    """``str(spool_path(recording_dir, relpath))``, for the call set-up path: the directory
    is normalised once, the checked relative path (no empty, ``.`` or ``..`` parts) appended
    as text (pathlib cost ~0.1 ms per call there)."""
    return _spool_prefix(os.fspath(recording_dir)) + check_relpath(relpath)


@functools.lru_cache(maxsize=32)
def _spool_prefix(recording_dir: str) -> str:
    return os.path.join(str(Path(recording_dir) / SPOOL_DIRNAME), "")


def store_root(recording_dir: str | os.PathLike[str]) -> Path:
    """Default root of :class:`LocalStorage`: ``<recording_dir>/store`` (apart from the spool)."""
    return Path(recording_dir) / STORE_DIRNAME
