"""Fidelity tests: the Asterisk simulator against the real captures in tests/sim/captures/asterisk.

The server side of each capture (what our FastAGI server / AMI client sent) is replayed against
the simulator over real TCP, and what the simulator answers must equal, byte for byte, what the
real Asterisk 22.10.1 answered. Values that legitimately differ (uniqueids, timestamps, command
ids, ports) are fed to the simulator from the capture itself.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import itertools
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .asterisk import (
    AMI_BANNER,
    AgiCall,
    AgiTiming,
    AmiServer,
    CallSpec,
    Channel,
    Hostile,
    OutboundCall,
    Pbx,
    parse_agi_args,
    parse_agi_args_by_char,
    separate_app_args,
)

TRACES = Path(__file__).resolve().parent / "captures" / "asterisk"
FAST = AgiTiming(env_split_pause=0.002, usage_pause=0.005, answer_delay=0.0, wait_scale=0.01)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    """Run one async test body; nothing may hang past ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------------------------------------
# Trace parsing
# ---------------------------------------------------------------------------------------------

AGI_LINE = re.compile(r"^\s*[\d.]+ (<<|>>) (?:RX|TX)\s+\d+ bytes: (b'.*')$")
RAW_LINE = re.compile(r"^\s*[\d.]+ (<<|>>) (b'.*')$")


@dataclass
class AgiTrace:
    """A FastAGI capture: the env block chunks, then (command, expected reply bytes) steps."""

    env_chunks: list[bytes]
    steps: list[tuple[bytes, bytes]]
    env: dict[str, str] = field(default_factory=dict)


def load_agi_trace(name: str) -> AgiTrace:
    chunks = []
    for line in (TRACES / name).read_text().splitlines():
        m = AGI_LINE.match(line)
        if m:
            chunks.append(("rx" if m.group(1) == "<<" else "tx", ast.literal_eval(m.group(2))))
    env_chunks: list[bytes] = []
    steps: list[tuple[bytes, bytes]] = []
    for direction, data in chunks:
        if direction == "tx":
            steps.append((data, b""))
        elif steps:
            steps[-1] = (steps[-1][0], steps[-1][1] + data)
        else:
            env_chunks.append(data)
    env = dict(line.split(": ", 1) for line in b"".join(env_chunks).decode().splitlines() if line)
    return AgiTrace(env_chunks, steps, env)


def channel_from_env(env: dict[str, str], **variables: str) -> Channel:
    """A simulated channel whose identity is the captured one."""
    return Channel(
        name=env["agi_channel"], uniqueid=env["agi_uniqueid"], context=env["agi_context"],
        exten=env["agi_extension"], priority=int(env["agi_priority"]),
        callerid_num="" if env["agi_callerid"] == "unknown" else env["agi_callerid"],
        callerid_name="" if env["agi_calleridname"] == "unknown" else env["agi_calleridname"],
        variables=dict(variables))


def agi_call_from_env(env: dict[str, str], port: int, **kwargs: Any) -> AgiCall:
    """An AgiCall that announces the captured request URL but connects to ``port``."""
    args = list(itertools.takewhile(bool, (env.get(f"agi_arg_{n}") for n in itertools.count(1))))
    kwargs.setdefault("channel", channel_from_env(env))
    kwargs.setdefault("timing", FAST)
    return AgiCall(port, request_url=env["agi_request"], args=args,
                   thread_id=int(env["agi_threadid"]), **kwargs)


def load_ami_raw(name: str) -> tuple[bytes, list[bytes], list[tuple[bytes, int]]]:
    """Raw AMI capture -> (banner, RX messages, [(TX bytes, RX messages seen before it)])."""
    rx = b""
    sends: list[tuple[bytes, int]] = []
    for line in (TRACES / name).read_text().splitlines():
        m = RAW_LINE.match(line)
        if not m:
            continue
        data = ast.literal_eval(m.group(2))
        if m.group(1) == "<<":
            rx += data
        else:
            banner_len = rx.index(b"\r\n") + 2
            sends.append((data, rx[banner_len:].count(b"\r\n\r\n")))
    banner, _, rest = rx.partition(b"\r\n")
    messages = [m + b"\r\n\r\n" for m in rest.split(b"\r\n\r\n") if m]
    return banner + b"\r\n", messages, sends


def load_ami_pretty(name: str) -> tuple[bytes, list[bytes], list[tuple[bytes, int]]]:
    """The ``[ t] <<`` / ``>> SENT`` rendering, same return shape as :func:`load_ami_raw`."""
    blocks: list[tuple[str, str, list[str]]] = []
    current: list[str] | None = None
    for line in (TRACES / name).read_text().split("\n"):
        m = re.match(r"\[\s*[\d.]+\] (<<|>>)(.*)$", line)
        if m:
            current = []
            blocks.append((m.group(1), m.group(2).strip(), current))
        elif current is not None:
            if line == "":
                if current:
                    current = None
            else:
                current.append(line)
    banner = b""
    messages: list[bytes] = []
    sends: list[tuple[bytes, int]] = []
    for direction, tag, lines in blocks:
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if tag == "BANNER":
            banner = lines[0].encode() + b"\r\n"
        elif direction == "<<":
            messages.append(data)
        else:
            sends.append((data, len(messages)))
    return banner, messages, sends


