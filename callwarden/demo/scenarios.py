"""What the demo seeds and which calls it makes, with the decision each must get."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

CST = dt.timezone(dt.timedelta(hours=8))

TENANT, ACCESS_NUMBER, TRUNK = "acme", "95512", "ct-trunk-1"
CONSENTED = ("13800138000", "13800138001", "13800138002", "13800138003")


def demo_day(now: dt.datetime | None = None) -> dt.date:
    """The calls happen yesterday (Beijing time): in the past, so every call can also end
    before now, and recent, so consents and retention deadlines are what they would be."""
    return ((now or dt.datetime.now(dt.UTC)).astimezone(CST) - dt.timedelta(days=1)).date()


def registry(day: dt.date) -> dict[str, Any]:
    """The registry the demo loads (the format of ``callwarden registry import``): one tenant
    with a filed access number, a verified trunk, four consents and two campaigns."""
    obtained = dt.datetime.combine(day - dt.timedelta(days=30), dt.time(10), CST)
    filed = (day - dt.timedelta(days=60)).isoformat()
    return {
        "tenants": [{"id": TENANT, "name": "ACME Service Co.", "status": "active",
                     "outbound_commitment": "CMT-DEMO-001"}],
        "numbers": [{"number": ACCESS_NUMBER, "tenant": TENANT, "carrier": "China Telecom",
                     "purpose": "customer service", "inbound": True, "outbound": True,
                     "filing": "BA-DEMO-0001", "filed_on": filed}],
        "trunks": [{"name": TRUNK, "tenant": TENANT, "carrier": "China Telecom",
                    "verified": True, "proof": "TRK-DEMO-001"}],
        "consents": [
            {"tenant": TENANT, "callee": callee, "scope": ["callback", "consultation"],
             "obtained_at": obtained.isoformat(),
             "expires_at": (obtained + dt.timedelta(days=365)).isoformat(),
             "evidence": {"kind": "contract", "ref": f"C-DEMO-{n:02d}", "sha256": None}}
            for n, callee in enumerate(CONSENTED, start=1)],
        "campaigns": [
            {"id": "renewals", "tenant": TENANT, "purpose": "notification",
             "status": "approved",
             "description": "Remind existing customers that their service contract expires"},
            # marketing wording: registration holds it for review; it is never approved here
            {"id": "spring-promo", "tenant": TENANT, "purpose": "notification",
             "status": "approved",
             "description": "Spring promotion: discount offer on new credit cards"},
        ],
    }


@dataclass(frozen=True, slots=True)
class Scenario:
    """One call, made once through each PBX adapter."""

    title: str
    callee: str
    at: dt.datetime
    expect: str  # allow | deny
    expect_reason: str | None = None  # a reason code the deny must carry
    caller: str = ACCESS_NUMBER
    hidden: bool = False  # caller ID presentation restricted
    campaign: str | None = None
    purpose: str | None = None
    trunk: str = TRUNK

    @property
    def when(self) -> str:
        return f"{self.at:%a %d %b %H:%M} Beijing time"


def scenarios(day: dt.date) -> tuple[Scenario, ...]:
    """The five calls, at fixed times of ``day``: decided the same whenever the demo runs."""

    def at(hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour, minute), CST)

    return (
        Scenario("Allowed: a callback to a customer who gave consent", CONSENTED[0], at(10),
                 "allow", campaign="renewals"),
        Scenario("Masked caller ID: the agent hides the number", CONSENTED[1], at(10, 15),
                 "deny", "CID_HIDDEN", hidden=True),
        Scenario("Marketing campaign: a sales call", CONSENTED[2], at(10, 30), "deny",
                 "CAMPAIGN_MARKETING", campaign="spring-promo", purpose="marketing"),
        Scenario("Quiet hours: a consented callee, late in the evening", CONSENTED[3],
                 at(22, 30), "deny", "QUIET_HOURS"),
        Scenario("No consent: a number nobody agreed to be called on", "13600136000", at(11),
                 "deny", "NO_CONSENT"),
    )
