"""The shipped dialplan (config/freeswitch/dialplan_callwarden.xml) fails closed.

Checked two ways: its structure (what must come before ``socket``, that only the gate bridges),
and its behaviour, by running it through a small model of FreeSWITCH's XML dialplan (first
matching extension wins; conditions ANDed, ``break="on-false"``; ``${var}`` expanded when an
action runs; ``$1`` from the condition's regex; ``socket`` either fails to connect and returns,
or ends as callwarden ended it: ``resume`` (the dialplan goes on), or no ``resume`` (FreeSWITCH
hangs up unless ``socket_resume`` is true)). The last test feeds it the variables the real
adapter set on real (simulated) calls.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.conftest import ROOT
from tests.esl.conftest import CONSENTED, REFUSED, EslRig, profile

DIALPLAN = ROOT / "config" / "freeswitch" / "dialplan_callwarden.xml"
EVENT_SOCKET = ROOT / "config" / "freeswitch" / "event_socket.conf.xml"
Socket = Callable[[dict[str, str]], str]  # callwarden's part: "unreachable" | "resume" | "gone"


@dataclass
class Outcome:
    ended: str  # bridged | hung_up | callwarden_hung_up
    detail: str = ""
    extensions: list[str] = field(default_factory=list)


class Dialplan:
    def __init__(self, path=DIALPLAN):
        root = ET.parse(path).getroot()
        self.contexts = {c.get("name"): c.findall("extension") for c in root.iter("context")}

    def hunt(self, context: str, dest: str, variables: dict[str, str]):
        for ext in self.contexts.get(context, []):  # a context not in the file: the site's own
            actions, ok = [], True
            for cond in ext.findall("condition"):
                field_ = cond.get("field")
                value = dest if field_ == "destination_number" else _expand(field_, variables)
                m = re.search(cond.get("expression"), value)
                if not m:
                    ok = False
                    break
                actions += [(a.get("application"), a.get("data") or "", m) for a in cond.findall("action")]
            if ok:
                return ext.get("name"), actions
        return None, []

    def run(self, dest: str, variables: dict[str, str], socket: Socket, context: str = "callwarden") -> Outcome:
        out = Outcome("hung_up", "NO_ROUTE_DESTINATION")
        for _ in range(5):  # transfers
            name, actions = self.hunt(context, dest, variables)
            if name is None:
                return out
            out.extensions.append(name)
            for app, raw, match in actions:
                data = _expand(_captures(raw, match), variables)
                if app == "set":
                    key, _, value = data.partition("=")
                    variables[key] = value
                elif app == "unset":
                    variables.pop(data, None)
                elif app == "socket":
                    assert data.endswith("async full")
                    ended = socket(variables)
                    if ended == "callwarden_hung_up":
                        return Outcome("callwarden_hung_up", extensions=out.extensions)
                    if ended == "gone" and variables.get("socket_resume") != "true":
                        return Outcome("hung_up", "socket closed without resume", out.extensions)
                elif app == "transfer":
                    dest, _, rest = data.partition(" ")
                    context = rest.split()[-1]
                    break
                elif app == "bridge":
                    return Outcome("bridged", data, out.extensions)
                elif app == "hangup":
                    return Outcome("hung_up", data, out.extensions)
            else:
                return Outcome("hung_up", "end of dialplan", out.extensions)
        raise AssertionError("transfer loop")


def _captures(text: str, match: re.Match[str]) -> str:
    return re.sub(r"\$(\d)", lambda g: match.group(int(g.group(1))) or "", text)


def _expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: variables.get(m.group(1), ""), text)


def unreachable(_v: dict[str, str]) -> str:
    return "unreachable"  # `socket` logs "Socket Error!" and returns; nothing was set


def callwarden(**sets: str) -> Socket:
    """callwarden sets variables, then ends the session as given by ``end``."""
    end = sets.pop("end", "resume")

    def run(variables: dict[str, str]) -> str:
        variables.update(sets)
        return end

    return run


OUTBOUND = "13800138000"


@pytest.mark.parametrize(("socket", "stale", "expected"), [
    (unreachable, {}, "hung_up"),
    (unreachable, {"callwarden_decision": "allow", "callwarden_enforced": "no"}, "hung_up"),
    (callwarden(callwarden_decision="allow", callwarden_enforced="yes"), {}, "bridged"),
    (callwarden(callwarden_decision="deny", callwarden_enforced="no"), {}, "bridged"),  # observe
    (callwarden(callwarden_decision="deny", callwarden_enforced="yes"), {}, "hung_up"),
    (callwarden(callwarden_decision="deny", end="callwarden_hung_up"), {}, "callwarden_hung_up"),
    (callwarden(callwarden_decision="allow", end="gone"), {}, "hung_up"),  # died before resume
    (callwarden(callwarden_decision="allow", end="gone"), {"socket_resume": "true"}, "hung_up"),
    (callwarden(callwarden_decision="ALLOW"), {}, "hung_up"),
    (callwarden(callwarden_decision="allowed"), {}, "hung_up"),
    (callwarden(callwarden_enforced="no"), {}, "hung_up"),
    (callwarden(), {}, "hung_up"),  # resumed without a decision
], ids=lambda v: getattr(v, "__name__", None) if callable(v) else None)
def test_outbound_is_bridged_only_on_callwardens_word(socket: Socket, stale: dict[str, str],
                                                     expected: str) -> None:
    outcome = Dialplan().run(OUTBOUND, dict(stale), socket)
    assert outcome.ended == expected, outcome
    if expected == "hung_up" and outcome.extensions[-1] == "callwarden_fail_closed":
        assert outcome.detail == "NORMAL_TEMPORARY_FAILURE"
    if expected == "bridged":
        assert outcome.detail == f"sofia/gateway/ct-trunk-1/{OUTBOUND}"


def test_inbound_goes_on_even_when_callwarden_is_down() -> None:
    outcome = Dialplan().run("95512", {}, unreachable)
    # transferred on to the site's own context (XML default, not in this file)
    assert outcome.extensions == ["callwarden_inbound"] and outcome.detail == "NO_ROUTE_DESTINATION"
    gone = Dialplan().run("95512", {}, callwarden(end="gone"))
    assert gone.detail != "socket closed without resume"  # socket_resume=true for inbound


def test_structure() -> None:
    dp = Dialplan()
    out = {e.get("name"): e for e in dp.contexts["callwarden"]}["callwarden_outbound"]
    actions = [(a.get("application"), a.get("data")) for a in out.iter("action")]
    apps = [a for a, _ in actions]
    sock = apps.index("socket")
    cleared = {d for a, d in actions[:sock] if a == "unset"}
    assert {"callwarden_decision", "callwarden_enforced", "socket_resume"} <= cleared
    assert actions[sock][1].endswith(" async full")
    assert actions[sock + 1] == ("transfer", "$1 XML callwarden_gate") and len(actions) == sock + 2
    assert not any(a.get("continue") == "true" for a in out.iter("extension"))
    # Only the gate bridges, and only behind callwarden's variables.
    for name, extensions in dp.contexts.items():
        for ext in extensions:
            if any(a.get("application") == "bridge" for a in ext.iter("action")):
                assert name == "callwarden_gate"
                fields = {c.get("field"): c.get("expression") for c in ext.findall("condition")}
                assert fields.get("${callwarden_decision}") == "^allow$" or (
                    fields.get("${callwarden_enforced}") == "^no$"
                    and fields.get("${callwarden_decision}") == "^deny$")
    last = dp.contexts["callwarden_gate"][-1]
    assert last.get("name") == "callwarden_fail_closed"
    assert [a.get("application") for a in last.iter("action")][-1] == "hangup"


def test_event_socket_conf_keeps_the_listener_local() -> None:
    params = {p.get("name"): p.get("value") for p in ET.parse(EVENT_SOCKET).getroot().iter("param")}
    assert params["listen-ip"] == "127.0.0.1" and params["listen-port"] == "8021"
    assert params["apply-inbound-acl"] == "loopback.auto" and "password" in params


def test_the_real_adapters_variables_open_the_gate_only_for_allowed_calls(rig: EslRig) -> None:
    for callee, expected in ((CONSENTED, "bridged"), (REFUSED, "callwarden_hung_up")):
        _, result = rig.place(profile(callee=callee))
        set_vars = {k: v for k, v in result.variables_set.items() if v is not None}
        end = "resume" if result.resumed else ("callwarden_hung_up" if result.hung_up else "gone")
        outcome = Dialplan().run(callee, {}, callwarden(**set_vars, end=end))
        assert outcome.ended == expected, (callee, outcome)
