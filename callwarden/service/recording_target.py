"""Where recordings go and which keys seal and open them, built once from the config.

``recording.storage`` becomes one :class:`~callwarden.recorder.Storage`; ``recording.encryption``
is the key new recordings are encrypted with; ``recording.keyring`` lists older keys that are
only used to read recordings stored under them (key rotation). A long-running process builds
this once, on first use (an S3 backend reaches the network to read the bucket's lock setting,
and a decision must never wait for that); a failure is not cached, so the next use retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from callwarden.config import Settings
from callwarden.config.model import EncryptionConfig
from callwarden.recorder import Key, Keyring, Storage, load_key, make_keyring, storage_from_config
from callwarden.service.native import native_lock

__all__ = ["LazyTarget", "RecordingTarget", "TargetUnavailable", "build_target"]


class TargetUnavailable(Exception):
    """The configured storage or encryption key cannot be used (message names the cause)."""


@dataclass(frozen=True)
class RecordingTarget:
    """The storage backend, the key that encrypts new recordings, and every key that reads."""

    storage: Storage
    key: Key | None = None
    keyring: Keyring = field(default_factory=dict)


def _load(conf: EncryptionConfig, what: str) -> Key:
    try:
        return load_key(key_file=conf.key_file or None, key_env=conf.key_env or None)
    except ValueError as e:  # KeyLoadError; its message never shows key bytes
        raise TargetUnavailable(f"{what}: {e}") from None


def build_target(settings: Settings) -> RecordingTarget:
    """Build storage and keys from ``settings.recording``; TargetUnavailable when unusable."""
    rec = settings.recording
    key = _load(rec.encryption, "recording.encryption") if rec.encryption is not None else None
    old = [_load(conf, f"recording.keyring[{i}]") for i, conf in enumerate(rec.keyring)]
    try:
        storage = storage_from_config(rec.storage.model_dump(), recording_dir=rec.dir)
    except (OSError, ValueError) as e:
        raise TargetUnavailable(f"recording.storage: {e}") from None
    except Exception as e:  # StorageError (S3 unreachable, bucket unreadable) and boto errors
        raise TargetUnavailable(f"recording.storage: {type(e).__name__}: {e}") from None
    keys = [*old, key] if key is not None else old  # the current key wins a duplicate id
    return RecordingTarget(storage=storage, key=key, keyring=make_keyring(*keys))


class LazyTarget:
    """A :class:`RecordingTarget` built on first use, once, by whichever thread gets there first."""

    def __init__(self, settings: Settings, target: RecordingTarget | None = None) -> None:
        self._settings = settings
        self._target = target
        self._lock = native_lock()

    def get(self) -> RecordingTarget:
        """The target; raises TargetUnavailable (and tries again next time) if it cannot be built."""
        target = self._target
        if target is not None:
            return target
        with self._lock:
            if self._target is None:
                self._target = build_target(self._settings)
            return self._target
