"""The storage interface every backend implements, and its errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from ..streams import Readable

__all__ = [
    "AlreadyExists",
    "LocationNotFound",
    "RetentionLocked",
    "Source",
    "Storage",
    "StorageError",
    "require_aware",
]

Source = str | os.PathLike[str] | Readable
"""What ``put`` stores: a file path, or a readable binary stream consumed once to its end."""


class StorageError(Exception):
    """A storage backend could not do what was asked."""


class AlreadyExists(StorageError):
    """``put`` refused to replace a stored recording (evidence is never overwritten)."""

    def __init__(self, location: str) -> None:
        super().__init__(f"a recording is already stored at {location}")
        self.location = location


class LocationNotFound(StorageError):
    """No recording at this location."""

    def __init__(self, location: str) -> None:
        super().__init__(f"no recording at {location}")
        self.location = location


class RetentionLocked(StorageError):
    """The store refuses to delete a recording still under retention (or legal hold)."""

    def __init__(self, location: str, retain_until: datetime | None, legal_hold: bool = False):
        until = retain_until.isoformat() if retain_until else "unknown"
        hold = ", legal hold on" if legal_hold else ""
        super().__init__(f"{location} is locked (retain until {until}{hold}); delete refused")
        self.location = location
        self.retain_until = retain_until
        self.legal_hold = legal_hold


@runtime_checkable
class Storage(Protocol):
    """Where finalized recordings live. Locations are opaque strings owned by the backend."""

    def put(self, relpath: str, src: Source, retain_until: datetime) -> str:
        """Store ``src`` durably and atomically under ``relpath``; return its location.

        Raises AlreadyExists rather than overwrite; leaves nothing behind when it fails.
        """
        ...

    def open(self, location: str) -> BinaryIO:
        """Stream the stored bytes (close it when done)."""
        ...

    def delete(self, location: str) -> None:
        """Remove a recording; RetentionLocked if the store still protects it."""
        ...

    def exists(self, location: str) -> bool:
        """True if a recording is stored at ``location``."""
        ...

    def size(self, location: str) -> int:
        """Stored size in bytes (of the encrypted file, for an encrypted recording)."""
        ...

    def iter_locations(self) -> Iterator[str]:
        """Every stored recording's location."""
        ...

    def describe(self) -> str:
        """One line for logs and reports naming the backend and where it stores."""
        ...


def require_aware(when: datetime, what: str = "retain_until") -> datetime:
    """Return ``when`` if timezone-aware, else raise ValueError."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return when
