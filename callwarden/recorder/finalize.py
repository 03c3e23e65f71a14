"""Finalize a recording: hash, optionally encrypt, store durably, then drop the spool file."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from datetime import datetime

from .audio import audio_duration
from .crypto import (
    MAGIC,
    DecryptingReader,
    DecryptionError,
    EncryptingReader,
    Key,
    Keyring,
    make_keyring,
)
from .errors import RecordingEmpty, RecordingError, RecordingMissing
from .naming import check_relpath
from .storage.base import AlreadyExists, Storage, StorageError, require_aware
from .streams import HashingReader, PrefixedReader, StreamReader, hash_stream, read_exactly

__all__ = ["FinalizedRecording", "finalize", "hash_location", "open_recording"]

log = logging.getLogger(__name__)

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


@dataclass(frozen=True, slots=True)
class FinalizedRecording:
    """What the service layer records about a stored recording."""

    location: str
    size: int  # plaintext bytes
    sha256: str  # hex sha256 of the plaintext audio
    duration_s: float | None
    encrypted: bool
    key_id: str | None


def _check_source(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RecordingMissing(f"recording file {path} does not exist", path=path) from None
    except OSError as e:
        raise _os_error(e, path, "checking the recording file") from e
    if not stat.S_ISREG(st.st_mode):
        raise RecordingMissing(f"recording file {path} is not a regular file", path=path)
    if st.st_size == 0:
        raise RecordingEmpty(f"recording file {path} is empty (nothing was recorded)", path=path)


def _os_error(e: OSError, path: str, doing: str) -> RecordingError:
    """Turn an OSError into a RecordingError whose reason and message say what happened."""
    where = os.fsdecode(e.filename) if e.filename else path
    if e.errno in _NO_SPACE:
        return RecordingError(
            f"no space left on device while {doing} (source {path})", reason="no_space", path=where
        )
    if e.errno in _DENIED:
        return RecordingError(
            f"permission denied on {where} while {doing}", reason="permission_denied", path=where
        )
    if isinstance(e, FileNotFoundError) and where == path:
        return RecordingMissing(f"recording file {path} disappeared while {doing}", path=path)
    return RecordingError(
        f"I/O error on {where} while {doing}: {e.strerror or e}", reason="storage_error", path=where
    )


def finalize(
    src_path: str | os.PathLike[str],
    *,
    storage: Storage,
    relpath: str,
    retain_until: datetime,
    key: Key | None = None,
) -> FinalizedRecording:
    """Store the finished recording at ``src_path`` under ``relpath`` and remove the source.

    One streaming pass hashes the plaintext, encrypts it when ``key`` is given and uploads it;
    the source is removed only once the stored copy is durable. Calling it again after a
    crash is safe: an identical stored copy is adopted instead of failing.
    Raises RecordingError (``reason`` says why); on failure nothing is left in storage and
    the source stays where it was.
    """
    path = os.fsdecode(os.fspath(src_path))
    check_relpath(relpath)
    require_aware(retain_until)
    _check_source(path)
    duration = audio_duration(path)
    doing = f"storing recording {relpath} in {storage.describe()}"
    try:
        with open(path, "rb") as raw:
            plain = HashingReader(raw)
            body = EncryptingReader(plain, key) if key is not None else plain
            location = storage.put(relpath, body, retain_until)
    except AlreadyExists as e:
        result = _adopt_existing(path, e.location, storage, key, duration)
    except OSError as e:
        raise _os_error(e, path, doing) from e
    except StorageError as e:
        raise RecordingError(f"storage failed while {doing}: {e}", path=path) from e
    else:
        result = FinalizedRecording(
            location,
            plain.size,
            plain.hexdigest(),
            duration,
            key is not None,
            key.key_id if key is not None else None,
        )
    _remove_spool(path, result.location)
    return result


def _adopt_existing(
    path: str, location: str, storage: Storage, key: Key | None, duration: float | None
) -> FinalizedRecording:
    """A copy is already stored (finalize retried after a crash): accept it if identical."""
    try:
        with open(path, "rb") as f:
            sha, size = hash_stream(f)
    except OSError as e:
        raise _os_error(e, path, f"comparing with the copy stored at {location}") from e
    keyring = make_keyring(key) if key is not None else None
    try:
        stored_sha, stored_size, key_id = _hash_plain(storage, location, keyring)
    except (DecryptionError, StorageError, OSError) as e:
        raise RecordingError(
            f"another recording is stored at {location} and cannot be compared: {e}",
            reason="conflict",
            path=path,
        ) from e
    if (stored_sha, stored_size) != (sha, size):
        raise RecordingError(
            f"a different recording is already stored at {location}", reason="conflict", path=path
        )
    log.info("recording already stored at %s; adopting it", location)
    return FinalizedRecording(location, size, sha, duration, key_id is not None, key_id)


def _remove_spool(path: str, location: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning(
            "recording stored at %s but spool file %s was not removed: %s",
            location,
            path,
            e.strerror,
        )


def open_recording(storage: Storage, location: str, keyring: Keyring | None = None) -> StreamReader:
    """Stream the plaintext of a stored recording, decrypting it if it is encrypted.

    Raises DecryptionError (naming the key id) when it is encrypted and no key fits.
    """
    raw = storage.open(location)
    try:
        head = read_exactly(raw, len(MAGIC))
        stream = PrefixedReader(head, raw)
        if head != MAGIC:
            return stream
        return DecryptingReader(stream, keyring or {})
    except BaseException:
        raw.close()
        raise


def _hash_plain(
    storage: Storage, location: str, keyring: Keyring | None
) -> tuple[str, int, str | None]:
    with open_recording(storage, location, keyring) as reader:
        sha, size = hash_stream(reader)
        return sha, size, getattr(reader, "key_id", None)


def hash_location(
    storage: Storage, location: str, keyring: Keyring | None = None
) -> tuple[str, int]:
    """Recompute ``(sha256 hex, plaintext size)`` of a stored recording, for integrity checks."""
    sha, size, _ = _hash_plain(storage, location, keyring)
    return sha, size
