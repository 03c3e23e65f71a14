"""Serve the console with uvicorn: on its own (``callwarden web``) or as one task of
``callwarden serve`` (sharing its event loop and its SIGTERM/SIGINT handling)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from callwarden.config import Settings
from callwarden.config.model import WebConfig
from callwarden.log import get_logger
from callwarden.web.app import create_app

log = get_logger("callwarden.web")


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the signals to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(settings: Settings) -> uvicorn.Config:
    web = settings.web or WebConfig()
    return uvicorn.Config(create_app(settings), host=web.host, port=web.port, log_level="warning",
                          proxy_headers=False, server_header=False, access_log=False)


def address(settings: Settings) -> str:
    web = settings.web or WebConfig()
    host = f"[{web.host}]" if ":" in web.host else web.host
    return f"http://{host}:{web.port}/"


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM (blocks)."""
    log.info("web_console_started", address=address(settings))
    uvicorn.Server(_config(settings)).run()


async def serve_until(settings: Settings, stop: asyncio.Event) -> None:
    """Serve inside a running event loop until ``stop`` is set."""
    server = _EmbeddedServer(_config(settings))

    async def guarded() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits when it cannot bind: the PBX side goes on regardless
            log.error("web_console_cannot_listen", address=address(settings))

    task = asyncio.create_task(guarded())
    log.info("web_console_started", address=address(settings))
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
    if task.done() and not stop.is_set():
        log.error("web_console_stopped", address=address(settings))
