"""The detector inside ``callwarden serve``: a periodic task beside the PBX adapters.

Each pass runs in a worker thread with its own engine (no decision deadline: a pass may read
for seconds; the adapters' engine keeps its tight one), so the event loop and the calls it
serves never wait for it. With several nodes on one PostgreSQL every node runs the task and the
pass lock lets one pass through at a time.
"""

from __future__ import annotations

import asyncio
import socket
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
