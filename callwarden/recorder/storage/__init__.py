"""Storage backends for finalized recordings: one interface, local files or S3."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    AlreadyExists,
    LocationNotFound,
    RetentionLocked,
    Source,
    Storage,
    StorageError,
)
from .factory import storage_from_config
from .local import LocalStorage

if TYPE_CHECKING:
    from .s3 import S3Storage

__all__ = [
    "AlreadyExists",
    "LocalStorage",
    "LocationNotFound",
    "RetentionLocked",
    "S3Storage",
    "Source",
    "Storage",
    "StorageError",
    "storage_from_config",
]


def __getattr__(name: str) -> Any:
    """Import S3Storage (and boto3) only when first used."""
    if name == "S3Storage":
        from .s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