def header(message: bytes, key: str) -> str | None:
    m = re.search(rb"(?m)^" + key.encode() + rb": (.*)\r$", message)
    return m.group(1).decode() if m else None


# ---------------------------------------------------------------------------------------------
# Replaying the server side of a FastAGI capture against AgiCall
# ---------------------------------------------------------------------------------------------


class ReplayAgiServer:
    """A FastAGI server that sends a capture's TX lines and records what comes back."""

    def __init__(self, trace: AgiTrace, *, half_close: bool = False) -> None:
        self.trace, self.half_close = trace, half_close
        self.env = b""
        self.replies: list[bytes] = []
        self.after_close = b""
        self.done = asyncio.Event()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.env = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            for tx, expected in self.trace.steps:
                writer.write(tx)
                await writer.drain()
                self.replies.append(await asyncio.wait_for(reader.readexactly(len(expected)), 5))
            if self.half_close:
                writer.write_eof()
                self.after_close = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            self.done.set()


async def replay_agi(name: str, *, half_close: bool = False, **call_kwargs: Any) -> tuple[
        AgiTrace, ReplayAgiServer, Any]:
    trace = load_agi_trace(name)
    if half_close:  # what arrived after our write_eof() is checked separately
        tx, rx = trace.steps[-1]
        trace.steps[-1] = (tx, rx.removesuffix(b"HANGUP\n"))
    server = ReplayAgiServer(trace, half_close=half_close)
    port = await server.start()
    try:
        call = agi_call_from_env(trace.env, port, **call_kwargs)
        result = await call.run(timeout=10)
        await asyncio.wait_for(server.done.wait(), 5)
    finally:
        await server.stop()
    return trace, server, result


def assert_replayed(trace: AgiTrace, server: ReplayAgiServer, result: Any) -> None:
    """Env block (including its two-write split) and every reply equal the capture."""
    assert server.env == b"".join(trace.env_chunks)
    writes = [data for direction, data in result.wire if direction == "tx"]
    assert writes[:2] == trace.env_chunks
    assert server.replies == [expected for _, expected in trace.steps]


def full_session_channel() -> Channel:
    """The channel state the capture's dialplan had built before AGI() (Set steps)."""
    env = load_agi_trace("agi_outbound_full_session.txt").env
    chan = channel_from_env(env, CW_CAMPAIGN="camp42")
    chan.cdr["userfield"] = "cw-test"
    return chan


def test_agi_full_session_is_byte_exact() -> None:
    async def body() -> None:
        chan = full_session_channel()
        trace, server, result = await replay_agi("agi_outbound_full_session.txt", channel=chan)
        assert_replayed(trace, server, result)
        assert result.status == "SUCCESS" and result.dialplan_continues
        assert result.variables["CW_DECISION"] == "allow"
        assert result.variables["MIXMONITOR_FILENAME"].endswith("cw-1795480861.25.wav")
        assert chan.cdr["userfield"] == "cw-allowed"
        assert result.reply_to("EXEC NoSuchApplication foo") == "200 result=-2\n"

    run(body())


def test_agi_520_usage_arrives_in_two_segments() -> None:
    async def body() -> None:
        _, _, result = await replay_agi("agi_outbound_full_session.txt",
                                        channel=full_session_channel())
        writes = [data for direction, data in result.wire if direction == "tx"]
        head = writes.index(b"520-Invalid command syntax.  Proper usage follows:\n")
        assert writes[head + 1].endswith(b"\n520 End of proper usage.\n")

    run(body())


def test_agi_block_and_close_keeps_dialplan_running() -> None:
    async def body() -> None:
        trace, server, result = await replay_agi("agi_block_and_hangup.txt")
        assert_replayed(trace, server, result)
        assert trace.env["agi_calleridname"] == "unknown" and trace.env["agi_callingpres"] == "0"
        assert result.status == "SUCCESS" and result.dialplan_continues
        assert result.variables["CW_REASON"] == "dnc-listed"
        assert result.server_closed and result.hangup_sent == 1  # end-of-session HANGUP

    run(body())


def test_agi_far_end_hangup_mid_session() -> None:
    async def body() -> None:
        trace, server, result = await replay_agi(
            "agi_far_end_hangup_mid_session.txt", far_end_hangup_after_commands=2)
        assert_replayed(trace, server, result)
        assert trace.env["agi_callerid"] == "unknown" and trace.env["agi_callingpres"] == "67"
        assert result.status == "HANGUP" and not result.dialplan_continues
        assert result.hangup_source == "far_end"

    run(body())


def test_agi_far_end_hangup_with_agisighup_no() -> None:
    async def body() -> None:
        env = load_agi_trace("agi_far_end_hangup_agisighup_no.txt").env
        chan = channel_from_env(env, AGISIGHUP="no")
        trace, server, result = await replay_agi(
            "agi_far_end_hangup_agisighup_no.txt", channel=chan,
            far_end_hangup_after_commands=2)
        assert_replayed(trace, server, result)
        assert b"HANGUP\n" not in result.sent_bytes
        assert result.status == "HANGUP" and result.hangup_sent == 0

    run(body())


def test_agi_server_sends_hangup() -> None:
    async def body() -> None:
        trace, server, result = await replay_agi("agi_server_sends_hangup.txt")
        assert_replayed(trace, server, result)
        assert result.status == "HANGUP" and not result.dialplan_continues
        assert result.hangup_source == "agi" and result.hangup_cause == 0

    run(body())


