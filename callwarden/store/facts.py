"""Read, in a handful of indexed lookups, every fact the decision core needs for one attempt."""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from callwarden.policy import (
    CallAttempt,
    CampaignFacts,
    ConsentFacts,
    Facts,
    NumberFacts,
    Rules,
    TenantFacts,
    TrunkFacts,
)
from callwarden.store.models import (
    AccessNumber,
    Call,
    Campaign,
    Consent,
    ProofDocument,
    Refusal,
    Tenant,
    Trunk,
)

GLOBAL = "*"


def _number_facts(n: AccessNumber) -> NumberFacts:
    return NumberFacts(n.number, n.tenant_id, n.outbound, bool(n.filing_ref), n.active)


def load_facts(session: Session, attempt: CallAttempt, rules: Rules) -> Facts:
    tenant_id = attempt.tenant or ""
    tenant = session.get(Tenant, tenant_id) if tenant_id else None
    caller = attempt.caller_number
    callee = attempt.callee_number

    number = variant = None
    if caller is not None:
        exact = session.scalar(select(AccessNumber).where(AccessNumber.number == caller.digits))
        if exact is not None:
            number = _number_facts(exact)
        else:
            variant = _length_variant(session, caller.digits)

    trunk = None
    if attempt.trunk:
        t = session.get(Trunk, attempt.trunk)
        if t is not None:
            has_proof = bool(t.proof_ref) or session.scalar(
                select(func.count()).select_from(ProofDocument).where(
                    ProofDocument.subject_kind == "trunk", ProofDocument.subject == t.name)
            ) > 0
            trunk = TrunkFacts(t.name, t.tenant_id, t.verified, has_proof)

    campaign = None
    if attempt.campaign and tenant_id:
        c = session.get(Campaign, (tenant_id, attempt.campaign))
        if c is not None:
            campaign = CampaignFacts(c.id, c.tenant_id, c.purpose, c.status)

    consents: tuple[ConsentFacts, ...] = ()
    refused = False
    last_inbound = None
    today = week = 0
    if callee is not None and tenant_id:
        consents = tuple(
            ConsentFacts(c.id, frozenset(c.scopes.split(",")), c.obtained_at, c.expires_at,
                         c.revoked_at is not None)
            for c in session.scalars(select(Consent).where(
                Consent.tenant_id == tenant_id, Consent.callee == callee.digits))
        )
        refused = session.scalar(select(Refusal.id).where(
            Refusal.callee == callee.digits, or_(Refusal.tenant_id == tenant_id, Refusal.tenant_id == GLOBAL)
        ).limit(1)) is not None
        last_inbound = session.scalar(select(func.max(Call.attempted_at)).where(
            Call.tenant_id == tenant_id, Call.party == callee.digits, Call.direction == "inbound",
            Call.attempted_at >= attempt.at - rules.callback_window, Call.attempted_at <= attempt.at))
        # the calendar day always lies inside the rolling week, so one scan counts both
        since_day, since_week = rules.day_start(attempt.at), rules.week_start(attempt.at)
        row = session.execute(select(
            func.count().filter(Call.attempted_at >= since_day),
            func.count(),
        ).where(
            Call.tenant_id == tenant_id, Call.party == callee.digits, Call.direction == "outbound",
            Call.attempted_at >= since_week, Call.attempted_at <= attempt.at,
            Call.decision == "allow",
        )).one()
        today, week = row[0], row[1]

    return Facts(
        tenant=TenantFacts(tenant.id, tenant.status, bool(tenant.outbound_commitment)) if tenant else None,
        caller_number=number,
        length_variant_of=variant,
        trunk=trunk,
        campaign=campaign,
        consents=consents,
        last_inbound_at=last_inbound,
        refused=refused,
        attempts_today=today,
        attempts_week=week,
    )


def _length_variant(session: Session, digits: str) -> NumberFacts | None:
    """A registered number that ``digits`` extends (95512 -> 955121234) or truncates."""
    prefixes = [digits[:i] for i in range(3, len(digits))]
    q = select(AccessNumber).where(or_(
        AccessNumber.number.in_(prefixes),
        # registered numbers that start with digits: a range scan on the unique index
        (AccessNumber.number > digits) & (AccessNumber.number < digits + ":"),
    )).limit(1)
    found = session.scalar(q)
    return _number_facts(found) if found is not None else None
