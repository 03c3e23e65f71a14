"""The catalogue of figures the detector scores: what each one measures and over what sample.

Weights and ramps live in the configuration (``policing.features``); this module says what the
numbers mean, so that every score can be printed with plain-language inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    kind: Literal["share", "rate", "count"]
    label: str  # what the figure is, in one line
    sample: str  # what its sample (the denominator, for shares) counts
    window: Literal["traffic", "edge", "complaints"]


FEATURES: tuple[Feature, ...] = (
    Feature("attempt_rate", "rate", "outbound attempts per hour", "outbound attempts", "traffic"),
    Feature("new_callee_share", "share",
            "share of distinct callees with no prior relationship (no inbound call from them "
            "within relationship_days, no consent on file)", "distinct callees", "traffic"),
    Feature("answer_rate", "share", "share of completed outbound calls that were answered",
            "completed outbound calls that went out", "traffic"),
    Feature("short_call_share", "share", "share of answered calls shorter than short_call_s",
            "answered calls", "traffic"),
    Feature("sequential_share", "share",
            "share of distinct callees that belong to a sequential or generated run "
            "(138xxxx0001, 0002, ...)", "distinct callees", "traffic"),
    Feature("refused_attempts", "count",
            "attempts to callees on a do-not-call list (CALLEE_REFUSED)", "the count itself", "traffic"),
    Feature("no_consent_share", "share", "share of attempts denied NO_CONSENT",
            "outbound attempts", "traffic"),
    Feature("campaign_denial_share", "share",
            "share of attempts denied CAMPAIGN_MARKETING or CAMPAIGN_NOT_APPROVED",
            "outbound attempts", "traffic"),
    Feature("window_edge_share", "share",
            "share of attempts within edge_minutes of the start or end of the calling window",
            "outbound attempts over edge_window_hours", "edge"),
    Feature("complaints", "count", "complaints (投诉) received within complaints_days",
            "the count itself", "complaints"),
)

BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
