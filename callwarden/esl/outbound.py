"""The outbound Event Socket server (FreeSWITCH's ``socket`` application dials in) on top of
greenswitch's ``OutboundESLServer`` / ``OutboundSession``.

What is replaced, and why:

- greenswitch's accept loop puts the listening socket in non-blocking mode and, whenever no
  connection is waiting, ``gevent.sleep(0.1)``: a call arriving during that sleep waits up to
  100 ms before anyone reads it. Here ``accept()`` blocks cooperatively on the hub (an I/O
  watcher), so a connection is served the moment it arrives. ``bench/bench_esl.py`` measures
  both.
- greenswitch handles every connection up to ``max_connections`` with no timeout at all (a
  peer that never answers ``connect`` holds a greenlet forever) and logs caller numbers.
  Here each session runs under one deadline (``esl_outbound.session_timeout_s``), the
  ``connect`` reply has its own, and over capacity a connection is closed at once, so
  FreeSWITCH's ``socket`` application fails fast and the dialplan fails closed.
- greenswitch exits the process (``sys.exit``) when it cannot bind; here ``bind()`` raises.
"""

from __future__ import annotations

import contextlib
import errno
import socket as stdsocket
import time
from collections.abc import Callable
from typing import Protocol

import gevent
import greenswitch.esl as gesl
from gevent import socket
from gevent.pool import Group

from callwarden.esl.frames import Limits
from callwarden.esl.protocol import ConnectionClosed, RobustProtocol
from callwarden.log import get_logger

log = get_logger("callwarden.esl")

#: A channel's frames are small (the connect reply ~3.5 KB, events 2-5 KB); bound them tightly
#: so hundreds of hostile connections cannot take much memory.
OUTBOUND_LIMITS = Limits(max_header_bytes=256 * 1024, max_headers=4096, max_body=512 * 1024)


class OutboundSession(RobustProtocol, gesl.OutboundSession):
    """One controlled channel. greenswitch's API (``connect``, ``session_data``, ``uuid``,
    ``call_command``...) over the hardened protocol; its ``__init__`` is not called because it
    opens a ``makefile`` that keeps the socket alive after ``close()`` and starts an unbounded
    reader."""

    def __init__(self, client_address: tuple[str, int], sock: stdsocket.socket,
                 limits: Limits = OUTBOUND_LIMITS):
        gesl.ESLProtocol.__init__(self)
        self.client_address = client_address
        self._init_robust(sock, limits)
        self.connected = True
        self.session_data: dict[str, str] | None = None
        self.expected_events: dict = {}
        self._outbound_connected = False
        self.accepted_at = time.monotonic()
        self.start_event_handlers()

    def connect(self, timeout: float = 5.0) -> dict[str, str]:  # type: ignore[override]
        """Send ``connect``; the reply is the channel's data (CHANNEL_DATA headers)."""
        if self._outbound_connected and self.session_data is not None:
            return self.session_data
        reply = self.send("connect", timeout=timeout)
        if reply.content_type != "command/reply" or not reply.ok:
            raise ConnectionClosed("connect refused")
        self.session_data = reply.headers
        self._outbound_connected = True
        return self.session_data


class Application(Protocol):
    def run(self) -> None: ...


class OutboundServer(gesl.OutboundESLServer):
    """``OutboundESLServer`` with a blocking (event-driven) accept loop, a connection cap that
    refuses instead of queueing, and a hard deadline per session."""

    def __init__(self, host: str, port: int, application: Callable[[OutboundSession], Application],
                 *, max_connections: int = 512, session_timeout_s: float = 10.0,
                 backlog: int = 1024, limits: Limits = OUTBOUND_LIMITS):
        super().__init__(bind_address=host, bind_port=port, application=application,
                         max_connections=max_connections)
        self.session_timeout_s = session_timeout_s
        self.backlog = backlog
        self.limits = limits
        self.server: socket.socket | None = None
        self._group = Group()
        self._refused = 0
        self._last_refusal_log = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def bind(self) -> int:
        """Bind and listen (port 0 picks a free port); returns the bound port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind_address, self.bind_port[0]))
        except OSError:
            sock.close()
            raise
        sock.listen(self.backlog)
        self.server = sock
        self.bound_port = sock.getsockname()[1]
        return self.bound_port

    def listen(self) -> None:
        """Accept until :meth:`stop`: each connection gets its own greenlet at once."""
        if self.server is None:
            self.bind()
        assert self.server is not None
        self._running = True
        log.info("esl_outbound_listening", host=self.bind_address, port=self.bound_port,
                 max_connections=self.max_connections, session_timeout_s=self.session_timeout_s)
        while self._running:
            try:
                conn, address = self.server.accept()  # waits on the hub's I/O watcher, no polling
            except OSError as exc:
                if not self._running:
                    break
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the listener stays readable, so pause instead of spinning.
                    log.error("esl_accept_failed", error=errno.errorcode.get(exc.errno, "?"))
                    gevent.sleep(0.1)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EINTR, errno.EAGAIN):
                    continue
                raise
            self._dispatch(conn, address)
        log.info("esl_outbound_stopped", active=len(self._group))

    def _dispatch(self, conn: socket.socket, address: tuple[str, int]) -> None:
        if len(self._group) >= self.max_connections:
            self._refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log > 5.0:  # once per burst, not once per connection
                log.warning("esl_connection_refused", reason="server at capacity",
                            max_connections=self.max_connections, refused=self._refused)
                self._last_refusal_log = now
            with contextlib.suppress(OSError):
                conn.close()
            return
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._group.spawn(self._serve, conn, address)

    def _serve(self, conn: socket.socket, address: tuple[str, int]) -> None:
        session = OutboundSession(address, conn, self.limits)
        try:
            # The application keeps its own (shorter) deadlines; this one is the backstop.
            with gevent.Timeout(self.session_timeout_s + 1.0):
                self.application(session).run()
        except gevent.Timeout:
            # With the traceback: where it was stuck is a bug to fix (every wait has a deadline).
            log.error("esl_session_killed", reason="session deadline passed",
                      session_timeout_s=self.session_timeout_s, exc_info=True)
        except Exception:
            log.exception("esl_session_crashed")
        finally:
            session.close()

    @property
    def connection_count(self) -> int:  # greenswitch's counter, kept truthful
        return len(self._group) if hasattr(self, "_group") else 0

    @connection_count.setter
    def connection_count(self, _value: int) -> None:
        pass  # greenswitch's __init__ assigns 0; the group is the source of truth

    def stop(self, grace_s: float = 5.0) -> None:  # type: ignore[override]
        """Stop accepting, give running sessions ``grace_s`` to finish, then kill them."""
        self._running = False
        server, self.server = self.server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.close()
        self._group.join(timeout=grace_s)
        self._group.kill(block=True, timeout=1.0)
