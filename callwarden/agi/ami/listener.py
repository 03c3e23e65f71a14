"""The AMI listener: stay logged in to Asterisk's manager interface, whatever happens to it.

Connect and log in with a deadline; on failure retry with exponential backoff (never blocking
the FastAGI server, which keeps deciding calls while AMI is away). Once in: reconcile what was
missed, then keep the session honest with pings that must be answered; a silent peer is dropped
and the loop starts over. Events go to the :class:`CallTracker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable

from callwarden.agi.ami.connection import AmiConnection, AmiDisconnected, AmiError
from callwarden.agi.ami.reconcile import ReconcileReport, reconcile
from callwarden.agi.ami.tracker import CallTracker
from callwarden.agi.ami.tuning import AmiTuning
from callwarden.agi.callbook import CallBook
from callwarden.agi.store_gate import StoreGate
from callwarden.config.model import AmiConfig
from callwarden.log import get_logger

log = get_logger("callwarden.ami")

#: Events asked for at login (the Events: mask): the call and cdr classes carry all we read.
EVENT_MASK = "call,cdr"
#: A session shorter than this does not reset the reconnect backoff (a flapping peer).
STABLE_SESSION_S = 10.0
#: At shutdown, how long pending CDR completions may take before they are left to the
#: next start's reconciliation.
SHUTDOWN_FLUSH_S = 3.0
#: Longest asterisk.conf systemname whose uniqueids ("name-1795480861.123456") fit the store's
#: 64-character pbx_call_id: 64 - len("-") - 10 epoch digits - len(".") - 12 sequence digits.
MAX_SYSTEM_NAME = 40


class AmiListener:
    """Runs until ``stop`` is set or the task is cancelled."""

    def __init__(self, config: AmiConfig, *, gate: StoreGate, book: CallBook, pbx: str,
                 observe: bool, clock: Callable[[], dt.datetime], tuning: AmiTuning | None = None):
        self.config = config
        self.gate, self.book, self.pbx, self.clock = gate, book, pbx, clock
        self.tuning = tuning or AmiTuning()
        self.tracker = CallTracker(book=book, gate=gate, pbx=pbx, observe=observe,
                                   tuning=self.tuning, clock=clock, actions=self)
        self._conn: AmiConnection | None = None
        self._up = asyncio.Event()
        self.sessions = 0  # logged-in sessions so far
        self.last_reconcile: ReconcileReport | None = None
        self.reconciliations = 0

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.tuning.backoff_initial_s
        try:
            while not stop.is_set():
                conn = AmiConnection(host=self.config.host, port=self.config.port,
                                     username=self.config.username, secret=self.config.secret,
                                     on_event=self.tracker.on_event, events=CallTracker.EVENTS,
                                     event_mask=EVENT_MASK)
                try:
                    await conn.open(self.tuning.connect_timeout_s)
                except (OSError, TimeoutError, AmiError) as exc:
                    conn.close()
                    log.warning("ami_connect_failed", host=self.config.host, port=self.config.port,
                                error=type(exc).__name__, detail=str(exc)[:200],
                                retry_in_s=round(backoff, 2))
                else:
                    started = time.monotonic()
                    await self._session(conn, stop)
                    if time.monotonic() - started >= STABLE_SESSION_S:
                        backoff = self.tuning.backoff_initial_s
                    if stop.is_set():
                        break
                    log.warning("ami_disconnected", host=self.config.host, port=self.config.port,
                                retry_in_s=round(backoff, 2))
                if await _wait(stop, backoff):
                    break
                backoff = min(backoff * 2, self.tuning.backoff_max_s)
        finally:
            if stop.is_set():
                await self.tracker.flush(SHUTDOWN_FLUSH_S)
            self.tracker.cancel()

    async def _session(self, conn: AmiConnection, stop: asyncio.Event) -> None:
        self.sessions += 1
        self._conn = conn
        self._up.set()
        log.info("ami_connected", host=self.config.host, port=self.config.port, session=self.sessions)
        reconciler = asyncio.create_task(self._reconcile_loop(conn))
        try:
            await self._keepalive(conn, stop)
        finally:
            self._up.clear()
            self._conn = None
            reconciler.cancel()
            await asyncio.gather(reconciler, return_exceptions=True)
            conn.close()

    async def _keepalive(self, conn: AmiConnection, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({conn.lost, stopping},
                                             timeout=self.tuning.ping_interval_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if done:
                    return
                try:
                    await conn.action({"Action": "Ping"}, self.tuning.action_timeout_s)
                except (TimeoutError, AmiError) as exc:
                    log.warning("ami_ping_failed", error=type(exc).__name__, action="reconnecting")
                    return
        finally:
            stopping.cancel()

    async def _reconcile_loop(self, conn: AmiConnection) -> None:
        system_name = await self._system_name(conn)
        while not conn.lost.done():
            try:
                self.last_reconcile = await reconcile(
                    conn=conn, tracker=self.tracker, gate=self.gate, book=self.book, pbx=self.pbx,
                    system_name=system_name, cdr_csv=self.config.cdr_csv, tuning=self.tuning,
                    clock=self.clock)
                self.reconciliations += 1
                delay = self.tuning.reconcile_interval_s
            except Exception as exc:  # store or AMI trouble: try again soon
                log.error("ami_reconcile_failed", error=type(exc).__name__, detail=str(exc)[:200],
                          retry_in_s=self.tuning.ping_interval_s)
                delay = self.tuning.ping_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.lost), delay)

    async def _system_name(self, conn: AmiConnection) -> str:
        """asterisk.conf ``systemname``: prefixes uniqueids when several PBXes share a store."""
        try:
            reply = await conn.action({"Action": "CoreSettings"}, self.tuning.action_timeout_s)
        except (TimeoutError, AmiError):
            return ""
        name = (reply.get("SystemName") or "").strip()
        if len(name) > MAX_SYSTEM_NAME:
            # uniqueids are "name-epoch.seq"; the store keeps 64 characters of them, and a cut
            # id no longer matches the live channel it came from at reconciliation
            log.error("ami_systemname_too_long", length=len(name), limit=MAX_SYSTEM_NAME,
                      action="shorten systemname in asterisk.conf: calls may be ended early")
        return name

    # -- actions for the tracker ---------------------------------------------------------

    async def _connection(self) -> AmiConnection:
        if self._conn is None:
            try:
                await asyncio.wait_for(self._up.wait(), self.tuning.action_timeout_s)
            except TimeoutError:
                raise AmiDisconnected("AMI is not connected") from None
        if self._conn is None:
            raise AmiDisconnected("AMI is not connected")
        return self._conn

    async def hangup(self, channel: str, cause: int) -> bool:
        """Hang a channel up with a Q.850 cause; True when Asterisk did (or it was gone)."""
        for attempt in range(1, self.tuning.hangup_attempts + 1):
            try:
                conn = await self._connection()
                reply = await conn.action({"Action": "Hangup", "Channel": channel,
                                           "Cause": str(cause)}, self.tuning.action_timeout_s)
            except (TimeoutError, AmiError) as exc:
                log.warning("ami_hangup_retry", attempt=attempt, error=type(exc).__name__)
                continue
            if reply.success:
                return True
            message = reply.get("Message") or ""
            if "no such channel" in message.lower():
                return True
            log.error("ami_hangup_refused", message=message[:200])
            return False
        log.error("ami_hangup_failed", attempts=self.tuning.hangup_attempts)
        return False

    async def getvar(self, channel: str, name: str) -> str | None:
        """A channel variable now; None when the channel is gone. Raises when AMI is down."""
        conn = await self._connection()
        reply = await conn.action({"Action": "Getvar", "Channel": channel, "Variable": name},
                                  self.tuning.action_timeout_s)
        if not reply.success:
            return None
        return reply.get("Value") or ""


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early when ``stop`` is set; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
        return True
    except TimeoutError:
        return stop.is_set()
