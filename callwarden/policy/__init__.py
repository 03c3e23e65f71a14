"""The decision core: pure rules over plain data. Knows nothing of SQL, Asterisk or FreeSWITCH."""

from callwarden.policy.attempt import (
    CONSENT_SCOPES,
    CallAttempt,
    CampaignFacts,
    ConsentFacts,
    Facts,
    NumberFacts,
    Rules,
    TenantFacts,
    TrunkFacts,
    scopes_for,
)
from callwarden.policy.classifier import Verdict, classify_text
from callwarden.policy.decide import Decision, decide, denial
from callwarden.policy.reasons import REASONS, Reason, reason

__all__ = [
    "CONSENT_SCOPES",
    "REASONS",
    "CallAttempt",
    "CampaignFacts",
    "ConsentFacts",
    "Decision",
    "Facts",
    "NumberFacts",
    "Reason",
    "Rules",
    "TenantFacts",
    "TrunkFacts",
    "Verdict",
    "classify_text",
    "decide",
    "denial",
    "reason",
    "scopes_for",
]
