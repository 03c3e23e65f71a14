"""One AMI session on panoramisk's ``Manager``, with the supervision taken out of its hands.

panoramisk's Manager reconnects on a fixed delay, sends pings without ever checking the answer,
queues unanswered actions to replay them on the next connection (a Hangup replayed minutes
later is wrong), lets the caller wait for ever on an action, and buffers a peer's bytes without
limit. Here each connection is a fresh Manager that logs in with a deadline and reports its loss
through a future; the listener decides when to reconnect; every action has a timeout and is
forgotten when it expires.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from panoramisk import Manager
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

from callwarden.log import get_logger

log = get_logger("callwarden.ami")

#: One AMI message larger than this is not Asterisk talking (a full Cdr event is ~600 bytes).
MAX_MESSAGE_BYTES = 1024 * 1024


class AmiError(Exception):
    """The AMI peer refused or failed an action (message names the action, not its data)."""


class AmiDisconnected(AmiError):
    """No AMI session is up."""


class _BoundedProtocol(AMIProtocol):
    """panoramisk's protocol, but a peer that never ends a message cannot grow our memory."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.queue and len(self.queue[-1]) > MAX_MESSAGE_BYTES:
            log.error("ami_message_too_large", limit=MAX_MESSAGE_BYTES, action="dropping connection")
            self.transport.abort()


class AmiConnection(Manager):
    """A logged-in AMI session; dead once ``lost`` is done."""

    def __init__(self, *, host: str, port: int, username: str, secret: str,
                 on_event: Callable[[Message], None], events: tuple[str, ...], event_mask: str):
        super().__init__(host=host, port=port, username=username, secret=secret,
                         events=event_mask, protocol_factory=_BoundedProtocol,
                         loop=asyncio.get_running_loop(), ping_delay=0, reconnect_timeout=0)
        self.lost: asyncio.Future[BaseException | None] = self.loop.create_future()
        self._on_event = on_event
        for name in events:
            self.register_event(name, self._dispatch)

    async def open(self, timeout: float) -> None:
        """Connect and log in, both within ``timeout`` seconds. Raises OSError, TimeoutError
        or AmiError (bad credentials)."""
        transport, protocol = await asyncio.wait_for(self.loop.create_connection(
            self.config["protocol_factory"], self.config["host"], self.config["port"]), timeout)
        # What Manager.connection_made does, minus its login callback and unchecked pinger.
        protocol.queue = deque()
        protocol.factory = self
        protocol.log = self.log
        protocol.config = self.config
        protocol.encoding = self.encoding = self.config["encoding"]
        self.responses = protocol.responses = {}
        self.protocol = protocol
        self._connected = True
        reply = await self.action({"Action": "Login", "Username": self.config["username"],
                                   "Secret": self.config["secret"],
                                   "Events": self.config["events"]}, timeout)
        if not reply.success:
            self.close()
            raise AmiError(f"login refused: {reply.get('Message') or 'no message'}")
        self.authenticated = True

    async def action(self, fields: Mapping[str, str], timeout: float,
                     as_list: bool | None = None) -> Any:
        """Send an action and wait at most ``timeout`` seconds for its complete answer (a
        Message, or a list for actions answered with an event list)."""
        if self.lost.done() or self.protocol is None or getattr(self.protocol, "closed", False):
            raise AmiDisconnected("AMI is not connected")
        action = Action(dict(fields), as_list=as_list)
        future = self.send_action(action, as_list=as_list)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            for key in (action.id, action.action_id):
                self.responses.pop(key, None)  # a late answer is dropped, never replayed
            raise

    def _dispatch(self, manager: Manager, event: Message) -> None:
        try:
            self._on_event(event)
        except Exception:  # an exception here would kill panoramisk's protocol
            log.exception("ami_event_handler_failed", event=event.get("Event"))

    # -- panoramisk's reconnect machinery, disabled ------------------------------------------

    def connection_lost(self, exc: BaseException | None) -> None:
        self._connected = False
        self.authenticated = False
        if not self.lost.done():
            self.lost.set_result(exc if isinstance(exc, BaseException) else None)
        self._fail_pending()

    def _fail_pending(self) -> None:
        """Unblock callers waiting on actions of the dead connection; nothing is replayed."""
        pending = list(self.awaiting_actions) + list(getattr(self.protocol, "responses", {}).values())
        self.awaiting_actions.clear()
        for action in pending:
            if not action.future.done():
                action.future.set_exception(AmiDisconnected("AMI connection lost"))

    def ping(self) -> None:  # Manager schedules this; our listener pings with a deadline
        return None

    def close(self) -> None:
        super().close()
        if not self.lost.done():
            self.lost.set_result(None)
        self._fail_pending()
