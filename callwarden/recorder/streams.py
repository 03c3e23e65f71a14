"""Small pull-based stream adapters used to hash, encrypt and store in one pass."""

from __future__ import annotations

import hashlib
from collections import deque
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = [
    "COPY_BUFSIZE",
    "ChunkedReader",
    "CountingReader",
    "HashingReader",
    "PrefixedReader",
    "Readable",
    "StreamReader",
    "hash_stream",
    "read_exactly",
]

COPY_BUFSIZE = 1 << 20


@runtime_checkable
class Readable(Protocol):
    """Anything with ``read(n) -> bytes`` (files, botocore bodies, the readers below)."""

    def read(self, n: int = -1, /) -> bytes: ...


def read_exactly(src: Readable, n: int) -> bytes:
    """Read ``n`` bytes, fewer only at end of stream (``read`` may return short)."""
    data = src.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class StreamReader:
    """Read-only, non-seekable stream wrapper; closing it closes the wrapped stream."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self.closed = False

    def read(self, n: int = -1, /) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            close = getattr(self._src, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class CountingReader(StreamReader):
    """Pass bytes through while counting them."""

    def __init__(self, src: Readable) -> None:
        super().__init__(src)
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        self.size += len(data)
        return data


class HashingReader(CountingReader):
    """Pass bytes through while counting them and computing their sha256."""

    def __init__(self, src: Readable) -> None:
        super().__init__(src)
        self._hash = hashlib.sha256()

    def read(self, n: int = -1, /) -> bytes:
        data = super().read(n)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        """sha256 of everything read so far."""
        return self._hash.hexdigest()


class ChunkedReader(StreamReader):
    """Base for readers that produce output a chunk at a time via ``_next_chunk``."""

    def __init__(self, src: Readable) -> None:
        super().__init__(src)
        self._buf: deque[bytes] = deque()
        self._buffered = 0
        self._done = False

    def _next_chunk(self) -> bytes:
        """Produce the next piece of output; set ``self._done`` with the last one."""
        raise NotImplementedError

    def _push(self, data: bytes) -> None:
        if data:
            self._buf.append(data)
            self._buffered += len(data)

    def read(self, n: int = -1, /) -> bytes:
        whole = n is None or n < 0
        while not self._done and (whole or self._buffered < n):
            self._push(self._next_chunk())
        if whole or n >= self._buffered:
            data = b"".join(self._buf)
            self._buf.clear()
            self._buffered = 0
            return data
        parts, need = [], n
        while need:
            piece = self._buf.popleft()
            if len(piece) > need:
                self._buf.appendleft(piece[need:])
                piece = piece[:need]
            parts.append(piece)
            need -= len(piece)
        self._buffered -= n
        return b"".join(parts)


class PrefixedReader(StreamReader):
    """Give back bytes already read from ``src`` (a peeked prefix), then the rest of it."""

    def __init__(self, prefix: bytes, src: Readable) -> None:
        super().__init__(src)
        self._prefix = prefix

    def read(self, n: int = -1, /) -> bytes:
        if not self._prefix:
            return self._src.read(n)
        if n is None or n < 0:
            data, self._prefix = self._prefix + self._src.read(), b""
            return data
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        return data


def hash_stream(src: Readable, bufsize: int = COPY_BUFSIZE) -> tuple[str, int]:
    """sha256 hex and byte count of a stream, read in ``bufsize`` pieces."""
    reader = HashingReader(src)
    while reader.read(bufsize):
        pass
    return reader.hexdigest(), reader.size
