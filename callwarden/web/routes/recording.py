"""A call's recording for the browser's audio player: HTTP range requests, decrypted on the fly
(callwarden.recorder.open_recording), never written to disk in clear. A playback (a request
from byte 0) and every download is one audit-log entry naming the user."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from callwarden.recorder import (
    DecryptionError,
    LocationNotFound,
    Storage,
    StorageError,
    open_recording,
)
from callwarden.recorder.crypto import MAGIC
from callwarden.recorder.streams import read_exactly
from callwarden.store.models import Recording
from callwarden.web.pages import NotFound, account, console, log, page, render
from callwarden.web.routes.calls import find_call

CHUNK = 64 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".opus": "audio/ogg",
          ".gsm": "audio/x-gsm", ".flac": "audio/flac"}


class Unsatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` inclusive for one ``bytes=`` range; None for the whole file."""
    if not header:
        return None
    m = _RANGE.match(header.strip().replace(" ", ""))
    if not m or (not m.group(1) and not m.group(2)):
        return None  # a malformed or multi-range header is ignored (RFC 9110 allows it)
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if first >= size or last < first:
        raise Unsatisfiable
    return first, min(last, size - 1)


def open_at(storage: Storage, location: str, keyring: Any, start: int) -> Any:
    """A plaintext stream positioned at ``start``: a plain stored file is seeked, an encrypted one
    is decrypted from its beginning (chunks are authenticated in order) and the head discarded."""
    raw = storage.open(location)
    seekable = getattr(raw, "seekable", lambda: False)()
    if seekable:
        head = read_exactly(raw, len(MAGIC))
        if head != MAGIC:
            raw.seek(start)
            return raw
    raw.close()
    src = open_recording(storage, location, keyring)
    left = start
    while left:
        got = src.read(min(CHUNK, left))
        if not got:
            break
        left -= len(got)
    return src


def _body(src: Any, length: int) -> Iterator[bytes]:
    try:
        left = length
        while left > 0:
            data = src.read(min(CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
    except (DecryptionError, StorageError, OSError) as exc:
        log.error("web_recording_stream_failed", error=str(exc))
    finally:
        src.close()


def recording(request: Request) -> Response:
    c, acct = console(request), account(request)
    call_id = request.path_params["call_id"]
    row = find_call(request, call_id)  # 404 unless the call is visible to this user
    with c.sessions() as s:
        rec = s.scalar(select(Recording).where(Recording.call_id == call_id, Recording.status == "stored",
                                               Recording.tenant_id.is_not_distinct_from(row["tenant"])))
    if rec is None or not rec.location or rec.size is None:
        raise NotFound
    size = rec.size
    download = request.query_params.get("download") == "1"
    try:
        rng = parse_range(request.headers.get("range"), size)
    except Unsatisfiable:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    first, last = rng if rng else (0, size - 1)
    suffix = PurePosixPath(rec.location.split(":", 1)[-1]).suffix.lower()
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(last - first + 1), "Cache-Control": "no-store",
               "X-Content-Type-Options": "nosniff"}
    if rng:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{call_id}{suffix or ".wav"}"'
    media_type = _TYPES.get(suffix, "application/octet-stream")
    if request.method == "HEAD":  # a player asking for the size: no audio sent, so no playback
        return Response(status_code=206 if rng else 200, headers=headers, media_type=media_type)
    try:
        src = open_at(c.storage, rec.location, c.keyring, first)
    except (LocationNotFound, FileNotFoundError):
        log.error("web_recording_missing", call_id=call_id)
        return render(request, "error.html", status=502, status_code=502, message_key="not_found")
    except (DecryptionError, StorageError, OSError) as exc:
        log.error("web_recording_unreadable", call_id=call_id, error=str(exc))
        return render(request, "error.html", status=502, status_code=502, message_key="not_found")
    if first == 0 or download:  # a playback starts at byte 0; seeks and later pieces are not new plays
        c.audit(acct, "audit.recording", call_id, {"tenant": row["tenant"], "sha256": rec.sha256,
                                                   "mode": "download" if download else "play",
                                                   "range": request.headers.get("range")})
    return StreamingResponse(_body(src, last - first + 1), status_code=206 if rng else 200, headers=headers,
                             media_type=media_type)


routes = [Route("/calls/{call_id}/recording", page(recording), methods=["GET"])]
