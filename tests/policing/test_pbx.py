"""A suspension takes effect on the tenant's next call, through both PBX simulators.

The detector runs here as one node; the adapters are others (the FreeSWITCH one even in its own
process) that share only the store with it. On both backends: an allowed call, then a
telemarketing pattern in the store, one pass, and the very next call is denied TENANT_SUSPENDED
and hung up by callwarden; an administrator's resume lets calls through again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random

from callwarden.config import parse_settings
from callwarden.policing.runner import Detector
from callwarden.policy import reason
from callwarden.store.db import make_engine
from callwarden.store.registry import Registry
from tests.agi.harness import MONDAY_10AM, rig, run
from tests.esl.conftest import EslRig, make_rig, profile  # noqa: F401 - make_rig is a fixture
from tests.policing.helpers import insert_calls, session_for, telemarketing

TENANT, ACCESS = "acme", "95512"  # the seeded registry (config/registry.example.yaml)
SUSPENDED_CAUSE = reason("TENANT_SUSPENDED").cause_code


def dial_a_list(url: str, now: dt.datetime) -> None:
    """50 minutes of acme working through a generated list, as the CDRs show it."""
    insert_calls(url, telemarketing(TENANT, now - dt.timedelta(minutes=50), now - dt.timedelta(minutes=1),
                                    random.Random(81), access=ACCESS, first=13700000001))


def police_once(settings, now: dt.datetime) -> list[str]:  # type: ignore[no-untyped-def]
    detector = Detector(settings, engine=make_engine(settings.store.url))
    try:
        return detector.run_pass(now=now).suspended
    finally:
        detector.engine.dispose()


def resume(url: str) -> None:
    with session_for(url) as s:
        Registry(s, "admin").set_tenant_status(TENANT, "active", "lists purged, staff retrained")


def test_asterisk_next_call_after_suspension_is_hung_up(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            before = await r.outbound_call().run(agi_port=r.port, talk_time=0.05)
            assert before.variables["CALLWARDEN_DECISION"] == "allow", before.variables

            await asyncio.to_thread(dial_a_list, seeded_url, MONDAY_10AM)
            assert await asyncio.to_thread(police_once, r.settings, MONDAY_10AM) == [TENANT]

            call = r.outbound_call()
            result = await call.run(agi_port=r.port, talk_time=0.05)
            v = result.variables
            assert v["CALLWARDEN_DECISION"] == "deny" and v["CALLWARDEN_REASONS"] == "TENANT_SUSPENDED"
            assert (result.status, result.hangup_source, result.hangup_cause) == \
                ("HANGUP", "agi", SUSPENDED_CAUSE)
            assert call.c1 is None, "a suspended tenant's call must never be dialled"
            row = await r.wait_ended(call.spec.uniqueid2)
            assert row.decision == "deny" and row.reason_codes == ["TENANT_SUSPENDED"]

            await asyncio.to_thread(resume, seeded_url)
            after = await r.outbound_call().run(agi_port=r.port, talk_time=0.05)
            assert after.variables["CALLWARDEN_DECISION"] == "allow", after.variables
            # the next pass does not suspend it again for what it did before the resume
            assert await asyncio.to_thread(police_once, r.settings, MONDAY_10AM) == []

    run(body(), timeout=120)


def test_freeswitch_next_call_after_suspension_is_hung_up(make_rig) -> None:  # noqa: F811
    fs: EslRig = make_rig()
    _, before = fs.place(profile())
    assert before.variables_set["callwarden_decision"] == "allow"

    dial_a_list(fs.store_url, fs.at)
    settings = parse_settings({"store": {"url": fs.store_url}, "logging": {"format": "console"}})
    assert police_once(settings, fs.at) == [TENANT]

    call, result = fs.place(profile())
    v = result.variables_set
    assert v["callwarden_decision"] == "deny" and v["callwarden_reasons"] == "TENANT_SUSPENDED"
    assert result.hangup_cause == reason("TENANT_SUSPENDED").cause_name == v["callwarden_hangupcause"]
    assert result.hangup_source == "hangup_app" and not result.resume_sent and not result.recordings

    resume(fs.store_url)
    _, after = fs.place(profile())
    assert after.variables_set["callwarden_decision"] == "allow"
