import errno
import hashlib
import io
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from callwarden.recorder import (
    DecryptionError,
    FinalizedRecording,
    Key,
    LocalStorage,
    RecordingEmpty,
    RecordingError,
    RecordingMissing,
    decrypt_stream,
    finalize,
    hash_location,
    make_keyring,
    open_recording,
    recording_relpath,
    spool_path,
)
from callwarden.recorder.crypto import MAGIC

AT = datetime(2026, 1, 2, 10, 0, tzinfo=timezone(timedelta(hours=8)))
LATER = AT + timedelta(days=180)
REL = recording_relpath("acme", "1767319200.7", AT)


@pytest.fixture
def rec_dir(tmp_path: Path) -> Path:
    return tmp_path / "recordings"


@pytest.fixture
def store(rec_dir: Path) -> LocalStorage:
    return LocalStorage(rec_dir / "store")


@pytest.fixture
def spooled(rec_dir: Path, wav) -> Path:
    """A 2.5 s recording where the PBX wrote it."""
    path = spool_path(rec_dir, REL)
    path.parent.mkdir(parents=True)
    os.replace(wav("tmp.wav", 2.5), path)
    return path


@pytest.fixture
def key() -> Key:
    return Key("test-key-1", bytes(range(32)))


def stored_files(store: LocalStorage) -> list[str]:
    return [str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file()]


def test_finalize_plain(spooled: Path, store):
    data = spooled.read_bytes()
    rec = finalize(spooled, storage=store, relpath=REL, retain_until=LATER)
    assert rec == FinalizedRecording(
        location=f"file:{REL}",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        duration_s=pytest.approx(2.5),
        encrypted=False,
        key_id=None,
    )
    assert not spooled.exists()
    assert (store.root / REL).read_bytes() == data
    assert hash_location(store, rec.location) == (rec.sha256, rec.size)


def test_finalize_encrypted_round_trips(spooled: Path, store, key):
    data = spooled.read_bytes()
    rec = finalize(spooled, storage=store, relpath=REL, retain_until=LATER, key=key)
    assert rec.encrypted and rec.key_id == "test-key-1"
    assert rec.sha256 == hashlib.sha256(data).hexdigest() and rec.size == len(data)
    assert rec.duration_s == pytest.approx(2.5)
    raw = (store.root / REL).read_bytes()
    assert raw.startswith(MAGIC) and data[100:200] not in raw
    out = io.BytesIO()
    with store.open(rec.location) as f:
        decrypt_stream(f, out, make_keyring(key))
    assert out.getvalue() == data
    assert hash_location(store, rec.location, make_keyring(key)) == (rec.sha256, rec.size)
    with open_recording(store, rec.location, make_keyring(key)) as r:
        assert r.read(44)[:4] == b"RIFF"


def test_hash_location_of_encrypted_needs_the_key(spooled, store, key):
    rec = finalize(spooled, storage=store, relpath=REL, retain_until=LATER, key=key)
    for keyring in (None, {}, make_keyring(Key("other", bytes(32)))):
        with pytest.raises(DecryptionError, match="test-key-1"):
            hash_location(store, rec.location, keyring)


def test_hash_location_detects_tampering(spooled, store):
    rec = finalize(spooled, storage=store, relpath=REL, retain_until=LATER)
    path = store.root / REL
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    assert hash_location(store, rec.location)[0] != rec.sha256


def test_missing_file(rec_dir, store):
    with pytest.raises(RecordingMissing) as e:
        finalize(spool_path(rec_dir, REL), storage=store, relpath=REL, retain_until=LATER)
    assert e.value.reason == "missing" and isinstance(e.value, RecordingError)
    assert str(spool_path(rec_dir, REL)) in str(e.value)


def test_directory_instead_of_file(rec_dir, store):
    path = spool_path(rec_dir, REL)
    path.mkdir(parents=True)
    with pytest.raises(RecordingMissing):
        finalize(path, storage=store, relpath=REL, retain_until=LATER)


def test_empty_file(rec_dir, store):
    path = spool_path(rec_dir, REL)
    path.parent.mkdir(parents=True)
    path.touch()
    with pytest.raises(RecordingEmpty) as e:
        finalize(path, storage=store, relpath=REL, retain_until=LATER)
    assert e.value.reason == "empty"
    assert path.exists() and stored_files(store) == []


def test_disk_full_leaves_nothing_behind(spooled, store, monkeypatch, key):
    import callwarden.recorder.storage.local as local

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local.os, "fsync", full)  # the write path of LocalStorage.put
    for k in (None, key):
        with pytest.raises(RecordingError) as e:
            finalize(spooled, storage=store, relpath=REL, retain_until=LATER, key=k)
        assert e.value.reason == "no_space"
        assert "no space left" in str(e.value) and str(spooled) in str(e.value)
        assert spooled.exists() and stored_files(store) == []


