"""The Event Socket wire format: a bounded push parser for what FreeSWITCH sends, and builders
for what we send. Pure Python, no I/O and no gevent, so it is tested on its own.

A frame is a block of ``Name: value`` lines ended by an empty line, then, when the block has a
``Content-Length``, exactly that many body bytes. Values are URL-encoded by FreeSWITCH in plain
events and in the ``connect`` reply (``Reply-Text: %2BOK%0A``); every value is decoded *after*
the block is split into lines, so an encoded newline can never forge a header (greenswitch
decodes first and splits afterwards). Everything is bounded: header block size, header count,
body size. Anything that is not ESL raises :class:`ProtocolError` as early as the bytes show it,
so a caller can log it once and drop the connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote

__all__ = [
    "Frame",
    "FrameParser",
    "Limits",
    "EventBody",
    "ProtocolError",
    "api",
    "command",
    "execute",
    "parse_event",
]

_NAME = re.compile(rb"[A-Za-z0-9_.\-]+\Z")
# Control bytes never appear in FreeSWITCH's header blocks (values are URL-encoded).
_BAD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Complete header lines (a value may end in carriage returns), and an empty line.
_GOOD_LINES = re.compile(rb"(?:[A-Za-z0-9_.\-]+:[^\n]*\n)*")
_EMPTY_LINE = re.compile(rb"\r*\n")


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid ESL frame. Messages never echo peer data."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds for one frame; memory per connection stays below their sum."""

    max_header_bytes: int = 256 * 1024
    max_headers: int = 4096
    max_body: int = 1024 * 1024


class Frame:
    """One frame: decoded headers (first occurrence wins) and the raw body."""

    __slots__ = ("_event", "body", "headers")

    def __init__(self, headers: dict[str, str], body: bytes = b""):
        self.headers = headers
        self.body = body
        self._event: tuple[dict[str, str], bytes] | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        """``Reply-Text`` of a command/reply, or the body of an api/response."""
        if self.content_type == "api/response":
            return self.body.decode("utf-8", "replace")
        return self.headers.get("Reply-Text", "").strip()

    @property
    def ok(self) -> bool:
        return self.reply_text.startswith("+OK")

    @property
    def data(self) -> str:
        """greenswitch's ``event.data``: the reply text or body."""
        return self.reply_text

    @property
    def is_event(self) -> bool:
        return self.content_type == "text/event-plain"

    def event(self) -> dict[str, str]:
        """The headers of a plain event (parsed once); ``{}`` for other frames."""
        if not self.is_event:
            return {}
        if self._event is None:
            self._event = parse_event(self.body)
        return self._event[0]

    def __repr__(self) -> str:  # never dumps values: they may hold phone numbers
        name = self.event().get("Event-Name") if self.is_event else None
        return f"<Frame {self.content_type or '?'}{' ' + name if name else ''} body={len(self.body)}>"


# One call into the regex engine per block instead of a Python loop per line: a plain event
# carries ~150 headers and a call sees a dozen of them (measured: this is most of the
# per-call CPU of the outbound server). Blocks with a carriage return or a repeated name take
# the line-by-line path, which defines the semantics.
_TEXT_BLOCK = re.compile(r"(?:(?:[A-Za-z0-9_.\-]+:.*)?\n)*(?:[A-Za-z0-9_.\-]+:.*)?")
_TEXT_PAIR = re.compile(r"^([A-Za-z0-9_.\-]+): ?(.*)$", re.M)
_TEXT_EVENT_NAME = re.compile(r"^Event-Name: ?(.*)$", re.M)
_TEXT_CONTENT_LENGTH = re.compile(r"^Content-Length: ?(.*)$", re.M)


def _parse_lines(block: bytes, limits: Limits) -> dict[str, str]:
    if block.count(b"\n") >= limits.max_headers:
        raise ProtocolError("too many header lines")
    # Decoding the whole block is decoding line by line: UTF-8 never hides a newline byte.
    text = block.decode("utf-8", "replace")
    if _fast(text):
        headers = _fast_headers(text)
        if headers is not None:
            return headers
    return _parse_lines_slowly(block, limits)


