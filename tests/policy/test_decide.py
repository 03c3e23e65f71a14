"""Every reason code of the contract: a case that triggers it and a neighbour that passes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from callwarden.policy import (
    REASONS,
    CallAttempt,
    CampaignFacts,
    ConsentFacts,
    Facts,
    NumberFacts,
    Rules,
    TenantFacts,
    TrunkFacts,
    decide,
)

CST = dt.timezone(dt.timedelta(hours=8))
AT = dt.datetime(2026, 3, 2, 10, 0, tzinfo=CST)  # a Monday morning
RULES = Rules(tz=ZoneInfo("Asia/Shanghai"), blocked=((dt.time(12), dt.time(13, 30)),),
              holidays=frozenset({dt.date(2026, 10, 1)}))
CONSENT = ConsentFacts(7, frozenset({"callback", "consultation"}), AT - dt.timedelta(days=30), None)
GOOD_FACTS = Facts(
    tenant=TenantFacts("acme", "active", True),
    caller_number=NumberFacts("95512", "acme", outbound=True, filed=True, active=True),
    trunk=TrunkFacts("ct-trunk-1", "acme", verified=True, has_proof=True),
    campaign=CampaignFacts("renewals", "acme", "notification", "approved"),
    consents=(CONSENT,),
)
GOOD = CallAttempt(tenant="acme", caller="95512", callee="13800138000", at=AT, trunk="ct-trunk-1",
                   campaign="renewals")


def codes(attempt: CallAttempt = GOOD, facts: Facts = GOOD_FACTS, rules: Rules = RULES) -> tuple[str, ...]:
    return decide(attempt, facts, rules).codes


def attempt(**kw) -> CallAttempt:
    return dataclasses.replace(GOOD, **kw)


def facts(**kw) -> Facts:
    return dataclasses.replace(GOOD_FACTS, **kw)


def test_the_baseline_call_is_allowed_with_its_consent():
    d = decide(GOOD, GOOD_FACTS, RULES)
    assert d.allowed and d.codes == () and d.decision == "allow"
    assert d.consent_id == 7 and d.consent_basis == "consent"
    assert d.hangup_cause is None and d.purpose == "notification"


# (code, attempt overrides, facts overrides) that trigger exactly that code
TRIGGERS = {
    "TENANT_UNKNOWN": ({"tenant": None}, {"tenant": None}),
    "TENANT_SUSPENDED": ({}, {"tenant": TenantFacts("acme", "suspended", True)}),
    "NO_OUTBOUND_COMMITMENT": ({}, {"tenant": TenantFacts("acme", "active", False)}),
    "CID_HIDDEN": ({"caller_hidden": True}, {}),
    "CID_OTHER_TENANT": ({}, {"caller_number": NumberFacts("95512", "beta", True, True, True)}),
    "NUMBER_INBOUND_ONLY": ({}, {"caller_number": NumberFacts("95512", "acme", False, True, True)}),
    "NUMBER_NOT_FILED": ({}, {"caller_number": NumberFacts("95512", "acme", True, False, True)}),
    "TRUNK_UNVERIFIED": ({}, {"trunk": TrunkFacts("ct-trunk-1", "acme", False, True)}),
    "CAMPAIGN_NOT_APPROVED": ({}, {"campaign": CampaignFacts("renewals", "acme", "notification", "review")}),
    "CALLEE_REFUSED": ({}, {"refused": True}),
    "NO_CONSENT": ({}, {"consents": ()}),
    "QUIET_HOURS": ({"at": AT.replace(hour=21)}, {}),
    "FREQUENCY_EXCEEDED": ({}, {"attempts_today": 2}),
}


@pytest.mark.parametrize("code", sorted(TRIGGERS))
def test_each_rule_fails_alone(code):
    a_kw, f_kw = TRIGGERS[code]
    d = decide(attempt(**a_kw), facts(**f_kw), RULES)
    expected = {code}
    if code == "TENANT_UNKNOWN":
        # without a tenant, the tenant's trunk and campaign cannot be the caller's either
        expected |= {"TRUNK_UNVERIFIED", "CAMPAIGN_NOT_APPROVED"}
    assert set(d.codes) == expected
    assert not d.allowed
    r = REASONS[code]
    assert r.clause.startswith("§") and r.message_zh and r.message_en
    assert d.hangup_cause == d.reasons[0].cause_name


def test_unregistered_mobile_caller_is_a_user_number():
    assert codes(attempt(caller="13812345678"), facts(caller_number=None)) == (
        "CID_USER_NUMBER", "CID_NOT_REGISTERED")


def test_unregistered_fixed_line_caller_is_a_user_number_too():
    assert "CID_USER_NUMBER" in codes(attempt(caller="+86 10 1234 5678"), facts(caller_number=None))


def test_unregistered_service_number_is_not_a_user_number():
    assert codes(attempt(caller="95599"), facts(caller_number=None)) == ("CID_NOT_REGISTERED",)


def test_registered_number_with_an_extension_appended_is_length_altered():
    variant = NumberFacts("95512", "acme", True, True, True)
    assert codes(attempt(caller="955121234"), facts(caller_number=None, length_variant_of=variant)) == (
        "CID_NOT_REGISTERED", "NUMBER_LENGTH_ALTERED")


@pytest.mark.parametrize("raw", ["", "anonymous", "Anonymous", "unknown", None, "restricted"])
def test_hidden_caller_placeholders(raw):
    assert codes(attempt(caller=raw)) == ("CID_HIDDEN",)


def test_every_failure_is_reported_not_just_the_first():
    d = decide(attempt(caller_hidden=True, at=AT.replace(hour=7)),
               facts(refused=True, tenant=TenantFacts("acme", "suspended", False)), RULES)
    assert d.codes == ("TENANT_SUSPENDED", "NO_OUTBOUND_COMMITMENT", "CID_HIDDEN", "CALLEE_REFUSED",
                       "QUIET_HOURS")
    assert d.hangup_cause == "OUTGOING_CALL_BARRED" and d.hangup_cause_code == 52


def test_terminated_tenant_is_suspended_for_outbound():
    assert codes(facts=facts(tenant=TenantFacts("acme", "terminated", True))) == ("TENANT_SUSPENDED",)


def test_trunk_of_another_tenant_or_unknown_or_without_proof():
    assert codes(facts=facts(trunk=TrunkFacts("ct-trunk-1", "beta", True, True))) == ("TRUNK_UNVERIFIED",)
    assert codes(facts=facts(trunk=None)) == ("TRUNK_UNVERIFIED",)
    assert codes(facts=facts(trunk=TrunkFacts("ct-trunk-1", "acme", True, False))) == ("TRUNK_UNVERIFIED",)


def test_missing_trunk_only_fails_when_required():
    assert codes(attempt(trunk=None)) == ()
    assert codes(attempt(trunk=None), rules=dataclasses.replace(RULES, require_trunk=True)) == (
        "TRUNK_UNVERIFIED",)


def test_marketing_purpose_is_refused_even_without_a_campaign():
    assert codes(attempt(campaign=None, purpose="marketing"), facts(campaign=None)) == (
        "CAMPAIGN_MARKETING", "NO_CONSENT")


def test_marketing_campaign_purpose_is_refused():
    d = decide(attempt(purpose=None), facts(campaign=CampaignFacts("renewals", "acme", "marketing", "approved")), RULES)
    assert "CAMPAIGN_MARKETING" in d.codes


def test_campaign_of_another_tenant_is_not_approved():
    assert codes(facts=facts(campaign=CampaignFacts("renewals", "beta", "notification", "approved"))) == (
        "CAMPAIGN_NOT_APPROVED",)
    assert codes(facts=facts(campaign=None)) == ("CAMPAIGN_NOT_APPROVED",)


# -- consent ------------------------------------------------------------------------------------

def test_consent_scope_must_fit_the_purpose():
    callback_only = ConsentFacts(1, frozenset({"callback"}), AT - dt.timedelta(days=1), None)
    assert codes(attempt(purpose="consultation", campaign=None), facts(consents=(callback_only,), campaign=None)) == ("NO_CONSENT",)
    assert codes(attempt(purpose="callback", campaign=None), facts(consents=(callback_only,), campaign=None)) == ()


def test_expired_revoked_and_future_consents_do_not_count():
    expired = ConsentFacts(1, frozenset({"callback"}), AT - dt.timedelta(days=10), AT - dt.timedelta(seconds=1))
    at_expiry = ConsentFacts(2, frozenset({"callback"}), AT - dt.timedelta(days=10), AT)
    revoked = ConsentFacts(3, frozenset({"callback"}), AT - dt.timedelta(days=10), None, revoked=True)
    future = ConsentFacts(4, frozenset({"callback"}), AT + dt.timedelta(seconds=1), None)
    valid = ConsentFacts(5, frozenset({"callback"}), AT - dt.timedelta(days=10), AT + dt.timedelta(seconds=1))
    a = attempt(purpose="callback", campaign=None)
    for c in (expired, at_expiry, revoked, future):
        assert codes(a, facts(consents=(c,), campaign=None)) == ("NO_CONSENT",), c
    assert decide(a, facts(consents=(expired, valid), campaign=None), RULES).consent_id == 5


def test_inbound_call_opens_a_callback_window():
    a = attempt(purpose="callback", campaign=None)
    inside = facts(consents=(), campaign=None, last_inbound_at=AT - dt.timedelta(hours=72))
    d = decide(a, inside, RULES)
    assert d.allowed and d.consent_basis == "inbound-callback" and d.consent_id is None
    outside = dataclasses.replace(inside, last_inbound_at=AT - dt.timedelta(hours=72, seconds=1))
    assert codes(a, outside) == ("NO_CONSENT",)


def test_callback_window_does_not_cover_consultation():
    a = attempt(purpose="consultation", campaign=None)
    f = facts(consents=(), campaign=None, last_inbound_at=AT - dt.timedelta(hours=1))
    assert codes(a, f) == ("NO_CONSENT",)


def test_refusal_beats_consent_and_callback_window():
    f = facts(refused=True, last_inbound_at=AT - dt.timedelta(hours=1))
    assert codes(attempt(purpose="callback"), f) == ("CALLEE_REFUSED",)


# -- calling hours ------------------------------------------------------------------------------

@pytest.mark.parametrize(("hhmm", "ok"), [
    ("07:59:59", False), ("08:00:00", True), ("11:59:59", True), ("12:00:00", False),
    ("13:29:59", False), ("13:30:00", True), ("20:59:59", True), ("21:00:00", False), ("23:30:00", False),
])
def test_calling_window_edges(hhmm, ok):
    t = dt.time.fromisoformat(hhmm)
    a = attempt(at=AT.replace(hour=t.hour, minute=t.minute, second=t.second))
    assert (codes(a) == ()) is ok


def test_window_is_judged_in_the_callee_zone_not_the_servers():
    utc_0100 = dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC)  # 09:00 in Shanghai
    assert codes(attempt(at=utc_0100)) == ()
    utc_1300 = dt.datetime(2026, 3, 2, 13, 0, tzinfo=dt.UTC)  # 21:00 in Shanghai
    assert codes(attempt(at=utc_1300)) == ("QUIET_HOURS",)


def test_holidays_have_no_outbound_at_all():
    assert codes(attempt(at=dt.datetime(2026, 10, 1, 10, 0, tzinfo=CST))) == ("QUIET_HOURS",)
    assert codes(attempt(at=dt.datetime(2026, 10, 2, 10, 0, tzinfo=CST))) == ()


# -- frequency ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("today", "week", "ok"), [(1, 4, True), (2, 2, False), (1, 5, False), (0, 4, True)])
def test_frequency_limits(today, week, ok):
    assert (codes(facts=facts(attempts_today=today, attempts_week=week)) == ()) is ok


def test_decision_serialises_to_the_check_json_contract():
    d = decide(attempt(caller_hidden=True), GOOD_FACTS, RULES)
    out = d.as_dict()
    assert out["decision"] == "deny" and out["hangup_cause"] == "CALL_REJECTED"
    assert out["reasons"] == [{"code": "CID_HIDDEN", "clause": "§3(3), §4(4)",
                               "message_zh": REASONS["CID_HIDDEN"].message_zh,
                               "message_en": REASONS["CID_HIDDEN"].message_en}]


def test_live_call_codes_are_in_the_contract():
    assert {"RECORDING_UNAVAILABLE", "CID_ALTERED", "POLICY_UNAVAILABLE"} <= set(REASONS)
    d = decide(GOOD, GOOD_FACTS, RULES).with_codes("RECORDING_UNAVAILABLE")
    assert not d.allowed and d.codes == ("RECORDING_UNAVAILABLE",)


def test_naive_times_are_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        CallAttempt(tenant="acme", caller="95512", callee="13800138000", at=dt.datetime(2026, 3, 2, 10))
