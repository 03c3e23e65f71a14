"""The FastAGI server: panoramisk's ``Application`` with a handler that survives bad peers.

panoramisk's own handler reads the environment block with no size or time limit (a peer that
sends nothing, or endless bytes, holds a task and memory for ever), decodes without checking,
and has no deadline for the conversation; Asterisk itself never times a FastAGI conversation
out once connected. This handler bounds all of it:

* at most ``max_sessions`` conversations at once; more are closed on arrival;
* the environment block: size, line count and format checked, read within one deadline;
* every command reply: a line-length limit and a timeout (see AgiSession);
* the whole conversation: ``session_timeout_s``, enforced here.

Routes are looked up by name in panoramisk's route table. Whatever goes wrong inside a route
goes through one failure path: log one line, set the route's failure variables, and for
outbound hang the channel up (fail closed). Malformed input from the peer is answered by
dropping the connection with one log line; nothing escapes the handler.
"""

from __future__ import annotations

import asyncio
import logging
import time

from panoramisk.fast_agi import Application

from callwarden.agi.routes import ROUTES, CallReport, Route, RouteContext
from callwarden.agi.session import AgiSession
from callwarden.agi.wire import AgiProtocolError, PeerGone, read_environment
from callwarden.log import get_logger
from callwarden.policy import denial

log = get_logger("callwarden.agi")

#: Time the failure path gets to tell Asterisk (set variables, hang up) before we close.
FAILURE_GRACE_S = 1.0
#: Asterisk sends the environment block as soon as it connects: a slow one is not Asterisk.
ENV_READ_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0
DEFAULT_MAX_SESSIONS = 1024
_FAILURE_CAUSE = denial("POLICY_UNAVAILABLE").hangup_cause_code or 41


class FastAgiServer(Application):
    """Serves the registered routes; use :meth:`handler` with ``asyncio.start_server``."""

    def __init__(self, ctx: RouteContext, *, session_timeout_s: float,
                 routes: dict[str, Route] | None = None,
                 max_sessions: int = DEFAULT_MAX_SESSIONS):
        super().__init__(default_encoding="utf-8", loop=asyncio.get_running_loop())
        self.ctx = ctx
        self.session_timeout_s = session_timeout_s
        grace = min(FAILURE_GRACE_S, session_timeout_s / 2)
        self.route_budget_s = session_timeout_s - grace
        self.failure_grace_s = grace
        self.env_timeout_s = min(ENV_READ_TIMEOUT_S, session_timeout_s)
        self.command_timeout_s = min(COMMAND_TIMEOUT_S, session_timeout_s)
        self.max_sessions = max_sessions
        self.routes = dict(ROUTES if routes is None else routes)
        for name, route in self.routes.items():
            self.add_route(name, route.handle)
        self.active = 0
        self.served = 0
        self.refused = 0
        self._last_refusal_log = 0.0

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One FastAGI connection, start to close. Never raises."""
        if self.active >= self.max_sessions:
            self._refuse(writer)
            return
        self.active += 1
        started = time.monotonic()
        session: AgiSession | None = None
        route: Route | None = None
        report: CallReport | None = None
        drop = False
        try:
            try:
                # The route's budget ends FAILURE_GRACE_S before the session's, so a route that
                # overruns still gets its deny and hangup out within the session deadline.
                async with asyncio.timeout(self.route_budget_s):
                    env = await read_environment(reader, self.env_timeout_s)
                    session = AgiSession(self, env, reader, writer,
                                         command_timeout=self.command_timeout_s)
                    route = self.routes.get(session.route_name or "")
                    if route is None:
                        log.error("agi_no_route", route=(session.route_name or "")[:100],
                                  pbx_call_id=session.uniqueid, routes=sorted(self.routes),
                                  note="nothing set: the dialplan's fail-closed check hangs up")
                        return
                    report = CallReport(route=route.name, pbx_call_id=session.uniqueid)
                    await self._route[route.name](session, self.ctx, report)
            except (AgiProtocolError, PeerGone):
                raise
            except Exception as exc:  # a route error, a command timeout or the route budget
                if session is None or route is None or report is None:
                    raise
                await self._fail(session, route, report, exc)
        except AgiProtocolError as exc:
            drop = True
            log.warning("agi_bad_peer", peer=_peer(writer), error=str(exc),
                        route=report.route if report else None, action="connection dropped")
        except PeerGone:
            if report is not None:
                report.notes.append("Asterisk closed the connection")
        except TimeoutError:  # before any route ran: a peer too slow to be Asterisk
            drop = True
            log.warning("agi_session_timeout", peer=_peer(writer), timeout_s=self.route_budget_s,
                        action="connection dropped")
        except Exception as exc:  # a bug: log it, never kill the server
            drop = True
            log.exception("agi_handler_error", error=type(exc).__name__)
        finally:
            self.active -= 1
            self.served += 1
            if session is not None:
                session.close()
            if report is not None and log.is_enabled_for(logging.INFO):  # fields() costs
                log.info("agi_call", **report.fields(),
                         session_ms=round((time.monotonic() - started) * 1000, 2),
                         commands=session.commands if session else 0)
            await _close(writer, abort=drop)

    async def _fail(self, session: AgiSession, route: Route, report: CallReport,
                    exc: BaseException) -> None:
        """The single failure path: one log line, the route's failure variables, and for
        outbound a hangup with POLICY_UNAVAILABLE's cause. Best effort within a short grace."""
        kind = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        log.error("agi_route_failed", route=route.name, pbx_call_id=session.uniqueid,
                  call_id=report.call_id, error=kind, detail=str(exc).splitlines()[0][:200] if str(exc) else None,
                  action="hang up (fail closed)" if route.hangup_on_failure else "failure variables set")
        report.notes.append(f"failed: {kind}")
        if route.hangup_on_failure:
            report.decision, report.reasons, report.let_through = "deny", ("POLICY_UNAVAILABLE",), False
        try:
            async with asyncio.timeout(self.failure_grace_s):
                for name, value in route.failure_variables:
                    await session.set_variable(name, value)
                if route.hangup_on_failure and not session.hung_up:
                    report.hung_up = await session.hangup_with_cause(_FAILURE_CAUSE)
        except (TimeoutError, AgiProtocolError, PeerGone, OSError) as notify_error:
            report.notes.append(f"could not notify Asterisk: {type(notify_error).__name__}")

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= 1.0:  # one line per second, not one per connection
            self._last_refusal_log = now
            log.error("agi_overloaded", active=self.active, max_sessions=self.max_sessions,
                      refused_total=self.refused, action="connection closed on arrival")
        writer.transport.abort()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)


async def _close(writer: asyncio.StreamWriter, *, abort: bool) -> None:
    """Close without waiting on a peer that does not read (abort drops unsent bytes)."""
    try:
        if abort:
            writer.transport.abort()
            return
        writer.close()
        if not writer.transport.get_write_buffer_size():
            return  # nothing left to send: the socket closes on the loop's next turn
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()
