"""One FastAGI conversation: panoramisk's ``Request`` with a reply reader that cannot desync.

panoramisk's ``Request.send_command`` reads one line per command with no timeout, reads a single
extra line for a multi-line ``520`` usage error (Asterisk sends several), and returns the
unsolicited ``HANGUP`` line as if it were the reply, after which every later reply is off by
one. This subclass keeps panoramisk's request object (headers, reader, writer) and replaces the
command round trip: a bounded wait per command, ``HANGUP`` noted and skipped, ``100 Trying``
skipped, ``520-`` read to its end.

Every round trip costs CPU on both sides, so channel values are read together in one
``GET FULL VARIABLE`` (see :meth:`AgiSession.get_variables`), and the per-command deadline is
one lazily re-armed timer per session rather than a timer object per command.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from panoramisk.fast_agi import Request

from callwarden.agi.wire import (
    MAX_USAGE_LINES,
    AgiProtocolError,
    AgiReply,
    mset_argument,
    parse_reply_line,
    quote,
    read_line,
)

#: Joins the values of one ``GET FULL VARIABLE``. Values come from the dialplan and may hold
#: anything, so nothing is assumed: a value containing it splits into too many parts, and the
#: values are then read one by one.
VALUE_SEPARATOR = "|~|"


class AgiSession(Request):
    """Commands to Asterisk over one FastAGI connection, each bounded by ``command_timeout``."""

    def __init__(self, app: object, headers: Mapping[str, str], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, command_timeout: float):
        super().__init__(app, headers, reader, writer, encoding="utf-8")
        self.command_timeout = command_timeout
        self.hung_up = False  # Asterisk said HANGUP: the channel is gone, the socket is not
        self.commands = 0
        self._loop = asyncio.get_running_loop()
        self._deadline: float | None = None  # loop time by which the pending reply is due
        self._watchdog: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._expired = False

    # -- environment ---------------------------------------------------------------------

    def env(self, name: str) -> str | None:
        """An ``agi_*`` value, None when absent or one of Asterisk's placeholders."""
        value = self.headers.get(name)
        if value is None or value in ("", "unknown"):
            return None
        return value

    @property
    def route_name(self) -> str | None:
        """The route in ``agi://host:port/<route>?query``: path without query or slashes."""
        script = self.headers.get("agi_network_script")
        if script is None:
            return None
        return script.split("?", 1)[0].strip("/") or None

    @property
    def uniqueid(self) -> str | None:
        return self.env("agi_uniqueid")

    @property
    def channel(self) -> str | None:
        return self.env("agi_channel")

    def arg(self, n: int) -> str | None:
        """The n-th AGI argument (1-based), None when absent or empty."""
        value = self.headers.get(f"agi_arg_{n}")
        if value is None:
            return None
        return value.strip() or None

    # -- commands ------------------------------------------------------------------------

    async def send_command(self, command: str) -> AgiReply:  # type: ignore[override]
        """Send one command line and return its reply, within ``command_timeout`` seconds
        (TimeoutError otherwise)."""
        if "\n" in command or "\r" in command:
            raise ValueError("an AGI command is one line")
        self._deadline = self._loop.time() + self.command_timeout
        self._task = asyncio.current_task()
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(self._deadline, self._check_deadline)
        try:
            self.writer.write(command.encode("utf-8") + b"\n")
            await self.writer.drain()
            self.commands += 1
            return await self._read_reply()
        except asyncio.CancelledError:
            if self._expired and self._task is not None:
                self._expired = False
                self._task.uncancel()
                raise TimeoutError(f"no reply within {self.command_timeout:g} s") from None
            raise
        finally:
            self._deadline = None

    def _check_deadline(self) -> None:
        """The watchdog: one timer per session, moved on to the pending reply's deadline
        instead of one timer per command. Cancels the waiting task when a reply is late."""
        self._watchdog = None
        if self._deadline is None or self._task is None or self._task.done():
            return  # nothing pending: the next command arms it again
        if self._loop.time() < self._deadline:
            self._watchdog = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._expired = True
        self._task.cancel()

    def close(self) -> None:
        """Stop the watchdog (the conversation is over)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _read_reply(self) -> AgiReply:
        """Lines until the reply; send_command's deadline bounds the whole wait."""
        while True:
            line = self._text(await read_line(self.reader, None))
            if line == "HANGUP":
                self.hung_up = True
                continue
            if line.startswith("100 "):
                continue
            reply = parse_reply_line(line)
            if line.startswith("520-"):
                await self._skip_usage()
            return reply

    async def _skip_usage(self) -> None:
        for _ in range(MAX_USAGE_LINES):
            if self._text(await read_line(self.reader, None)).startswith("520 "):
                return
        raise AgiProtocolError("520 usage message without an end line")

    @staticmethod
    def _text(raw: bytes) -> str:
        try:
            return raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            raise AgiProtocolError("reply is not UTF-8 text") from None

    async def get_variable(self, name: str) -> str | None:
        """A channel variable or function value; None when unset (``200 result=0``)."""
        reply = await self.send_command(f"GET VARIABLE {name}")
        if reply.ok and reply.result == 1:
            return reply.data if reply.data is not None else ""
        return None

    async def get_variables(self, *names: str) -> list[str | None]:
        """Several channel variables or function values in one round trip; unset and empty
        both read as None.

        One ``GET FULL VARIABLE "${A}|~|${B}..."`` (the captures show Asterisk expanding such
        an expression, quoted, with several ``${...}`` in it). An answer that does not split
        into one part per name (a value holding the separator) or that is not
        ``200 result=1`` is not trusted: the values are then read one by one.
        """
        if len(names) > 1:
            expression = VALUE_SEPARATOR.join(f"${{{name}}}" for name in names)
            reply = await self.send_command(f"GET FULL VARIABLE {quote(expression)}")
            if reply.ok and reply.result == 1 and reply.data is not None:
                parts = reply.data.split(VALUE_SEPARATOR)
                if len(parts) == len(names):
                    return [part or None for part in parts]
        return [(await self.get_variable(name)) or None for name in names]

    async def set_variable(self, name: str, value: str) -> AgiReply:
        return await self.send_command(f"SET VARIABLE {name} {quote(value)}")

    async def set_variables(self, pairs: list[tuple[str, str]],
                            also: tuple[str, ...] = ()) -> dict[str, str | None]:
        """Set channel variables, in order, and return the values of ``also`` read after them
        (unset and empty both None).

        Two round trips instead of one per variable: ``EXEC MSet`` sets them all, then one
        ``GET FULL VARIABLE`` reads every one of them back together with ``also``. Only what
        the read-back shows counts: if MSet is refused, a value cannot be carried by it, or
        any variable reads back other than it was meant to be, each is set again with
        ``SET VARIABLE``, so the dialplan finds exactly these values either way.
        """
        names = [name for name, _ in pairs]
        argument = mset_argument(pairs) if len(pairs) > 1 else None
        if argument is not None:
            reply = await self.send_command(f"EXEC MSet {argument}")
            if reply.ok and reply.result == 0:
                seen = dict(zip([*names, *also], await self.get_variables(*names, *also),
                                strict=True))
                if all(seen[name] == (value or None) for name, value in pairs):
                    return {name: seen[name] for name in also}
        for name, value in pairs:
            await self.set_variable(name, value)
        return dict(zip(also, await self.get_variables(*also), strict=True)) if also else {}

    async def exec_app(self, app: str, data: str | None = None) -> AgiReply:
        """``EXEC app data``: ``200 result=-2`` means no such application."""
        return await self.send_command(f"EXEC {app}" + (f" {quote(data)}" if data else ""))

    async def hangup_with_cause(self, cause: int) -> bool:
        """Hang the channel up with a Q.850 cause. ``EXEC Hangup <cause>`` sets the cause
        (the ``HANGUP`` command cannot); ``HANGUP`` is the fallback if EXEC is refused.
        True when Asterisk accepted either."""
        reply = await self.exec_app("Hangup", str(int(cause)))
        if reply.ok:
            return True
        if reply.dead_channel or self.hung_up:
            return True  # already gone: nothing left to hang up
        fallback = await self.send_command("HANGUP")
        return fallback.ok or fallback.dead_channel
