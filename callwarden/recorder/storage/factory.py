"""Build a Storage from the ``recording.storage`` config mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..naming import store_root
from .base import Storage
from .local import LocalStorage

__all__ = ["storage_from_config"]

_KEYS = {
    "kind",
    "root",
    "bucket",
    "prefix",
    "endpoint_url",
    "region",
    "object_lock",
    "addressing_style",
}


def storage_from_config(
    config: Mapping[str, Any], *, recording_dir: str | os.PathLike[str] | None = None
) -> Storage:
    """``{"kind": "local", "root": ...}`` or ``{"kind": "s3", "bucket": ..., ...}`` -> Storage.

    A local ``root`` left out (or None) defaults to ``<recording_dir>/store``. Keys of the
    other kind are ignored (so a full config model dump can be passed); unknown keys and
    missing required ones raise ValueError naming the key.
    """
    unknown = sorted(set(config) - _KEYS)
    if unknown:
        raise ValueError(f"storage: unknown key {unknown[0]!r}")
    kind = config.get("kind") or "local"
    if kind == "local":
        root = config.get("root")
        if root is None:
            if recording_dir is None:
                raise ValueError("storage.root: required for kind local (no recording dir)")
            root = store_root(recording_dir)
        return LocalStorage(root)
    if kind == "s3":
        from .s3 import S3Storage  # boto3 is only imported when S3 is used

        if not config.get("bucket"):
            raise ValueError("storage.bucket: required for kind s3")
        return S3Storage(
            config["bucket"],
            prefix=config.get("prefix") or "",
            endpoint_url=config.get("endpoint_url"),
            region=config.get("region"),
            object_lock=bool(config.get("object_lock", True)),
            addressing_style=config.get("addressing_style"),
        )
    raise ValueError(f"storage.kind: unknown storage kind {kind!r} (local or s3)")