def test_agi_unknown_command_510() -> None:
    async def body() -> None:
        trace, server, result = await replay_agi("agi_unknown_command_510.txt")
        assert_replayed(trace, server, result)

    run(body())


def test_agi_url_without_path() -> None:
    async def body() -> None:
        trace, server, result = await replay_agi("agi_url_without_path.txt")
        assert_replayed(trace, server, result)
        assert b"agi_network_script" not in server.env
        assert result.status == "SUCCESS"

    run(body())


def test_agi_server_half_close_gets_hangup_then_eof() -> None:
    async def body() -> None:
        trace, server, result = await replay_agi("agi_server_half_close.txt", half_close=True)
        assert_replayed(trace, server, result)
        assert server.after_close == b"HANGUP\n"  # then EOF: Asterisk closes after the server

    run(body())


def test_agi_connection_refused_is_failure() -> None:
    async def body() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        result = await AgiCall(port, script="nobody", args=["1001"]).run(timeout=5)
        assert result.status == "FAILURE" and not result.connected
        assert result.dialplan_continues  # fail-open unless the dialplan checks AGISTATUS

    run(body())


# ---------------------------------------------------------------------------------------------
# A minimal FastAGI server talking to AgiCall (how product tests use it)
# ---------------------------------------------------------------------------------------------

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]], Awaitable[None]]


