"""The PBX side of FastAGI, as the shipped subroutine's ``AGI(agi://host:port/outbound,<callee>,
tenant=...,trunk=...,campaign=...,purpose=...)`` plays it: send the ``agi_*`` environment
block, then answer each command the server sends until it closes the connection. Just enough
of Asterisk for the demo's calls (channel variables, also several at once by
``GET FULL VARIABLE``, ``CALLERPRES()``, MixMonitor, Hangup)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shlex
import time
from dataclasses import dataclass, field

from callwarden.agi.routes.outbound import ARGUMENT_KEYS
from callwarden.demo.scenarios import Scenario

_ids = itertools.count(1)
MAX_LINE = 64 * 1024


@dataclass
class AgiOutcome:
    """What the FastAGI server did to the channel."""

    variables: dict[str, str] = field(default_factory=dict)  # set by the server
    mixmonitor: str | None = None  # file MixMonitor was started on
    hangup_cause: int | None = None  # the server hung the channel up with this cause
    commands: list[str] = field(default_factory=list)
    uniqueid: str = ""  # the channel's agi_uniqueid (the PBX call id callwarden stores)

    @property
    def decision(self) -> str | None:
        return self.variables.get("CALLWARDEN_DECISION")

    @property
    def reasons(self) -> list[str]:
        text = self.variables.get("CALLWARDEN_REASONS", "")
        return [code for code in text.split(",") if code]


async def agi_call(host: str, port: int, call: Scenario, timeout: float = 15.0) -> AgiOutcome:
    """One outbound call through the ``outbound`` route."""
    return await asyncio.wait_for(_run(host, port, call), timeout)


async def _run(host: str, port: int, call: Scenario) -> AgiOutcome:
    n = next(_ids)
    uniqueid = f"{int(time.time())}.{n}"
    channel = f"PJSIP/agent-{n:08x}"
    channel_vars = {"CALLWARDEN_TENANT": "acme", "CALLWARDEN_TRUNK": call.trunk,
                    "CALLERID(num)": call.caller,
                    "CALLERPRES()": "prohib_not_screened" if call.hidden else "allowed_not_screened"}
    if call.campaign:
        channel_vars["CALLWARDEN_CAMPAIGN"] = call.campaign
    if call.purpose:
        channel_vars["CALLWARDEN_PURPOSE"] = call.purpose
    env = {
        "agi_network": "yes", "agi_network_script": "outbound",
        "agi_request": f"agi://{host}:{port}/outbound", "agi_channel": channel,
        "agi_language": "en", "agi_type": "PJSIP", "agi_uniqueid": uniqueid,
        "agi_version": "22.10.1", "agi_callerid": call.caller, "agi_calleridname": "Agent",
        "agi_callingpres": "32" if call.hidden else "0", "agi_callingani2": "0",
        "agi_callington": "0", "agi_callingtns": "0", "agi_dnid": call.callee,
        "agi_rdnis": "unknown", "agi_context": "agents", "agi_extension": call.callee,
        "agi_priority": "5", "agi_enhanced": "0.0", "agi_accountcode": "",
        "agi_threadid": str(140000000000000 + n), "agi_arg_1": call.callee,
    }
    # what the shipped subroutine (config/asterisk/extensions_callwarden.conf) passes after
    # the callee: the channel's four values, so the server need not read them
    for n_arg, (key, name) in enumerate(ARGUMENT_KEYS.items(), 2):
        env[f"agi_arg_{n_arg}"] = f"{key}={channel_vars.get(name, '')}"
    outcome = AgiOutcome(uniqueid=uniqueid)
    reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
    try:
        writer.write("".join(f"{k}: {v}\n" for k, v in env.items()).encode() + b"\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                break  # the server is done with the channel
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            outcome.commands.append(command)
            writer.write((_answer(command, channel_vars, outcome) + "\n").encode())
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(writer.wait_closed(), 2)
    return outcome


def _answer(command: str, channel_vars: dict[str, str], outcome: AgiOutcome) -> str:
    """Asterisk's reply to one AGI command."""
    try:
        words = shlex.split(command)
    except ValueError:
        return "520 Invalid command syntax.  Proper usage not available."
    upper = [w.upper() for w in words[:2]]
    if upper == ["GET", "VARIABLE"] and len(words) == 3:
        name = words[2]
        value = outcome.variables.get(name, channel_vars.get(name))
        return "200 result=0" if value is None else f"200 result=1 ({value})"
    if upper == ["GET", "FULL"] and len(words) == 4 and words[2].upper() == "VARIABLE":
        def value_of(m: re.Match[str]) -> str:  # an unset variable expands to nothing
            return outcome.variables.get(m[1], channel_vars.get(m[1], ""))

        return f"200 result=1 ({re.sub(r'[$][{]([^}]*)[}]', value_of, words[3])})"
    if upper == ["SET", "VARIABLE"] and len(words) == 4:
        outcome.variables[words[2]] = words[3]
        return "200 result=1"
    if upper[:1] == ["EXEC"] and len(words) >= 2:
        app, data = words[1].lower(), words[2] if len(words) > 2 else ""
        if app == "mixmonitor":
            path = data.split(",")[0]
            outcome.mixmonitor = path
            outcome.variables["MIXMONITOR_FILENAME"] = path
            return "200 result=0"
        if app == "hangup":
            outcome.hangup_cause = int(data) if data.isdigit() else 16
            return "200 result=-1"
        return "200 result=-2"  # no such application
    if upper[:1] == ["HANGUP"]:
        if outcome.hangup_cause is None:
            outcome.hangup_cause = 16
        return "200 result=1"
    if upper[:1] in (["VERBOSE"], ["NOOP"]):
        return "200 result=1"
    return "510 Invalid or unknown command"
