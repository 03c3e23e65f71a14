"""The outbound decision: every rule of SPEC.md's table, evaluated over plain facts.

Pure functions only: no I/O, no clock, no PBX. Each ``check_*`` returns the codes it fails;
``decide`` runs them all (every failure is reported, not just the first).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from callwarden.numbers import SUBSCRIBER_KINDS
from callwarden.policy.attempt import CallAttempt, Facts, Rules, scopes_for
from callwarden.policy.reasons import Reason, ordered, reason


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one attempt."""

    allowed: bool
    reasons: tuple[Reason, ...]
    purpose: str
    consent_id: int | None = None
    consent_basis: str | None = None  # "consent" | "inbound-callback" | None

    @property
    def decision(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)

    @property
    def hangup_cause(self) -> str | None:
        """FreeSWITCH cause name of the deciding (first) reason; None when allowed."""
        return self.reasons[0].cause_name if self.reasons and not self.allowed else None

    @property
    def hangup_cause_code(self) -> int | None:
        """Q.850 cause number of the deciding reason, for Asterisk's Hangup()."""
        return self.reasons[0].cause_code if self.reasons and not self.allowed else None

    def as_dict(self) -> dict:
        return {
            "decision": self.decision,
            "reasons": [r.as_dict() for r in self.reasons],
            "hangup_cause": self.hangup_cause,
        }

    def with_codes(self, *codes: str) -> Decision:
        """This decision with more failures added (used for live-call rules)."""
        merged = ordered(self.codes + codes)
        return Decision(False, tuple(merged), self.purpose, self.consent_id, self.consent_basis)


def denial(*codes: str, purpose: str = "") -> Decision:
    """A deny built from codes alone (store outage and the like)."""
    return Decision(False, tuple(ordered(codes)), purpose)


Check = Callable[[CallAttempt, Facts, Rules, str], Iterable[str]]


def check_tenant(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    if not a.tenant or f.tenant is None:
        yield "TENANT_UNKNOWN"
        return
    if f.tenant.status != "active":
        yield "TENANT_SUSPENDED"
    if not f.tenant.has_commitment:
        yield "NO_OUTBOUND_COMMITMENT"


def check_caller_id(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    caller = a.caller_number
    if a.hidden or caller is None:
        yield "CID_HIDDEN"
        return
    number = f.caller_number
    if number is None:
        yield "CID_NOT_REGISTERED"
        if caller.kind in SUBSCRIBER_KINDS:
            yield "CID_USER_NUMBER"
        if f.length_variant_of is not None:
            yield "NUMBER_LENGTH_ALTERED"
        return
    if a.tenant and number.tenant != a.tenant:
        yield "CID_OTHER_TENANT"
    if not number.outbound:
        yield "NUMBER_INBOUND_ONLY"
    if not (number.filed and number.active):
        yield "NUMBER_NOT_FILED"


def check_trunk(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    if not a.trunk:
        if r.require_trunk:
            yield "TRUNK_UNVERIFIED"
        return
    t = f.trunk
    if t is None or t.tenant != a.tenant or not (t.verified and t.has_proof):
        yield "TRUNK_UNVERIFIED"


def check_campaign(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    if purpose == "marketing":
        yield "CAMPAIGN_MARKETING"
    if not a.campaign:
        return
    c = f.campaign
    if c is None or c.tenant != a.tenant or c.status != "approved":
        yield "CAMPAIGN_NOT_APPROVED"


def check_refusal(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    if f.refused:
        yield "CALLEE_REFUSED"


def consent_basis(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> tuple[int | None, str | None]:
    """Which consent covers the call: (consent id, basis) or (None, None)."""
    wanted = scopes_for(purpose)
    if not wanted or a.callee_number is None:
        return None, None
    for consent in f.consents:
        if consent.valid_at(a.at) and consent.scopes & wanted:
            return consent.id, "consent"
    last = f.last_inbound_at
    if "callback" in wanted and last is not None and dt.timedelta(0) <= a.at - last <= r.callback_window:
        return None, "inbound-callback"
    return None, None


def check_consent(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    if consent_basis(a, f, r, purpose)[1] is None:
        yield "NO_CONSENT"


def check_hours(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    local = a.at.astimezone(r.tz)
    t = local.time().replace(tzinfo=None)
    start, end = r.window
    if (
        local.date() in r.holidays
        or not (start <= t < end)
        or any(b_start <= t < b_end for b_start, b_end in r.blocked)
    ):
        yield "QUIET_HOURS"


def check_frequency(a: CallAttempt, f: Facts, r: Rules, purpose: str) -> Iterable[str]:
    if f.attempts_today >= r.per_day or f.attempts_week >= r.per_week:
        yield "FREQUENCY_EXCEEDED"


CHECKS: tuple[Check, ...] = (
    check_tenant,
    check_caller_id,
    check_trunk,
    check_campaign,
    check_refusal,
    check_consent,
    check_hours,
    check_frequency,
)


def purpose_of(a: CallAttempt, f: Facts, r: Rules) -> str:
    """The call's purpose: as given, else the campaign's, else the configured default."""
    if a.purpose:
        return a.purpose.strip().lower()
    if f.campaign is not None and f.campaign.tenant == a.tenant:
        return f.campaign.purpose
    return r.default_purpose


def decide(attempt: CallAttempt, facts: Facts, rules: Rules) -> Decision:
    """Evaluate every rule; allow only when none fails."""
    purpose = purpose_of(attempt, facts, rules)
    codes = [code for check in CHECKS for code in check(attempt, facts, rules, purpose)]
    consent_id, basis = consent_basis(attempt, facts, rules, purpose)
    return Decision(not codes, tuple(ordered(codes)), purpose, consent_id, basis)


__all__ = ["Decision", "decide", "denial", "reason"]
