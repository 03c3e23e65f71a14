"""The inbound and optout routes over the simulator (their AMI side is in test_ami.py)."""

from __future__ import annotations

from sqlalchemy import select

from callwarden.audit.pseudonym import number_digest
from callwarden.store.models import Refusal
from tests.agi.harness import CALLER, TENANT, free_port, rig, run

CALLEE = "13600136000"


def test_optout_stores_a_refusal_that_later_calls_obey(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            before = await r.agi_call(args=(CALLEE,)).run(timeout=10)
            assert "CALLEE_REFUSED" not in before.variables["CALLWARDEN_REASONS"]
            # IVR on an outbound call: the number dialled is the AGI argument
            out = await r.agi_call("optout", args=(CALLEE,), callerid_num=CALLER).run(timeout=10)
            assert out.variables["CALLWARDEN_OPTOUT"] == "ok" and not out.hung_up
            # the callee rang in: the caller ID is the number; storing it twice is fine
            again = await r.agi_call("optout", args=(), callerid_num="+86 136 0013 6000").run(timeout=10)
            assert again.variables["CALLWARDEN_OPTOUT"] == "ok"
            with r.enforcer.sessions() as s:
                rows = s.scalars(select(Refusal).where(Refusal.callee == CALLEE)).all()
            assert [(x.tenant_id, x.source) for x in rows] == [(TENANT, "asterisk-ivr")]
            # the subject is the number keyed with the audit key, never the number (issue 13)
            keyed = "h:" + number_digest(r.enforcer.audit_key, CALLEE)
            assert r.audit_actions(keyed) == ["refusal_added", "refusal_added"]
            assert r.audit_actions(CALLEE) == []
            after = await r.agi_call(args=(CALLEE,)).run(timeout=10)
            assert "CALLEE_REFUSED" in after.variables["CALLWARDEN_REASONS"].split(",")

    run(body())


def test_optout_without_tenant_or_number_is_rejected(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            no_tenant = await r.agi_call("optout", args=(CALLEE,),
                                         variables={"CALLWARDEN_TENANT": ""}).run(timeout=10)
            no_number = await r.agi_call("optout", args=(), callerid_num=None).run(timeout=10)
            for result in (no_tenant, no_number):
                assert result.variables["CALLWARDEN_OPTOUT"] == "rejected" and not result.hung_up

    run(body())


def test_store_down_optout_fails_and_inbound_is_not_hung_up(make_settings) -> None:
    """Only outbound hangs up on failure; inbound and opt-out report it and let the dialplan
    decide (the shipped snippet fails closed)."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/callwarden"

    async def body() -> None:
        async with rig(make_settings, url, with_ami=False, decision_timeout_ms=300) as r:
            out = await r.agi_call("optout", args=(CALLEE,)).run(timeout=10)
            assert out.variables["CALLWARDEN_OPTOUT"] == "failed" and not out.hung_up
            inbound = await r.agi_call("inbound", args=("95512",), callerid_num=CALLEE).run(timeout=10)
            v = inbound.variables
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == ("deny", "POLICY_UNAVAILABLE")
            assert not inbound.hung_up and inbound.status == "SUCCESS"

    run(body())


def test_inbound_call_is_logged_without_ami(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            agi = r.agi_call("inbound", args=("95512",), callerid_num=CALLEE)
            result = await agi.run(timeout=10)
            v = result.variables
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == ("allow", "")
            assert not any(c.startswith("EXEC MixMonitor") for c in result.commands)  # not configured
            row = r.call_row(agi.channel.uniqueid)
            assert (row.call_id, row.direction, row.party, row.recording_id) == \
                (v["CALLWARDEN_CALL_ID"], "inbound", CALLEE, None)
            assert r.audit_actions(row.call_id) == ["inbound"]

    run(body())
