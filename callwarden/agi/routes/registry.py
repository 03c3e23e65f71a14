"""Routes by name, as wazo-agid registers its handlers: one small module per AGI route.

A route is an async function ``handle(session, ctx, report)`` plus what the server's single
failure path must do for it when anything goes wrong (the variables to set, and whether to hang
the channel up). Routes raise on failure; they never improvise their own error handling.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from callwarden.agi.callbook import CallBook
from callwarden.agi.session import AgiSession
from callwarden.agi.store_gate import StoreGate
from callwarden.config import Settings
from callwarden.numbers import mask_raw


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
class CallReport:
    """Everything the per-call log line says; filled in by the route as it goes."""

    route: str
    pbx_call_id: str | None = None
    tenant: str | None = None
    caller: str | None = None
    callee: str | None = None
    decision: str | None = None
    reasons: tuple[str, ...] = ()
    call_id: str | None = None
    let_through: bool | None = None
    decision_ms: float | None = None
    recording: str | None = None  # started | failed | not needed
    hung_up: bool = False
    notes: list[str] = field(default_factory=list)

    def log_fields(self) -> dict[str, object]:
        """The fields, with phone numbers masked (they are personal data)."""
        return {
            "route": self.route, "pbx_call_id": self.pbx_call_id, "tenant": self.tenant,
            "caller": mask_raw(self.caller) if self.caller else None,
            "callee": mask_raw(self.callee) if self.callee else None,
            "decision": self.decision, "reasons": list(self.reasons), "call_id": self.call_id,
            "let_through": self.let_through, "decision_ms": self.decision_ms,
            "recording": self.recording, "hung_up": self.hung_up, "notes": self.notes or None,
        }


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
