"""Read every fact the decision core needs for one attempt, in two round trips.

The statements are built once at import with bound parameters, so a decision pays neither for
building SQL expressions nor for compiling them (SQLAlchemy's compiled cache), and every lookup
inside them is an indexed one (primary key, unique number, or the calls' party index).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, exists, func, literal, or_, select
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


def _one(column, *where):  # type: ignore[no-untyped-def]
    return select(column).where(*where).limit(1).scalar_subquery()


_tenant = Tenant.id == bindparam("tenant")
_number = AccessNumber.number == bindparam("caller")
_trunk = Trunk.name == bindparam("trunk")
_campaign = (Campaign.tenant_id == bindparam("tenant")) & (Campaign.id == bindparam("campaign"))
_party = (Call.tenant_id == bindparam("tenant")) & (Call.party == bindparam("callee"))

_FACTS = select(
    _one(Tenant.status, _tenant).label("t_status"),
    _one(Tenant.outbound_commitment, _tenant).label("t_commitment"),
    _one(AccessNumber.tenant_id, _number).label("n_tenant"),
    _one(AccessNumber.outbound, _number).label("n_outbound"),
    _one(AccessNumber.filing_ref, _number).label("n_filing"),
    _one(AccessNumber.active, _number).label("n_active"),
    # a registered number that the caller ID extends (95512 -> 955121234) or truncates
    _one(AccessNumber.number, or_(
        AccessNumber.number.in_(bindparam("prefixes", expanding=True)),
        (AccessNumber.number > bindparam("caller")) & (AccessNumber.number < bindparam("caller_hi")),
    )).label("variant"),
    _one(Trunk.tenant_id, _trunk).label("tr_tenant"),
    _one(Trunk.verified, _trunk).label("tr_verified"),
    _one(Trunk.proof_ref, _trunk).label("tr_proof"),
    exists().where(ProofDocument.subject_kind == "trunk", ProofDocument.subject == bindparam("trunk"))
    .label("tr_proof_doc"),
    _one(Campaign.purpose, _campaign).label("c_purpose"),
    _one(Campaign.status, _campaign).label("c_status"),
    exists().where(Refusal.callee == bindparam("callee"),
                   Refusal.tenant_id.in_([bindparam("tenant"), literal(GLOBAL)])).label("refused"),
    select(func.max(Call.attempted_at)).where(
        _party, Call.direction == "inbound",
        Call.attempted_at >= bindparam("since_inbound"), Call.attempted_at <= bindparam("at"),
    ).scalar_subquery().label("last_inbound"),
    # the calendar day always lies inside the rolling week: one index range serves both counts
    select(func.count().filter(Call.attempted_at >= bindparam("since_day"))).where(
        _party, Call.direction == "outbound", Call.decision == "allow",
        Call.attempted_at >= bindparam("since_week"), Call.attempted_at <= bindparam("at"),
    ).scalar_subquery().label("today"),
    select(func.count()).where(
        _party, Call.direction == "outbound", Call.decision == "allow",
        Call.attempted_at >= bindparam("since_week"), Call.attempted_at <= bindparam("at"),
    ).scalar_subquery().label("week"),
)

_CONSENTS = select(
    Consent.id, Consent.scopes, Consent.obtained_at, Consent.expires_at, Consent.revoked_at,
).where(Consent.tenant_id == bindparam("tenant"), Consent.callee == bindparam("callee"))


def load_facts(session: Session, attempt: CallAttempt, rules: Rules) -> Facts:
    """All facts for ``attempt`` (absent inputs simply match nothing)."""
    tenant_id = attempt.tenant or ""
    caller = attempt.caller_number
    callee = attempt.callee_number
    caller_digits = caller.digits if caller else ""
    callee_digits = callee.digits if callee else ""
    params = {
        "tenant": tenant_id, "caller": caller_digits, "caller_hi": caller_digits + ":" if caller else "",
        "prefixes": [caller_digits[:i] for i in range(3, len(caller_digits))] or [""],
        "trunk": attempt.trunk or "", "campaign": attempt.campaign or "", "callee": callee_digits,
        "at": attempt.at, "since_inbound": attempt.at - rules.callback_window,
        "since_day": rules.day_start(attempt.at), "since_week": rules.week_start(attempt.at),
    }
    conn = session.connection()
    row = conn.execute(_FACTS, params).one()
    consents: tuple[ConsentFacts, ...] = ()
    if callee is not None and tenant_id:
        consents = tuple(
            ConsentFacts(cid, frozenset(scopes.split(",")), obtained, expires, revoked is not None)
            for cid, scopes, obtained, expires, revoked in conn.execute(_CONSENTS, params)
        )
    number = variant = None
    if row.n_tenant is not None:
        number = NumberFacts(caller_digits, row.n_tenant, bool(row.n_outbound), bool(row.n_filing),
                             bool(row.n_active))
    elif row.variant is not None:
        variant = NumberFacts(row.variant, "", False, False, False)
    return Facts(
        tenant=TenantFacts(tenant_id, row.t_status, bool(row.t_commitment)) if row.t_status else None,
        caller_number=number,
        length_variant_of=variant,
        trunk=TrunkFacts(attempt.trunk, row.tr_tenant, bool(row.tr_verified),
                         bool(row.tr_proof) or bool(row.tr_proof_doc)) if row.tr_tenant else None,
        campaign=CampaignFacts(attempt.campaign, tenant_id, row.c_purpose, row.c_status)
        if row.c_status else None,
        consents=consents,
        last_inbound_at=_aware(row.last_inbound),
        refused=bool(row.refused),
        attempts_today=row.today or 0,
        attempts_week=row.week or 0,
    )


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    """max() over a UTC column comes back naive from SQLite on some versions."""
    if t is not None and t.tzinfo is None:
        return t.replace(tzinfo=dt.UTC)
    return t
