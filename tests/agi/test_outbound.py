"""The outbound route end to end: simulated Asterisk -> FastAGI server -> store, and back via AMI.

Each test runs on SQLite and on PostgreSQL (the ``seeded_url`` fixture). Decisions use an
injected clock (Monday 10:00 China time), never the wall clock.
"""

from __future__ import annotations

import datetime as dt

import pytest
from structlog.testing import capture_logs

from callwarden.policy import reason
from tests.agi.harness import (
    CALLER,
    CAMPAIGN,
    CONSENTED,
    CST,
    REFUSED,
    TENANT,
    TRUNK,
    fixed_clock,
    record_like_mixmonitor,
    rig,
    run,
)


def test_allowed_call_is_recorded_and_its_cdr_completed(make_settings, seeded_url, tmp_path) -> None:
    async def body() -> None:
        with capture_logs() as logs:
            async with rig(make_settings, seeded_url) as r:
                written = record_like_mixmonitor(r.pbx)
                call = r.outbound_call()
                result = await call.run(agi_port=r.port, talk_time=1.1)
                v = result.variables
                assert (result.status, v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == \
                    ("SUCCESS", "allow", "")
                assert v["CALLWARDEN_ENFORCED"] == "yes" and "CALLWARDEN_HANGUPCAUSE" not in v
                assert call.c1 is not None, "the dialplan went on to Dial"
                row = await r.wait_ended(call.spec.uniqueid2)
                assert v["CALLWARDEN_CALL_ID"] == row.call_id
                # MixMonitor wrote into the spool area, at the path the enforcer chose
                assert v["MIXMONITOR_FILENAME"] == str(written[0])
                assert written[0].is_relative_to(tmp_path / "rec" / "spool" / TENANT)
                # completed from the Cdr events: answered, billable seconds, disposition
                assert (row.decision, row.disposition, row.hangup_cause) == \
                    ("allow", "ANSWERED", "NORMAL_CLEARING")
                assert row.answered_at is not None and row.billsec >= 1
                assert row.ended_at >= row.answered_at
                rec = await r.wait_for(lambda: (x := r.recording_row(row)) and x.status == "stored" and x,
                                       what="the recording to be finalized")
                assert rec.size > 44 and len(rec.sha256) == 64 and not written[0].exists()
                assert r.audit_actions(row.call_id) == ["decision", "call_ended", "recording_stored"]
                # the dialplan's own caller-ID Set before the AGI is not a change
                assert not r.ami.actions_named("Hangup") and not r.ami.actions_named("Getvar")
        calls = [e for e in logs if e["event"] == "agi_call"]
        assert len(calls) == 1
        e = calls[0]
        assert (e["route"], e["tenant"], e["decision"], e["reasons"]) == ("outbound", TENANT, "allow", [])
        assert e["callee"] == "138****8000" and CONSENTED not in str(e)
        assert e["caller"] == CALLER  # a published service number is not personal data
        assert e["decision_ms"] > 0 and e["session_ms"] >= e["decision_ms"]

    run(body())


DENIALS = [
    # (why, call spec overrides, clock, expected first reason)
    ("unknown tenant", {"tenant": "nobody"}, None, "TENANT_UNKNOWN"),
    ("no tenant variable", {"tenant": None}, None, "TENANT_UNKNOWN"),
    ("subscriber number as caller ID", {"caller": "13912345678"}, None, "CID_USER_NUMBER"),
    ("number with digits added", {"caller": "9551201"}, None, "CID_NOT_REGISTERED"),
    ("inbound-only number", {"caller": "4008001234"}, None, "NUMBER_INBOUND_ONLY"),
    ("another tenant's number", {"caller": "01058001234"}, None, "CID_OTHER_TENANT"),
    ("another tenant's trunk", {"trunk": "cm-trunk-9"}, None, "TRUNK_UNVERIFIED"),
    ("unknown campaign", {"campaign": "no-such-campaign"}, None, "CAMPAIGN_NOT_APPROVED"),
    ("campaign held for review", {"campaign": "spring-promo"}, None, "CAMPAIGN_NOT_APPROVED"),
    ("callee refused", {"callee": REFUSED}, None, "CALLEE_REFUSED"),
    ("no consent", {"callee": "13600136000"}, None, "NO_CONSENT"),
    ("quiet hours", {}, dt.datetime(2026, 3, 2, 22, 30, tzinfo=CST), "QUIET_HOURS"),
]


@pytest.mark.parametrize("why, spec, when, code", DENIALS, ids=[d[0] for d in DENIALS])
def test_each_denial_is_hung_up_with_its_cause(make_settings, seeded_url, why, spec, when, code) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, clock=fixed_clock(when) if when else None) as r:
            call = r.outbound_call(**spec)
            result = await call.run(agi_port=r.port, talk_time=0.05)
            v = result.variables
            reasons = v["CALLWARDEN_REASONS"].split(",")
            cause = reason(reasons[0]).cause_code
            assert code in reasons and v["CALLWARDEN_DECISION"] == "deny"
            # the server hung the channel up itself, with the deciding reason's Q.850 cause
            assert (result.status, result.hangup_source, result.hangup_cause) == ("HANGUP", "agi", cause)
            assert v["CALLWARDEN_HANGUPCAUSE"] == str(cause) and v["CALLWARDEN_ENFORCED"] == "yes"
            assert any(c == f"EXEC Hangup \"{cause}\"" for c in result.commands)
            assert not any(c.startswith("EXEC MixMonitor") for c in result.commands)
            assert call.c1 is None, "a denied call must never be dialled"
            row = await r.wait_ended(call.spec.uniqueid2)
            assert (row.decision, row.reasons, row.recording_id) == ("deny", v["CALLWARDEN_REASONS"], None)
            assert row.disposition == "NO ANSWER" and row.billsec == 0
            assert row.hangup_cause == reason(reasons[0]).cause_name  # from AMI's Hangup event

    run(body())


