"""Recording lifecycle: name, measure, encrypt, store and verify call recordings.

Knows nothing of SQL or PBXes: callers pass plain values and get plain dataclasses back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .audio import audio_duration
from .crypto import (
    DecryptingReader,
    DecryptionError,
    EncryptingReader,
    Key,
    KeyLoadError,
    Keyring,
    decrypt_stream,
    encrypt_stream,
    key_id_for,
    load_key,
    make_keyring,
)
from .errors import Reason, RecordingEmpty, RecordingError, RecordingMissing
from .finalize import FinalizedRecording, finalize, hash_location, open_recording
from .naming import check_relpath, recording_relpath, spool_path, store_root
from .storage import (
    AlreadyExists,
    LocalStorage,
    LocationNotFound,
    RetentionLocked,
    Storage,
    StorageError,
    storage_from_config,
)

if TYPE_CHECKING:
    from .storage.s3 import S3Storage

__all__ = [
    "AlreadyExists",
    "DecryptingReader",
    "DecryptionError",
    "EncryptingReader",
    "FinalizedRecording",
    "Key",
    "KeyLoadError",
    "Keyring",
    "LocalStorage",
    "LocationNotFound",
    "Reason",
    "RecordingEmpty",
    "RecordingError",
    "RecordingMissing",
    "RetentionLocked",
    "S3Storage",
    "Storage",
    "StorageError",
    "audio_duration",
    "check_relpath",
    "decrypt_stream",
    "encrypt_stream",
    "finalize",
    "hash_location",
    "key_id_for",
    "load_key",
    "make_keyring",
    "open_recording",
    "recording_relpath",
    "spool_path",
    "storage_from_config",
    "store_root",
]


def __getattr__(name: str) -> Any:
    """Import S3Storage (and boto3) only when first used."""
    if name == "S3Storage":
        from .storage.s3 import S3Storage

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
