"""S3Storage against moto's S3 server over real HTTP on 127.0.0.1 (never real AWS)."""

import io
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from boto3.s3.transfer import TransferConfig

from callwarden.recorder import (
    AlreadyExists,
    LocationNotFound,
    RetentionLocked,
    S3Storage,
    Storage,
    StorageError,
    storage_from_config,
)

pytest.importorskip("moto")


def _bucket(client, *, locked: bool) -> str:
    name = f"rec-{uuid.uuid4().hex[:12]}"
    if locked:
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    else:
        client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def locked(s3_endpoint, s3_client) -> S3Storage:
    bucket = _bucket(s3_client, locked=True)
    return S3Storage(bucket, prefix="calls", endpoint_url=s3_endpoint, region="us-east-1")


def future(days: float = 1) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def test_endpoint_is_local(s3_endpoint):
    assert s3_endpoint.startswith("http://127.0.0.1:")


def test_locked_put_has_compliance_retention_and_delete_is_refused(locked, s3_client, tmp_path):
    assert locked.object_lock and "COMPLIANCE" in locked.describe()
    assert isinstance(locked, Storage)
    src = tmp_path / "a.wav"
    src.write_bytes(os.urandom(5000))
    until = future(30)
    loc = locked.put("acme/2026/01/02/c1.wav", src, until)
    assert loc == f"s3://{locked.bucket}/calls/acme/2026/01/02/c1.wav"

    head = s3_client.head_object(Bucket=locked.bucket, Key="calls/acme/2026/01/02/c1.wav")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] == until
    assert locked.retention(loc) == ("COMPLIANCE", until)

    with pytest.raises(RetentionLocked) as e:
        locked.delete(loc)
    assert e.value.location == loc and e.value.retain_until == until
    assert "delete refused" in str(e.value)
    assert locked.exists(loc)
    with locked.open(loc) as body:
        assert body.read() == src.read_bytes()
    versions = s3_client.list_object_versions(Bucket=locked.bucket)
    assert len(versions.get("Versions", [])) == 1 and not versions.get("DeleteMarkers")


def test_delete_after_the_deadline(locked):
    loc = locked.put(
        "t/1.wav", io.BytesIO(b"short-lived"), datetime.now(UTC) + timedelta(seconds=1)
    )
    time.sleep(1.5)
    locked.delete(loc)
    assert not locked.exists(loc)
    with pytest.raises(LocationNotFound):
        locked.delete(loc)


def test_multipart_upload_is_locked_too(s3_endpoint, s3_client, tmp_path):
    # moto drops lock headers on multipart uploads, like some S3-compatible stores:
    # put() must notice and set the retention itself.
    store = S3Storage(
        _bucket(s3_client, locked=True),
        endpoint_url=s3_endpoint,
        transfer_config=TransferConfig(multipart_threshold=5 << 20, multipart_chunksize=5 << 20),
    )
    src = tmp_path / "big.wav"
    src.write_bytes(os.urandom(6 << 20))
    until = future(2)
    loc = store.put("t/big.wav", src, until)
    assert store.retention(loc)[0] == "COMPLIANCE"
    assert store.retention(loc)[1] >= until
    assert store.size(loc) == 6 << 20
    with pytest.raises(RetentionLocked):
        store.delete(loc)


def test_bucket_without_object_lock(s3_endpoint, s3_client, tmp_path):
    bucket = _bucket(s3_client, locked=False)
    store = storage_from_config(
        {
            "kind": "s3",
            "bucket": bucket,
            "endpoint_url": s3_endpoint,
            "region": "us-east-1",
            "object_lock": True,
        }
    )
    assert isinstance(store, S3Storage) and not store.object_lock
    loc = store.put("acme/2026/01/02/c2.wav", io.BytesIO(b"plain"), future())
    assert loc == f"s3://{bucket}/acme/2026/01/02/c2.wav"
    assert store.retention(loc) == (None, None)
    assert list(store.iter_locations()) == [loc]
    assert store.size(loc) == 5
    store.delete(loc)
    assert not store.exists(loc)
    assert list(store.iter_locations()) == []


def test_never_overwrites_and_lists_under_prefix(locked, s3_client):
    s3_client.put_object(Bucket=locked.bucket, Key="other/x", Body=b"not ours")
    a = locked.put("a/1.wav", io.BytesIO(b"1"), future())
    b = locked.put("b/2.wav", io.BytesIO(b"2"), future())
    with pytest.raises(AlreadyExists):
        locked.put("a/1.wav", io.BytesIO(b"again"), future())
    assert sorted(locked.iter_locations()) == [a, b]


def test_bad_locations_and_missing_objects(locked):
    for bad in (
        "file:a/1.wav",
        "s3://other-bucket/calls/a",
        f"s3://{locked.bucket}/x/a",
        f"s3://{locked.bucket}/calls/../x",
    ):
        with pytest.raises(ValueError):
            locked.exists(bad)
    missing = f"s3://{locked.bucket}/calls/none.wav"
    assert not locked.exists(missing)
    for call in (locked.open, locked.size, locked.delete):
        with pytest.raises(LocationNotFound):
            call(missing)


def test_unknown_bucket_fails_at_construction(s3_endpoint):
    with pytest.raises(StorageError, match="no-such-bucket"):
        S3Storage("no-such-bucket", endpoint_url=s3_endpoint, region="us-east-1")


def test_failed_upload_leaves_nothing(locked):
    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def read(self, n=-1):
            raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        locked.put("a/broken.wav", Broken(), future())
    assert not locked.exists(f"s3://{locked.bucket}/calls/a/broken.wav")
