"""The Asterisk adapter assembled: FastAGI server + AMI listener around one Enforcer."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
from collections.abc import Callable
from pathlib import Path

from callwarden.agi.ami import AmiListener, AmiTuning
from callwarden.agi.callbook import CallBook
from callwarden.agi.routes import RouteContext
from callwarden.agi.server import FastAgiServer
from callwarden.agi.store_gate import StoreGate
from callwarden.agi.wire import MAX_LINE_BYTES
from callwarden.config import Settings
from callwarden.config.model import AsteriskConfig
from callwarden.log import get_logger
from callwarden.service.enforcer import Enforcer

log = get_logger("callwarden.agi")

PBX = "asterisk"
Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AsteriskAdapter:
    """Start with :meth:`start`, stop with :meth:`stop`. ``clock`` is when decisions happen
    (tests inject one); ``agi_port=0`` binds an ephemeral port (see :attr:`agi_port`)."""

    def __init__(self, settings: Settings, enforcer: Enforcer, *, clock: Clock | None = None,
                 agi_host: str | None = None, agi_port: int | None = None,
                 ami_tuning: AmiTuning | None = None, max_sessions: int | None = None):
        if settings.asterisk is None:
            raise ValueError("the config has no asterisk: section")
        self.settings = settings
        self.config: AsteriskConfig = settings.asterisk
        self.clock = clock or utc_now
        self.agi_host = agi_host or self.config.agi.host
        self._agi_port = self.config.agi.port if agi_port is None else agi_port
        self.gate = StoreGate(enforcer, decision_timeout_s=settings.decision_timeout_ms / 1000)
        self.book = CallBook() if self.config.ami is not None else None
        self.ami_tuning = ami_tuning or AmiTuning()
        self.max_sessions = max_sessions
        self.agi: FastAgiServer | None = None
        self.ami: AmiListener | None = None
        self._server: asyncio.Server | None = None
        self._ami_task: asyncio.Task[None] | None = None
        self._ami_stop = asyncio.Event()
        #: The background store warm-up started by :meth:`start` (done when the store answered
        #: once, or gave up); calls are taken meanwhile.
        self.warmed: asyncio.Task[None] | None = None

    @property
    def agi_port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._agi_port
        return self._server.sockets[0].getsockname()[1]

    def _mixmonitor_dir(self) -> str:
        """Where Asterisk writes recordings. Without ``asterisk.recording_dir`` it shares our
        filesystem, and gets our recording directory as an absolute path (MixMonitor puts
        relative names under its own spool directory)."""
        if self.config.recording_dir:
            return self.config.recording_dir
        return str(Path(self.settings.recording.dir).resolve())

    async def start(self) -> None:
        ctx = RouteContext(settings=self.settings, gate=self.gate, book=self.book,
                           clock=self.clock, mixmonitor_dir=self._mixmonitor_dir(), pbx=PBX)
        extra = {"max_sessions": self.max_sessions} if self.max_sessions else {}
        self.agi = FastAgiServer(ctx, session_timeout_s=self.config.agi.session_timeout_s, **extra)
        self._server = await asyncio.start_server(
            self.agi.handler, self.agi_host, self._agi_port, limit=MAX_LINE_BYTES + 1,
            backlog=1024, reuse_address=True)
        log.info("agi_listening", host=self.agi_host, port=self.agi_port,
                 routes=sorted(self.agi.routes), mode=self.settings.mode)
        self.warmed = asyncio.create_task(self._warm_up())
        if self.config.ami is not None and self.book is not None:
            self.ami = AmiListener(self.config.ami, gate=self.gate, book=self.book, pbx=PBX,
                                   observe=self.settings.mode == "observe", clock=self.clock,
                                   tuning=self.ami_tuning)
            self._ami_task = asyncio.create_task(self.ami.run(self._ami_stop))
        else:
            log.warning("ami_not_configured",
                        note="CDRs will not be completed and caller-ID changes not policed")

    async def _warm_up(self) -> None:
        """:meth:`Enforcer.warm_up` off the loop; a failure only costs the first calls some
        latency (they still fail closed)."""
        try:
            await self.gate.call(self.gate.enforcer.warm_up, PBX, self.clock(), timeout=30.0)
        except Exception as exc:
            log.warning("store_warm_up_failed", error=type(exc).__name__,
                        note="the first calls may be slower; they still fail closed")
        # Everything loaded by now (modules, compiled statements, the registry) is kept for the
        # life of the process: frozen out of the collector, a full collection during a burst
        # no longer walks it (measured: 70-90 ms stalls of the event loop before, on PostgreSQL).
        gc.freeze()

    async def stop(self) -> None:
        """Stop accepting calls, let conversations in progress finish (each is bounded by
        the session timeout), then stop AMI (CDR completions still pending are left to the
        next start's reconciliation)."""
        if self._server is not None:
            self._server.close()
            deadline = asyncio.get_running_loop().time() + self.config.agi.session_timeout_s + 1
            while self.agi is not None and self.agi.active:
                if asyncio.get_running_loop().time() > deadline:
                    log.warning("agi_stop_timeout", active=self.agi.active)
                    break
                await asyncio.sleep(0.05)
        if self._ami_task is not None:
            self._ami_stop.set()
            try:
                await asyncio.wait_for(self._ami_task, 5)
            except TimeoutError:
                self._ami_task.cancel()
                await asyncio.gather(self._ami_task, return_exceptions=True)
        if self.warmed is not None and not self.warmed.done():
            self.warmed.cancel()
            await asyncio.gather(self.warmed, return_exceptions=True)
        self.gate.close()
        log.info("asterisk_adapter_stopped")


async def serve_asterisk(settings: Settings, enforcer: Enforcer, stop: asyncio.Event,
                         *, clock: Clock | None = None) -> None:
    """Run the Asterisk adapter until ``stop`` is set or the task is cancelled."""
    adapter = AsteriskAdapter(settings, enforcer, clock=clock)
    await adapter.start()
    try:
        await stop.wait()
    finally:
        # `serve` cancels this task right after setting `stop`: finish stopping regardless.
        stopping = asyncio.ensure_future(adapter.stop())
        try:
            await asyncio.shield(stopping)
        except asyncio.CancelledError:
            await stopping
            raise
