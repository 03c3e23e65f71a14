"""The shipped dialplan snippet fails closed: it is parsed and its logic evaluated here.

First with AGI results given directly (every way a decision can be missing or negative),
then with the AGI step performed by the Asterisk simulator against the real FastAGI server
(and against a closed port: AGI server down).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from callwarden.agi.routes import ROUTES
from callwarden.config.model import AgiConfig
from tests.agi.dialplan import (
    Unsupported,
    arun_subroutine,
    evaluate,
    parse,
    run_subroutine,
    substitute,
)
from tests.agi.harness import (
    CALLER,
    CAMPAIGN,
    CONSENTED,
    REFUSED,
    TENANT,
    TRUNK,
    free_port,
    rig,
    run,
)
from tests.sim.asterisk import AgiCall, Channel, Pbx

SNIPPET = Path(__file__).resolve().parents[2] / "config" / "asterisk" / "extensions_callwarden.conf"
CONTEXTS = parse(SNIPPET)


def agi_result(**variables: str):
    """An AGI step that ends with these channel variables (AGISTATUS included)."""

    def agi(url: str, args: list[str], channel: dict[str, str]) -> dict[str, str]:
        return dict(variables)

    return agi


def outbound(agi, **channel: str):
    return run_subroutine(CONTEXTS["callwarden-outbound"], args=[CONSENTED], channel=channel, agi=agi)


def test_snippet_has_the_three_contexts_pointing_at_registered_routes() -> None:
    assert set(CONTEXTS) == {"callwarden-outbound", "callwarden-inbound", "callwarden-optout"}
    for name, steps in CONTEXTS.items():
        urls = [s.data.split(",")[0] for s in steps if s.app == "AGI"]
        assert urls == [f"agi://127.0.0.1:{AgiConfig().port}/{name.removeprefix('callwarden-')}"]
        assert name.removeprefix("callwarden-") in ROUTES


@pytest.mark.parametrize("agi, channel, cause", [
    # AGI server down: Asterisk sets AGISTATUS=FAILURE and carries on
    (agi_result(AGISTATUS="FAILURE"), {}, "41"),
    # ... even when a stale allow is on the channel from an earlier run
    (agi_result(AGISTATUS="FAILURE"), {"CALLWARDEN_DECISION": "allow", "CALLWARDEN_ENFORCED": "no"},
     "41"),
    # the server closed without a decision (bad peer drop, unknown route, crash)
    (agi_result(AGISTATUS="SUCCESS"), {}, "41"),
    (agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION=""), {}, "41"),
    (agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="ALLOW "), {}, "41"),
    # the channel was hung up during the AGI
    (agi_result(AGISTATUS="HANGUP", CALLWARDEN_DECISION="allow"), {}, "41"),
    # a deny carries its cause; without one the call is still rejected
    (agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="deny", CALLWARDEN_ENFORCED="yes",
                CALLWARDEN_HANGUPCAUSE="52"), {}, "52"),
    (agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="deny"), {}, "21"),
    # observe mode lets a deny through only when the server says so explicitly
    (agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="deny", CALLWARDEN_ENFORCED=""), {}, "21"),
])
def test_outbound_fails_closed(agi, channel: dict[str, str], cause: str) -> None:
    outcome = outbound(agi, **channel)
    assert outcome.how == "hangup" and outcome.cause == cause, outcome.trace
    assert not outcome.proceeds


@pytest.mark.parametrize("agi", [
    agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="allow", CALLWARDEN_ENFORCED="yes"),
    agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="deny", CALLWARDEN_ENFORCED="no"),
])
def test_outbound_proceeds_on_allow_or_observed_deny(agi) -> None:
    outcome = outbound(agi)
    assert outcome.proceeds, outcome.trace
    # the values go as arguments too (unset ones empty), sparing callwarden a round trip
    assert outcome.agi_calls == [("agi://127.0.0.1:4573/outbound", [
        CONSENTED, "tenant=", "trunk=", "campaign=", "purpose="])]
    with_values = run_subroutine(CONTEXTS["callwarden-outbound"], args=[CONSENTED], agi=agi,
                                 channel={"CALLWARDEN_TENANT": TENANT, "CALLWARDEN_TRUNK": TRUNK,
                                          "CALLWARDEN_CAMPAIGN": "a,b"})
    assert with_values.agi_calls[0][1] == [  # Asterisk splits a value at its comma
        CONSENTED, f"tenant={TENANT}", f"trunk={TRUNK}", "campaign=a", "b", "purpose="]


@pytest.mark.parametrize("context, agi, channel, proceeds", [
    ("callwarden-inbound", agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="allow"), {}, True),
    ("callwarden-inbound", agi_result(AGISTATUS="FAILURE"), {}, False),
    ("callwarden-inbound", agi_result(AGISTATUS="SUCCESS"), {"CALLWARDEN_DECISION": "allow"}, False),
    ("callwarden-inbound", agi_result(AGISTATUS="SUCCESS", CALLWARDEN_DECISION="deny"), {}, False),
    ("callwarden-inbound", agi_result(AGISTATUS="FAILURE"),
     {"CALLWARDEN_INBOUND_ON_FAILURE": "continue"}, True),
    ("callwarden-optout", agi_result(AGISTATUS="SUCCESS", CALLWARDEN_OPTOUT="ok"), {}, True),
    ("callwarden-optout", agi_result(AGISTATUS="SUCCESS", CALLWARDEN_OPTOUT="failed"), {}, False),
    ("callwarden-optout", agi_result(AGISTATUS="SUCCESS", CALLWARDEN_OPTOUT="rejected"), {}, False),
    ("callwarden-optout", agi_result(AGISTATUS="FAILURE"), {"CALLWARDEN_OPTOUT": "ok"}, False),
])
def test_inbound_and_optout_gates(context: str, agi, channel: dict[str, str], proceeds: bool) -> None:
    outcome = run_subroutine(CONTEXTS[context], args=[CONSENTED], channel=channel, agi=agi)
    assert outcome.proceeds is proceeds, outcome.trace
    if not proceeds:
        assert outcome.how == "hangup" and outcome.cause == "41"


def test_interpreter_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_text("[c]\nexten => s,1,Dial(PJSIP/x)\n", encoding="utf-8")
    steps = parse(conf)["c"]
    with pytest.raises(Unsupported):
        run_subroutine(steps, args=[], channel={}, agi=agi_result())
    conf.write_text("[c]\nexten => s,1,NoOp(x) ; a comment\n same => n,Goto(x)\n", encoding="utf-8")
    with pytest.raises(Unsupported):
        run_subroutine(parse(conf)["c"], args=[], channel={}, agi=agi_result())
    assert evaluate('"a" = "a" & ("b" != "c" | "" = "x")') == "1"
    assert substitute("${IF($[\"${X}\" = \"\"]?21:${X})}", {"X": "52"}) == "52"


# -- the snippet around the real server ----------------------------------------------------------


def sim_agi(port: int, pbx: Pbx, callerid: str, route: str | None = None,
            seen: list[AgiCall] | None = None):
    """The AGI step performed by the Asterisk simulator on the snippet's channel variables
    (``route`` overrides the route in the snippet's URL; the port is the test server's; each
    AGI run is appended to ``seen``)."""

    async def agi(url: str, args: list[str], channel: dict[str, str]) -> dict[str, str]:
        chan = Channel(variables=dict(channel), callerid_num=callerid)
        call = AgiCall(port, script=route or url.rsplit("/", 1)[1], args=args, pbx=pbx,
                       channel=chan)
        result = await call.run(timeout=10)
        if seen is not None:
            seen.append(call)
        return {"AGISTATUS": result.status, **{k: v for k, v in result.variables.items()
                                               if k.startswith("CALLWARDEN_")}}

    return agi


def test_snippet_with_real_server(make_settings, seeded_url) -> None:
    base = {"CALLWARDEN_TENANT": TENANT, "CALLWARDEN_TRUNK": TRUNK, "CALLWARDEN_CAMPAIGN": CAMPAIGN}
    steps = CONTEXTS["callwarden-outbound"]

    async def body() -> None:
        async with rig(make_settings, seeded_url, with_ami=False) as r:
            seen: list[AgiCall] = []
            agi = sim_agi(r.port, r.pbx, CALLER, seen=seen)
            allowed = await arun_subroutine(steps, args=[CONSENTED], channel=base, agi=agi)
            assert allowed.proceeds, allowed.trace
            # the values came as arguments: MixMonitor, MSet, the read-back; nothing read first
            assert [c.split(" ", 2)[:2] for c in seen[-1].result.commands] == [
                ["EXEC", "MixMonitor"], ["EXEC", "MSet"], ["GET", "FULL"]]
            assert r.call_row(seen[-1].channel.uniqueid).campaign == CAMPAIGN
            # a value with a comma reaches callwarden split: it reads the channel instead
            odd = await arun_subroutine(steps, args=[CONSENTED], agi=agi,
                                        channel={**base, "CALLWARDEN_CAMPAIGN": "renewals,x"})
            assert not odd.proceeds and odd.variables["CALLWARDEN_REASONS"] == "CAMPAIGN_NOT_APPROVED"
            assert seen[-1].result.commands[0].startswith("GET FULL VARIABLE")
            assert r.call_row(seen[-1].channel.uniqueid).campaign == "renewals,x"
            # a dialled "number" carrying its own key (a quoted EXTEN keeps its comma through
            # Gosub) cannot choose the purpose: the subroutine's keys follow it, so one repeats
            # and the arguments are not taken
            forged = await arun_subroutine(steps, args=[f"{CONSENTED},purpose=callback"],
                                           channel=base, agi=agi)
            assert forged.proceeds, forged.trace
            assert seen[-1].result.commands[0].startswith("GET FULL VARIABLE")
            assert r.call_row(seen[-1].channel.uniqueid).purpose == "notification"  # the campaign's
            denied = await arun_subroutine(steps, args=[REFUSED], channel=base, agi=agi)
            assert denied.how == "hangup" and denied.variables["AGISTATUS"] == "HANGUP"
            unknown = sim_agi(r.port, r.pbx, CALLER, route="no-such-route")
            no_decision = await arun_subroutine(steps, args=[CONSENTED], channel=base, agi=unknown)
            assert (no_decision.how, no_decision.cause) == ("hangup", "41")
            assert no_decision.variables["AGISTATUS"] == "SUCCESS"
        down = sim_agi(free_port(), Pbx(), CALLER)  # nothing listens there: AGI server down
        server_down = await arun_subroutine(steps, args=[CONSENTED], channel=base, agi=down)
        assert (server_down.how, server_down.cause) == ("hangup", "41")
        assert server_down.variables["AGISTATUS"] == "FAILURE"

    run(body())
