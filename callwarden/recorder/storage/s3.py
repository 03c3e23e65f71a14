"""S3Storage: recordings as objects in an S3-compatible bucket, under object lock when it has one."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO, cast

import boto3
from boto3.s3.transfer import S3UploadFailedError, TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..naming import check_relpath
from .base import (
    AlreadyExists,
    LocationNotFound,
    RetentionLocked,
    Source,
    StorageError,
    require_aware,
)

__all__ = ["S3Storage"]

log = logging.getLogger(__name__)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchVersion"}
_LOCK_MODE = "COMPLIANCE"


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", "?"))


class S3Storage:
    """Objects ``<prefix><relpath>`` in ``bucket``; location ``s3://<bucket>/<key>``.

    Whether the bucket has object lock is read once here; if it has and ``object_lock`` is
    true, every object is put under COMPLIANCE retention until ``retain_until``, which no one,
    root account included, can shorten or bypass. Credentials come from boto3's usual chain.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        object_lock: bool = True,
        client: Any = None,
        *,
        addressing_style: str | None = None,
        transfer_config: TransferConfig | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("S3 storage needs a bucket")
        prefix = prefix.strip("/")
        if prefix:
            check_relpath(prefix)
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self._client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                s3={"addressing_style": addressing_style or "auto"},
                retries={"mode": "standard", "max_attempts": 5},
            ),
        )
        self._transfer = transfer_config or TransferConfig(max_concurrency=4)
        self.object_lock = object_lock and self._bucket_has_lock()
        if object_lock and not self.object_lock:
            log.warning("bucket %s has no object lock: recordings are stored unlocked", bucket)

    def _bucket_has_lock(self) -> bool:
        try:
            conf = self._client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as e:
            if _code(e) == "ObjectLockConfigurationNotFoundError":
                return False
            raise StorageError(
                f"cannot read object lock setting of bucket {self.bucket}: {_code(e)}"
            ) from e
        except BotoCoreError as e:
            raise StorageError(f"cannot reach S3 for bucket {self.bucket}: {e}") from e
        return conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"

    # -- locations ---------------------------------------------------------------------------

    def _location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _key_of(self, location: str) -> str:
        head = f"s3://{self.bucket}/{self.prefix}"
        if not isinstance(location, str) or not location.startswith(head):
            raise ValueError(f"not a location of this storage (expected {head}...)")
        check_relpath(location[len(head) :])
        return location[len(f"s3://{self.bucket}/") :]

    def _head(self, key: str, version_id: str | None = None) -> dict[str, Any] | None:
        extra = {"VersionId": version_id} if version_id else {}
        try:
            return cast(
                dict[str, Any], self._client.head_object(Bucket=self.bucket, Key=key, **extra)
            )
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                return None
            raise StorageError(f"cannot read {self._location(key)}: {_code(e)}") from e

    # -- Storage -----------------------------------------------------------------------------

    def put(self, relpath: str, src: Source, retain_until: datetime) -> str:
        """Upload ``src`` (streamed, multipart when large); lock it if the bucket allows."""
        require_aware(retain_until)
        key = self.prefix + check_relpath(relpath)
        location = self._location(key)
        try:
            if self._head(key) is not None:
                raise AlreadyExists(location)
            extra = (
                {"ObjectLockMode": _LOCK_MODE, "ObjectLockRetainUntilDate": retain_until}
                if self.object_lock
                else {}
            )
            if isinstance(src, (str, os.PathLike)):
                with open(src, "rb") as f:
                    self._upload(f, key, extra)
            else:
                self._upload(src, key, extra)
            if self.object_lock:
                self._ensure_locked(key, retain_until)
        except (ClientError, BotoCoreError, S3UploadFailedError) as e:
            raise StorageError(f"upload to {location} failed: {e}") from e
        return location

    def _upload(self, body: Any, key: str, extra: dict[str, Any]) -> None:
        self._client.upload_fileobj(body, self.bucket, key, ExtraArgs=extra, Config=self._transfer)

    def _ensure_locked(self, key: str, retain_until: datetime) -> None:
        """Check the new version carries the retention; set it if the store dropped it.

        Some S3-compatible stores ignore lock headers on multipart uploads. If the retention
        cannot be set, the unlocked version is deleted so nothing unprotected is left behind.
        """
        head = self._head(key) or {}
        until = head.get("ObjectLockRetainUntilDate")
        if (
            head.get("ObjectLockMode") == _LOCK_MODE
            and until
            and until >= retain_until.replace(microsecond=0)
        ):
            return
        version = head.get("VersionId")
        extra = {"VersionId": version} if version else {}
        try:
            self._client.put_object_retention(
                Bucket=self.bucket,
                Key=key,
                Retention={"Mode": _LOCK_MODE, "RetainUntilDate": retain_until},
                **extra,
            )
        except (ClientError, BotoCoreError):
            self._client.delete_object(Bucket=self.bucket, Key=key, **extra)
            raise

    def open(self, location: str) -> BinaryIO:
        """Stream the object's body (botocore StreamingBody; close it when done)."""
        key = self._key_of(location)
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as e:
            if _code(e) in _NOT_FOUND:
                raise LocationNotFound(location) from None
            raise StorageError(f"cannot read {location}: {_code(e)}") from e
        return cast(BinaryIO, body)

    def _versions(self, key: str) -> list[str]:
        """Version ids (and delete markers) of exactly ``key``."""
        found: list[str] = []
        pages = self._client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=key
        )
        for page in pages:
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                if item["Key"] == key:
                    found.append(item["VersionId"])
        return found

    def delete(self, location: str) -> None:
        """Delete every version of the object; RetentionLocked while S3 still protects it.

        With versioning a plain delete only adds a delete marker, so each version id is
        deleted explicitly: that is the request object lock refuses before the deadline.
        """
        key = self._key_of(location)
        try:
            versions = self._versions(key)
            if not versions:
                raise LocationNotFound(location)
            for version in versions:
                try:
                    self._client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
                except ClientError as e:
                    if _code(e) != "AccessDenied":
                        raise
                    head = self._head(key, version) or {}
                    until = head.get("ObjectLockRetainUntilDate")
                    hold = head.get("ObjectLockLegalHoldStatus") == "ON"
                    if until is None and not hold:
                        raise
                    raise RetentionLocked(location, until, hold) from None
        except (ClientError, BotoCoreError) as e:
            raise StorageError(f"cannot delete {location}: {e}") from e

    def exists(self, location: str) -> bool:
        """True if the object exists (its current version is not a delete marker)."""
        return self._head(self._key_of(location)) is not None

    def size(self, location: str) -> int:
        """Object size in bytes."""
        head = self._head(self._key_of(location))
        if head is None:
            raise LocationNotFound(location)
        return int(head["ContentLength"])

    def retention(self, location: str) -> tuple[str | None, datetime | None]:
        """Object lock mode and retain-until date of the current version (S3 only)."""
        head = self._head(self._key_of(location))
        if head is None:
            raise LocationNotFound(location)
        return head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")

    def iter_locations(self) -> Iterator[str]:
        """Locations of all objects under the prefix."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):
                        yield self._location(item["Key"])
        except (ClientError, BotoCoreError) as e:
            raise StorageError(f"cannot list bucket {self.bucket}: {e}") from e

    def describe(self) -> str:
        """``s3://bucket/prefix`` with endpoint and lock mode."""
        where = self.endpoint_url or "AWS"
        lock = f"object lock {_LOCK_MODE}" if self.object_lock else "no object lock"
        return f"s3://{self.bucket}/{self.prefix} at {where}, {lock}"
