"""Every fact the decision core needs, for a whole batch of attempts at once.

The registry comes from the process's in-memory snapshot (``store.snapshot``). What is large and
changes with every call stays live: consents, refusals and the callee's call history (frequency
counts and the inbound-callback window). Those are read for all the attempts of a batch in one
statement of three indexed parts, built once at import, whatever the batch size. A decision
that waits in the same batch as an earlier one to the same callee sees that one too
(:class:`BatchFacts`), so two simultaneous calls cannot both pass a limit of 1.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Connection, String, bindparam, literal, null, select, union_all

from callwarden.policy import CallAttempt, ConsentFacts, Facts, Rules
from callwarden.store.hot import HotStatements
from callwarden.store.models import Call, Consent, Refusal
from callwarden.store.snapshot import RegistrySnapshot

GLOBAL = "*"

# Plain IN lists on the leading columns of each index (not row values, which SQLite's planner,
# without statistics, turns into a scan): the index is searched for every (tenant, callee)
# combination of the batch, and rows of combinations no attempt asked for are dropped here.
_TENANTS = bindparam("tenants", expanding=True)
_CALLEES = bindparam("callees", expanding=True)
_R_TENANTS = bindparam("r_tenants", expanding=True)  # the batch's tenants and GLOBAL
_R_CALLEES = bindparam("r_callees", expanding=True)  # every callee, with a tenant or not

_REFUSALS = select(Refusal.tenant_id, Refusal.callee).where(
    Refusal.tenant_id.in_(_R_TENANTS), Refusal.callee.in_(_R_CALLEES))

# Consents, refusals and call history in one round trip: rows tagged by kind, columns aligned
# (kind, tenant, number, consent id, scopes, time, expires, revoked); the first SELECT's column
# types apply to all. For the history, (tenant, party, direction) lead ix_calls_party, so each
# combination is one index range on the time; only rows that count come back: inbound calls
# (callback window) and allowed outbound calls (limits).
_LIVE = union_all(
    select(literal("c", String).label("kind"), Consent.tenant_id, Consent.callee, Consent.id,
           Consent.scopes, Consent.obtained_at, Consent.expires_at, Consent.revoked_at)
    .where(Consent.tenant_id.in_(_TENANTS), Consent.callee.in_(_CALLEES)),
    select(literal("r", String), Refusal.tenant_id, Refusal.callee, null(), null(), null(), null(),
           null())
    .where(Refusal.tenant_id.in_(_R_TENANTS), Refusal.callee.in_(_R_CALLEES)),
    select(Call.direction, Call.tenant_id, Call.party, null(), null(), Call.attempted_at, null(),
           null())
    .where(Call.tenant_id.in_(_TENANTS), Call.party.in_(_CALLEES),
           Call.direction.in_(["inbound", "outbound"]),
           Call.attempted_at >= bindparam("since"), Call.attempted_at <= bindparam("until"),
           (Call.direction == "inbound") | (Call.decision == "allow")),
)

_HOT_REFUSALS, _HOT_LIVE = HotStatements(_REFUSALS), HotStatements(_LIVE)


@dataclass(frozen=True, slots=True)
class Window:
    """The time bounds one attempt's rules look at."""

    at: dt.datetime
    since_inbound: dt.datetime
    since_day: dt.datetime
    since_week: dt.datetime

    @classmethod
    def of(cls, attempt: CallAttempt, rules: Rules) -> Window:
        return cls(attempt.at, attempt.at - rules.callback_window, rules.day_start(attempt.at),
                   rules.week_start(attempt.at))


@dataclass(slots=True)
class _Party:
    consents: list[ConsentFacts]
    inbound: list[dt.datetime]
    allowed: list[dt.datetime]  # allowed outbound calls: stored, then this batch's own


