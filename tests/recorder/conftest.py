"""Shared fixtures: synthetic WAV files and an S3 endpoint served by moto over real HTTP."""

from __future__ import annotations

import logging
import math
import os
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest


def write_wav(
    path: Path, seconds: float, *, rate: int = 8000, channels: int = 1, sampwidth: int = 2
) -> Path:
    """Write a tone of ``seconds`` with the stdlib wave module."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(seconds * rate)
    one = b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))[:sampwidth].ljust(
            sampwidth, b"\0"
        )
        * channels
        for i in range(min(frames, rate))
    )
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sampwidth)
        w.setframerate(rate)
        full, rest = divmod(frames, rate)
        for _ in range(full):
            w.writeframes(one)
        w.writeframes(one[: rest * channels * sampwidth])
    return path


@pytest.fixture
def wav(tmp_path: Path):
    """Factory: ``wav(name, seconds, **fmt)`` -> path of a new WAV under tmp_path."""
    return lambda name, seconds, **kw: write_wav(tmp_path / name, seconds, **kw)


_DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """http://127.0.0.1:<ephemeral port> of a moto S3 server, dummy credentials in env."""
    server_mod = pytest.importorskip("moto.server")
    saved = {k: os.environ.get(k) for k in [*_DUMMY_AWS, "AWS_PROFILE"]}
    os.environ.update(_DUMMY_AWS)
    os.environ.pop("AWS_PROFILE", None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_client(s3_endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
