"""Encryption at rest: streaming AES-256-GCM in authenticated chunks (the STREAM construction).

File format (integers big-endian)::

    magic       8   b"\\x89CWREC\\r\\n"
    version     1   1
    key_id_len  1   L, 1..64
    key_id      L   ASCII, names the master key in a keyring
    chunk_size  4   plaintext bytes per chunk (default 65536)
    salt        16  random; file key = HKDF-SHA256(master key, salt, info=b"callwarden recording v1")
    prefix      7   random nonce prefix
    chunks...       AES-256-GCM(file key, nonce = prefix | u32 index | u8 final, aad = header)

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes; the last one (final
flag 1) holds 0..chunk_size bytes, so even an empty input has one chunk. Since index and
final flag are in the nonce and the header is the associated data of every chunk, reordering,
swapping, dropping or appending chunks, truncation and header edits all fail authentication.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .streams import COPY_BUFSIZE, ChunkedReader, CountingReader, Readable, read_exactly

__all__ = [
    "CHUNK_SIZE",
    "MAGIC",
    "DecryptingReader",
    "DecryptionError",
    "EncryptingReader",
    "Key",
    "KeyLoadError",
    "Keyring",
    "decrypt_stream",
    "encrypt_stream",
    "key_id_for",
    "load_key",
    "make_keyring",
]

MAGIC = b"\x89CWREC\r\n"
VERSION = 1
CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
TAG_SIZE = 16
KEY_SIZE = 32
_SALT_SIZE = 16
_PREFIX_SIZE = 7
_MAX_CHUNKS = 2**32
_HKDF_INFO = b"callwarden recording v1"
_KEY_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class DecryptionError(Exception):
    """An encrypted recording cannot be decrypted: unknown key, wrong key or damaged file."""

    def __init__(self, message: str, *, key_id: str | None = None) -> None:
        super().__init__(message)
        self.key_id = key_id


class KeyLoadError(ValueError):
    """A key source is missing or does not hold a 32-byte key (messages never show key bytes)."""


@dataclass(frozen=True)
class Key:
    """A 32-byte master key and the id recorded in the files it encrypts."""

    key_id: str
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.material) != KEY_SIZE:
            raise KeyLoadError(f"key {self.key_id!r} must be {KEY_SIZE} bytes")
        if not _KEY_ID_RE.fullmatch(self.key_id):
            raise KeyLoadError("key id must be 1-64 characters of A-Z a-z 0-9 . _ : -")


Keyring = Mapping[str, Key]


def key_id_for(material: bytes) -> str:
    """Default key id: first 16 hex digits of sha256 of the key bytes."""
    return hashlib.sha256(material).hexdigest()[:16]


def make_keyring(*keys: Key) -> dict[str, Key]:
    """Keyring (key id -> key) holding ``keys``."""
    return {k.key_id: k for k in keys}


def _parse_key_text(text: bytes, source: str) -> bytes:
    """32 key bytes from hex or base64 text."""
    s = text.strip()
    if len(s) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(s.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    for altchars in (b"+/", b"-_"):  # standard and URL-safe alphabets
        try:
            raw = base64.b64decode(s, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == KEY_SIZE:
            return raw
    raise KeyLoadError(f"{source} does not hold {KEY_SIZE} bytes (raw, hex or base64)")


def load_key(
    key_file: str | os.PathLike[str] | None = None,
    key_env: str | None = None,
    *,
    key_id: str | None = None,
) -> Key:
    """Load a key from a file (32 raw bytes, or hex/base64 text) or an environment variable."""
    if (key_file is None) == (key_env is None):
        raise KeyLoadError("give exactly one of key_file or key_env")
    if key_file is not None:
        source = f"key file {os.fspath(key_file)}"
        try:
            with open(key_file, "rb") as f:
                data = f.read(4096)
        except OSError as e:
            raise KeyLoadError(f"cannot read {source}: {e.strerror}") from None
        material = data if len(data) == KEY_SIZE else _parse_key_text(data, source)
    else:
        source = f"environment variable {key_env}"
        value = os.environ.get(key_env or "")
        if not value:
            raise KeyLoadError(f"{source} is not set or empty")
        material = _parse_key_text(value.encode("ascii", "replace"), source)
    return Key(key_id or key_id_for(material), material)


def _file_key(master: Key, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(master.material))


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if final else 0)


class EncryptingReader(ChunkedReader):
    """Read plaintext from ``src`` and give out the encrypted file format, chunk by chunk."""

    def __init__(self, src: Readable, key: Key, *, chunk_size: int = CHUNK_SIZE) -> None:
        super().__init__(src)
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be 1..{MAX_CHUNK_SIZE}")
        self.key_id = key.key_id
        salt, self._prefix = os.urandom(_SALT_SIZE), os.urandom(_PREFIX_SIZE)
        kid = key.key_id.encode("ascii")
        self._header = (
            MAGIC
            + bytes([VERSION, len(kid)])
            + kid
            + struct.pack(">I", chunk_size)
            + salt
            + self._prefix
        )
        self._aead = _file_key(key, salt)
        self._chunk_size = chunk_size
        self._index = 0
        self._pending: bytes | None = None
        self._push(self._header)

    def _next_chunk(self) -> bytes:
        """Encrypt the next chunk; the final one is known by reading one chunk ahead."""
        if self._pending is None:
            self._pending = read_exactly(self._src, self._chunk_size)
        current = self._pending
        full = len(current) == self._chunk_size
        following = read_exactly(self._src, self._chunk_size) if full else b""
        final = not following
        if self._index >= _MAX_CHUNKS:
            raise ValueError("recording too large for one encrypted file")
        sealed = self._aead.encrypt(_nonce(self._prefix, self._index, final), current, self._header)
        self._index += 1
        self._pending = following
        self._done = final
        return sealed


class DecryptingReader(ChunkedReader):
    """Read the encrypted file format from ``src`` and give out verified plaintext.

    The header is read at construction, so a missing key raises DecryptionError at once.
    """

    def __init__(self, src: Readable, keyring: Keyring) -> None:
        super().__init__(src)
        self._keyring = keyring
        self.key_id: str | None = None
        self._next: bytes | None = None
        self._index = 0
        self._aead = self._read_header()  # unknown key or bad header: fail here, not later

    def _fail(self, what: str) -> DecryptionError:
        return DecryptionError(
            f"cannot decrypt recording (key id {self.key_id}): {what}", key_id=self.key_id
        )

    def _read_header(self) -> AESGCM:
        fixed = read_exactly(self._src, len(MAGIC) + 2)
        if fixed[: len(MAGIC)] != MAGIC or len(fixed) < len(MAGIC) + 2:
            raise DecryptionError("not a callwarden encrypted recording (bad magic)")
        version, kid_len = fixed[len(MAGIC)], fixed[len(MAGIC) + 1]
        if version != VERSION:
            raise DecryptionError(f"unsupported encrypted recording version {version}")
        rest = read_exactly(self._src, kid_len + 4 + _SALT_SIZE + _PREFIX_SIZE)
        if len(rest) != kid_len + 4 + _SALT_SIZE + _PREFIX_SIZE:
            raise DecryptionError("encrypted recording truncated inside its header")
        self.key_id = rest[:kid_len].decode("ascii", "replace")
        (self._chunk_size,) = struct.unpack(">I", rest[kid_len : kid_len + 4])
        salt = rest[kid_len + 4 : kid_len + 4 + _SALT_SIZE]
        self._prefix = rest[kid_len + 4 + _SALT_SIZE :]
        self._header = fixed + rest
        if not 0 < self._chunk_size <= MAX_CHUNK_SIZE:
            raise self._fail(f"bad chunk size {self._chunk_size}")
        key = self._keyring.get(self.key_id)
        if key is None:
            raise DecryptionError(
                f"no key with id {self.key_id} in the keyring: cannot decrypt this recording",
                key_id=self.key_id,
            )
        return _file_key(key, salt)

    def _next_chunk(self) -> bytes:
        size = self._chunk_size + TAG_SIZE
        current = self._next if self._next is not None else read_exactly(self._src, size)
        following = read_exactly(self._src, size) if len(current) == size else b""
        final = not following
        if len(current) < TAG_SIZE:
            raise self._fail("file is truncated (final chunk missing)")
        if self._index >= _MAX_CHUNKS:
            raise self._fail("too many chunks")
        try:
            plain = self._aead.decrypt(
                _nonce(self._prefix, self._index, final), current, self._header
            )
        except InvalidTag:
            raise self._fail(
                f"chunk {self._index} failed authentication: wrong key, or the file was "
                "altered, truncated or reordered"
            ) from None
        self._index += 1
        self._next = following
        self._done = final
        return plain


def _pump(src: Readable, dst: BinaryIO) -> None:
    while data := src.read(COPY_BUFSIZE):
        dst.write(data)


def encrypt_stream(src: Readable, dst: BinaryIO, key: Key, *, chunk_size: int = CHUNK_SIZE) -> int:
    """Encrypt ``src`` into ``dst``; returns the number of plaintext bytes."""
    counted = CountingReader(src)
    _pump(EncryptingReader(counted, key, chunk_size=chunk_size), dst)
    return counted.size


def decrypt_stream(src: Readable, dst: BinaryIO, keyring: Keyring) -> int:
    """Decrypt ``src`` into ``dst``; returns plaintext bytes written.

    Raises DecryptionError (naming the key id) on an unknown or wrong key or a damaged file.
    Every byte written was authenticated, but a truncated file is only detected at its end:
    discard ``dst`` when this raises.
    """
    reader = DecryptingReader(src, keyring)
    written = 0
    while data := reader.read(COPY_BUFSIZE):
        dst.write(data)
        written += len(data)
    return written