class MiniFastAgi:
    """A tiny FastAGI server: parses the env block, then runs ``script``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.envs: list[dict[str, str]] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            env = dict(ln.split(": ", 1) for ln in raw.decode().splitlines() if ": " in ln)
            self.envs.append(env)
            await self.script(reader, writer, env)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()


async def command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: str) -> str:
    """Send one AGI command, return its whole reply (a 520 block is several lines)."""
    writer.write(line.encode() + b"\n")
    await writer.drain()
    reply = (await asyncio.wait_for(reader.readline(), 5)).decode()
    while reply == "HANGUP\n":  # unsolicited
        reply = (await asyncio.wait_for(reader.readline(), 5)).decode()
    while reply.startswith("520-") and not reply.endswith("520 End of proper usage.\n"):
        reply += (await asyncio.wait_for(reader.readline(), 5)).decode()
    return reply


def test_minimal_fastagi_server_drives_agicall() -> None:
    replies: dict[str, str] = {}

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        for line in ("GET VARIABLE CALLWARDEN_TENANT", "GET VARIABLE CALLERPRES()",
                     "GET VARIABLE CALLERID(num)", "GET FULL VARIABLE ${CALLERID(name)}",
                     "GET VARIABLE NOPE", "GET FULL VARIABLE ${NOPE}", "CHANNEL STATUS",
                     'SET VARIABLE CALLWARDEN_DECISION "allow with care"',
                     "SET VARIABLE CALLWARDEN_REASON two words", "set variable LOWER ok",
                     "GET VARIABLE CALLINGPRES", "EXEC MixMonitor cw-1.wav,b"):
            replies[line] = await command(reader, writer, line)

    async def body() -> None:
        async with MiniFastAgi(script) as port:
            call = AgiCall(port, script="callwarden?tenant=t1", args=["15557654321"],
                           variables={"CALLWARDEN_TENANT": "t1", "CALLWARDEN_TRUNK": "tr1"},
                           callerid_num="15551230000", callerid_name="Acme",
                           callerid_pres="prohib_not_screened", timing=FAST)
            result = await call.run(timeout=5)
        assert result.status == "SUCCESS"
        assert result.variables["CALLWARDEN_DECISION"] == "allow with care"
        assert "CALLWARDEN_REASON" not in result.variables  # unquoted spaces -> 520 usage
        assert result.variables["LOWER"] == "ok"
        assert result.variables["MIXMONITOR_FILENAME"] == "/var/spool/asterisk/monitor/cw-1.wav"

    run(body())
    assert replies == {
        "GET VARIABLE CALLWARDEN_TENANT": "200 result=1 (t1)\n",
        "GET VARIABLE CALLERPRES()": "200 result=1 (prohib_not_screened)\n",
        "GET VARIABLE CALLERID(num)": "200 result=1 (15551230000)\n",
        "GET FULL VARIABLE ${CALLERID(name)}": "200 result=1 (Acme)\n",
        "GET VARIABLE NOPE": "200 result=0\n",
        "GET FULL VARIABLE ${NOPE}": "200 result=1 ()\n",
        "CHANNEL STATUS": "200 result=4\n",
        'SET VARIABLE CALLWARDEN_DECISION "allow with care"': "200 result=1\n",
        "SET VARIABLE CALLWARDEN_REASON two words":  # unquoted value with spaces: argc != 4
            "520-Invalid command syntax.  Proper usage follows:\n"
            "Sets a variable to the current channel.\n520 End of proper usage.\n",
        "set variable LOWER ok": "200 result=1\n",
        "GET VARIABLE CALLINGPRES": "200 result=1 (32)\n",
        "EXEC MixMonitor cw-1.wav,b": "200 result=0\n",
    }


def test_env_block_for_no_callerid_and_split() -> None:
    call = AgiCall(4573, script=None, channel=Channel(name="PJSIP/t-00000001", uniqueid="1.2"))
    first, second = call.env_block()
    assert first.count(b"\n") == 17 and second.endswith(b"agi_threadid: 139766139414208\n\n")
    assert b"agi_request: agi://127.0.0.1:4573\n" in first
    assert b"agi_callerid: unknown\nagi_calleridname: unknown\nagi_callingpres: 67\n" in first
    assert b"agi_network_script" not in first + second


def test_agi_hangup_command_semantics_and_exec_hangup() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        for line in (b"HANGUP 21\n", b"EXEC Hangup 21\n", b"GET VARIABLE HANGUPCAUSE\n",
                     b"CHANNEL STATUS\n"):
            writer.write(line)
            await writer.drain()
        writer.write_eof()
        seen.append(await asyncio.wait_for(reader.read(), 5))

    async def body() -> None:
        async with MiniFastAgi(script) as port:
            result = await AgiCall(port, timing=FAST).run(timeout=5)
        assert result.status == "HANGUP" and result.hangup_cause == 21
        assert not result.dialplan_continues

    run(body())
    # HANGUP's argument is a channel name, not a cause; EXEC Hangup returns -1, then the
    # unsolicited HANGUP; CHANNEL STATUS is refused on the dead channel; HANGUP at the end.
    assert seen == [b"200 result=-1\n200 result=-1\nHANGUP\n200 result=1 (21)\n"
                    b"511 Command Not Permitted on a dead channel or intercept routine\n"
                    b"HANGUP\n"]


def test_agi_line_longer_than_asterisk_buffer_is_split_and_cr_kept() -> None:
    got: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        got.append(await command(reader, writer, "GET VARIABLE X\r"))
        writer.write(b"VERBOSE " + b"a" * 3000 + b"\n")
        await writer.drain()
        got.append((await reader.readline()).decode())
        got.append((await reader.readline()).decode())

    async def body() -> None:
        async with MiniFastAgi(script) as port:
            await AgiCall(port, variables={"X": "1"}, timing=FAST).run(timeout=5)

    run(body())
    assert got == ["200 result=0\n", "200 result=1\n", MSG_510_TEXT]


MSG_510_TEXT = "510 Invalid or unknown command\n"


def test_mixmonitor_failure_and_far_end_hangup_timer() -> None:
    replies: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        replies.append(await command(reader, writer, 'EXEC MixMonitor "/tmp/x.wav"'))
        line = await asyncio.wait_for(reader.readline(), 5)  # far end hangs up after 0.3 s
        replies.append(line.decode())
        replies.append(await command(reader, writer, "GET VARIABLE MIXMONITOR_FILENAME"))

    async def body() -> None:
        async with MiniFastAgi(script) as port:
            result = await AgiCall(port, mixmonitor_fails=True, far_end_hangup_after=0.3,
                                   timing=FAST).run(timeout=5)
        assert result.status == "HANGUP" and result.hangup_cause == 16

    run(body())
    assert replies == ["200 result=-1\n", "HANGUP\n", "200 result=0\n"]


@pytest.mark.parametrize("mode", list(Hostile))
def test_hostile_peers_reach_the_server(mode: Hostile) -> None:
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.append(await asyncio.wait_for(reader.read(2_000_000), 0.3))
        except TimeoutError:
            received.append(b"")
        writer.close()

    async def body() -> Any:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await AgiCall(port, hostile=mode, hostile_size=100_000).run(timeout=3)
        finally:
            server.close()
            await server.wait_closed()

    result = run(body())
    assert result.connected and not result.timed_out
    data = received[0]
    if mode is Hostile.SILENT:
        assert data == b""
    elif mode is Hostile.GARBAGE:
        assert data and b"\n" not in data
    elif mode is Hostile.OVERSIZED_ENV:
        assert data.startswith(b"agi_network: yes\n")
    else:
        assert data.startswith(b"agi_network: yes\n") and b"\n\n" not in data


def test_run_timeout_when_server_never_closes() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        await asyncio.sleep(2)

    async def body() -> None:
        async with MiniFastAgi(script) as port:
            result = await AgiCall(port, timing=FAST).run(timeout=0.3)
        assert result.timed_out and result.status == "SUCCESS"

    run(body())


def test_parse_agi_args_matches_res_agi() -> None:
    assert parse_agi_args('SET VARIABLE X "a b"') == ["SET", "VARIABLE", "X", "a b"]
    assert parse_agi_args('EXEC Verbose "1,x y"') == ["EXEC", "Verbose", "1,x y"]
    assert parse_agi_args('SET VARIABLE X ""') == ["SET", "VARIABLE", "X", ""]
    assert parse_agi_args(r'SET VARIABLE X a\"b') == ["SET", "VARIABLE", "X", 'a"b']
    assert parse_agi_args("GET  VARIABLE\tY\r") == ["GET", "VARIABLE", "Y\r"]


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet='ab" \t\\\r=,|é', max_size=24))
def test_the_fast_argument_parser_splits_as_the_literal_model(line: str) -> None:
    """The regex parser the load generator uses agrees with res_agi.c's loop, character for
    character, on quotes, escapes, blanks and their odd combinations."""
    assert parse_agi_args(line) == parse_agi_args_by_char(line)



def test_application_arguments_split_as_ast_app_separate_args() -> None:
    """main/app.c with remove_chars: commas split outside (), [] and quotes; quotes and
    backslashes go, the escaped character stays; the last slot takes the rest unscanned."""
    assert separate_app_args(r"A=allow,B=X\,Y,C=", ",", 100) == ["A=allow", "B=X,Y", "C="]
    assert separate_app_args('f(a,b),"c,d",[e,f],', ",", 100) == ["f(a,b)", "c,d", "[e,f]", ""]
    assert separate_app_args("C=", "=", 2) == ["C", ""]
    assert separate_app_args(r"x=y=\z", "=", 2) == ["x", r"y=\z"]
    assert separate_app_args("", ",", 100) == []

def test_a_load_generator_pbx_keeps_no_events_but_still_sends_them_to_clients() -> None:
    """``keep_events=False`` (the benches) stores nothing; a connected AMI client still gets
    every event, encoded as always."""
    kept, lean = Pbx(), Pbx(keep_events=False)
    received: list[bytes] = []
    for pbx in (kept, lean):
        chan = pbx.add_channel(Channel(name="PJSIP/carrier-000000aa", uniqueid="1.1"))
        pbx.set_variable(chan, "A", "1")
    assert kept.events and not lean.events
    lean.subscribe(lambda event, privilege, data: received.append(data))
    lean.set_variable(lean.find_channel("PJSIP/carrier-000000aa"), "B", "2")
    assert not lean.events
    assert len(received) == 1 and b"Event: VarSet\r\n" in received[0] and b"Variable: B\r\n" in received[0]


# ---------------------------------------------------------------------------------------------
# AMI: the captured call replayed through AmiServer + OutboundCall
# ---------------------------------------------------------------------------------------------


async def ami_replay(port: int, sends: list[tuple[bytes, int]], total: int,
                     timeout: float = 15.0) -> tuple[bytes, list[bytes]]:
    """Act as the capture's AMI client: send each TX once the capture had seen as many
    messages as it had at that point; return (banner, messages received)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    banner = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    buf = b""
    messages: list[bytes] = []

    async def until(count: int) -> None:
        nonlocal buf
        while len(messages) < count:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                return
            buf += chunk
            *complete, buf = buf.split(b"\r\n\r\n")
            messages.extend(m + b"\r\n\r\n" for m in complete)

    for data, seen in sends:
        await until(seen)
        writer.write(data)
        await writer.drain()
    await until(total)
    writer.close()
    return banner, messages


