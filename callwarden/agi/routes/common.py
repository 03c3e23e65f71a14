"""Steps the routes share: reading channel variables, caller-ID presentation, MixMonitor."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from callwarden.agi.presentation import is_hidden_presentation
from callwarden.agi.routes.registry import RouteContext
from callwarden.agi.session import AgiSession
from callwarden.recorder.naming import spool_file

#: What a MixMonitor file name may contain. MixMonitor's argument is comma-separated and its
#: third field is a shell command run after the recording: a tenant id (it comes from the
#: dialplan) must never be able to smuggle one in.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+=~-]+", re.ASCII)


async def read_variables(session: AgiSession, *names: str) -> dict[str, str | None]:
    """Channel variables by name, in one round trip; unset and empty both read as None."""
    return dict(zip(names, await session.get_variables(*names), strict=True))


def passed_values(session: AgiSession, keys: Mapping[str, str],
                  first: int = 2) -> dict[str, str | None] | None:
    """Channel values the dialplan passed as AGI arguments ``key=value``, by variable name
    (``keys`` maps each key to its variable); empty reads as None, as when read.

    Only the exact form the shipped subroutine sends counts: arguments ``first`` onwards are
    each of ``keys`` once, in any order, and nothing else. Anything else (not passed, a value
    with a comma that Asterisk split into two arguments, an unknown or repeated key) gives
    None and the route reads the variables from the channel instead, so an argument can never
    stand for a value it does not hold whole.
    """
    if f"agi_arg_{first}" not in session.headers:
        return None
    values: dict[str, str | None] = {}
    for n in range(first, first + len(keys) + 1):
        argument = session.headers.get(f"agi_arg_{n}")
        if argument is None:
            break
        key, sep, value = argument.partition("=")
        name = keys.get(key)
        if not sep or name is None or name in values:
            return None
        values[name] = value or None
    return values if len(values) == len(keys) else None


def caller_hidden(session: AgiSession, callerpres: str | None) -> bool:
    """Presentation restricted or unavailable, by ``CALLERPRES()`` now (read by the route with
    its other values) or at AGI start."""
    return (is_hidden_presentation(callerpres)
            or is_hidden_presentation(session.env("agi_callingpres")))


def mixmonitor_file(ctx: RouteContext, relpath: str) -> str:
    """Absolute path of the live recording as Asterisk must write it."""
    return spool_file(ctx.mixmonitor_dir, relpath)


async def start_mixmonitor(session: AgiSession, path: str) -> str | None:
    """Start recording the channel into ``path``. Returns None if it started, else why not.

    Started means: the path is safe to hand to MixMonitor and ``EXEC MixMonitor`` answered
    ``200 result=0``. The caller still checks that ``MIXMONITOR_FILENAME`` now names our file
    (:func:`misnamed_recording`; a stale value from an earlier MixMonitor on the channel does
    not count), read in the same round trip as the published results.
    """
    if not _SAFE_PATH.fullmatch(path) or "/../" in path:
        return "recording path has characters MixMonitor cannot take safely"
    if session.hung_up:
        return "channel hung up before the recording could start"
    reply = await session.exec_app("MixMonitor", path)
    if session.hung_up:  # Asterisk said HANGUP while we waited: the call cannot go out now
        return "channel hung up before the recording could start"
    if not reply.ok:
        return f"EXEC MixMonitor answered {reply.code}"
    if reply.result == -2:
        return "MixMonitor application is not loaded (app_mixmonitor)"
    if reply.result != 0:
        return f"MixMonitor failed (result={reply.result})"
    return None


def misnamed_recording(filename: str | None, path: str) -> str | None:
    """Why ``MIXMONITOR_FILENAME`` (as read after MixMonitor started) is not our recording, or
    None when it names ``path``."""
    if filename is None or (filename != path and Path(filename) != Path(path)):
        return "MIXMONITOR_FILENAME does not name the requested file"
    return None


async def publish(session: AgiSession, variables: list[tuple[str, str]],
                  also: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Set channel variables (the dialplan reads them after the AGI returns); returns the
    values of ``also``, read in the same round trip as the check that they were set."""
    return await session.set_variables(variables, also)
