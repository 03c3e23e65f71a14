"""Evidence-bundle export for the current search filter: ``callwarden.audit.export`` writes the
same bundle (manifest, receipt, offline ``audit verify``) as ``audit export``; the console
streams it to the browser and deletes its temporary copy."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from callwarden.audit.access import AccessDenied
from callwarden.audit.export import ExportOptions, export_bundle
from callwarden.audit.filters import FilterError
from callwarden.store.models import utcnow
from callwarden.web.pages import NotFound, account, console, log, page, render
from callwarden.web.routes.calls import filter_values, parse_filters

CHUNK = 1 << 20


def _stream_then_delete(path: Path, workdir: str) -> Iterator[bytes]:
    try:
        with open(path, "rb") as f:
            while data := f.read(CHUNK):
                yield data
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def export(request: Request) -> Response:
    c, acct = console(request), account(request)
    values = filter_values(request.state.form)
    try:
        filters = parse_filters(request, values)
    except FilterError as exc:
        return render(request, "error.html", status=400, status_code=400, message_key=str(exc))
    # beside the recordings (same disk, not /tmp); private to this process, removed after sending
    base = Path(c.settings.recording.dir) / "web-exports"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    workdir = tempfile.mkdtemp(dir=base)
    name = f"evidence-{acct.username}-{utcnow().astimezone(c.settings.tz):%Y%m%d-%H%M%S}.zip"
    out = Path(workdir) / name
    opts = ExportOptions(callback_window=dt.timedelta(hours=c.settings.callback_window_hours))
    try:
        result = export_bundle(c.engine, out, filters, acct.scope(), c.storage, c.keyring, opts)
    except AccessDenied:
        shutil.rmtree(workdir, ignore_errors=True)
        raise NotFound from None
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    log.info("web_export", user=acct.username, calls=result.calls, recordings=result.recordings,
             receipt_seq=result.receipt_seq, problems=len(result.problems))
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store",
               "Content-Length": str(out.stat().st_size), "X-Callwarden-Manifest-Sha256": result.manifest_sha256,
               "X-Callwarden-Receipt": f"{result.receipt_seq} {result.receipt_hash}"}
    return StreamingResponse(_stream_then_delete(out, workdir), media_type="application/zip", headers=headers)


routes = [Route("/export", page(export), methods=["POST"])]