def captured_clock(messages: list[bytes]) -> Callable[[], str]:
    stamps = iter([t for m in messages if (t := header(m, "Timestamp")) and
                   not m.startswith(b"Response")])
    return lambda: next(stamps)


def captured_ids(messages: list[bytes], key: str) -> Callable[[], int]:
    ids = iter([int(header(m, key) or 0) for m in messages
                if m.startswith(b"Event: AGIExecStart")])
    return lambda: next(ids)


def normalise_addresses(messages: list[bytes], captured: list[bytes]) -> list[bytes]:
    """SuccessfulAuth's socket addresses are this test's ephemeral ports, not 5038/40652."""
    want = next(m for m in captured if m.startswith(b"Event: SuccessfulAuth"))
    out = []
    for m in messages:
        if m.startswith(b"Event: SuccessfulAuth"):
            for key in ("LocalAddress", "RemoteAddress"):
                m = m.replace(f"{key}: {header(m, key)}".encode(),
                              f"{key}: {header(want, key)}".encode())
        out.append(m)
    return out


async def run_captured_call(captured: list[bytes], sends: list[tuple[bytes, int]],
                            spec: CallSpec, agi_trace: AgiTrace, *, uptime: int,
                            end_call: Callable[[AmiServer, OutboundCall], Awaitable[None]],
                            ) -> tuple[bytes, list[bytes], ReplayAgiServer]:
    auth = next(m for m in captured if m.startswith(b"Event: SuccessfulAuth"))
    pbx = Pbx(clock=captured_clock(captured), command_ids=captured_ids(captured, "CommandId"))
    agi = ReplayAgiServer(agi_trace)
    agi_port = await agi.start()
    calls: list[OutboundCall] = []

    async def on_originate(action: Any) -> None:
        call = OutboundCall(pbx, spec, timing=FAST)
        calls.append(call)
        ender = asyncio.ensure_future(end_call(server, call))
        try:
            await call.run(agi_port=agi_port, talk_time=10)
        finally:
            ender.cancel()

    server = AmiServer(pbx, users={"cw": "cwsecret"}, uptime=uptime, on_originate=on_originate,
                       session_ids=lambda: header(auth, "SessionID") or "")
    async with server:
        try:
            banner, got = await ami_replay(server.port, sends, len(captured))
        finally:
            await agi.stop()
    return banner, normalise_addresses(got, captured), agi


def test_ami_one_call_event_stream_is_byte_exact() -> None:
    banner, captured, sends = load_ami_raw("ami_raw_one_call.txt")

    async def end_when_wait_ends(server: AmiServer, call: OutboundCall) -> None:
        while call.c2 is None or call.c2.application != "Playback":
            await asyncio.sleep(0.01)
        call.o1.request_hangup()  # the originator's Wait(2) ends

    async def body() -> None:
        got_banner, got, agi = await run_captured_call(
            captured, sends, CallSpec(), load_agi_trace("agi_outbound_same_call_as_ami_events.txt"),
            uptime=122, end_call=end_when_wait_ends)
        assert got_banner == banner == AMI_BANNER
        assert agi.replies == [expected for _, expected in agi.trace.steps]
        for n, (mine, real) in enumerate(zip(got, captured, strict=False)):
            assert mine == real, f"message #{n} differs"
        assert len(got) == len(captured)
        assert not any(m.startswith(b"Event: MixMonitorStop") for m in got)

    run(body())


