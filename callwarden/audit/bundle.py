"""The evidence bundle: its layout, streamed writing with hashing, and reading one back.

Layout (every path is listed with its sha256 and size in ``manifest.json``, except the
manifest itself and the export receipt, which covers the manifest)::

    manifest.json               what is in the bundle, hashes, audit-log head, findings
    export_receipt.json         the audit-log entry that recorded this export (covers the manifest)
    README.txt                  how to verify, in Chinese and English
    cdr/calls.csv               the CDRs (CSV, one header line)
    cdr/calls.json              the same CDRs (JSON array, newest first)
    recordings/<tenant>/<call_id>.<ext>   decrypted audio (``.cwrec`` suffix when kept encrypted)
    consents/consents.json      consent records behind the calls (and their history)
    consents/consents.csv
    consents/evidence/<id>/<file>         consent evidence files, where a file was found
    registry/registry.json      the tenants' records: status, commitment, numbers, trunks, proofs, campaigns
    audit/entries.jsonl         the audit-log entries about all of the above, in chain order
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

FORMAT = "callwarden-evidence-bundle"
VERSION = 1

MANIFEST = "manifest.json"
RECEIPT = "export_receipt.json"
README = "README.txt"
CALLS_CSV = "cdr/calls.csv"
CALLS_JSON = "cdr/calls.json"
CONSENTS_JSON = "consents/consents.json"
CONSENTS_CSV = "consents/consents.csv"
REGISTRY_JSON = "registry/registry.json"
AUDIT_ENTRIES = "audit/entries.jsonl"
#: Files outside the manifest's file list (the receipt covers the manifest instead).
UNLISTED = frozenset({MANIFEST, RECEIPT})

ENCRYPTED_SUFFIX = ".cwrec"
BUFSIZE = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_component(value: str | None, default: str = "_") -> str:
    """A string made safe as one path component inside the bundle."""
    text = _UNSAFE.sub("_", value or "")[:120].lstrip(".")
    return text or default


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the bundle as the manifest lists it."""

    path: str
    sha256: str
    size: int


class HashingWriter(io.RawIOBase):
    """A writable stream that hashes and counts what passes through to ``dst``."""

    def __init__(self, dst: IO[bytes]) -> None:
        super().__init__()
        self._dst = dst
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._dst.write(view)
        self._hash.update(view)
        self.size += len(view)
        return len(view)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class BundleWriter:
    """Writes members into a zip one at a time, streaming, and remembers each file's hash."""

    def __init__(self, path: str | os.PathLike[str] | IO[bytes], date_time: tuple[int, int, int, int, int, int]) -> None:
        self.zip = zipfile.ZipFile(path, "w", allowZip64=True)
        self.files: dict[str, FileEntry] = {}
        self._names: set[str] = set()
        self._date_time = date_time

    def _info(self, name: str, compress: bool) -> zipfile.ZipInfo:
        if name in self._names:
            raise ValueError(f"{name} written twice")
        self._names.add(name)
        info = zipfile.ZipInfo(name, self._date_time)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o640 << 16
        return info

    def open(self, name: str, *, compress: bool = True) -> _MemberContext:
        """``with writer.open(name) as out: out.write(...)``: a hashed, streamed member."""
        return _MemberContext(self, name, compress)

    def write_bytes(self, name: str, data: bytes, *, compress: bool = True, listed: bool = True) -> FileEntry:
        with self.zip.open(self._info(name, compress), "w", force_zip64=True) as fh:
            fh.write(data)
        entry = FileEntry(name, sha256_bytes(data), len(data))
        if listed:
            self.files[name] = entry
        return entry

    def close(self) -> None:
        self.zip.close()


class _MemberContext:
    def __init__(self, writer: BundleWriter, name: str, compress: bool) -> None:
        self._writer, self._name, self._compress = writer, name, compress
        self._fh: IO[bytes] | None = None
        self.out: HashingWriter | None = None

    def __enter__(self) -> HashingWriter:
        self._fh = self._writer.zip.open(self._writer._info(self._name, self._compress), "w", force_zip64=True)
        self.out = HashingWriter(self._fh)
        return self.out

    def __exit__(self, *exc: object) -> None:
        assert self._fh is not None and self.out is not None
        self._fh.close()
        self._writer.files[self._name] = FileEntry(self._name, self.out.hexdigest(), self.out.size)


class BundleError(Exception):
    """The bundle cannot be opened at all (not a zip, not a folder, no manifest)."""


class BundleReader:
    """Read a bundle from a ``.zip`` or from the folder it was extracted into."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            return
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise BundleError(f"{self.path}: no such file") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise BundleError(f"{self.path}: not a readable zip file ({exc})") from None

    def names(self) -> list[str]:
        """Member paths (POSIX, relative), files only."""
        if self._zip is not None:
            return [i.filename for i in self._zip.infolist() if not i.is_dir()]
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    def open(self, name: str) -> BinaryIO:
        """A member for reading; zip CRC errors surface as ``zipfile.BadZipFile`` on read."""
        if self._zip is not None:
            return self._zip.open(name)  # type: ignore[return-value]
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise KeyError(name)
        target = self.path.joinpath(*rel.parts)
        if not target.is_file():
            raise KeyError(name)
        return open(target, "rb")  # noqa: SIM115 - the caller closes it

    def read(self, name: str, limit: int = 256 << 20) -> bytes:
        with self.open(name) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise BundleError(f"{name}: larger than {limit} bytes")
        return data

    def iter_chunks(self, name: str) -> Iterator[bytes]:
        with self.open(name) as fh:
            while chunk := fh.read(BUFSIZE):
                yield chunk

    def hash(self, name: str) -> tuple[str, int]:
        """sha256 and size of a member, streamed."""
        h, size = hashlib.sha256(), 0
        for chunk in self.iter_chunks(name):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
