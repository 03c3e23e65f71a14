import errno
import io
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callwarden.recorder import (
    AlreadyExists,
    LocalStorage,
    LocationNotFound,
    Storage,
    storage_from_config,
)

LATER = datetime.now(UTC) + timedelta(days=180)


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def test_is_a_storage(store):
    assert isinstance(store, Storage)
    assert str(store.root) in store.describe()


def test_put_open_exists_size_delete(store, tmp_path: Path):
    src = tmp_path / "in.wav"
    src.write_bytes(b"abc" * 1000)
    loc = store.put("acme/2026/01/02/c1.wav", src, LATER)
    assert loc == "file:acme/2026/01/02/c1.wav"
    assert src.exists()  # storage copies; finalize removes the spool file
    assert store.exists(loc) and store.size(loc) == 3000
    with store.open(loc) as f:
        assert f.read() == b"abc" * 1000
    store.delete(loc)
    assert not store.exists(loc)
    for call in (store.open, store.delete, store.size):
        with pytest.raises(LocationNotFound):
            call(loc)


def test_put_from_stream_and_modes(store):
    old = os.umask(0o022)
    try:
        loc = store.put("t/2026/01/02/s.wav", io.BytesIO(b"x" * 10), LATER)
    finally:
        os.umask(old)
    path = store.root / "t/2026/01/02/s.wav"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750 & ~0o022
    assert store.size(loc) == 10


def test_iter_locations_sorted_and_skips_temp_files(store):
    for rel in ["b/2026/01/01/2.wav", "a/2026/01/01/1.wav", "a/2026/01/02/3.wav"]:
        store.put(rel, io.BytesIO(b"1"), LATER)
    (store.root / "a/2026/01/01/.1.wav.x.part").write_bytes(b"partial")
    assert list(store.iter_locations()) == [
        "file:a/2026/01/01/1.wav",
        "file:a/2026/01/02/3.wav",
        "file:b/2026/01/01/2.wav",
    ]


def test_never_overwrites(store):
    loc = store.put("a/1.wav", io.BytesIO(b"first"), LATER)
    with pytest.raises(AlreadyExists) as e:
        store.put("a/1.wav", io.BytesIO(b"second"), LATER)
    assert e.value.location == loc
    with store.open(loc) as f:
        assert f.read() == b"first"
    assert os.listdir(store.root / "a") == ["1.wav"]


class _Exploding(io.RawIOBase):
    """Gives some bytes, then fails like a full disk."""

    def __init__(self):
        self.sent = 0

    def readable(self):
        return True

    def read(self, n=-1):
        if self.sent:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.sent = 1
        return b"y" * 4096


def test_failed_put_is_atomic(store):
    with pytest.raises(OSError) as e:
        store.put("a/2026/01/01/c.wav", _Exploding(), LATER)
    assert e.value.errno == errno.ENOSPC
    assert not store.exists("file:a/2026/01/01/c.wav")
    assert os.listdir(store.root / "a/2026/01/01") == []  # no temp file left
    assert list(store.iter_locations()) == []


def test_readers_never_see_partial_files(store, monkeypatch):
    seen = []
    real_link = os.link

    def spy(src, dst, *a, **kw):  # the target must not exist until the data is complete
        seen.append((os.path.exists(dst), Path(src).read_bytes()))
        return real_link(src, dst, *a, **kw)

    monkeypatch.setattr(os, "link", spy)
    store.put("a/1.wav", io.BytesIO(b"z" * 100000), LATER)
    assert seen == [(False, b"z" * 100000)]


def test_falls_back_to_rename_without_hard_links(store, monkeypatch):
    def no_links(*a, **kw):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    loc = store.put("a/1.wav", io.BytesIO(b"data"), LATER)
    with store.open(loc) as f:
        assert f.read() == b"data"
    assert os.listdir(store.root / "a") == ["1.wav"]
    with pytest.raises(AlreadyExists):
        store.put("a/1.wav", io.BytesIO(b"other"), LATER)


@pytest.mark.parametrize("rel", ["../x.wav", "a/../../x.wav", "/etc/passwd", "a/./b", ""])
def test_escape_attempts_on_put(store, rel):
    with pytest.raises(ValueError):
        store.put(rel, io.BytesIO(b"x"), LATER)


@pytest.mark.parametrize(
    "loc", ["file:../secret", "file:/etc/passwd", "s3://b/k", "../x", "file:a/../../x"]
)
def test_escape_attempts_on_locations(store, loc):
    for call in (store.open, store.delete, store.exists, store.size):
        with pytest.raises(ValueError):
            call(loc)


def test_symlinked_directory_cannot_lead_outside(store, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.wav").write_bytes(b"secret")
    (store.root / "evil").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes"):
        store.put("evil/x.wav", io.BytesIO(b"x"), LATER)
    with pytest.raises(ValueError, match="escapes"):
        store.open("file:evil/secret.wav")
    assert list(store.iter_locations()) == []


def test_naive_retain_until_is_rejected(store):
    with pytest.raises(ValueError, match="aware"):
        store.put("a/1.wav", io.BytesIO(b"x"), datetime(2030, 1, 1))


def test_factory(tmp_path: Path):
    s = storage_from_config({"kind": "local", "root": str(tmp_path / "r")})
    assert isinstance(s, LocalStorage) and s.root == (tmp_path / "r").resolve()
    dump = {
        "kind": "local",
        "root": None,
        "bucket": None,
        "prefix": "",
        "endpoint_url": None,
        "region": None,
        "object_lock": True,
    }  # a config model dump, s3 keys unused
    s = storage_from_config(dump, recording_dir=tmp_path / "rec")
    assert s.root == (tmp_path / "rec" / "store").resolve()
    with pytest.raises(ValueError, match="root"):
        storage_from_config({"kind": "local"})
    with pytest.raises(ValueError, match="'bukket'"):
        storage_from_config({"kind": "s3", "bukket": "x"})
    with pytest.raises(ValueError, match="bucket"):
        storage_from_config({"kind": "s3"})
    with pytest.raises(ValueError, match="kind"):
        storage_from_config({"kind": "ftp"})