def test_disk_full_while_writing(spooled, store, monkeypatch):
    real_write = io.BufferedWriter.write
    calls = []

    class FullWriter(io.BufferedWriter):
        def write(self, b):
            calls.append(len(b))
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(self, b)

    import callwarden.recorder.storage.local as local

    real_fdopen = os.fdopen
    monkeypatch.setattr(
        local.os, "fdopen", lambda fd, mode: FullWriter(real_fdopen(fd, mode, buffering=0))
    )
    big = spooled.with_name("big.wav")
    big.write_bytes(os.urandom(3 << 20))
    with pytest.raises(RecordingError) as e:
        finalize(big, storage=store, relpath=REL, retain_until=LATER)
    assert e.value.reason == "no_space" and len(calls) > 1
    assert big.exists() and stored_files(store) == []


def test_permission_denied_on_storage(spooled, store, rec_dir, monkeypatch):
    import callwarden.recorder.storage.local as local

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(store.root / "acme"))

    monkeypatch.setattr(local.tempfile, "mkstemp", denied)
    with pytest.raises(RecordingError) as e:
        finalize(spooled, storage=store, relpath=REL, retain_until=LATER)
    assert e.value.reason == "permission_denied"
    assert str(store.root / "acme") in str(e.value) and e.value.path == str(store.root / "acme")
    assert spooled.exists() and stored_files(store) == []


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_permission_denied_read_only_directory(spooled, store):
    (store.root / "acme").mkdir()
    (store.root / "acme").chmod(0o500)
    try:
        with pytest.raises(RecordingError) as e:
            finalize(spooled, storage=store, relpath=REL, retain_until=LATER)
    finally:
        (store.root / "acme").chmod(0o700)
    assert e.value.reason == "permission_denied"
    assert spooled.exists() and stored_files(store) == []


def test_unreadable_source(spooled, store, monkeypatch):
    import builtins

    real_open = builtins.open

    def guarded(file, *a, **kw):
        if os.fspath(file) == str(spooled):
            raise PermissionError(errno.EACCES, "Permission denied", str(spooled))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded)
    with pytest.raises(RecordingError) as e:
        finalize(spooled, storage=store, relpath=REL, retain_until=LATER)
    assert e.value.reason == "permission_denied" and e.value.path == str(spooled)


def test_retry_after_crash_adopts_identical_copy(spooled, store, key, monkeypatch):
    data = spooled.read_bytes()
    backup = spooled.with_name("backup")
    backup.write_bytes(data)
    first = finalize(spooled, storage=store, relpath=REL, retain_until=LATER, key=key)
    os.replace(backup, spooled)  # as if the crash came before the spool file was removed
    again = finalize(spooled, storage=store, relpath=REL, retain_until=LATER, key=key)
    assert again == first and not spooled.exists()


def test_retry_with_different_content_is_a_conflict(spooled, store, wav):
    finalize(wav("one.wav", 1.0), storage=store, relpath=REL, retain_until=LATER)
    with pytest.raises(RecordingError) as e:
        finalize(spooled, storage=store, relpath=REL, retain_until=LATER)
    assert e.value.reason == "conflict" and spooled.exists()


def test_spool_removal_failure_is_not_fatal(spooled, store, monkeypatch, caplog):
    real_unlink = os.unlink

    def refuse(path, *a, **kw):
        if os.fspath(path) == str(spooled):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", refuse)
    rec = finalize(spooled, storage=store, relpath=REL, retain_until=LATER)
    assert store.exists(rec.location) and "not removed" in caplog.text


def test_never_reads_whole_file_at_once(spooled, store, key, monkeypatch):
    big = spooled.with_name("big.wav")
    big.write_bytes(os.urandom(5 << 20))
    sizes = []
    real_read = io.BufferedReader.read

    class Spy(io.BufferedReader):
        def read(self, n=-1):
            sizes.append(n)
            return real_read(self, n)

    import builtins

    real_open = builtins.open

    def spy_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if os.fspath(file) == str(big) and "b" in mode:
            return Spy(f.detach())
        return f

    monkeypatch.setattr(builtins, "open", spy_open)
    for k in (None, key):
        big.write_bytes(os.urandom(5 << 20))
        sizes.clear()
        finalize(
            big, storage=store, relpath=f"t/{'e' if k else 'p'}.wav", retain_until=LATER, key=k
        )
        assert sizes and all(0 < n <= 1 << 20 for n in sizes)


def test_bad_arguments(spooled, store):
    with pytest.raises(ValueError):
        finalize(spooled, storage=store, relpath="../x.wav", retain_until=LATER)
    with pytest.raises(ValueError, match="aware"):
        finalize(spooled, storage=store, relpath=REL, retain_until=datetime(2030, 1, 1))
    assert spooled.exists()


def test_finalize_into_s3(s3_endpoint, s3_client, spooled, key):
    from callwarden.recorder import S3Storage

    s3_client.create_bucket(Bucket="fin-locked", ObjectLockEnabledForBucket=True)
    store = S3Storage("fin-locked", endpoint_url=s3_endpoint, region="us-east-1")
    data = spooled.read_bytes()
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=31)
    rec = finalize(spooled, storage=store, relpath=REL, retain_until=until, key=key)
    assert rec.location == f"s3://fin-locked/{REL}" and not spooled.exists()
    assert rec.sha256 == hashlib.sha256(data).hexdigest()
    assert store.retention(rec.location) == ("COMPLIANCE", until)
    assert hash_location(store, rec.location, make_keyring(key)) == (rec.sha256, len(data))
