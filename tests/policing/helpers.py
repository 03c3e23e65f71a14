"""Synthetic traffic for the detector: CDR rows as the enforcer and the PBX adapters write them.

``clean_service``: a customer-service tenant that mostly calls back people who called in (an
inbound CDR from the same number hours before), answered about 3 times in 4, talking minutes.
``telemarketing``: a tenant dialling a generated list (138xxxx0001, 0002, ...), half of the
attempts denied NO_CONSENT, 10% answered, 10-second calls.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.store.models import Call, Complaint

CST = dt.timezone(dt.timedelta(hours=8))


def registry_doc(*tenants: str, proofs: bool = True) -> dict[str, Any]:
    """Tenants with a filed outbound number (95xxx) and a verified trunk each, proofs on file."""
    doc: dict[str, Any] = {"tenants": [], "numbers": [], "trunks": [], "proofs": []}
    for i, t in enumerate(tenants):
        number = f"9558{i}"
        doc["tenants"].append({"id": t, "name": f"{t} Co.", "outbound_commitment": f"CMT-{t}"})
        doc["numbers"].append({"number": number, "tenant": t, "carrier": "China Telecom",
                               "purpose": "customer service", "inbound": True, "outbound": True,
                               "filing": f"BA-{t}", "filed_on": "2026-01-10"})
        doc["trunks"].append({"name": f"trunk-{t}", "tenant": t, "carrier": "China Telecom",
                              "verified": True, "proof": f"TRK-{t}"})
        if proofs:
            doc["proofs"].append({"tenant": t, "kind": "number", "subject": number, "ref": f"CERT-{t}"})
    return doc


def access_number(doc: dict[str, Any], tenant: str) -> str:
    return next(n["number"] for n in doc["numbers"] if n["tenant"] == tenant)


def cdr(tenant: str, party: str, at: dt.datetime, *, direction: str = "outbound",
        access: str = "95580", decision: str = "allow", reasons: str = "",
        answered: bool = True, billsec: int | None = 120, ended: bool = True,
        enforced: bool = True, campaign: str | None = None, purpose: str | None = "callback",
        pbx: str = "asterisk") -> dict[str, Any]:
    """One CDR row (the columns the enforcer writes, completed as the AMI/ESL listener does)."""
    went_out = decision == "allow" or not enforced
    answered = answered and went_out
    answered_at = at + dt.timedelta(seconds=5) if answered else None
    secs = billsec if answered else 0
    ended_at = None
    if ended:
        ended_at = (answered_at + dt.timedelta(seconds=secs or 0)) if answered_at else at + dt.timedelta(seconds=25)
    outbound = direction == "outbound"
    return {
        "call_id": uuid.uuid4().hex, "tenant_id": tenant, "direction": direction, "pbx": pbx,
        "pbx_call_id": None, "channel": None,
        "caller": access if outbound else party, "callee": party if outbound else access,
        "party": party, "caller_hidden": False, "trunk": None, "campaign": campaign,
        "purpose": purpose if outbound else None, "attempted_at": at, "answered_at": answered_at,
        "ended_at": ended_at, "billsec": (secs if went_out and ended else None),
        "disposition": ("ANSWERED" if answered else "NO ANSWER") if went_out and ended else None,
        "hangup_cause": None, "decision": decision, "reasons": reasons, "enforced": enforced,
        "consent_id": None, "consent_basis": "inbound-callback" if outbound and decision == "allow" else None,
        "recording_id": None, "latency_ms": 1.0,
    }


def random_mobile(rng: random.Random) -> str:
    return f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"


def clean_service(tenant: str, start: dt.datetime, end: dt.datetime, rng: random.Random, *,
                  per_hour: int = 60, access: str = "95580") -> list[dict[str, Any]]:
    """Inbound calls, then callbacks to those callers within hours; realistic outcomes."""
    rows: list[dict[str, Any]] = []
    span = (end - start).total_seconds()
    for _ in range(max(1, int(per_hour * span / 3600))):
        at = start + dt.timedelta(seconds=rng.uniform(0, span))
        customer = random_mobile(rng)
        called_in = at - dt.timedelta(hours=rng.uniform(0.5, 48))
        rows.append(cdr(tenant, customer, called_in, direction="inbound", access=access,
                        billsec=rng.randint(60, 400)))
        roll = rng.random()
        if roll < 0.01:  # the odd attempt the rules refuse
            rows.append(cdr(tenant, customer, at, access=access, decision="deny", reasons="NO_CONSENT"))
        else:
            answered = rng.random() < 0.75
            billsec = rng.randint(5, 14) if rng.random() < 0.08 else rng.randint(45, 600)
            rows.append(cdr(tenant, customer, at, access=access, answered=answered, billsec=billsec))
    return rows


def telemarketing(tenant: str, start: dt.datetime, end: dt.datetime, rng: random.Random, *,
                  per_minute: float = 10, first: int = 13800000001, access: str = "95581",
                  deny_share: float = 0.5) -> list[dict[str, Any]]:
    """A generated list dialled in order; half denied NO_CONSENT; 10% answered for ~10 s."""
    rows: list[dict[str, Any]] = []
    span = (end - start).total_seconds()
    n = max(1, int(per_minute * span / 60))
    for i in range(n):
        at = start + dt.timedelta(seconds=span * i / n)
        callee = str(first + i)
        if rng.random() < deny_share:
            rows.append(cdr(tenant, callee, at, access=access, decision="deny", reasons="NO_CONSENT",
                            purpose="notification"))
        else:
            rows.append(cdr(tenant, callee, at, access=access, answered=rng.random() < 0.10,
                            billsec=rng.randint(8, 12), purpose="notification"))
    return rows


@contextmanager
def session_for(url: str) -> Iterator[Session]:
    """One unit of work on a throw-away engine (disposed: PostgreSQL connections are finite)."""
    engine = make_engine(url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            yield s
    finally:
        engine.dispose()


def insert_calls(url: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    with session_for(url) as s:
        for i in range(0, len(rows), 2000):
            s.execute(insert(Call), rows[i:i + 2000])


def add_complaints(url: str, tenant: str, at: dt.datetime, n: int, source: str = "12321") -> None:
    with session_for(url) as s:
        for i in range(n):
            s.add(Complaint(tenant_id=tenant, callee=f"139{i:08d}",
                            received_at=at - dt.timedelta(hours=i + 1), source=source))


def passes(start: dt.datetime, end: dt.datetime, every: dt.timedelta) -> Iterator[dt.datetime]:
    t = start + every
    while t <= end:
        yield t
        t += every

