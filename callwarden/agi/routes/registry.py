"""Routes by name, as wazo-agid registers its handlers: one small module per AGI route.

A route is an async function ``handle(session, ctx, report)`` plus what the server's single
failure path must do for it when anything goes wrong (the variables to set, and whether to hang
the channel up). Routes raise on failure; they never improvise their own error handling.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from callwarden.agi.callbook import CallBook
from callwarden.agi.session import AgiSession
from callwarden.agi.store_gate import StoreGate
from callwarden.config import Settings
from callwarden.service.call_report import CallReport as BaseCallReport


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What every route may use: settings, the store (through the gate), the clock."""

    settings: Settings
    gate: StoreGate
    book: CallBook | None  # None when no AMI listener runs (nobody would read it)
    clock: Callable[[], dt.datetime]
    mixmonitor_dir: str  # the recording directory as Asterisk sees it (absolute)
    pbx: str = "asterisk"

    @property
    def observe(self) -> bool:
        return self.settings.mode == "observe"

    @property
    def store_timeout_s(self) -> float:
        """Deadline for the non-decision store calls a route waits on (log, opt-out)."""
        return self.settings.decision_timeout_ms / 1000


@dataclass(slots=True)
class CallReport(BaseCallReport):
    """The ``agi_call`` log event; filled in by the route as it goes."""

    hung_up: bool = False

    def fields(self) -> dict[str, object]:
        return {**BaseCallReport.fields(self), "hung_up": self.hung_up}


Handler = Callable[[AgiSession, RouteContext, CallReport], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    handle: Handler
    failure_variables: tuple[tuple[str, str], ...]  # set by the failure path, in order
    hangup_on_failure: bool  # the failure path hangs the channel up (outbound: fail closed)


ROUTES: dict[str, Route] = {}


def register(name: str, *, failure_variables: tuple[tuple[str, str], ...],
             hangup_on_failure: bool = False) -> Callable[[Handler], Handler]:
    """Decorator: make ``handle`` the route ``agi://host:port/<name>``."""

    def add(handle: Handler) -> Handler:
        if name in ROUTES:
            raise ValueError(f"AGI route {name!r} is already registered")
        ROUTES[name] = Route(name, handle, failure_variables, hangup_on_failure)
        return handle

    return add
