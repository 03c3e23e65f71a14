"""What callwarden does with one channel handed over by FreeSWITCH's ``socket`` application.

The route comes from the channel variable ``callwarden_route``: ``outbound`` (the default:
decide, record, hand back or hang up), ``inbound`` (log the call, which opens the callback
window) or ``optout`` (the callee asked not to be called again). Any other value is a dialplan
error and fails closed (hang up).

FreeSWITCH runs the socket in ``async full`` mode: every ``sendmsg`` is queued on the channel
and answered ``+OK`` at once (the channel runs it on its next turn), and the channel stays
parked until we either send ``resume`` (the dialplan goes on after ``socket``) or go away
without it (FreeSWITCH hangs up). Variables are set with ``api uuid_setvar_multi`` (or
``uuid_setvar`` for one), which FreeSWITCH applies before it answers; ``resume`` follows them
in the same write, and for an outbound call only after ``RECORD_START`` proved the recording
runs.

One structured log event per call (``esl_call``), numbers masked.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

from gevent.event import AsyncResult

from callwarden.config import Settings
from callwarden.esl import channel as ch
from callwarden.esl.calls import InFlight, WatchedCalls
from callwarden.esl.frames import Frame, ProtocolError, api, command, execute
from callwarden.esl.outbound import OutboundSession
from callwarden.esl.protocol import ConnectionClosed, EslEvent, EslTimeout, Message
from callwarden.esl.store_gate import StoreGate
from callwarden.log import get_logger
from callwarden.policy import CallAttempt, Decision, denial
from callwarden.recorder.naming import spool_file
from callwarden.service.call_report import CallReport as BaseCallReport
from callwarden.service.enforcer import InboundCall

log = get_logger("callwarden.esl")

OPTOUT_SOURCE = "freeswitch-ivr"
#: record_session's argument is expanded by FreeSWITCH (``${...}``) and split on spaces: only
#: plain absolute paths are handed over.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+=~-]+", re.ASCII)
_POLICY_UNAVAILABLE = denial("POLICY_UNAVAILABLE")
_RECORD_OUTCOMES = frozenset({"RECORD_START", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE",
                              "CHANNEL_EXECUTE_COMPLETE"})
#: The only events a call handler waits for (FreeSWITCH ``filter``: anything else is not sent).
_WANTED_EVENTS = ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_EXECUTE_COMPLETE",
                  "RECORD_START")
#: A Unique-ID a ``filter`` value takes literally (FreeSWITCH's own are hex and dashes).
_PLAIN_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}", re.ASCII)
#: ``name=value`` that uuid_setvar_multi takes as it is (no ``;``, quote, backslash, space).
_MULTI_SAFE = re.compile(r"[A-Za-z0-9_]+=[A-Za-z0-9_.,:@+/-]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """Everything a call handler may use."""

    settings: Settings
    gate: StoreGate
    watched: WatchedCalls
    inflight: InFlight
    clock: Callable[[], dt.datetime]
    recording_dir: str  # absolute, as FreeSWITCH sees it
    session_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0  # FreeSWITCH answers `connect` at once
    record_timeout_s: float = 5.0  # record_session -> RECORD_START
    release_timeout_s: float = 3.0  # hangup/exit -> FreeSWITCH closes
    command_timeout_s: float = 2.0  # any command/reply
    pbx: str = ch.PBX

    @property
    def observe(self) -> bool:
        return self.settings.mode == "observe"

    @property
    def store_timeout_s(self) -> float:
        """Deadline for the non-decision store calls a flow waits on (log, opt-out)."""
        return max(self.settings.decision_timeout_ms / 1000, 0.5)


@dataclass(slots=True)
class CallReport(BaseCallReport):
    """The ``esl_call`` log event, filled in as the call goes."""

    node: str | None = None
    action: str | None = None  # resumed | hung_up | none
    stage: str = "connect"
    failure: str | None = None

    def fields(self) -> dict[str, object]:
        return {**BaseCallReport.fields(self), "node": self.node, "action": self.action,
                "failure": self.failure, "stage": self.stage if self.failure else None}


def _event_id() -> str:
    return str(uuidlib.uuid4())


class CallHandler:
    """greenswitch's "application": built per session by the server, ``run()`` once."""

    def __init__(self, session: OutboundSession, ctx: HandlerContext):
        self.session = session
        self.ctx = ctx
        self.deadline = session.accepted_at + ctx.session_timeout_s
        self.report = CallReport()
        self._hangup_seen = False
        self.call_id_set = False  # callwarden_call_id already sent to the channel
        self.pending_call_id: str | None = None  # let through, not yet handed back
        self.released = False  # `resume` sent: from here the dialplan has the call
        self._subscription: list[AsyncResult] | None = None  # the subscription's replies
        self._subscription_sent = False
        session.register_handle("CHANNEL_HANGUP", self._on_hangup)
        session.register_handle("CHANNEL_HANGUP_COMPLETE", self._on_hangup)

    def _on_hangup(self, _event: EslEvent) -> None:
        self._hangup_seen = True

    @property
    def hung_up(self) -> bool:
        """The channel is gone: its hangup event came, or (before the subscription) FreeSWITCH's
        disconnect notice, which it sends when the channel hangs up whatever we subscribed to."""
        return self._hangup_seen or self.session.disconnect_notice is not None

    @hung_up.setter
    def hung_up(self, value: bool) -> None:
        self._hangup_seen = value

    def _subscription_commands(self) -> list[bytes]:
        """The subscription to this channel's events, once (then []): only the events a
        handler waits for (:data:`_WANTED_EVENTS`), only this channel's. A call otherwise
        brings some twenty events of ~150 headers each (CHANNEL_EXECUTE, _STATE, _PARK, ...)
        that the hub would read for nothing.

        Two commands: ``filter Unique-ID <uuid>`` first (so no other channel's event slips in
        between), then ``event plain <names>``. FreeSWITCH's event_handler (mod_event_socket,
        1.10) sends an event when its name is subscribed and, with filters set, when one of
        them matches: both hold only for this channel's wanted events. (``myevents`` + ``event
        plain RECORD_START RECORD_STOP`` + one ``filter Event-Name`` per name came to six
        commands and six replies per call.) A Unique-ID that a filter value could misread (a
        leading ``+``, ``-`` or ``/`` is syntax there; only a dialplan's own
        ``origination_uuid`` could bring one) keeps that older form.

        An outbound call sends it in the same write as its first commands after the decision
        (FreeSWITCH runs them in order, so the events of what follows are caught): while the
        store decides, the hub then has nothing to read and the decision writer the CPU to
        itself. A hangup meanwhile still shows, as FreeSWITCH's disconnect notice."""
        if self._subscription_sent:
            return []
        self._subscription_sent = True
        uuid = self.uuid or ""
        if _PLAIN_UUID.fullmatch(uuid):
            return [command(f"filter Unique-ID {uuid}"),
                    command("event plain " + " ".join(_WANTED_EVENTS))]
        return [command("myevents"), command("event plain RECORD_START RECORD_STOP"),
                *(command(f"filter Event-Name {name}") for name in _WANTED_EVENTS)]

    def _subscribe(self) -> None:
        """Inbound and opt-out calls: subscribe without waiting, so the store can work
        meanwhile; :meth:`_subscribed` waits for the replies."""
        self._subscription = self.session.post(self._subscription_commands(),
                                               self._left(self.ctx.command_timeout_s))

    def _subscribed(self) -> None:
        if self._subscription is None:  # the route was handled before subscribing
            return
        results, self._subscription = self._subscription, None
        self._check(self.session.replies(results, self._left(self.ctx.command_timeout_s)))

    @property
    def uuid(self) -> str | None:
        return (self.session.session_data or {}).get("Unique-ID")

    def _left(self, cap: float) -> float:
        return max(0.0, min(cap, self.deadline - time.monotonic()))

    # -- entry ---------------------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        report = self.report
        try:
            data = self.session.connect(timeout=self._left(self.ctx.connect_timeout_s))
            info = ch.channel_info(data)
            if not info.uuid:
                raise ProtocolError("connect reply without Unique-ID")
            report.route = info.route_given or info.route
            report.pbx_call_id, report.node, report.tenant = info.uuid, info.node, info.tenant
            if info.socket_mode != "async" or info.control != "full":
                report.notes.append("socket should run 'async full'")
            report.stage = report.route or "route"
            self.ctx.inflight.begin(info.uuid)
            if info.route == "outbound":  # subscribes with its first commands after the decision
                self._outbound(info, started)
            else:
                self._subscribe()
                if info.route == "inbound":
                    self._inbound(info)
                elif info.route == "optout":
                    self._optout(info)
                else:
                    self._unknown_route(info)
        except _CallerGone:
            report.action = report.action or "none"
            report.notes.append("caller hung up")
        except EslTimeout:
            report.failure = "timeout"
            if self.session.session_data is not None:  # no `connect` reply: nothing to tell
                self._fail()
        except ConnectionClosed as exc:
            report.failure = exc.reason
            if self.session.protocol_error:
                report.notes.append(self.session.protocol_error)
        except ProtocolError as exc:
            report.failure = "protocol_error"
            report.notes.append(exc.reason)
        except Exception as exc:  # a bug: fail closed, never crash the server
            report.failure = type(exc).__name__
            log.exception("esl_handler_error", pbx_call_id=report.pbx_call_id)
            self._fail()
        except BaseException:  # the server's deadline or shutdown: no time left to notify
            report.failure = "killed"
            raise
        finally:
            self.session.close()
            if report.failure is not None:
                self._undo_let_through()
            if self.uuid:
                self.ctx.inflight.finish(self.uuid)
            fields = report.fields()
            fields["session_ms"] = round((time.monotonic() - started) * 1000, 2)
            if report.failure is None:
                log.info("esl_call", **fields)
            else:
                log.warning("esl_call", **fields)

    # -- outbound ----------------------------------------------------------------------------

    def _outbound(self, info: ch.ChannelInfo, started: float) -> None:
        report, ctx = self.report, self.ctx
        report.caller, report.callee = info.caller, info.destination
        attempt = CallAttempt(
            tenant=info.tenant, caller=info.caller, callee=info.destination, at=ctx.clock(),
            caller_hidden=info.hidden, trunk=info.trunk, campaign=info.campaign,
            purpose=info.purpose, pbx=ctx.pbx, pbx_call_id=info.uuid, channel=info.channel_name,
            node=info.node,
        )
        report.stage = "decision"
        result = ctx.gate.decide(attempt, started, route="outbound")
        report.decision_ms = result.latency_ms
        report.call_id = result.call_id
        if result.outcome is not None:  # stored: a hangup from now on must end its CDR
            ctx.inflight.decided(info.uuid, result.outcome.call_id)
        decision, let_through = result.decision, result.let_through
        if let_through:
            self.pending_call_id = result.call_id

        if let_through and (result.outcome is None or not result.outcome.recording_relpath):
            decision, let_through = self._recording_failed(result.call_id, "no recording path")
        elif let_through:
            assert result.outcome is not None and result.outcome.recording_relpath
            report.stage = "recording"
            error = self._start_recording(result.call_id, result.outcome.recording_relpath)
            if error is None:
                report.recording = "started"
            else:
                report.recording = "failed"
                report.notes.append(error)
                if self.hung_up:  # the caller is gone: nothing left to tell FreeSWITCH
                    report.decision, report.reasons = decision.decision, decision.codes
                    report.let_through = False
                    raise _CallerGone()
                decision, let_through = self._recording_failed(result.call_id, error)

        report.decision, report.reasons, report.let_through = decision.decision, decision.codes, let_through
        report.stage = "publish"
        variables = [(ch.VAR_DECISION, decision.decision), (ch.VAR_REASONS, ",".join(decision.codes)),
                     (ch.VAR_ENFORCED, "no" if let_through and not decision.allowed else "yes")]
        if result.call_id and not self.call_id_set:
            variables.insert(0, (ch.VAR_CALL_ID, result.call_id))
        if not decision.allowed:
            variables.append((ch.VAR_HANGUP_CAUSE, decision.hangup_cause or ""))
        if let_through:
            if decision.allowed and not ctx.observe and result.call_id and info.uuid:
                ctx.watched.add(info.uuid, result.call_id, info.caller)
            self._release(variables)
        else:
            self._hangup(variables, decision.hangup_cause or "NORMAL_TEMPORARY_FAILURE")

    def _undo_let_through(self) -> None:
        """The session failed after an allow (or observe) decision but before ``resume``:
        FreeSWITCH hangs such a call up, so the stored decision must not say it went out.
        Before RECORD_START that is RECORDING_UNAVAILABLE, after it POLICY_UNAVAILABLE."""
        call_id, report = self.pending_call_id, self.report
        if call_id is None or self.released:
            return
        self.pending_call_id = None
        enforcer = self.ctx.gate.enforcer
        code = "POLICY_UNAVAILABLE" if report.recording == "started" else "RECORDING_UNAVAILABLE"
        try:
            if code == "POLICY_UNAVAILABLE":
                self.ctx.gate.call(enforcer.decision_abandoned, call_id, timeout=self.ctx.store_timeout_s)
            else:
                self.ctx.gate.call(enforcer.recording_failed, call_id,
                                   f"FreeSWITCH session failed before the recording started "
                                   f"({report.failure})", timeout=self.ctx.store_timeout_s)
                report.recording = "failed"
        except Exception as exc:
            log.error("decision_correction_failed", call_id=call_id, error=type(exc).__name__)
        if code not in report.reasons:
            report.reasons = (*report.reasons, code)
        report.decision, report.let_through = "deny", False

    def _start_recording(self, call_id: str | None, relpath: str) -> str | None:
        """record_session into the spool; None once RECORD_START proves it runs, else why not."""
        path = spool_file(self.ctx.recording_dir, relpath)
        if not _SAFE_PATH.fullmatch(path) or "/../" in path:
            return "recording path has characters record_session cannot take safely"
        if self.hung_up:
            return "channel hung up before the recording could start"
        rec_id = _event_id()
        uuid = self.uuid

        def outcome(msg: Message) -> bool:
            if isinstance(msg, Frame):  # disconnect notice: the channel is going away
                return msg.content_type == "text/disconnect-notice"
            # The name first: only these events' headers need decoding.
            if msg.name not in _RECORD_OUTCOMES or msg.get("Unique-ID") not in (None, uuid):
                return False
            if msg.name == "RECORD_START":  # ours, not some other recording on the channel
                return msg.get("Record-File-Path") == path
            return (msg.name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE")
                    or msg.get("Application-UUID") == rec_id)  # CHANNEL_EXECUTE_COMPLETE

        waiter = self.session.expect(outcome)
        commands = [execute("record_session", path, event_uuid=rec_id)]
        if call_id:
            commands = self._setvars([(ch.VAR_CALL_ID, call_id)]) + commands
        subscription = self._subscription_commands()
        replies = self.session.send_many(subscription + commands,
                                         self._left(self.ctx.command_timeout_s))
        self._check(replies[:len(subscription)])
        replies = replies[len(subscription):]
        self.call_id_set = bool(call_id) and replies[0].ok
        if not all(r.ok for r in replies):
            return "FreeSWITCH refused record_session"
        try:
            msg = self.session.wait(waiter, self._left(self.ctx.record_timeout_s))
        except EslTimeout:
            return "no RECORD_START in time"
        except ConnectionClosed:
            return "connection closed before the recording started"
        if isinstance(msg, EslEvent) and msg.name == "RECORD_START":
            return None
        if isinstance(msg, EslEvent) and msg.name == "CHANNEL_EXECUTE_COMPLETE":
            return "record_session ended without starting a recording"
        self.hung_up = True
        return "channel hung up before the recording started"

    def _recording_failed(self, call_id: str | None, error: str) -> tuple[Decision, bool]:
        """A RECORDING_UNAVAILABLE deny; if even that cannot be stored, the deny stands anyway
        (fail closed: no unrecorded outbound call)."""
        self.pending_call_id = None
        if call_id is not None:
            try:
                outcome = self.ctx.gate.call(self.ctx.gate.enforcer.recording_failed, call_id,
                                             error, timeout=self.ctx.store_timeout_s)
                return outcome.decision, outcome.let_through
            except Exception as exc:
                log.error("recording_failure_unrecorded", call_id=call_id,
                          error=type(exc).__name__,
                          action="denied RECORDING_UNAVAILABLE without storing it")
        return denial("RECORDING_UNAVAILABLE"), False

    # -- inbound and opt-out --------------------------------------------------------------------

    def _inbound(self, info: ch.ChannelInfo) -> None:
        """Inbound calls are never blocked; a store failure is logged and the call goes on."""
        report, ctx = self.report, self.ctx
        report.caller, report.callee = info.caller, info.destination
        call = InboundCall(tenant=info.tenant, caller=info.caller, callee=info.destination,
                           at=ctx.clock(), pbx=ctx.pbx, pbx_call_id=info.uuid,
                           channel=info.channel_name, node=info.node)
        report.stage = "log"
        try:
            call_id = ctx.gate.call(ctx.gate.enforcer.log_inbound, call, timeout=ctx.store_timeout_s)
        except Exception as exc:
            report.notes.append(f"not logged: {type(exc).__name__}")
            call_id = None
        self._subscribed()
        if call_id is None:
            variables = [(ch.VAR_DECISION, "deny"), (ch.VAR_REASONS, "POLICY_UNAVAILABLE")]
        else:
            report.call_id = call_id
            ctx.inflight.decided(info.uuid, call_id)
            if ctx.settings.recording.record_inbound:
                self._record_inbound(call_id)
            variables = [(ch.VAR_DECISION, "allow"), (ch.VAR_REASONS, "")]
            if not self.call_id_set:
                variables.append((ch.VAR_CALL_ID, call_id))
        report.decision, report.let_through = variables[0][1], True
        report.stage = "publish"
        self._release(variables)

    def _record_inbound(self, call_id: str) -> None:
        """Optional inbound recording: a failure is recorded and logged, the call goes on."""
        report, ctx = self.report, self.ctx
        report.stage = "recording"
        try:
            relpath = ctx.gate.call(ctx.gate.enforcer.start_recording, call_id,
                                    timeout=ctx.store_timeout_s)
            error = self._start_recording(call_id, relpath)
        except (EslTimeout, ConnectionClosed):
            raise
        except Exception as exc:
            error = f"store: {type(exc).__name__}"
        report.recording = "started" if error is None else "failed"
        if error is not None:
            report.notes.append(error)
            try:
                ctx.gate.call(ctx.gate.enforcer.recording_not_started, call_id, error,
                              timeout=ctx.store_timeout_s)
            except Exception as exc:
                log.error("recording_failure_unrecorded", call_id=call_id, error=type(exc).__name__)

    def _optout(self, info: ch.ChannelInfo) -> None:
        """The callee asked not to be called again: ``callwarden_optout_number`` (set by an
        outbound call's IVR, which knows whom it dialled) or the caller ID (they rang in)."""
        report, ctx = self.report, self.ctx
        number = info.optout_number or info.caller
        report.callee = number
        report.stage = "optout"
        try:
            stored = ctx.gate.call(ctx.gate.enforcer.opt_out, info.tenant, number, OPTOUT_SOURCE,
                                   f"pbx:{ctx.pbx}", timeout=ctx.store_timeout_s)
            result = "ok" if stored else "rejected"
        except Exception as exc:
            report.notes.append(f"not stored: {type(exc).__name__}")
            result = "failed"
        self._subscribed()
        report.decision = result
        report.stage = "publish"
        self._release([(ch.VAR_OPTOUT, result)])

    def _unknown_route(self, info: ch.ChannelInfo) -> None:
        """A misspelt route is a dialplan error: fail closed, say why in a variable."""
        self.report.failure = "unknown_route"
        self.report.notes.append(f"callwarden_route must be one of {', '.join(ch.ROUTES)}")
        self._subscribed()
        self._hangup([(ch.VAR_ERROR, "unknown_route")], _POLICY_UNAVAILABLE.hangup_cause or "")

    # -- telling FreeSWITCH --------------------------------------------------------------------

    def _setvars(self, variables: list[tuple[str, str]]) -> list[bytes]:
        """``api uuid_setvar`` (one variable) or ``api uuid_setvar_multi`` (several: one
        command and one reply instead of one each): applied by FreeSWITCH's event-socket
        thread before it answers, so a ``+OK`` means the variables are in place (a queued
        ``set`` would wait for the channel thread's next turn). An empty value unsets the
        variable. uuid_setvar_multi splits on ``;`` (and reads quotes and backslashes), so a
        value outside :data:`_MULTI_SAFE` goes as uuid_setvars instead."""
        if len(variables) > 1 and all(_MULTI_SAFE.fullmatch(f"{n}={v}") for n, v in variables):
            pairs = ";".join(f"{name}={value}" for name, value in variables)
            return [api(f"uuid_setvar_multi {self.uuid} {pairs}")]
        return [api(f"uuid_setvar {self.uuid} {name} {value}".rstrip()) for name, value in variables]

    def _check(self, replies: list[Frame]) -> None:
        for reply in replies:
            if not reply.ok:
                if self.hung_up:
                    raise _CallerGone()
                raise ConnectionClosed("command refused")

    def _release(self, variables: list[tuple[str, str]]) -> None:
        """Set the variables and hand the channel back to the dialplan (one write: FreeSWITCH
        runs them in order), then leave."""
        if self.hung_up:
            raise _CallerGone()
        self.released = True  # once `resume` is on the wire FreeSWITCH may act on it
        # `exit` goes in the same write (one round trip less); FreeSWITCH runs them in order.
        posted = self.session.post(self._setvars(variables) + [command("resume"), command("exit")],
                                   self._left(self.ctx.command_timeout_s))
        self._check(self.session.replies(posted[:-1], self._left(self.ctx.command_timeout_s)))
        self.report.action = "resumed"
        with contextlib.suppress(EslTimeout, ConnectionClosed):
            self.session.replies(posted[-1:], self._left(self.ctx.command_timeout_s))

    def _hangup(self, variables: list[tuple[str, str]], cause: str) -> None:
        """Set the variables and hang up with ``cause``; wait until FreeSWITCH confirms."""
        if self.hung_up:
            raise _CallerGone()
        gone = self.session.expect(lambda m: (
            isinstance(m, EslEvent) and m.name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"))
            or (isinstance(m, Frame) and m.content_type == "text/disconnect-notice"))
        commands = self._subscription_commands() + self._setvars(variables) + [execute("hangup", cause)]
        self._check(self.session.send_many(commands, self._left(self.ctx.command_timeout_s)))
        self.report.action = "hung_up"
        try:
            self.session.wait(gone, self._left(self.ctx.release_timeout_s))
        except (EslTimeout, ConnectionClosed):
            if not self.hung_up:  # closing without `resume` makes FreeSWITCH hang up anyway
                self.report.notes.append("hangup not confirmed; closing (no resume: FreeSWITCH hangs up)")

    def _fail(self) -> None:
        """The one failure path: outbound calls are denied and hung up (fail closed); inbound
        and opt-out calls get their failure variables and go on. Best effort, briefly."""
        report = self.report
        if self.released:  # `resume` may have been acted on: the dialplan has the call now
            report.notes.append("resume sent, its reply lost: the decision stands")
            return
        if self.session.ended or self.hung_up or report.action is not None or not self.uuid:
            return
        route = report.route or "outbound"
        try:
            if route == "inbound":
                self._release([(ch.VAR_DECISION, "deny"), (ch.VAR_REASONS, "POLICY_UNAVAILABLE")])
            elif route == "optout":
                self._release([(ch.VAR_OPTOUT, "failed")])
            else:
                report.decision, report.reasons, report.let_through = "deny", ("POLICY_UNAVAILABLE",), False
                cause = _POLICY_UNAVAILABLE.hangup_cause or "NORMAL_TEMPORARY_FAILURE"
                self._hangup([(ch.VAR_DECISION, "deny"), (ch.VAR_REASONS, "POLICY_UNAVAILABLE"),
                              (ch.VAR_ENFORCED, "yes"), (ch.VAR_HANGUP_CAUSE, cause)], cause)
        except (EslTimeout, ConnectionClosed, ProtocolError, _CallerGone) as exc:
            report.notes.append(f"could not notify FreeSWITCH: {type(exc).__name__}")


class _CallerGone(Exception):
    """The channel hung up while callwarden was still working on it: nothing left to do."""
