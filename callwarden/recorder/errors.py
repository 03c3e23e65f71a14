"""Errors of the recording lifecycle, each with a machine-readable ``reason``."""

from __future__ import annotations

from typing import Literal

__all__ = ["Reason", "RecordingEmpty", "RecordingError", "RecordingMissing"]

Reason = Literal["missing", "empty", "no_space", "permission_denied", "storage_error", "conflict"]


class RecordingError(Exception):
    """A recording could not be finalized or read back.

    ``reason`` is one of :data:`Reason`; ``path`` is the file involved, if any. Messages name
    files and storage locations only, never phone numbers.
    """

    reason: Reason = "storage_error"

    def __init__(
        self, message: str, *, reason: Reason | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.path = path


class RecordingMissing(RecordingError):
    """The recording file is not there (or is not a regular file)."""

    reason: Reason = "missing"


class RecordingEmpty(RecordingError):
    """The recording file has no bytes at all."""

    reason: Reason = "empty"
