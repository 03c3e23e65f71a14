"""Evidence-bundle export for the current search filter: ``callwarden.audit.export`` writes the
same bundle (manifest, receipt, offline ``audit verify``) as ``audit export``, straight into the
response as it is made: no copy of the zip (or of any decrypted recording) is kept on disk."""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from callwarden.audit.access import AccessDenied
from callwarden.audit.export import ExportOptions, export_bundle
from callwarden.audit.filters import FilterError
from callwarden.store.models import utcnow
from callwarden.web.pages import NotFound, account, console, log, page, render
from callwarden.web.routes.calls import filter_values, parse_filters

_DONE = object()


class Aborted(Exception):
    """The browser went away: the export stops (no receipt is written for it)."""


class PipeWriter:
    """A write-only, non-seekable stream whose bytes a reader takes from a bounded queue
    (zipfile then writes data descriptors instead of seeking back)."""

    def __init__(self, depth: int = 16) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.closed_by_reader = threading.Event()
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        if self.closed_by_reader.is_set():
            raise Aborted("the download was abandoned")
        self._buf += data
        if len(self._buf) >= 1 << 20:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buf:
            while True:  # wait for room, but notice a reader that has gone
                try:
                    self.q.put(bytes(self._buf), timeout=1)
                    break
                except queue.Full:
                    if self.closed_by_reader.is_set():
                        raise Aborted("the download was abandoned") from None
            self._buf.clear()


def _hand_over(pipe: PipeWriter, item: Any) -> None:
    while not pipe.closed_by_reader.is_set():
        try:
            pipe.q.put(item, timeout=1)
            return
        except queue.Full:
            continue


def export(request: Request) -> Response:
    c, acct = console(request), account(request)
    values = filter_values(request.state.form)
    try:
        filters = parse_filters(request, values)
        acct.scope().tenant_filter(filters.tenant)  # another tenant's calls: 404, before any byte
    except FilterError as exc:
        return render(request, "error.html", status=400, status_code=400, message_key=str(exc))
    except AccessDenied:
        raise NotFound from None
    name = f"evidence-{acct.username}-{utcnow().astimezone(c.settings.tz):%Y%m%d-%H%M%S}.zip"
    opts = ExportOptions(callback_window=dt.timedelta(hours=c.settings.callback_window_hours))
    pipe = PipeWriter()

    def produce() -> None:
        try:
            result = export_bundle(c.engine, pipe, filters, acct.scope(), c.storage, c.keyring, opts,
                                   name=name)
            pipe.flush()
            log.info("web_export", user=acct.username, calls=result.calls, recordings=result.recordings,
                     receipt_seq=result.receipt_seq, problems=len(result.problems))
            _hand_over(pipe, _DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which aborts the response
            log.error("web_export_failed", user=acct.username, error=f"{type(exc).__name__}: {exc}")
            _hand_over(pipe, exc)

    async def body() -> AsyncIterator[bytes]:
        worker = threading.Thread(target=produce, name="web-export", daemon=True)
        worker.start()
        try:
            while True:
                item = await run_in_threadpool(pipe.q.get)
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item  # the response ends unfinished: the browser reports a failed download
                yield item
        finally:
            pipe.closed_by_reader.set()

    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
    return StreamingResponse(body(), media_type="application/zip", headers=headers)


routes = [Route("/export", page(export), methods=["POST"])]
