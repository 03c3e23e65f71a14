"""The inbound Event Socket listener: callwarden connects to FreeSWITCH (:8021) and watches.

* CHANNEL_HANGUP_COMPLETE of a channel callwarden handled (it carries ``callwarden_call_id``)
  completes the CDR: answer and end time, billsec, hangup cause, disposition; then the
  recording is finalized (hashed, stored): FreeSWITCH closed the file at RECORD_STOP, which it
  sends first and which is noted in the log.
* Caller-ID changes on allowed calls (CALL_UPDATE, CHANNEL_CALLSTATE and the other channel
  events that carry the caller profile) are checked against the number decided on; a changed
  one is confirmed with the store (``caller_id_changed``) and the call killed with
  ``uuid_kill <uuid> CALL_REJECTED`` (CID_ALTERED).
* The connection is kept alive: reconnect with capped, jittered backoff; a silent peer is
  probed; after every (re)connect, and periodically, calls the store still thinks are up are
  checked against ``show channels``, so a hangup missed while disconnected still ends its CDR.
* Several FreeSWITCH nodes may share one store: reconciliation only ends calls of this
  listener's node (the switchname its events carry, ``FreeSWITCH-Switchname``; checked against
  ``freeswitch.switchname`` when that is set) or of no known node; see :meth:`_reconcile`.

The reader greenlet never touches the store: events are filtered in memory and queued; store
work runs in worker greenlets through the StoreGate's background threads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import socket as stdsocket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import gevent
import greenswitch.esl as gesl
from gevent import socket
from gevent.event import Event as GEvent
from gevent.pool import Pool
from gevent.queue import Full, Queue

from callwarden.esl import channel as ch
from callwarden.esl.calls import InFlight, WatchedCalls, changed
from callwarden.esl.frames import Limits, api, command
from callwarden.esl.protocol import ConnectionClosed, EslEvent, EslTimeout, RobustProtocol
from callwarden.esl.store_gate import StoreGate
from callwarden.log import get_logger
from callwarden.policy import reason
from callwarden.service.enforcer import CallEnd

log = get_logger("callwarden.esl")

#: `api show channels` on a busy switch is large; one connection, so generous bounds are safe.
INBOUND_LIMITS = Limits(max_header_bytes=1024 * 1024, max_headers=16384, max_body=64 * 1024 * 1024)

SUBSCRIBED = ("CHANNEL_HANGUP_COMPLETE CHANNEL_CALLSTATE CALL_UPDATE CHANNEL_ANSWER "
              "CHANNEL_BRIDGE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA RECORD_START RECORD_STOP "
              "HEARTBEAT")
#: Events whose caller profile shows the caller ID presented at that moment.
CID_EVENTS = frozenset({"CALL_UPDATE", "CHANNEL_CALLSTATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
                        "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA"})
KILL_CAUSE = reason("CID_ALTERED").cause_name
CID_WORKERS = 4
RECONCILE_RETRY_S = 30.0


class AuthFailed(Exception):
    """FreeSWITCH refused the password (or the ACL refused us)."""


class InboundClient(RobustProtocol, gesl.InboundESL):
    """greenswitch's ``InboundESL`` with timeouts on connect, auth/request and auth."""

    def __init__(self, host: str, port: int, password: str, timeout: float = 5.0,
                 limits: Limits = INBOUND_LIMITS):
        gesl.InboundESL.__init__(self, host, port, password, timeout)
        self._inbound_limits = limits

    def connect(self) -> None:  # type: ignore[override]
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
                if hasattr(stdsocket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(stdsocket, opt), value)
        sock.settimeout(None)
        self._init_robust(sock, self._inbound_limits)
        self.connected = True
        self.start_event_handlers()
        if not self._auth_request_event.wait(self.timeout):
            raise EslTimeout("no auth/request from FreeSWITCH")
        if self.rejected or self.ended:
            raise AuthFailed("connection rejected (FreeSWITCH ACL?)")
        reply = self.send(command("auth " + self.password), timeout=self.timeout)
        if not reply.ok:
            raise AuthFailed("password refused")


@dataclass(frozen=True, slots=True)
class ListenerTuning:
    connect_timeout_s: float = 5.0
    command_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    idle_probe_s: float = 60.0  # FreeSWITCH sends HEARTBEAT every 20 s by default
    reconcile_interval_s: float = 300.0
    queue_size: int = 100_000
    retry_limit: int = 10_000
    retry_max_attempts: int = 20
    store_timeout_s: float = 10.0


