"""LocalStorage: recordings as files under one root directory (the default backend)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from ..naming import check_relpath
from ..streams import COPY_BUFSIZE, Readable
from .base import AlreadyExists, LocationNotFound, Source, require_aware

__all__ = ["LocalStorage"]

_SCHEME = "file:"
_FILE_MODE = 0o640
_DIR_MODE = 0o750
# errnos meaning "this filesystem cannot hard-link": fall back to rename.
_NO_LINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    """Files under ``root``; location ``file:<relpath>``.

    ``put`` writes a hidden temp file beside the target, fsyncs it, links it into place (never
    replacing an existing file) and fsyncs the directory. Files are 0640, directories 0750
    (less the umask). Retention is not enforced here: the caller's purge decides.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        if create:
            os.makedirs(root, mode=_DIR_MODE, exist_ok=True)
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"storage root {self.root} is not a directory")

    # -- locations ---------------------------------------------------------------------------

    def _path(self, relpath: str) -> Path:
        path = self.root / check_relpath(relpath)
        if not path.parent.resolve().is_relative_to(self.root):
            raise ValueError(f"{relpath} escapes the storage root (symlinked directory?)")
        return path

    def _path_of(self, location: str) -> Path:
        if not isinstance(location, str) or not location.startswith(_SCHEME):
            raise ValueError("not a local storage location (expected file:<relpath>)")
        return self._path(location[len(_SCHEME) :])

    # -- Storage -----------------------------------------------------------------------------

    def put(self, relpath: str, src: Source, retain_until: datetime) -> str:
        """Copy ``src`` to ``root/relpath`` atomically and durably; return ``file:<relpath>``."""
        require_aware(retain_until)
        target = self._path(relpath)
        location = _SCHEME + relpath
        if target.exists():
            raise AlreadyExists(location)
        os.makedirs(target.parent, mode=_DIR_MODE, exist_ok=True)
        self._path(relpath)  # re-check containment now that the directories exist
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), _FILE_MODE)
                self._copy_into(src, out)
                out.flush()
                os.fsync(out.fileno())
            self._link_into_place(tmp, target, location)
            _fsync_dir(target.parent)
        finally:
            with contextlib.suppress(OSError):  # a stray hidden .part file is harmless
                tmp.unlink()
        return location

    @staticmethod
    def _copy_into(src: Source, out: BinaryIO) -> None:
        if isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, COPY_BUFSIZE)
            return
        reader: Readable = src
        while data := reader.read(COPY_BUFSIZE):
            out.write(data)

    @staticmethod
    def _link_into_place(tmp: Path, target: Path, location: str) -> None:
        """Make ``tmp`` visible as ``target`` atomically, refusing to replace a file."""
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise AlreadyExists(location) from None
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            if target.exists():  # no hard links here: rename, after a (racy) check
                raise AlreadyExists(location) from None
            os.replace(tmp, target)

    def open(self, location: str) -> BinaryIO:
        """Open the stored file for reading."""
        try:
            return open(self._path_of(location), "rb")  # noqa: SIM115 - caller closes
        except FileNotFoundError:
            raise LocationNotFound(location) from None

    def delete(self, location: str) -> None:
        """Remove the stored file (no retention check: local files have no lock)."""
        path = self._path_of(location)
        try:
            path.unlink()
        except FileNotFoundError:
            raise LocationNotFound(location) from None
        _fsync_dir(path.parent)

    def exists(self, location: str) -> bool:
        """True if the file exists."""
        return self._path_of(location).is_file()

    def size(self, location: str) -> int:
        """Size of the stored file in bytes."""
        try:
            return self._path_of(location).stat().st_size
        except FileNotFoundError:
            raise LocationNotFound(location) from None

    def iter_locations(self) -> Iterator[str]:
        """Locations of all stored files, sorted, skipping hidden (temporary) files."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath)
            for name in sorted(filenames):
                path = base / name
                if name.startswith(".") or path.is_symlink():
                    continue
                yield _SCHEME + path.relative_to(self.root).as_posix()

    def describe(self) -> str:
        """``local filesystem at <root>``."""
        return f"local filesystem at {self.root}"