def _fast(text: str) -> bool:
    """A block the one-regex path reads (else the line-by-line path decides)."""
    return "\r" not in text and _TEXT_BLOCK.fullmatch(text) is not None


def _fast_headers(text: str) -> dict[str, str] | None:
    """The headers of a block :func:`_fast` accepted; None when a name repeats."""
    pairs = _TEXT_PAIR.findall(text)
    headers = dict(pairs)
    if len(headers) != len(pairs):
        return None
    if "%" in text:  # URL-decoded after the split, value by value
        for key in [k for k, v in pairs if "%" in v]:
            headers[key] = unquote(headers[key], errors="replace")
    return headers


def _first(pattern: re.Pattern[str], text: str) -> str | None:
    """The value of a header's first occurrence in a :func:`_fast` block."""
    m = pattern.search(text)
    if m is None:
        return None
    value = m.group(1)
    return unquote(value, errors="replace") if "%" in value else value


@lru_cache(maxsize=64)
def _header_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(name)}: ?(.*)$", re.M)


def _parse_lines_slowly(block: bytes, limits: Limits) -> dict[str, str]:
    headers: dict[str, str] = {}
    lines = block.split(b"\n")
    if len(lines) > limits.max_headers:
        raise ProtocolError("too many header lines")
    for raw in lines:
        line = raw.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _NAME.match(name):
            raise ProtocolError("header line is not 'Name: value'")
        if value.startswith(b" "):
            value = value[1:]
        key = name.decode("ascii")
        if key not in headers:
            headers[key] = unquote(value.decode("utf-8", "replace"), errors="replace")
    return headers


def parse_event(body: bytes, limits: Limits | None = None) -> tuple[dict[str, str], bytes]:
    """Split a ``text/event-plain`` body into its headers and its own body (BACKGROUND_JOB...).

    FreeSWITCH ends the header lines with an empty line; anything after it must be exactly the
    inner ``Content-Length`` bytes. Trailing bytes mean the outer Content-Length was wrong and
    the stream is out of step: that is a protocol error, not a quirk to skip.
    """
    event = EventBody(body, limits)
    return event.headers, event.body


class EventBody:
    """A plain event, checked at once (every error :func:`parse_event` raises, raised here),
    its headers built on first use: a channel sends a dozen events of ~150 headers per call
    and the outbound server reads a few headers of a few of them. ``name``: Event-Name."""

    __slots__ = ("_block", "_headers", "_limits", "_text", "body", "name")

    def __init__(self, body: bytes, limits: Limits | None = None):
        limits = limits or Limits()
        end = body.find(b"\n\n")
        if end < 0:
            raise ProtocolError("event body without an end of headers")
        block = body[:end]
        if block.count(b"\n") >= limits.max_headers:
            raise ProtocolError("too many header lines")
        text = block.decode("utf-8", "replace")
        self._headers: dict[str, str] | None = None
        self._text: str | None = None
        self._block, self._limits = block, limits
        if _fast(text):
            self._text = text
            name, declared = _first(_TEXT_EVENT_NAME, text), _first(_TEXT_CONTENT_LENGTH, text)
        else:
            self._headers = _parse_lines_slowly(block, limits)
            name, declared = self._headers.get("Event-Name"), self._headers.get("Content-Length")
        self.name = name or ""
        rest = body[end + 2:]
        if declared is None:
            if rest.strip(b"\r\n"):
                raise ProtocolError("event body has bytes after its headers")
            rest = b""
        elif not declared.isdigit() or int(declared) != len(rest):
            raise ProtocolError("event body length does not match its Content-Length")
        self.body = rest

    def get(self, name: str, default: str | None = None) -> str | None:
        """One header, without decoding the others (a handler asks an event for two or three
        of its ~150): the first occurrence, URL-decoded, as in :attr:`headers`."""
        if self._headers is not None:
            return self._headers.get(name, default)
        assert self._text is not None
        value = _first(_header_pattern(name), self._text)
        return default if value is None else value

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            assert self._text is not None
            headers = _fast_headers(self._text)
            if headers is None:  # a repeated name: the first occurrence wins, line by line
                headers = _parse_lines_slowly(self._block, self._limits)  # cannot fail here
            self._headers, self._text = headers, None
        return self._headers


