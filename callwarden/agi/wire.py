"""The FastAGI wire format, parsed defensively: the environment block and command replies.

Asterisk is trusted to speak AGI, but anything can connect to the port, so every reader here is
bounded (bytes per line, lines per block, seconds per read) and turns malformed input into one
exception type, :class:`AgiProtocolError`, that the server answers by dropping the connection.
Facts from the captures in ``tests/sim/captures/asterisk`` that shape this module:

* the environment block can arrive in several TCP segments and ends with an empty line;
* ``agi_network_script`` is the URL path *including* any ``?query``, absent without a path;
* Asterisk writes an unsolicited ``HANGUP`` line when the channel hangs up, possibly between a
  command and its reply; the reply still follows;
* a ``520-`` usage error spans several lines and ends with a ``520 End of proper usage.`` line;
* ``511`` answers commands that need a live channel after the channel hung up.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

#: Longest line accepted from the peer (the real environment lines are under 200 bytes).
MAX_LINE_BYTES = 4096
#: Whole environment block (a real one is ~600 bytes; AGI arguments can add a few KiB).
MAX_ENV_BYTES = 16384
#: Lines in the environment block (25 in the captures with three arguments).
MAX_ENV_LINES = 160
#: Lines of a multi-line ``520-`` usage message before we call it garbage.
MAX_USAGE_LINES = 64

_ENV_LINE = re.compile(r"agi_[a-z0-9_]{1,40}: [^\x00-\x08\x0a-\x1f\x7f]*")
_REPLY_200 = re.compile(r"200 result=(-?\d*)(?: (.*))?")
_SAFE_VALUE = re.compile(r"[^\x00-\x1f\x7f\"\\]*")
_REPLY_CODE = re.compile(r"(\d{3})[ -].*|(\d{3})")
#: What ``MSet`` can carry with no escaping but a comma's: a channel variable name, and a value
#: free of the characters Asterisk's application-argument parser treats specially (quotes,
#: backslashes, brackets, parentheses, ``=``, ``|``, ``$``, blanks).
_MSET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}", re.ASCII)
_MSET_VALUE = re.compile(r"[A-Za-z0-9_.:@/+,-]{0,200}", re.ASCII)


class AgiProtocolError(Exception):
    """The peer sent something that is not FastAGI (message names the rule, not the bytes)."""


class PeerGone(Exception):
    """The peer closed the connection."""


@dataclass(frozen=True, slots=True)
class AgiReply:
    """One parsed reply. ``result`` is None when the code is not 200 or the result is empty."""

    code: int
    result: int | None = None
    data: str | None = None  # the text in parentheses, e.g. a variable's value
    text: str = ""  # the whole first line, for logs

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def dead_channel(self) -> bool:
        return self.code == 511


async def read_line(reader: asyncio.StreamReader, timeout: float | None) -> bytes:
    """One ``\\n``-terminated line (without it), within ``timeout`` seconds (None: the caller
    bounds the wait) and MAX_LINE_BYTES."""
    if timeout is None:  # no timer per line: the caller's deadline covers it
        return await _read_line(reader)
    async with asyncio.timeout(timeout):
        return await _read_line(reader)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise AgiProtocolError(f"connection closed inside a line ({len(exc.partial)} bytes)") from None
        raise PeerGone("connection closed") from None
    except asyncio.LimitOverrunError:
        raise AgiProtocolError(f"line longer than {MAX_LINE_BYTES} bytes") from None
    if len(line) > MAX_LINE_BYTES:
        raise AgiProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
    return line[:-1]


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AgiProtocolError(f"{what} is not UTF-8 text") from None


async def read_environment(reader: asyncio.StreamReader, read_timeout: float) -> dict[str, str]:
    """The ``agi_*: value`` block up to its empty line, validated, all of it within
    ``read_timeout`` seconds (Asterisk sends it at once; one timer, not one per line).

    Asterisk ends its lines with a bare LF: after such a first line, the rest of the block is
    taken in one read up to the empty line and checked with one pattern (Asterisk's 25-line
    block: 47-49 µs of CPU read and checked a line at a time, 22-24 µs so).
    A CRLF peer or a block longer than the stream's limit is read line by line, each line
    checked as it comes (:func:`_env_line`: the rules, and the error naming the one broken);
    so is a block read at once that fails the pattern."""
    env: dict[str, str] = {}
    total = 0
    try:
        async with asyncio.timeout(read_timeout):
            raw = await _next_line(reader, total)
            total = len(raw) + 1
            pair = _env_line(raw, 0, total)
            prefix = b""
            if not raw.endswith(b"\r"):
                head = await reader.read(1)
                if head == b"\n":  # a one-line block
                    return dict([pair])
                if not head:
                    raise AgiProtocolError("connection closed inside the environment block")
                try:
                    rest = head + await reader.readuntil(b"\n\n")
                except asyncio.LimitOverrunError:  # left in the buffer: line by line below
                    prefix = head
                except asyncio.IncompleteReadError as exc:
                    raise _cut_off(head + exc.partial, total) from None
                else:
                    return _whole_block(raw, rest) or _by_line(
                        [raw, *rest[:-1].split(b"\n")], len(raw) + 1 + len(rest))
            while pair is not None:
                env[pair[0]] = pair[1]
                raw = prefix + await _next_line(reader, total)
                prefix, total = b"", total + len(raw) + 1
                pair = _env_line(raw, len(env), total)
    except TimeoutError:
        what = "nothing" if total == 0 else f"an unfinished environment block ({total} bytes)"
        raise AgiProtocolError(f"peer sent {what} within {read_timeout:g} s") from None
    return env


async def _next_line(reader: asyncio.StreamReader, total: int) -> bytes:
    try:
        return await _read_line(reader)
    except PeerGone:
        if total == 0:
            raise
        raise AgiProtocolError("connection closed inside the environment block") from None


def _env_line(raw: bytes, n: int, total: int) -> tuple[str, str] | None:
    """The name and value of the block's line ``n`` (``total``: the block's bytes up to and
    including it), or None for the empty line that ends the block. Raises AgiProtocolError
    naming the rule the line breaks."""
    if len(raw) > MAX_LINE_BYTES:
        raise AgiProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
    if total > MAX_ENV_BYTES:
        raise AgiProtocolError(f"environment block longer than {MAX_ENV_BYTES} bytes")
    if raw.endswith(b"\r"):  # tolerate CRLF peers; Asterisk itself sends bare LF
        raw = raw[:-1]
    if not raw:
        if n == 0:
            raise AgiProtocolError("empty environment block")
        return None
    line = _decode(raw, "environment line")
    if not _ENV_LINE.fullmatch(line):
        raise AgiProtocolError("environment line is not 'agi_<name>: <value>'")
    if n >= MAX_ENV_LINES:
        raise AgiProtocolError(f"more than {MAX_ENV_LINES} environment lines")
    key, value = line.split(": ", 1)
    return key, value


def _by_line(lines: list[bytes], total: int) -> dict[str, str]:
    """The environment from a block's lines, each checked in turn, up to the empty line."""
    env: dict[str, str] = {}
    seen = 0
    for n, raw in enumerate(lines, start=1):
        seen += len(raw) + 1
        pair = _env_line(raw, len(env), seen)
        if pair is None:
            if n < len(lines):  # a CRLF empty line after LF lines: what followed is read
                raise AgiProtocolError("environment block mixes LF and CRLF line ends")
            return env
        env[pair[0]] = pair[1]
    raise AgiProtocolError("environment block without its empty line")  # not from readuntil


