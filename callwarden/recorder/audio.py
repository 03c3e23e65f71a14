"""Duration of a recording, read from its audio header; never raises for bad input."""

from __future__ import annotations

import contextlib
import os
import struct
import wave
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["audio_duration"]

# Headerless formats Asterisk can record, by extension: bytes per second of audio.
_RAW_BYTES_PER_S = {
    "ulaw": 8000,
    "ul": 8000,
    "pcmu": 8000,
    "alaw": 8000,
    "al": 8000,
    "pcma": 8000,
    "sln": 16000,
    "sln16": 32000,
    "gsm": 1650,  # 33-byte frames of 160 samples at 8 kHz
}
_UNSET_SIZES = (0, 0xFFFFFFFF)  # what writers put in a header they never fixed up
_MAX_CHUNKS = 64
# Formats where one block is one sample frame, so frames = bytes // block_align.
_FRAME_FORMATS = (1, 3, 6, 7, 0xFFFE)  # PCM, IEEE float, A-law, mu-law, extensible


@dataclass(frozen=True)
class _WavHeader:
    format_tag: int
    rate: int
    byte_rate: int
    block_align: int
    data_offset: int
    data_size: int  # as declared in the header

    def is_fixed_up(self, file_size: int) -> bool:
        """True if the declared data size is plausible for a completed file."""
        return self.data_size not in _UNSET_SIZES and self.data_offset + self.data_size <= file_size

    def duration(self, file_size: int) -> float | None:
        """Duration from the fmt chunk and the data bytes really present."""
        present = max(0, file_size - self.data_offset)
        nbytes = present if not self.is_fixed_up(file_size) else self.data_size
        if self.format_tag in _FRAME_FORMATS and self.block_align > 0 and self.rate > 0:
            return (nbytes // self.block_align) / self.rate
        if self.byte_rate > 0:
            return nbytes / self.byte_rate
        return None


def _read_wav_header(f: BinaryIO) -> _WavHeader | None:
    """Walk the RIFF chunks up to ``data``; None if this is not a usable WAV file."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int, int] | None = None
    for _ in range(_MAX_CHUNKS):
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"data":
            if fmt is None:
                return None
            tag, rate, byte_rate, align = fmt
            return _WavHeader(tag, rate, byte_rate, align, f.tell(), size)
        if cid == b"fmt ":
            body = f.read(min(size, 64))
            if len(body) < 16:
                return None
            tag, _channels, rate, byte_rate, align = struct.unpack("<HHIIH", body[:14])
            fmt = (tag, rate, byte_rate, align)
            f.seek(size - len(body), os.SEEK_CUR)
        else:
            f.seek(size, os.SEEK_CUR)
        if size & 1:
            f.seek(1, os.SEEK_CUR)  # RIFF pads chunks to an even length
    return None


def _wave_module_duration(path: str) -> float | None:
    """Duration as the stdlib ``wave`` module reads it (plain PCM only)."""
    with (
        contextlib.suppress(wave.Error, EOFError, OSError, ValueError, struct.error),
        wave.open(path, "rb") as w,
    ):
        rate = w.getframerate()
        return w.getnframes() / rate if rate > 0 else None
    return None


def audio_duration(path: str | os.PathLike[str]) -> float | None:
    """Seconds of audio in ``path``, or None if the format is unknown or unreadable.

    A WAV file whose header sizes were never fixed up (recorder killed) is measured from the
    file size and the fmt chunk.
    """
    path = os.fspath(path)
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as f:
            header = _read_wav_header(f)
    except (OSError, ValueError, struct.error):
        return None
    if header is None:
        rate = _RAW_BYTES_PER_S.get(os.path.splitext(path)[1].lstrip(".").lower())
        return file_size / rate if rate else None
    if header.is_fixed_up(file_size):
        seconds = _wave_module_duration(path)
        if seconds is not None:
            return seconds
    return header.duration(file_size)