def retarget(trace: AgiTrace, swaps: list[tuple[bytes, bytes]]) -> AgiTrace:
    """The same AGI conversation on another channel/uniqueid."""
    steps = []
    for tx, rx in trace.steps:
        for old, new in swaps:
            tx, rx = tx.replace(old, new), rx.replace(old, new)
        steps.append((tx, rx))
    return AgiTrace(trace.env_chunks, steps, trace.env)


def test_ami_stopmixmonitor_call_has_the_captured_messages() -> None:
    _, captured, sends = load_ami_pretty("ami_events_stopmixmonitor.txt")
    bridge = next(header(m, "BridgeUniqueid") for m in captured if b"BridgeCreate" in m)
    spec = CallSpec(
        local_base="Local/1001@outbound-test-0000000a", uniqueid1="1795480831.20",
        uniqueid2="1795480831.21", callee_base="Local/2001@callee-test-0000000b",
        uniqueid3="1795480831.22", uniqueid4="1795480831.23", bridge_id=bridge,
        teardown_variant=1)
    # That call's AGI conversation was not captured on its own; the same script ran, so the
    # sibling capture is replayed with this call's channel and uniqueid.
    agi = retarget(load_agi_trace("agi_outbound_same_call_as_ami_events.txt"),
                   [(b"1795480795.17", b"1795480831.21"), (b"-00000008;", b"-0000000a;")])

    async def end_after_stop(server: AmiServer, call: OutboundCall) -> None:
        await server.wait_action("StopMixMonitor", timeout=10)
        await asyncio.sleep(0.05)
        call.o1.request_hangup()

    async def body() -> list[bytes]:
        _, got, _ = await run_captured_call(captured, sends, spec, agi, uptime=158,
                                            end_call=end_after_stop)
        return got

    got = run(body())

    def strip(m: bytes) -> bytes:
        return re.sub(rb"Timestamp: [\d.]+\r\n", b"", m)

    # CEL/bridge ordering differs between runs of real Asterisk (separate stasis topics), so
    # this capture is compared message by message, order aside (timestamps are fed in our
    # order); the StopMixMonitor exchange itself is exact and in order.
    mine_only = sorted(set(map(strip, got)) - set(map(strip, captured)))
    theirs_only = sorted(set(map(strip, captured)) - set(map(strip, got)))
    assert mine_only == theirs_only
    assert sorted(map(strip, got)) == sorted(map(strip, captured))
    stop = next(i for i, m in enumerate(captured) if m.startswith(b"Event: MixMonitorStop"))
    mine = next(i for i, m in enumerate(got) if m.startswith(b"Event: MixMonitorStop"))
    assert got[mine - 1] == captured[stop - 1] == (
        b"Response: Success\r\nActionID: stopmon-1\r\n\r\n")
    assert [strip(m) for m in got[mine:mine + 3]] == [strip(m) for m in captured[stop:stop + 3]]


# ---------------------------------------------------------------------------------------------
# AMI: panoramisk and protocol details
# ---------------------------------------------------------------------------------------------


def test_panoramisk_logs_in_pings_and_receives_events() -> None:
    from panoramisk import Manager

    async def body() -> None:
        pbx = Pbx()
        async with AmiServer(pbx, users={"cw": "cwsecret"}) as server:
            manager = Manager(host="127.0.0.1", port=server.port, username="cw",
                              secret="cwsecret", ping_delay=60)
            events: asyncio.Queue[Any] = asyncio.Queue()
            manager.register_event("Hangup", lambda mgr, event: events.put_nowait(event))
            manager.register_event("VarSet", lambda mgr, event: events.put_nowait(event))
            await asyncio.wait_for(manager.connect(), 5)
            await server.wait_logged_in()
            pong = await asyncio.wait_for(manager.send_action({"Action": "Ping"}), 5)
            assert pong.success and pong.ping == "Pong"
            chan = pbx.add_channel(Channel(name="PJSIP/carrier-000000aa", uniqueid="1.1"))
            pbx.set_variable(chan, "CALLWARDEN_TENANT", "t1")
            varset = await asyncio.wait_for(events.get(), 5)
            assert varset.variable == "CALLWARDEN_TENANT" and varset.value == "t1"
            hung = await asyncio.wait_for(manager.send_action(
                {"Action": "Hangup", "Channel": chan.name, "Cause": "21"}), 5)
            assert hung.message == "Channel Hungup"
            hangup = await asyncio.wait_for(events.get(), 5)
            assert hangup["Cause"] == "21" and hangup["Cause-txt"] == "Call Rejected"
            assert server.actions_named("Hangup")[0].get("Channel") == chan.name
            manager.close()

    run(body())


async def ami_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 5) == AMI_BANNER
    return reader, writer


async def ami_send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   text: str) -> bytes:
    writer.write(text.replace("\n", "\r\n").encode() + b"\r\n")
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