def _cut_off(partial: bytes, total: int) -> AgiProtocolError:
    """What to say of a block cut off after its first line and ``partial``: a bad line first,
    as the line-by-line reader would."""
    *lines, last = partial.split(b"\n")
    seen = total
    for n, raw in enumerate(lines, start=1):
        seen += len(raw) + 1
        _env_line(raw, n, seen)
    if last:
        return AgiProtocolError(f"connection closed inside a line ({len(last)} bytes)")
    return AgiProtocolError("connection closed inside the environment block")


_ENV_BLOCK = re.compile(f"(?:{_ENV_LINE.pattern}\n)+")  # every line as _ENV_LINE has it
_ENV_PAIR = re.compile(r"(agi_[a-z0-9_]{1,40}): ([^\n]*)\n")


def _whole_block(first: bytes, rest: bytes) -> dict[str, str] | None:
    """The environment of a block read at once (``rest`` ends with the empty line) when every
    line keeps the rules; None otherwise (the caller then checks it line by line)."""
    block = first + b"\n" + rest[:-1]
    if len(block) + 1 > MAX_ENV_BYTES or max(map(len, block.split(b"\n"))) > MAX_LINE_BYTES:
        return None
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.count("\n") > MAX_ENV_LINES or not _ENV_BLOCK.fullmatch(text):
        return None
    return dict(_ENV_PAIR.findall(text))


def parse_reply_line(line: str) -> AgiReply:
    """Parse the first line of a reply (``HANGUP`` and ``520-`` continuation are handled by the
    caller). Raises AgiProtocolError for lines that are not AGI replies."""
    if line.startswith("200 "):
        m = _REPLY_200.fullmatch(line)
        if not m:
            raise AgiProtocolError("malformed 200 reply")
        result = int(m.group(1)) if m.group(1) not in ("", "-") else None
        rest = (m.group(2) or "").strip()
        data = rest[1:-1] if rest.startswith("(") and rest.endswith(")") else None
        return AgiReply(200, result, data, line)
    m = _REPLY_CODE.fullmatch(line)
    if not m:
        raise AgiProtocolError("reply does not start with a 3-digit code")
    return AgiReply(int(m.group(1) or m.group(2)), None, None, line)


def quote(value: str) -> str:
    """A command argument in double quotes; refuses what AGI cannot carry safely."""
    if not _SAFE_VALUE.fullmatch(value):
        raise ValueError("AGI argument contains a quote, backslash or control character")
    return f'"{value}"'


def mset_argument(pairs: list[tuple[str, str]]) -> str | None:
    r"""``EXEC MSet``'s argument setting every pair, as one quoted AGI argument; None when a name
    or value is outside what MSet carries safely (the caller then sets them one by one).

    Two parsers read it: AGI's ``parse_args`` (quotes group, a backslash escapes the next
    character) and then MSet's ``ast_app_separate_args`` (commas separate pairs, a backslash
    escapes). A comma inside a value is therefore sent as ``\\,``: AGI leaves ``\,``, and
    MSet keeps a literal comma.
    """
    if not pairs:
        return None
    parts = []
    for name, value in pairs:
        if not _MSET_NAME.fullmatch(name) or not _MSET_VALUE.fullmatch(value):
            return None
        parts.append(f"{name}={value}".replace(",", "\\\\,"))
    return '"' + ",".join(parts) + '"'