class FrameParser:
    """Feed it bytes as they arrive; it returns every complete frame.

    Invalid input raises :class:`ProtocolError` as soon as it is visible: a control byte or a
    line that is not ``Name: value`` in a header block, a header block or body over the limits,
    a Content-Length that is not a number, a frame without Content-Type. :meth:`close` tells
    whether the peer stopped in the middle of a frame.
    """

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._buf = bytearray()
        self._checked = 0  # bytes of the current header block already validated
        self._line_start = 0
        self._need: int | None = None  # body bytes awaited for ``_head``
        self._head: dict[str, str] | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def close(self) -> None:
        """The peer closed the connection: complain if it stopped inside a frame."""
        if self._head is not None or self._buf.strip(b"\r\n"):
            raise ProtocolError("connection closed inside a frame")

    def _next(self) -> Frame | None:
        if self._head is None and not self._read_head():
            return None
        assert self._head is not None and self._need is not None
        if len(self._buf) < self._need:
            return None
        body = bytes(self._buf[:self._need])
        del self._buf[:self._need]
        frame = Frame(self._head, body)
        self._head, self._need = None, None
        return frame

    def _read_head(self) -> bool:
        # FreeSWITCH never sends blank lines between frames, but tolerate them as it does.
        skip = 0
        while skip < len(self._buf) and self._buf[skip] in (0x0A, 0x0D):
            skip += 1
        if skip:
            del self._buf[:skip]
            self._checked = self._line_start = 0
        end = self._validate()
        if end is None:
            if len(self._buf) > self.limits.max_header_bytes:
                raise ProtocolError("header block larger than allowed")
            return False
        if end > self.limits.max_header_bytes:
            raise ProtocolError("header block larger than allowed")
        headers = _parse_lines(bytes(self._buf[:end]), self.limits)
        del self._buf[:end + 1]
        self._checked = self._line_start = 0
        if "Content-Type" not in headers:
            raise ProtocolError("frame without Content-Type")
        length = headers.get("Content-Length", "0").strip()
        if not length.isdigit():
            raise ProtocolError("Content-Length is not a number")
        if int(length) > self.limits.max_body:
            raise ProtocolError("body larger than allowed")
        self._head, self._need = headers, int(length)
        return True

    def _validate(self) -> int | None:
        """Check the new bytes of the header block; return the index of the empty line's
        newline when the block is complete."""
        buf = self._buf
        limit = min(len(buf), self.limits.max_header_bytes + 2)
        # Skip the complete 'Name: value' lines in one go, then look at the next line; control
        # bytes are looked for up to there only (the buffer may hold the bodies of later frames).
        pos = self._line_start = _GOOD_LINES.match(buf, self._line_start, limit).end()
        nl = buf.find(b"\n", pos, limit)
        scanned = limit if nl < 0 else nl + 1
        if _BAD_BYTES.search(buf, self._checked, scanned):
            raise ProtocolError("control bytes in a header block")
        self._checked = scanned
        if nl < 0:
            return None
        if _EMPTY_LINE.match(buf, pos, nl + 1):
            return nl
        raise ProtocolError("header line is not 'Name: value'")


# -- what we send -----------------------------------------------------------------------------


def _clean(text: str) -> str:
    if "\n" in text or "\r" in text:
        # A newline would end the command early and let the rest be read as another command.
        raise ValueError("ESL command text must not contain line breaks")
    return text


def command(text: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """One command: its line, its header lines, an empty line."""
    lines = [_clean(text)] + [f"{_clean(k)}: {_clean(v)}" for k, v in headers]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def execute(app: str, arg: str | None = None, *, event_uuid: str | None = None) -> bytes:
    """``sendmsg`` executing a dialplan application on the controlled channel, in order
    (``event-lock``), tagged with ``Event-UUID`` so its CHANNEL_EXECUTE_COMPLETE carries it as
    ``Application-UUID``."""
    headers = [("call-command", "execute"), ("execute-app-name", app)]
    if arg:
        headers.append(("execute-app-arg", arg))
    if event_uuid:
        headers.append(("Event-UUID", event_uuid))
    headers.append(("event-lock", "true"))
    return command("sendmsg", headers)


def api(text: str) -> bytes:
    return command("api " + text)
