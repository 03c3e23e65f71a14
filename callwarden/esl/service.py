"""Wiring of the FreeSWITCH adapter: the outbound server and the inbound listener over one
enforcer, one store gate and one in-memory list of watched calls. Must run on a gevent hub
with the standard library monkey-patched (``callwarden.esl.process`` does that)."""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gevent

from callwarden.config import Settings
from callwarden.esl.calls import InFlight, WatchedCalls
from callwarden.esl.channel import PBX
from callwarden.esl.handler import CallHandler, HandlerContext
from callwarden.esl.inbound import EventListener, ListenerTuning
from callwarden.esl.outbound import OutboundServer
from callwarden.esl.store_gate import StoreGate
from callwarden.log import get_logger
from callwarden.service.enforcer import Enforcer

log = get_logger("callwarden.esl")



def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class FreeswitchService:
    """Both halves of the adapter; ``start()`` binds and runs them in greenlets."""

    def __init__(self, settings: Settings, enforcer: Enforcer | None = None, *,
                 clock: Callable[[], dt.datetime] = _utcnow, outbound_port: int | None = None,
                 max_connections: int = 512,
                 listener_tuning: ListenerTuning | None = None):
        fs = settings.freeswitch
        if fs is None:
            raise ValueError("the configuration has no freeswitch: section")
        self.settings = settings
        self.clock = clock
        self.enforcer = enforcer or Enforcer(settings)
        self.gate = StoreGate(self.enforcer, decision_timeout_s=settings.decision_timeout_ms / 1000)
        self.watched = WatchedCalls()
        self.inflight = InFlight()
        recording_dir = Path(fs.recording_dir or settings.recording.dir)
        if not recording_dir.is_absolute():
            log.warning("recording_dir_relative", resolved=str(recording_dir.resolve()),
                        note="FreeSWITCH must see the same path; set freeswitch.recording_dir")
        out = fs.esl_outbound
        ctx = HandlerContext(
            settings=settings, gate=self.gate, watched=self.watched, inflight=self.inflight,
            clock=clock,
            recording_dir=str(recording_dir.resolve()),
            session_timeout_s=out.session_timeout_s,
            connect_timeout_s=min(5.0, out.session_timeout_s / 2),
            record_timeout_s=min(5.0, out.session_timeout_s / 2),
        )
        self.server = OutboundServer(out.host, out.port if outbound_port is None else outbound_port,
                                     partial(CallHandler, ctx=ctx), max_connections=max_connections,
                                     session_timeout_s=out.session_timeout_s)
        self.listener: EventListener | None = None
        if fs.esl_inbound is not None:
            tuning = listener_tuning or ListenerTuning(
                store_timeout_s=max(2.0, settings.decision_timeout_ms / 1000 * 4))
            self.listener = EventListener(fs.esl_inbound.host, fs.esl_inbound.port,
                                          fs.esl_inbound.password, self.gate, self.watched,
                                          self.inflight, clock=clock, tuning=tuning,
                                          node=fs.switchname)
        self._server_greenlet: gevent.Greenlet | None = None

    def start(self) -> int:
        """Bind the outbound server (raises OSError if it cannot), start everything; returns
        the bound port. The inbound listener connects in the background: an unreachable
        FreeSWITCH never stops the outbound server from answering calls."""
        port = self.server.bind()
        self._server_greenlet = gevent.spawn(self.server.listen)
        gevent.spawn(self._warm_up)
        if self.listener is not None:
            self.listener.start()
        return port

    def _warm_up(self) -> None:
        """:meth:`Enforcer.warm_up` in the background; a failure only costs the first calls
        some latency (they still fail closed)."""
        try:
            self.gate.call(self.enforcer.warm_up, PBX, self.clock(), timeout=30.0)
        except Exception as exc:
            log.warning("store_warm_up_failed", error=type(exc).__name__,
                        note="the first calls may be slower; they still fail closed")
        gc.freeze()  # as callwarden.agi.adapter: no full collection walks start-up objects

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking calls; calls in progress and the listener's queued work get ``grace_s``
        together (both drain at once), then the store is released."""
        draining = gevent.spawn(self.listener.stop, grace_s) if self.listener is not None else None
        self.server.stop(grace_s)
        if self._server_greenlet is not None:
            self._server_greenlet.join(timeout=1.0)
        if draining is not None:
            draining.join(timeout=grace_s + 2.0)
        self.gate.close()
        self.enforcer.engine.dispose()
