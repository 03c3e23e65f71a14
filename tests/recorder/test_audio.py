import struct
from pathlib import Path

import pytest

from callwarden.recorder import audio_duration


@pytest.mark.parametrize(
    ("seconds", "fmt"),
    [
        (3.0, {}),
        (1.5, {"rate": 16000}),
        (2.25, {"rate": 8000, "channels": 2}),
        (0.5, {"rate": 48000, "sampwidth": 1}),
        (0.0, {}),
    ],
)
def test_generated_wavs(wav, seconds, fmt):
    assert audio_duration(wav("a.wav", seconds, **fmt)) == pytest.approx(seconds)


def _unfinish(path: Path, value: int) -> None:
    """Overwrite the RIFF and data sizes like a recorder killed before fixing its header."""
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", value)
    at = data.index(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("placeholder", [0, 0xFFFFFFFF])
def test_unfinished_header_is_measured_from_file_size(wav, placeholder):
    path = wav("killed.wav", 4.0)
    _unfinish(path, placeholder)
    assert audio_duration(path) == pytest.approx(4.0)


def test_header_claiming_more_than_the_file_holds(wav):
    path = wav("short.wav", 2.0)
    with path.open("r+b") as f:  # header says 2 s, but the tail was lost
        f.truncate(44 + 8000)  # 0.5 s of 16-bit mono 8 kHz
    assert audio_duration(path) == pytest.approx(0.5)


def test_non_pcm_wav_uses_byte_rate(tmp_path: Path):
    # GSM 6.10 in WAV (Asterisk's wav49): format 0x31, 1625 bytes/s, block 65.
    fmt = struct.pack("<HHIIHH", 0x31, 1, 8000, 1625, 65, 0) + struct.pack("<HH", 2, 320)
    data = b"\0" * (1625 * 2)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path = tmp_path / "gsm.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert audio_duration(path) == pytest.approx(2.0)


def test_raw_asterisk_format_by_extension(tmp_path: Path):
    path = tmp_path / "call.ulaw"
    path.write_bytes(b"\xff" * 8000 * 3)
    assert audio_duration(path) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not audio at all",
        b"RIFF\0\0\0\0WAVE",
        b"RIFF\x10\0\0\0WAVEfmt \x02\0\0\0ab",
        b"RIFF\0\0\0\0WAVEdata\0\0\0\0",
        b"ID3\x03" + b"\0" * 100,
    ],
)
def test_unknown_or_broken_is_none(tmp_path: Path, content):
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    assert audio_duration(path) is None
    other = tmp_path / "x.mp3"
    other.write_bytes(content)
    assert audio_duration(other) is None


def test_missing_file_is_none(tmp_path: Path):
    assert audio_duration(tmp_path / "nope.wav") is None
