"""A hardened replacement for the reading and writing half of greenswitch's ``ESLProtocol``.

greenswitch 0.0.19 reads with an unbounded ``readline()``, trusts ``Content-Length`` (a short
body makes ``_read_socket`` loop forever on EOF), raises ``KeyError`` on a frame without
``Content-Type`` (killing its reader greenlet and leaving every ``send()`` waiting forever) and
has no timeout on ``send()``. This mixin keeps greenswitch's object model (``send``,
``register_handle``, ``connected``, ``session_data``...) and replaces those parts: a bounded
:class:`~callwarden.esl.frames.FrameParser` fed by ``recv()``, timeouts on every wait, pipelined
commands, and a clean end (every waiter woken with :class:`ConnectionClosed`) on EOF, socket
error or protocol error.
"""

from __future__ import annotations

import contextlib
import socket as stdsocket
import time
from collections import deque
from collections.abc import Callable, Sequence

import gevent
from gevent.event import AsyncResult
from gevent.event import Event as GEvent
from gevent.lock import Semaphore

from callwarden.esl.frames import EventBody, Frame, FrameParser, Limits, ProtocolError
from callwarden.log import get_logger

log = get_logger("callwarden.esl")

__all__ = ["ConnectionClosed", "EslEvent", "EslTimeout", "RobustProtocol"]

RECV_CHUNK = 65536


