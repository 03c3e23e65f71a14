"""The plain data the decision core works on: the call attempt, the facts about it, the rules."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from callwarden.numbers import Number, is_hidden, try_normalize

#: Consent scopes that satisfy a call of each purpose. Purposes not listed need "consultation".
PURPOSE_SCOPES: dict[str, frozenset[str]] = {
    "callback": frozenset({"callback"}),
    "consultation": frozenset({"consultation"}),
    "notification": frozenset({"callback", "consultation"}),
    "survey": frozenset({"consultation"}),
    "marketing": frozenset(),
}
CONSENT_SCOPES = ("callback", "consultation")


def scopes_for(purpose: str) -> frozenset[str]:
    """Consent scopes that fit a call made for ``purpose``."""
    return PURPOSE_SCOPES.get(purpose, frozenset({"consultation"}))


@dataclass(frozen=True, slots=True)
class CallAttempt:
    """One outbound call as a PBX (or ``callwarden check``) presents it. Numbers are raw."""

    tenant: str | None
    caller: str | None
    callee: str | None
    at: dt.datetime
    caller_hidden: bool = False  # presentation restricted, whatever the number says
    trunk: str | None = None
    campaign: str | None = None
    purpose: str | None = None
    pbx: str = "cli"
    pbx_call_id: str | None = None
    channel: str | None = None
    node: str | None = None  # the PBX node (FreeSWITCH switchname): carried, never decided on

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError("CallAttempt.at must be timezone-aware")

    @property
    def caller_number(self) -> Number | None:
        return None if self.hidden else try_normalize(self.caller)

    @property
    def callee_number(self) -> Number | None:
        return try_normalize(self.callee)

    @property
    def hidden(self) -> bool:
        return self.caller_hidden or is_hidden(self.caller)


@dataclass(frozen=True, slots=True)
class TenantFacts:
    id: str
    status: str  # active | suspended | terminated
    has_commitment: bool


@dataclass(frozen=True, slots=True)
class NumberFacts:
    digits: str
    tenant: str
    outbound: bool
    filed: bool
    active: bool


@dataclass(frozen=True, slots=True)
class TrunkFacts:
    name: str
    tenant: str
    verified: bool
    has_proof: bool


@dataclass(frozen=True, slots=True)
class CampaignFacts:
    id: str
    tenant: str
    purpose: str
    status: str  # pending | review | approved | rejected


@dataclass(frozen=True, slots=True)
class ConsentFacts:
    id: int
    scopes: frozenset[str]
    obtained_at: dt.datetime
    expires_at: dt.datetime | None
    revoked: bool = False

    def valid_at(self, at: dt.datetime) -> bool:
        if self.revoked or self.obtained_at > at:
            return False
        return self.expires_at is None or at < self.expires_at


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything the store knows that bears on one attempt (loaded in a few indexed reads)."""

    tenant: TenantFacts | None = None
    caller_number: NumberFacts | None = None  # the exact registered number, any tenant
    length_variant_of: NumberFacts | None = None  # a registered number with digits added/removed
    trunk: TrunkFacts | None = None
    campaign: CampaignFacts | None = None
    consents: tuple[ConsentFacts, ...] = ()
    last_inbound_at: dt.datetime | None = None  # latest inbound call from the callee
    refused: bool = False
    attempts_today: int = 0
    attempts_week: int = 0


@dataclass(frozen=True, slots=True)
class Rules:
    """The operator's settings that the rules read, resolved once at start-up."""

    tz: ZoneInfo
    window: tuple[dt.time, dt.time] = (dt.time(8), dt.time(21))
    blocked: tuple[tuple[dt.time, dt.time], ...] = ()
    holidays: frozenset[dt.date] = field(default_factory=frozenset)
    per_day: int = 2
    per_week: int = 5
    callback_window: dt.timedelta = dt.timedelta(hours=72)
    require_trunk: bool = False
    default_purpose: str = "callback"

    @classmethod
    def from_settings(cls, settings) -> Rules:  # settings: callwarden.config.Settings
        ch = settings.calling_hours
        return cls(
            tz=settings.tz,
            window=(ch.window.start, ch.window.end),
            blocked=tuple((s.start, s.end) for s in ch.blocked),
            holidays=frozenset(ch.holidays),
            per_day=settings.frequency.per_day,
            per_week=settings.frequency.per_week,
            callback_window=dt.timedelta(hours=settings.callback_window_hours),
            require_trunk=settings.policy.require_trunk,
            default_purpose=settings.policy.default_purpose,
        )

    def day_start(self, at: dt.datetime) -> dt.datetime:
        """Midnight of ``at``'s calendar day in the callee's zone (frequency 'per day')."""
        local = at.astimezone(self.tz)
        return local.replace(hour=0, minute=0, second=0, microsecond=0)

    def week_start(self, at: dt.datetime) -> dt.datetime:
        """Start of the rolling 7-day window ending at ``at``."""
        return at - dt.timedelta(days=7)