def test_hidden_caller_id_presentation_is_denied(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            for pres in ("prohib_not_screened", "unavailable"):
                result = await r.agi_call(callerid_pres=pres).run(timeout=10)
                assert result.variables["CALLWARDEN_REASONS"].startswith("CID_HIDDEN")
                assert (result.hangup_source, result.hangup_cause) == ("agi", 21)
            result = await r.agi_call(callerid_num=None).run(timeout=10)  # no caller ID at all
            assert result.variables["CALLWARDEN_REASONS"].startswith("CID_HIDDEN")

    run(body())


def test_observe_mode_lets_a_denied_call_through_recorded_and_stored_as_deny(
        make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, mode="observe") as r:
            written = record_like_mixmonitor(r.pbx)
            # the simulator's dialplan blocks on CALLWARDEN_ENFORCED=yes (the snippet's logic)
            call = r.outbound_call(callee=REFUSED, decision_variable="CALLWARDEN_ENFORCED",
                                   block_value="yes")
            result = await call.run(agi_port=r.port, talk_time=0.05)
            v = result.variables
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_ENFORCED"]) == ("deny", "no")
            assert "CALLEE_REFUSED" in v["CALLWARDEN_REASONS"].split(",")
            assert result.hangup_source != "agi" and call.c1 is not None, "the call was dialled"
            assert len(written) == 1, "and recorded"
            row = await r.wait_ended(call.spec.uniqueid2)
            assert (row.decision, row.enforced, row.disposition) == ("deny", False, "ANSWERED")
            assert "CALLEE_REFUSED" in row.reasons and row.recording_id is not None

    run(body())


def test_mixmonitor_failure_denies_recording_unavailable_and_hangs_up(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            call = r.outbound_call()
            call.agi_kwargs["mixmonitor_fails"] = True
            result = await call.run(agi_port=r.port, talk_time=0.05)
            v = result.variables
            cause = reason("RECORDING_UNAVAILABLE").cause_code
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == ("deny", "RECORDING_UNAVAILABLE")
            assert (result.hangup_source, result.hangup_cause) == ("agi", cause)
            assert call.c1 is None
            row = await r.wait_ended(call.spec.uniqueid2)
            assert (row.decision, row.reasons) == ("deny", "RECORDING_UNAVAILABLE")
            assert r.recording_row(row).status == "failed"
            assert r.audit_actions(row.call_id)[:2] == ["decision", "recording_failed"]

    run(body())


def test_caller_hanging_up_mid_conversation_is_handled(make_settings, seeded_url) -> None:
    """Asterisk's unsolicited HANGUP line arrives between a command and its reply: the
    conversation must stay in step, and nothing may be dialled or recorded on a dead channel."""

    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            early = r.agi_call()
            early.far_end_hangup()  # HANGUP comes before the reply to the first command
            result = await early.run(timeout=10)
            assert result.hangup_sent >= 1 and result.server_closed and not result.timed_out
            assert result.commands[0].startswith("GET FULL VARIABLE")
            # the route noticed the hangup and made no decision for a call that cannot happen
            assert not any(c.startswith(("EXEC", "SET")) for c in result.commands)
            assert r.call_row(early.channel.uniqueid) is None
            # after the decision: the HANGUP line comes with MixMonitor's reply, so the call
            # (which can no longer go out) is stored as denied RECORDING_UNAVAILABLE
            late = r.agi_call(far_end_hangup_after_commands=1)
            result = await late.run(timeout=10)
            v = result.variables
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == ("deny", "RECORDING_UNAVAILABLE")
            assert result.commands[1].startswith("EXEC MixMonitor")
            assert not any(c.startswith("EXEC Hangup") for c in result.commands)  # already gone
            row = r.call_row(late.channel.uniqueid)
            assert (row.call_id, row.decision) == (v["CALLWARDEN_CALL_ID"], "deny")
            assert r.adapter.agi.active == 0

    run(body())


def test_route_failure_goes_through_the_single_failure_path(make_settings, seeded_url) -> None:
    """A tenant id that cannot name a recording path makes the enforcer raise in observe mode:
    the failure path denies POLICY_UNAVAILABLE and hangs up (fail closed), and logs it once."""

    async def body() -> None:
        with capture_logs() as logs:
            async with rig(make_settings, seeded_url, mode="observe") as r:
                result = await r.agi_call(variables={"CALLWARDEN_TENANT": "../etc"}).run(timeout=10)
        v = result.variables
        assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == ("deny", "POLICY_UNAVAILABLE")
        assert (result.hangup_source, result.hangup_cause) == ("agi", 41)
        failures = [e for e in logs if e["event"] == "agi_route_failed"]
        assert len(failures) == 1 and failures[0]["error"] == "ValueError"
        assert [e["decision"] for e in logs if e["event"] == "agi_call"] == ["deny"]

    run(body())


def test_unknown_route_sets_nothing_and_closes(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            result = await r.agi_call("does-not-exist").run(timeout=10)
            assert result.status == "SUCCESS" and result.server_closed and not result.commands
            assert "CALLWARDEN_DECISION" not in result.variables  # the dialplan fails closed
            result = await r.agi_call(request_url=f"agi://127.0.0.1:{r.port}").run(timeout=10)
            assert result.server_closed and not result.commands  # URL without a path
            # the query string is not part of the route name (agi_network_script keeps it)
            result = await r.agi_call("outbound?lead=7").run(timeout=10)
            assert result.variables["CALLWARDEN_DECISION"] == "allow"

    run(body())


def test_channel_values_are_read_in_one_round_trip(make_settings, seeded_url) -> None:
    """Six channel values in one GET FULL VARIABLE; a value holding the separator makes the
    route read them one by one rather than trust a split that cannot be right."""

    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            result = await r.agi_call().run(timeout=10)
            assert result.variables["CALLWARDEN_DECISION"] == "allow"
            assert result.commands[0] == (
                'GET FULL VARIABLE "${CALLWARDEN_TENANT}|~|${CALLWARDEN_TRUNK}|~|'
                '${CALLWARDEN_CAMPAIGN}|~|${CALLWARDEN_PURPOSE}|~|${CALLERID(num)}|~|'
                '${CALLERPRES()}"')
            assert [c.split(" ", 2)[:2] for c in result.commands[1:]] == [
                ["EXEC", "MixMonitor"], ["EXEC", "MSet"], ["GET", "FULL"]]

            odd = r.agi_call(variables={"CALLWARDEN_CAMPAIGN": "renewals|~|x"})
            result = await odd.run(timeout=10)
            assert result.commands[0].startswith("GET FULL VARIABLE")
            assert result.commands[1:7] == [
                "GET VARIABLE CALLWARDEN_TENANT", "GET VARIABLE CALLWARDEN_TRUNK",
                "GET VARIABLE CALLWARDEN_CAMPAIGN", "GET VARIABLE CALLWARDEN_PURPOSE",
                "GET VARIABLE CALLERID(num)", "GET VARIABLE CALLERPRES()"]
            assert r.call_row(odd.channel.uniqueid).campaign == "renewals|~|x"

    run(body())


#: The arguments the shipped subroutine passes after the callee.
def passed(tenant: str = TENANT, trunk: str = TRUNK, campaign: str = CAMPAIGN,
           purpose: str = "") -> tuple[str, ...]:
    return (f"tenant={tenant}", f"trunk={trunk}", f"campaign={campaign}", f"purpose={purpose}")


def test_values_passed_as_arguments_spare_the_read(make_settings, seeded_url) -> None:
    """With the four values in the AGI arguments (the shipped subroutine's form) a recorded
    call takes three commands, none of them a read of the values; the arguments, not the
    channel variables, are what the decision and the call row hold, and the caller ID and its
    presentation are the environment's."""

    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            stale = {"CALLWARDEN_TENANT": "nobody", "CALLWARDEN_CAMPAIGN": "stale"}
            call = r.agi_call(args=(CONSENTED, *passed(purpose="notification")), variables=stale)
            result = await call.run(timeout=10)
            assert result.variables["CALLWARDEN_DECISION"] == "allow"
            assert [c.split(" ", 2)[:2] for c in result.commands] == [
                ["EXEC", "MixMonitor"], ["EXEC", "MSet"], ["GET", "FULL"]]
            row = r.call_row(call.channel.uniqueid)
            assert (row.tenant_id, row.trunk, row.campaign, row.purpose) == (
                TENANT, TRUNK, CAMPAIGN, "notification")
            assert row.caller == CALLER

            # an empty value is an unset one, as when read: no campaign
            call = r.agi_call(args=(CONSENTED, *passed(campaign="")))
            result = await call.run(timeout=10)
            assert len(result.commands) == 3
            assert r.call_row(call.channel.uniqueid).campaign is None

            hidden = await r.agi_call(args=(CONSENTED, *passed()),
                                      callerid_pres="prohib_not_screened").run(timeout=10)
            assert hidden.variables["CALLWARDEN_REASONS"].startswith("CID_HIDDEN")
            assert not any(c.startswith("GET FULL VARIABLE \"${CALLWARDEN_TENANT}")
                           for c in hidden.commands)
            no_cid = await r.agi_call(args=(CONSENTED, *passed()), callerid_num=None).run(timeout=10)
            assert no_cid.variables["CALLWARDEN_REASONS"].startswith("CID_HIDDEN")

    run(body())


#: The subroutine's arguments, but naming a campaign the channel does not: trusting them
#: would show in the call row.
OTHER = passed(campaign="other")


@pytest.mark.parametrize("args", [
    OTHER[:3],                                    # one missing
    (*OTHER[:2], "campaign=a", "b", OTHER[3]),    # a value Asterisk split at a comma
    ("tennant=" + TENANT, *OTHER[1:]),            # a key it does not know
    (*OTHER, "campaign=x"),                       # one key twice
    (*OTHER, "lead=7"),                           # something after them
    ("", *OTHER),                                 # an empty argument first
    ("tenant", *OTHER[1:]),                       # no '='
])
def test_arguments_not_exactly_the_subroutines_are_not_trusted(make_settings, seeded_url,
                                                               args) -> None:
    """Anything but exactly the four keys, once each, is ignored whole: the values are read
    from the channel (one round trip, as without arguments) and a warning says why."""

    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            with capture_logs() as logs:
                call = r.agi_call(args=(CONSENTED, *args))
                result = await call.run(timeout=10)
            assert result.commands[0].startswith('GET FULL VARIABLE "${CALLWARDEN_TENANT}')
            assert result.variables["CALLWARDEN_DECISION"] == "allow"
            assert r.call_row(call.channel.uniqueid).campaign == CAMPAIGN
            assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
                "agi_arguments_not_used"]

    run(body())


def test_results_go_out_in_one_mset_checked_by_one_read_back(make_settings, seeded_url) -> None:
    """Four commands for a recorded call: the values, MixMonitor, one ``EXEC MSet`` for every
    result variable and one ``GET FULL VARIABLE`` that reads them all back together with
    ``MIXMONITOR_FILENAME``. A deny with several reasons carries its commas through MSet's
    comma-separated argument (escaped) and reads back whole; then the hangup."""

    async def body() -> None:
        when = dt.datetime(2026, 3, 2, 22, 30, tzinfo=CST)  # quiet hours, and no consent
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            result = await r.agi_call().run(timeout=10)
            v = result.variables
            assert len(result.commands) == 4 and result.commands[1].startswith("EXEC MixMonitor")
            mset, readback = result.commands[2:]
            assert mset == (f'EXEC MSet "CALLWARDEN_DECISION=allow,CALLWARDEN_REASONS=,'
                            f'CALLWARDEN_CALL_ID={v["CALLWARDEN_CALL_ID"]},CALLWARDEN_ENFORCED=yes"')
            assert readback == ('GET FULL VARIABLE "${CALLWARDEN_DECISION}|~|${CALLWARDEN_REASONS}|~|'
                                '${CALLWARDEN_CALL_ID}|~|${CALLWARDEN_ENFORCED}|~|${MIXMONITOR_FILENAME}"')
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_ENFORCED"]) == ("allow", "yes")
            assert v["MIXMONITOR_FILENAME"].endswith(".wav") and v["CALLWARDEN_REASONS"] == ""
        async with rig(make_settings, seeded_url, with_ami=False, clock=fixed_clock(when)) as r:
            call = r.agi_call(args=("13600136000",))
            result = await call.run(timeout=10)
            v = result.variables
            assert {"QUIET_HOURS", "NO_CONSENT"} <= set(v["CALLWARDEN_REASONS"].split(","))
            assert [c.split(" ", 2)[:2] for c in result.commands[1:]] == [
                ["EXEC", "MSet"], ["GET", "FULL"], ["EXEC", "Hangup"]]
            assert "\\\\," in result.commands[1]  # the comma inside a value, escaped twice
            assert r.call_row(call.channel.uniqueid).reasons == v["CALLWARDEN_REASONS"]

    run(body())


def _mset_without_escapes(call):  # noqa: ANN001, ANN202
    """An MSet that splits on every comma, ignoring backslashes: a PBX whose parser differs."""

    async def mset(data: str) -> int:
        for entry in data.split(","):
            name, sep, value = entry.partition("=")
            if sep:
                call.pbx.set_variable(call.channel, name, value)
        return 0

    return mset


@pytest.mark.parametrize("pbx", ["no MSet application", "MSet parsing differently"])
def test_results_are_set_one_by_one_when_mset_cannot_be_trusted(make_settings, seeded_url,
                                                                  pbx) -> None:
    """Without MSet (``result=-2``), or with one whose results read back wrong, every result
    variable is set again with SET VARIABLE: the dialplan finds exactly the decision."""

    async def body() -> None:
        when = dt.datetime(2026, 3, 2, 22, 30, tzinfo=CST)
        async with rig(make_settings, seeded_url, with_ami=False, clock=fixed_clock(when)) as r:
            call = r.agi_call(args=("13600136000",))
            if pbx == "no MSet application":
                del call.apps["mset"]
            else:
                call.apps["mset"] = _mset_without_escapes(call)
            result = await call.run(timeout=10)
            v = result.variables
            assert {"QUIET_HOURS", "NO_CONSENT"} <= set(v["CALLWARDEN_REASONS"].split(","))
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_ENFORCED"]) == ("deny", "yes")
            sets = [c.split(" ")[2] for c in result.commands if c.startswith("SET VARIABLE")]
            assert sets == ["CALLWARDEN_DECISION", "CALLWARDEN_REASONS", "CALLWARDEN_CALL_ID",
                            "CALLWARDEN_ENFORCED", "CALLWARDEN_HANGUPCAUSE"]
            assert result.commands[-1].startswith("EXEC Hangup")
            assert (result.hangup_source, v["CALLWARDEN_HANGUPCAUSE"]) == ("agi", str(result.hangup_cause))

    run(body())


def test_a_stale_mixmonitor_filename_turns_the_published_allow_into_a_deny(
        make_settings, seeded_url) -> None:
    """MIXMONITOR_FILENAME is read with the results: if it names another file (MixMonitor did
    not take ours), the allow already set is replaced by RECORDING_UNAVAILABLE and the channel
    hung up before the dialplan can read anything."""

    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            call = r.agi_call()

            async def stale_mixmonitor(data: str) -> int:
                r.pbx.set_variable(call.channel, "MIXMONITOR_FILENAME", "/var/spool/old.wav")
                return 0

            call.apps["mixmonitor"] = stale_mixmonitor
            result = await call.run(timeout=10)
            v = result.variables
            assert (v["CALLWARDEN_DECISION"], v["CALLWARDEN_REASONS"]) == ("deny", "RECORDING_UNAVAILABLE")
            assert [c.split(" ", 2)[:2] for c in result.commands[1:]] == [
                ["EXEC", "MixMonitor"], ["EXEC", "MSet"], ["GET", "FULL"], ["EXEC", "MSet"],
                ["GET", "FULL"], ["EXEC", "Hangup"]]
            assert result.hangup_source == "agi"
            row = r.call_row(call.channel.uniqueid)
            assert (row.decision, row.reasons) == ("deny", "RECORDING_UNAVAILABLE")

    run(body())