class ConnectionClosed(Exception):
    """The connection ended (EOF, socket error, protocol error, or closed by us)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class EslTimeout(Exception):
    """A reply or an awaited event did not come in time; the connection is no longer usable."""


class EslEvent:
    """A plain event as greenswitch handlers expect it (``.headers``), plus its body. Built
    from the wire (:meth:`from_body`), its headers are decoded on first use."""

    __slots__ = ("_event", "_headers", "body", "name")

    def __init__(self, headers: dict[str, str], body: bytes = b""):
        self._headers: dict[str, str] | None = headers
        self._event: EventBody | None = None
        self.body = body
        self.name = headers.get("Event-Name", "")

    @classmethod
    def from_body(cls, body: bytes, limits: Limits) -> EslEvent:
        """The event in a text/event-plain frame (raises ProtocolError as parse_event does)."""
        event = EventBody(body, limits)
        self = cls.__new__(cls)
        self._headers, self._event, self.body, self.name = None, event, event.body, event.name
        return self

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            assert self._event is not None
            self._headers, self._event = self._event.headers, None
        return self._headers

    def get(self, name: str, default: str | None = None) -> str | None:
        if self._headers is None and self._event is not None:  # one header, the rest undecoded
            return self._event.get(name, default)
        return self.headers.get(name, default)


Message = Frame | EslEvent
Predicate = Callable[[Message], bool]


class RobustProtocol:
    """Mixin placed before a greenswitch ``ESLProtocol`` subclass in the bases.

    Call :meth:`_init_robust` with the connected socket, then :meth:`start_event_handlers`.
    Registered handlers (``register_handle``) run in the reader greenlet and must not block.
    """

    sock: stdsocket.socket
    connected: bool
    event_handlers: dict[str, list[Callable[[EslEvent], None]]]
    _auth_request_event: GEvent

    def _init_robust(self, sock: stdsocket.socket, limits: Limits) -> None:
        self.sock = sock
        self.sock_file = None  # greenswitch's makefile() would keep the fd open after close()
        self._parser = FrameParser(limits)
        self._limits = limits
        self._pending: deque[AsyncResult] = deque()
        self._waiters: list[tuple[Predicate, AsyncResult]] = []
        self._ended = GEvent()
        self._closing = False
        self._reader: gevent.Greenlet | None = None
        self._send_lock = Semaphore()  # one writer at a time: replies must match the order sent
        self.last_received = time.monotonic()
        self.end_reason: str | None = None
        self.protocol_error: str | None = None
        self.disconnect_notice: dict[str, str] | None = None
        self.rejected = False

    # -- reading -------------------------------------------------------------------------------

    def start_event_handlers(self) -> None:
        self._reader = gevent.spawn(self.receive_events)

    def receive_events(self) -> None:
        reason = "eof"
        try:
            while True:
                data = self.sock.recv(RECV_CHUNK)
                self.last_received = time.monotonic()
                if not data:
                    self._parser.close()
                    break
                for frame in self._parser.feed(data):
                    self.handle_event(frame)
        except ProtocolError as exc:
            self.protocol_error = exc.reason
            reason = "protocol_error"
        except OSError:
            reason = "closed" if self._closing else "socket_error"
        finally:
            self._end(reason)

    def handle_event(self, frame: Frame) -> None:  # type: ignore[override]
        ctype = frame.content_type
        if ctype in ("command/reply", "api/response"):
            if not self._pending:
                raise ProtocolError("reply without a command")
            self._pending.popleft().set(frame)
            return
        if ctype == "auth/request":
            self._auth_request_event.set()
        elif ctype == "text/event-plain":
            self._dispatch(EslEvent.from_body(frame.body, self._limits))
            return
        elif ctype == "text/disconnect-notice":
            self.disconnect_notice = dict(frame.headers)
            if frame.headers.get("Content-Disposition") == "linger":
                self._lingering = True
            else:
                self.connected = False
        elif ctype == "text/rude-rejection":
            self.rejected = True
            self.connected = False
            self._auth_request_event.set()
        self._notify(frame)

    def _dispatch(self, event: EslEvent) -> None:
        # Handlers first: a waiter woken by this event then sees the state they updated.
        handlers = self.event_handlers.get(event.name) or self.event_handlers.get("*") or []
        for handler in list(handlers):
            try:
                handler(event)
            except Exception:  # a handler bug must not kill the reader
                log.exception("esl_handler_failed", handler=getattr(handler, "__name__", "?"),
                              event=event.name)
        self._notify(event)

    def _notify(self, message: Message) -> None:
        if not self._waiters:
            return
        keep = []
        for predicate, result in self._waiters:
            if result.ready():
                continue
            if predicate(message):
                result.set(message)
            else:
                keep.append((predicate, result))
        self._waiters = keep

    def _end(self, reason: str) -> None:
        if self._ended.is_set():
            return
        self.end_reason = reason
        self.connected = False
        error = ConnectionClosed(reason)
        while self._pending:
            self._pending.popleft().set_exception(error)
        for _, result in self._waiters:
            if not result.ready():
                result.set_exception(error)
        self._waiters = []
        self._ended.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    # -- writing -------------------------------------------------------------------------------

    def send_many(self, commands: Sequence[bytes], timeout: float) -> list[Frame]:
        """Send commands in one write and wait for their replies, in order.

        Raises :class:`EslTimeout` (the caller must then close: replies are out of step) or
        :class:`ConnectionClosed`.
        """
        if self._ended.is_set():
            raise ConnectionClosed(self.end_reason or "closed")
        results = [AsyncResult() for _ in commands]
        try:
            with gevent.Timeout(timeout, EslTimeout("no reply in time")):
                with self._send_lock:
                    self._pending.extend(results)
                    self.sock.sendall(b"".join(commands))
                return [r.get() for r in results]
        except OSError:
            self._end("socket_error")
            raise ConnectionClosed("socket_error") from None

    def post(self, commands: Sequence[bytes], timeout: float) -> list[AsyncResult]:
        """Send commands in one write without waiting for their replies: they arrive in the
        returned results, in order (:meth:`replies`). The same errors as :meth:`send_many`."""
        if self._ended.is_set():
            raise ConnectionClosed(self.end_reason or "closed")
        results = [AsyncResult() for _ in commands]
        try:
            with gevent.Timeout(timeout, EslTimeout("no reply in time")), self._send_lock:
                self._pending.extend(results)
                self.sock.sendall(b"".join(commands))
        except OSError:
            self._end("socket_error")
            raise ConnectionClosed("socket_error") from None
        return results

    def replies(self, results: Sequence[AsyncResult], timeout: float) -> list[Frame]:
        """The replies :meth:`post` is waiting for, within ``timeout`` (raises EslTimeout, or
        ConnectionClosed if the connection ended first)."""
        if all(r.ready() for r in results):  # often: they came in the same read
            return [r.get() for r in results]
        with gevent.Timeout(max(0.0, timeout), EslTimeout("no reply in time")):
            return [r.get() for r in results]

    def send(self, data: str | bytes, timeout: float = 5.0) -> Frame:  # type: ignore[override]
        """greenswitch's ``send``: one command (a string gets its ending blank line added)."""
        raw = data if isinstance(data, bytes) else (data + "\n\n").encode("utf-8")
        return self.send_many([raw], timeout)[0]

    def expect(self, predicate: Predicate) -> AsyncResult:
        """Register interest in a coming frame or event *before* sending what triggers it."""
        result = AsyncResult()
        if self._ended.is_set():
            result.set_exception(ConnectionClosed(self.end_reason or "closed"))
        else:
            self._waiters.append((predicate, result))
        return result

    def wait(self, result: AsyncResult, timeout: float) -> Message:
        """The message an :meth:`expect` caught, within ``timeout`` (raises EslTimeout)."""
        try:
            return result.get(timeout=max(0.0, timeout))
        except gevent.Timeout:
            raise EslTimeout("awaited event did not come in time") from None

    def wait_closed(self, timeout: float) -> bool:
        """Wait until the peer closes (or we do); True if it happened in time."""
        return self._ended.wait(max(0.0, timeout))

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def close(self) -> None:
        """Close now; the reader ends and every waiter gets ConnectionClosed."""
        if not hasattr(self, "_ended") or self._closing:  # never connected, or closing
            return
        self._closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(stdsocket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        reader = self._reader
        if reader is not None and reader is not gevent.getcurrent():
            reader.join(timeout=1.0)
            if not reader.dead:
                reader.kill(block=False)
        self._end("closed")
        # Break the session <-> handler reference cycles (bound methods) so memory is freed
        # at once, not at the next cycle collection.
        self.event_handlers = {}
        self._reader = None

    def stop(self) -> None:  # greenswitch API: no 'exit' round trip, just close
        self.close()