def test_ami_md5_challenge_login_and_errors() -> None:
    async def body() -> None:
        async with AmiServer(users={"cw": "cwsecret"}, login_failure_delay=0) as server:
            r, w = await ami_client(server.port)
            assert await ami_send(r, w, "Action: Ping\nActionID: p0\n") == (
                b"Response: Error\r\nActionID: p0\r\nMessage: Permission denied\r\n\r\n")
            reply = await ami_send(r, w, "Action: Challenge\nActionID: c1\nAuthType: md5\n")
            challenge = header(reply, "Challenge") or ""
            assert reply == (f"Response: Success\r\nActionID: c1\r\nChallenge: {challenge}"
                             "\r\n\r\n").encode()
            key = hashlib.md5((challenge + "cwsecret").encode()).hexdigest()
            reply = await ami_send(r, w, f"Action: Login\nActionID: l1\nAuthType: md5\n"
                                         f"Username: cw\nKey: {key}\n")
            assert reply == (b"Response: Success\r\nActionID: l1\r\n"
                             b"Message: Authentication accepted\r\n\r\n")
            booted = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert booted == (b"Event: FullyBooted\r\nPrivilege: system,all\r\nUptime: 122\r\n"
                              b"LastReload: 122\r\nStatus: Fully Booted\r\n\r\n")
            assert b"Event: SuccessfulAuth" in await asyncio.wait_for(
                r.readuntil(b"\r\n\r\n"), 5)
            assert await ami_send(r, w, "Action: NoSuchThing\nActionID: x\n") == (
                b"Response: Error\r\nActionID: x\r\nMessage: Invalid/unknown command: "
                b"NoSuchThing. Use Action: ListCommands to show available commands.\r\n\r\n")
            pong = await ami_send(r, w, "Action: Ping\nActionID: p1\n")
            assert re.fullmatch(rb"Response: Success\r\nActionID: p1\r\nPing: Pong\r\n"
                                rb"Timestamp: \d+\.\d{6}\r\n\r\n", pong)
            assert await ami_send(r, w, "Action: Logoff\nActionID: bye\n") == (
                b"Response: Goodbye\r\nActionID: bye\r\nMessage: Thanks for all the fish."
                b"\r\n\r\n")
            assert await asyncio.wait_for(r.read(), 5) == b""

            r, w = await ami_client(server.port)
            assert await ami_send(r, w, "Action: Login\nActionID: l2\nUsername: cw\n"
                                        "Secret: wrong\n") == (
                b"Response: Error\r\nActionID: l2\r\nMessage: Authentication failed\r\n\r\n")
            assert await asyncio.wait_for(r.read(), 5) == b""  # Asterisk closes the session
            assert [a.name for a in server.actions] == [
                "Ping", "Challenge", "Login", "NoSuchThing", "Ping", "Logoff", "Login"]

    run(body())


def test_ami_coreshowchannels_getvar_setvar_and_hangup_of_agi_channel() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        seen.append(await asyncio.wait_for(reader.readline(), 5))  # HANGUP from the AMI side
        writer.close()

    async def body() -> None:
        pbx = Pbx()
        async with AmiServer(pbx, users={"cw": "s"}) as server, MiniFastAgi(script) as port:
            r, w = await ami_client(server.port)
            await ami_send(r, w, "Action: Login\nUsername: cw\nSecret: s\nEvents: off\n")
            chan = Channel(name="PJSIP/trunk-00000001", uniqueid="1795480000.1",
                           callerid_num="15551230000", variables={"CALLWARDEN_TENANT": "t1"})
            call = AgiCall(port, channel=chan, pbx=pbx, timing=FAST)
            task = asyncio.ensure_future(call.run(timeout=5))
            while not call.result.connected:
                await asyncio.sleep(0.01)
            listing = await ami_send(r, w, "Action: CoreShowChannels\nActionID: l\n")
            assert listing == (b"Response: Success\r\nActionID: l\r\nEventList: start\r\n"
                               b"Message: Channels will follow\r\n\r\n")
            entry = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert entry.startswith(b"Event: CoreShowChannel\r\nActionID: l\r\n"
                                    b"Channel: PJSIP/trunk-00000001\r\nChannelState: 4\r\n")
            assert re.search(rb"Duration: \d\d:\d\d:\d\d\r\nBridgeId: \r\n\r\n$", entry)
            done = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert done == (b"Event: CoreShowChannelsComplete\r\nActionID: l\r\n"
                            b"EventList: Complete\r\nListItems: 1\r\n\r\n")
            got = await ami_send(r, w, "Action: Getvar\nActionID: g\n"
                                       "Channel: PJSIP/trunk-00000001\nVariable: CALLWARDEN_TENANT\n")
            assert got == (b"Response: Success\r\nActionID: g\r\nVariable: CALLWARDEN_TENANT\r\n"
                           b"Value: t1\r\n\r\n")
            got = await ami_send(r, w, "Action: Setvar\nActionID: s\nChannel: 1795480000.1\n"
                                       "Variable: X\nValue: y\n")
            assert got.endswith(b"Message: Variable Set\r\n\r\n") and chan.variables["X"] == "y"
            got = await ami_send(r, w, "Action: Hangup\nActionID: h\n"
                                       "Channel: PJSIP/trunk-00000001\nCause: 16\n")
            assert got == b"Response: Success\r\nActionID: h\r\nMessage: Channel Hungup\r\n\r\n"
            result = await task
            assert result.status == "HANGUP" and result.hangup_source == "ami"
            assert await ami_send(r, w, "Action: Hangup\nActionID: h2\n"
                                        "Channel: PJSIP/trunk-00000001\n") == (
                b"Response: Error\r\nActionID: h2\r\nMessage: No such channel\r\n\r\n")
            events = [m for m in pbx.events if m.startswith(b"Event: Hangup\r\n")]
            assert len(events) == 1 and b"Cause: 16\r\nCause-txt: Normal Clearing\r\n" in events[0]
            w.close()
        assert seen == [b"HANGUP\n"]

    run(body())


