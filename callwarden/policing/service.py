"""The detector inside ``callwarden serve``: a periodic task beside the PBX adapters.

With Asterisk configured it is an asyncio task of the serving process; on a FreeSWITCH-only site
``serve`` is the gevent FreeSWITCH process, and the detector runs there in a native thread of its
own (:func:`start_in_thread`; that process leaves ``threading`` unpatched). Each pass runs in a
worker thread with its own engine (no decision deadline: a pass may read
for seconds; the adapters' engine keeps its tight one), so the event loop and the calls it
serves never wait for it. With several nodes on one PostgreSQL every node runs the task and the
pass lock lets one pass through at a time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

from callwarden.config import Settings
from callwarden.log import get_logger
from callwarden.policing.runner import Detector, PassResult

log = get_logger("callwarden.policing")


def start_in_serve(settings: Settings, stop: asyncio.Event,
                   observer: Callable[[PassResult | None], None] | None = None
                   ) -> list[asyncio.Task[None]]:
    """Start the periodic detector (if ``policing.enabled``); the tasks to cancel at shutdown.
    ``observer`` is told of every pass (metrics)."""
    if not settings.policing.enabled:
        log.info("policing_disabled", hint="run `callwarden police --once` from cron instead")
        return []
    detector = Detector(settings, run_by=f"serve@{socket.gethostname()}")
    detector.observer = observer

    async def run() -> None:
        log.info("policing_started", interval_s=settings.policing.interval_s,
                 window_minutes=settings.policing.window_minutes)
        try:
            await detector.run_periodically(stop)
        finally:
            detector.close()
            detector.engine.dispose()

    return [asyncio.create_task(run(), name="callwarden-policing")]


class PolicingThread:
    """The periodic detector in a native thread (the FreeSWITCH process); :meth:`stop` at
    shutdown waits for a pass under way to finish (bounded by ``timeout_s``)."""

    def __init__(self, detector: Detector, first_delay_s: float) -> None:
        self.detector = detector
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(first_delay_s,),
                                        name="callwarden-policing", daemon=True)

    def start(self) -> PolicingThread:
        self._thread.start()
        return self

    def _run(self, first_delay_s: float) -> None:
        try:
            self.detector.run_forever(self._stop, first_delay_s=first_delay_s)
        finally:
            self.detector.close()
            self.detector.engine.dispose()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("policing_stop_timeout", note="a pass was still running; it is abandoned")


def start_in_thread(settings: Settings,
                    observer: Callable[[PassResult | None], None] | None = None,
                    first_delay_s: float = 5.0) -> PolicingThread | None:
    """:func:`start_in_serve` for a process without asyncio: ``None`` when policing is off."""
    if not settings.policing.enabled:
        log.info("policing_disabled", hint="run `callwarden police --once` from cron instead")
        return None
    detector = Detector(settings, run_by=f"serve@{socket.gethostname()}")
    detector.observer = observer
    log.info("policing_started", interval_s=settings.policing.interval_s,
             window_minutes=settings.policing.window_minutes, runner="thread")
    return PolicingThread(detector, first_delay_s).start()