class EventListener:
    """Keeps one inbound connection up and turns its events into store updates."""

    def __init__(self, host: str, port: int, password: str, gate: StoreGate, watched: WatchedCalls,
                 inflight: InFlight, *, clock: Callable[[], dt.datetime], pbx: str = ch.PBX,
                 tuning: ListenerTuning | None = None, node: str | None = None):
        self.host, self.port, self.password = host, port, password
        #: What the switch should call itself (``freeswitch.switchname``); only checked.
        self.configured_node = node
        #: The switchname reconciliation is scoped to: the switch's own word, from the events of
        #: the current connection (see _switch_named). None: none has named it yet.
        self.node: str | None = None
        self._last_node: str | None = None  # the name learned on any connection, latest
        self._seen_switchname: str | None = None  # raw header value last handled
        self._mismatch_logged = False
        self._reconcile_waiting = False  # deferred for want of a node: run once it is known
        self._deferral_logged = False  # per connection
        self.gate = gate
        self.watched = watched
        self.inflight = inflight
        inflight.on_release = self._released
        self.clock = clock
        self.pbx = pbx
        self.tuning = tuning or ListenerTuning()
        self.client: InboundClient | None = None
        self.connected = GEvent()
        self.connections = 0
        self.reconciliations = 0
        self.dropped_events = 0
        self._stop = GEvent()
        self._queue: Queue = Queue(maxsize=self.tuning.queue_size)
        self._retries: deque[tuple[CallEnd, str, int, float]] = deque()
        self._retry_wake = GEvent()
        # Caller-ID confirmations and kills: a queue of their own, ahead of any CDR backlog.
        self._cid_queue: Queue = Queue(maxsize=self.tuning.queue_size)
        self._pending_kills: dict[str, str] = {}  # uuid -> call id, kills that did not go out
        self._finalizing: set[str] = set()
        self._finalizers = Pool(4)  # recordings: hashing and copying audio, off the CDR path
        self._greenlets: list[gevent.Greenlet] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._work),
                           gevent.spawn(self._retry_loop)]
        self._greenlets += [gevent.spawn(self._cid_work) for _ in range(CID_WORKERS)]

    def stop(self, grace_s: float = 5.0) -> None:
        """Disconnect, then give queued CDR completions and running finalizations ``grace_s``
        in all (the sentinels queue behind the work); whatever is left is killed, and
        reconciliation at the next start completes it."""
        deadline = time.monotonic() + grace_s
        self._stop.set()
        client = self.client
        if client is not None:
            client.close()
        for queue, count in ((self._queue, 1), (self._cid_queue, CID_WORKERS)):
            for _ in range(count):
                with contextlib.suppress(Full):  # full: its workers are killed below
                    queue.put_nowait(None)
        self._retry_wake.set()
        gevent.joinall(self._greenlets, timeout=max(0.0, deadline - time.monotonic()))
        gevent.killall([g for g in self._greenlets if not g.dead], timeout=1.0)
        self._finalizers.join(timeout=max(0.0, deadline - time.monotonic()))
        self._finalizers.kill(timeout=1.0)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            connections = self.connections
            try:
                self._connection()
            except AuthFailed as exc:
                log.error("esl_inbound_auth_failed", host=self.host, port=self.port, error=str(exc))
                failures = max(failures, 5)  # a wrong password will not fix itself quickly
            except (OSError, EslTimeout, ConnectionClosed) as exc:
                log.warning("esl_inbound_down", host=self.host, port=self.port,
                            error=type(exc).__name__, detail=str(exc)[:200])
            except Exception:
                log.exception("esl_inbound_error")
            finally:
                self.connected.clear()
                if self.client is not None:
                    self.client.close()
                    self.client = None
            if self._stop.is_set():
                break
            if self.connections > connections:  # it was up: start the backoff over
                failures = 0
            failures += 1
            delay = min(self.tuning.backoff_max_s, self.tuning.backoff_initial_s * 2 ** (failures - 1))
            self._stop.wait(delay * random.uniform(0.5, 1.0))

    def _connection(self) -> None:
        t = self.tuning
        client = InboundClient(self.host, self.port, self.password, timeout=t.connect_timeout_s)
        self.client = client
        # The node is learned again on every connection: the address may now lead to another
        # switch (a floating IP after a failover), and its name must come with its channels.
        self.node = self._seen_switchname = None
        client.register_handle("*", self._on_event)
        client.connect()
        reply = client.send(command("event plain " + SUBSCRIBED), timeout=t.command_timeout_s)
        if not reply.ok:
            raise ConnectionClosed("event subscription refused")
        self.connections += 1
        self.connected.set()
        log.info("esl_inbound_connected", host=self.host, port=self.port, connection=self.connections)
        self._deferral_logged = False
        next_reconcile = time.monotonic() + self._reconcile_gap(self._reconcile(client))
        while not self._stop.is_set() and not client.ended:
            # Waiting for the node: look often, so the deferred reconciliation runs promptly.
            client.wait_closed(min(t.idle_probe_s, 1.0 if self._reconcile_waiting else 5.0))
            now = time.monotonic()
            if client.ended:
                break
            if now - client.last_received > t.idle_probe_s:
                client.send(api("status"), timeout=t.command_timeout_s)  # raises if dead
            if now >= next_reconcile or (self._reconcile_waiting and self.node is not None):
                next_reconcile = now + self._reconcile_gap(self._reconcile(client))
        if not self._stop.is_set():
            raise ConnectionClosed(client.end_reason or "closed")

    # -- events (reader greenlet: memory only, never blocks) -----------------------------------

    def _on_event(self, event: EslEvent) -> None:
        name = event.name
        switchname = event.headers.get(ch.SWITCHNAME_HEADER)
        if switchname is not None and switchname != self._seen_switchname:
            self._switch_named(switchname)
        if name in CID_EVENTS:
            self._check_caller_id(event)
        elif name in ("CHANNEL_HANGUP_COMPLETE", "RECORD_STOP"):
            try:
                self._queue.put_nowait(event)
            except Full:
                self.dropped_events += 1
                if self.dropped_events % 1000 == 1:
                    log.error("esl_event_queue_full", dropped=self.dropped_events,
                              note="reconciliation will end the affected CDRs")

    def _switch_named(self, raw: str) -> None:
        """The switch's events carry a switchname not handled yet (reader greenlet: memory and
        logging only). Only the switch's own word becomes the node, never the config alone:
        its calls are stored under the name its connect replies carry, and ``show channels``
        comes from this same connection, so that name pairs the right calls with the right
        channel list. A configured name that the switch has not confirmed could be another
        node's (a config copied from a sibling) and would end that node's live calls."""
        self._seen_switchname = raw
        name = ch.node_name(raw)
        if name is None:
            log.warning("esl_switchname_unusable", length=len(raw),
                        note="not printable or empty; reconciliation keeps its current node")
            return
        configured, previous = self.configured_node, self._last_node
        if configured is not None and name != configured:
            if not self._mismatch_logged:  # once: every event of the switch would repeat it
                self._mismatch_logged = True
                log.error("esl_switchname_mismatch", configured=configured, reported=name,
                          host=self.host, port=self.port,
                          action="reconciling as the name the switch reports; fix "
                                 "freeswitch.switchname, or freeswitch.esl_inbound if this is "
                                 "not this node's FreeSWITCH")
        elif previous is None:
            log.info("esl_node_learned", node=name, confirms_config=configured is not None)
        elif name != previous:
            log.warning("esl_node_changed", previous=previous, node=name,
                        note="calls stored under the previous name are no longer reconciled here")
        self.node = self._last_node = name

    def _check_caller_id(self, event: EslEvent) -> None:
        headers = event.headers
        presented, hidden = ch.presented_caller(headers), ch.caller_hidden(headers)
        uuids = ch.call_uuids(headers)
        found = self.watched.find(uuids)
        check: tuple[list[str], str | None, str | None] | None = None
        if found is not None:
            key, watched = found
            if (presented or hidden) and changed(watched, presented, hidden):
                check = ([key], headers.get("Unique-ID"), None if hidden else presented)
        elif event.name == "CALL_UPDATE" and (presented or hidden) and (
                headers.get("variable_" + ch.VAR_DECISION) == "allow" or len(uuids) > 1):
            # Not in memory (e.g. after a restart): a caller-ID update on an allowed channel
            # (or a bridged leg of another call) is rare enough to ask the store about.
            check = (list(uuids), headers.get("Unique-ID"), None if hidden else presented)
        if check is not None:
            try:
                self._cid_queue.put_nowait(check)
            except Full:
                log.error("cid_queue_full", pbx_call_id=check[1], note="caller-ID change not checked")

    def _cid_work(self) -> None:
        while True:
            item = self._cid_queue.get()
            if item is None:
                return
            try:
                self._confirm_and_kill(*item)
            except Exception:
                log.exception("cid_check_error")

    def _confirm_and_kill(self, candidates: list[str], leg: str | None, new_caller: str | None) -> None:
        enforcer = self.gate.enforcer
        for uuid in candidates:
            try:
                call_id = self.gate.call(enforcer.caller_id_changed, self.pbx, uuid, new_caller,
                                         timeout=self.tuning.store_timeout_s)
            except Exception as exc:
                log.error("cid_check_failed", pbx_call_id=uuid, error=type(exc).__name__)
                continue
            if call_id is None:
                continue
            self.watched.remove(uuid)
            for target in dict.fromkeys(x for x in (uuid, leg) if x):
                self._kill(target, call_id)
            return

    def _kill(self, uuid: str, call_id: str) -> None:
        client = self.client
        try:
            if client is None or client.ended:
                raise ConnectionClosed("not connected")
            reply = client.send(api(f"uuid_kill {uuid} {KILL_CAUSE}"),
                                timeout=self.tuning.command_timeout_s)
            self._pending_kills.pop(uuid, None)
            log.warning("cid_altered_killed", call_id=call_id, pbx_call_id=uuid,
                        cause=KILL_CAUSE, result=reply.reply_text.strip()[:100])
        except Exception as exc:
            self._pending_kills[uuid] = call_id
            log.error("cid_altered_kill_failed", call_id=call_id, pbx_call_id=uuid,
                      error=type(exc).__name__, action="retried once FreeSWITCH is reachable")

    # -- store work (worker greenlets) -------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if isinstance(item, tuple):  # ("parked", HangupInfo, call id)
                    self._store_end(item[1], item[2])
                elif item.name == "CHANNEL_HANGUP_COMPLETE":
                    self._hangup(item)
                else:
                    self._record_stop(item)
            except Exception:
                log.exception("esl_event_failed")

    def _hangup(self, event: EslEvent) -> None:
        info = ch.hangup_info(event.headers)
        if info is None:
            return
        self.watched.remove(info.uuid)
        call_id = info.call_id or self.inflight.call_id(info.uuid)
        if call_id is None:
            # Hung up while callwarden was still deciding: finish it when the handler is done.
            self.inflight.park(info.uuid, info)
            return  # else: not a channel callwarden handled
        self._store_end(info, call_id)

    def _released(self, uuid: str, call_id: str, info: ch.HangupInfo) -> None:
        """A hangup parked while the outbound server worked on the channel (hub context)."""
        try:
            self._queue.put_nowait(("parked", info, call_id))
        except Full:
            self.dropped_events += 1

    def _store_end(self, info: ch.HangupInfo, call_id: str) -> None:
        end = CallEnd(pbx=self.pbx, pbx_call_id=info.uuid, ended_at=info.ended_at,
                      answered_at=info.answered_at, billsec=info.billsec,
                      disposition=info.disposition, hangup_cause=info.hangup_cause)
        self._end_call(end, call_id, attempt=0)

    def _end_call(self, end: CallEnd, call_id: str, attempt: int) -> bool:
        """Complete the CDR, then finalize the recording: after ``call_ended`` has returned (it
        makes its own quick attempt), so the two never race for the file, and the retention
        deadline counts from the call's real end."""
        try:
            self.gate.call(self.gate.enforcer.call_ended, end, timeout=self.tuning.store_timeout_s)
        except Exception as exc:
            if attempt == 0:
                log.error("call_end_not_stored", pbx_call_id=end.pbx_call_id,
                          error=type(exc).__name__, action="will retry")
            if attempt + 1 >= self.tuning.retry_max_attempts:
                log.error("call_end_given_up", pbx_call_id=end.pbx_call_id,
                          note="reconciliation will end the CDR")
            elif len(self._retries) < self.tuning.retry_limit:
                delay = min(60.0, 2.0 ** attempt)
                self._retries.append((end, call_id, attempt + 1, time.monotonic() + delay))
                self._retry_wake.set()
            return False
        self._spawn_finalize(call_id)
        return True

    def _retry_loop(self) -> None:
        while not self._stop.is_set():
            if not self._retries:
                self._retry_wake.clear()
                self._retry_wake.wait()
                continue
            end, call_id, attempt, due = self._retries[0]
            wait = due - time.monotonic()
            if wait > 0:
                self._stop.wait(min(wait, 1.0))
                continue
            self._retries.popleft()
            if self._end_call(end, call_id, attempt):
                log.info("call_end_stored_on_retry", pbx_call_id=end.pbx_call_id, attempt=attempt)

    def _record_stop(self, event: EslEvent) -> None:
        """FreeSWITCH closed a recording file. Noted here; the file is finalized (hashed,
        stored) once the call's CDR is complete, at CHANNEL_HANGUP_COMPLETE (or reconciliation),
        which FreeSWITCH sends after RECORD_STOP."""
        headers = event.headers
        log.info("recording_stopped", call_id=headers.get("variable_" + ch.VAR_CALL_ID),
                 pbx_call_id=headers.get("Unique-ID"), path=headers.get("Record-File-Path"),
                 record_ms=headers.get("variable_record_ms"),
                 completion=headers.get("Record-Completion-Cause")
                 or headers.get("variable_record_completion_cause"))

    def _spawn_finalize(self, call_id: str) -> None:
        if call_id not in self._finalizing:
            self._finalizing.add(call_id)
            self._finalizers.spawn(self._finalize, call_id)

    def _finalize(self, call_id: str) -> None:
        """Hash and store the recording (FreeSWITCH has closed the file when it sends
        RECORD_STOP). Idempotent in the enforcer: a stored recording is left alone."""
        try:
            self.gate.call(self.gate.enforcer.finalize_recording, call_id,
                           timeout=self.tuning.store_timeout_s * 12, pool="recordings")
        except Exception as exc:
            log.error("recording_finalize_failed", call_id=call_id, error=type(exc).__name__,
                      detail=str(exc)[:200])
        finally:
            self._finalizing.discard(call_id)

    # -- reconciliation ------------------------------------------------------------------------

    def _reconcile_gap(self, done: bool) -> float:
        """Seconds to the next reconciliation: sooner when this one could not run."""
        interval = self.tuning.reconcile_interval_s
        return interval if done else min(interval, RECONCILE_RETRY_S)

    def _reconcile(self, client: InboundClient) -> bool:
        """End the CDRs of calls the store thinks are up but FreeSWITCH no longer has.

        The store is asked first: a call decided after FreeSWITCH's snapshot is then never
        mistaken for a vanished one. Only this node's calls (and those stored without a node,
        from before nodes were recorded) are candidates: another node's calls are not in this
        switch's ``show channels`` however live they are. Until an event has named the switch
        on this connection (FreeSWITCH sends HEARTBEAT every 20 s, channel events sooner) no
        CDR is ended at all, not even node-less ones, and reconciliation runs as soon as one
        does: ending only the node-less calls first would gain nothing, as the full pass
        follows within seconds. Kills that did not go out are retried regardless.
        """
        t = self.tuning
        node = self.node
        open_calls: list[tuple[str, str]] = []
        if node is not None:
            try:
                open_calls = self.gate.call(self.gate.enforcer.open_calls, self.pbx, None, node,
                                            timeout=t.store_timeout_s)
            except Exception as exc:
                log.error("reconcile_skipped", reason="store", error=type(exc).__name__)
                return False
        reply = client.send(api("show channels as json"), timeout=t.command_timeout_s)
        live = ch.parse_show_channels(reply.reply_text)
        if live is None:
            log.error("reconcile_skipped", reason="unreadable show channels answer")
            return False
        forgotten = self.watched.retain(live)
        for uuid, kill_call_id in list(self._pending_kills.items()):  # kills that did not go out
            if uuid in live:
                self._kill(uuid, kill_call_id)
            else:
                self._pending_kills.pop(uuid, None)
        if node is None:
            self._reconcile_waiting = True
            if not self._deferral_logged:
                self._deferral_logged = True
                log.info("reconcile_deferred", reason="node unknown",
                         note="runs once an event names the switch (FreeSWITCH-Switchname)")
            return False
        self._reconcile_waiting = False
        ended = 0
        now = self.clock()
        for call_id, uuid in open_calls:
            if uuid in live:
                continue
            end = CallEnd(pbx=self.pbx, pbx_call_id=uuid, ended_at=now, disposition="UNKNOWN")
            if self._end_call(end, call_id, attempt=0):
                ended += 1
                log.warning("call_end_reconciled", call_id=call_id, pbx_call_id=uuid,
                            note="hangup missed while disconnected; end time is when noticed")
        self.reconciliations += 1
        log.info("esl_reconciled", node=node, open_in_store=len(open_calls),
                 live_channels=len(live), ended=ended, unwatched=forgotten)
        return True