def test_ami_drop_and_refuse_connections() -> None:
    async def body() -> None:
        async with AmiServer(users={"cw": "s"}) as server:
            r, w = await ami_client(server.port)
            await ami_send(r, w, "Action: Login\nUsername: cw\nSecret: s\nEvents: off\n")
            await server.wait_logged_in()
            await server.refuse_connections()
            await server.drop_clients()
            assert await asyncio.wait_for(r.read(), 5) == b""
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", server.port)
            await server.accept_connections()
            r, w = await ami_client(server.port)
            w.close()

    run(body())


def test_panoramisk_reconnects_after_drop() -> None:
    from panoramisk import Manager

    async def body() -> None:
        async with AmiServer(users={"cw": "s"}) as server:
            manager = Manager(host="127.0.0.1", port=server.port, username="cw", secret="s",
                              ping_delay=60, reconnect_timeout=1)
            await asyncio.wait_for(manager.connect(), 5)
            await server.wait_logged_in()
            await server.restart(down_for=0.2)
            await server.wait_logged_in(timeout=8)
            assert len(server.actions_named("Login")) == 2
            manager.close()

    run(body())


def test_outbound_call_blocked_and_far_end_paths_emit_hangup_and_cdr() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        await command(reader, writer, "SET VARIABLE CW_DECISION block")

    async def body() -> None:
        pbx = Pbx()
        async with MiniFastAgi(script) as port:
            call = OutboundCall(pbx, CallSpec(bridge_id=None), timing=FAST)
            result = await call.run(agi_port=port, talk_time=0.01)
        assert result.status == "SUCCESS" and call.finished.is_set()
        names = [header(m, "Event") for m in pbx.events]
        assert "DialBegin" in names and "BridgeEnter" not in names
        hangup = next(m for m in pbx.events if m.startswith(b"Event: Hangup\r\n"))
        assert b"Cause: 21\r\nCause-txt: Call Rejected\r\n" in hangup
        cdr = next(m for m in pbx.events if m.startswith(b"Event: Cdr"))
        assert b"Disposition: NO ANSWER" in cdr and b"AnswerTime: \r\n" in cdr
        assert not pbx.channels

    run(body())


def test_outbound_call_hung_up_by_ami_mid_call_with_callerid_change() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     env: dict[str, str]) -> None:
        await command(reader, writer, "SET VARIABLE CW_DECISION allow")

    async def body() -> None:
        pbx = Pbx()
        async with AmiServer(pbx, users={"cw": "s"}) as server, MiniFastAgi(script) as port:
            r, w = await ami_client(server.port)
            await ami_send(r, w, "Action: Login\nUsername: cw\nSecret: s\nEvents: off\n")
            call = OutboundCall(pbx, CallSpec(bridge_id=None), timing=FAST)
            task = asyncio.ensure_future(call.run(agi_port=port, talk_time=10))
            while call.o2.bridge_id == "":
                await asyncio.sleep(0.01)
            call.change_callerid(num="15550009999")
            reply = await ami_send(r, w, f"Action: Hangup\nActionID: k\nChannel: {call.o2.name}"
                                         "\nCause: 21\n")
            assert reply.endswith(b"Message: Channel Hungup\r\n\r\n")
            await asyncio.wait_for(task, 5)
            w.close()
        assert call.finished.is_set() and not pbx.channels
        newcid = [m for m in pbx.events if m.startswith(b"Event: NewCallerid")][-1]
        assert b"CallerIDNum: 15550009999\r\n" in newcid
        last = [m for m in pbx.events if m.startswith(b"Event: Hangup\r\n")
                and header(m, "Channel") == call.o2.name]
        assert len(last) == 1 and header(last[0], "Cause") == "21"
        assert header(last[0], "Cause-txt") == "Call Rejected"
        cdrs = [m for m in pbx.events if m.startswith(b"Event: Cdr")]
        assert len(cdrs) == 4 and all(header(m, "Disposition") == "ANSWERED" for m in cdrs)

    run(body())


def test_outbound_call_without_agi_server_for_listener_tests() -> None:
    async def body() -> Pbx:
        pbx = Pbx(cel=False)
        call = OutboundCall(pbx, CallSpec(bridge_id=None))
        result = await call.run(agi_port=None, talk_time=0.01,
                                agi_sets={"CW_DECISION": "allow", "CALLWARDEN_TENANT": "t1"})
        assert result.status == "SUCCESS" and call.finished.is_set()
        return pbx

    pbx = run(body())
    varsets = [header(m, "Variable") for m in pbx.events if m.startswith(b"Event: VarSet")]
    assert {"CW_DECISION", "CALLWARDEN_TENANT", "AGISTATUS"} <= set(varsets)
    assert [header(m, "Event") for m in pbx.events].count("Cdr") == 4