class BatchFacts:
    """The live facts of a batch of attempts, read together; :meth:`facts` assembles one
    attempt's :class:`Facts`, and :meth:`allowed` counts a decision of this batch towards the
    limits of the attempts after it."""

    def __init__(self, conn: Connection, attempts: list[CallAttempt], rules: Rules):
        self.rules = rules
        self._parties: dict[tuple[str, str], _Party] = defaultdict(lambda: _Party([], [], []))
        self._refused: set[tuple[str, str]] = set()
        pairs = {(a.tenant, n.digits) for a in attempts
                 if a.tenant and (n := a.callee_number) is not None}
        callees = {n.digits for a in attempts if (n := a.callee_number) is not None}
        if not callees:
            return
        tenants = sorted({t for t, _ in pairs})
        refusals = {"r_tenants": [*tenants, GLOBAL], "r_callees": sorted(callees)}
        if not pairs:  # no tenant: only the global do-not-call list applies
            self._refused = {(t, c) for t, c in _HOT_REFUSALS.execute(conn, refusals)}
            return
        windows = [Window.of(a, rules) for a in attempts]
        params = {"tenants": tenants, "callees": sorted({c for _, c in pairs}), **refusals,
                  "since": min(min(w.since_inbound, w.since_week) for w in windows),
                  "until": max(w.at for w in windows)}
        consents = []
        for kind, tid, number, cid, scopes, at, expires, revoked in _HOT_LIVE.execute(conn, params):
            if kind == "r":
                self._refused.add((tid, number))
            elif (tid, number) not in pairs:  # a tenant x callee combination nobody asked for
                continue
            elif kind == "c":
                consents.append((cid, tid, number, scopes, at, expires, revoked))
            else:
                p = self._parties[(tid, number)]
                (p.inbound if kind == "inbound" else p.allowed).append(_aware(at))
        for cid, tid, number, scopes, obtained, expires, revoked in sorted(consents):
            self._parties[(tid, number)].consents.append(ConsentFacts(
                cid, frozenset(scopes.split(",")), obtained, expires, revoked is not None))

    def facts(self, attempt: CallAttempt, registry: RegistrySnapshot) -> Facts:
        """All facts for ``attempt`` (absent inputs simply match nothing)."""
        tenant_id = attempt.tenant or ""
        caller, callee = attempt.caller_number, attempt.callee_number
        caller_digits = caller.digits if caller else ""
        number = registry.number(caller_digits)
        variant = registry.length_variant(caller_digits) if number is None else None
        last_inbound = today = week = None
        consents: tuple[ConsentFacts, ...] = ()
        refused = False
        if callee is not None:
            refused = ((tenant_id, callee.digits) in self._refused
                       or (GLOBAL, callee.digits) in self._refused)
            p = self._parties.get((tenant_id, callee.digits))
            if p is not None:
                w = Window.of(attempt, self.rules)
                consents = tuple(p.consents) if tenant_id else ()
                last_inbound = max((t for t in p.inbound if w.since_inbound <= t <= w.at),
                                   default=None)
                week_calls = [t for t in p.allowed if w.since_week <= t <= w.at]
                week = len(week_calls)
                today = sum(1 for t in week_calls if t >= w.since_day)
        return Facts(
            tenant=registry.tenant(attempt.tenant),
            caller_number=number,
            length_variant_of=variant,
            trunk=registry.trunk(attempt.trunk),
            campaign=registry.campaign(tenant_id, attempt.campaign),
            consents=consents,
            last_inbound_at=last_inbound,
            refused=refused,
            attempts_today=today or 0,
            attempts_week=week or 0,
        )

    def allowed(self, attempt: CallAttempt) -> None:
        """``attempt`` was allowed in this batch: later attempts to the callee count it."""
        callee = attempt.callee_number
        if attempt.tenant and callee is not None:
            self._parties[(attempt.tenant, callee.digits)].allowed.append(attempt.at)


def _aware(t: dt.datetime) -> dt.datetime:
    """A UTC column comes back naive from SQLite on some versions."""
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t
