"""The pure parts, checked against the real Asterisk 22 captures in tests/sim/captures/asterisk."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callwarden.agi.ami.cdr import cause_name, learn_offset, merge, read_master_csv, row_from_event
from callwarden.agi.presentation import is_hidden_presentation
from callwarden.agi.wire import (
    MAX_ENV_BYTES,
    MAX_LINE_BYTES,
    AgiProtocolError,
    PeerGone,
    _env_line,
    _read_line,
    mset_argument,
    parse_reply_line,
    quote,
    read_environment,
)
from tests.conftest import TRACES
from tests.sim.asterisk import parse_agi_args, separate_app_args

ASTERISK = TRACES / "asterisk"
UTC = dt.UTC


def trace_chunks(name: str, direction: str) -> list[bytes]:
    """Byte chunks of one direction ('<< RX' = Asterisk sent) of an AGI transcript."""
    pattern = re.compile(rf"{re.escape(direction)}\s+\d+ bytes: (b'.*')$")
    return [ast.literal_eval(m.group(1)) for line in (ASTERISK / name).read_text().splitlines()
            if (m := pattern.search(line))]


async def feed(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=4097)
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


def test_environment_block_of_every_capture_parses() -> None:
    async def body() -> None:
        for name in ("agi_outbound_full_session.txt", "agi_block_and_hangup.txt",
                     "agi_url_without_path.txt", "agi_far_end_hangup_mid_session.txt"):
            rx = trace_chunks(name, "<< RX")
            env = await read_environment(await feed(rx[0], rx[1], eof=False), 1)
            assert env["agi_network"] == "yes" and env["agi_accountcode"] == ""
            if name == "agi_outbound_full_session.txt":
                assert env["agi_network_script"] == "outbound?campaign=camp42&lead=7"
                assert env["agi_arg_2"] == "arg two" and len(env) == 25
            if name == "agi_url_without_path.txt":
                assert "agi_network_script" not in env and len(env) == 21

    asyncio.run(body())


@pytest.mark.parametrize("chunks, message", [
    ((b"agi_network: yes\n",), "closed inside the environment block"),
    ((b"agi_network: y",), "closed inside a line"),
    ((b"\x00\xff\xfe\n",), "not UTF-8"),
    ((b"GET / HTTP/1.1\n",), "not 'agi_<name>: <value>'"),
    ((b"agi_x: \x1b[31m\n",), "not 'agi_<name>: <value>'"),
    ((b"\n",), "empty environment block"),
    ((b"agi_x: " + b"y" * 5000 + b"\n",), "longer than 4096"),
    ((b"agi_x: y\n" * 2000,), f"longer than {MAX_ENV_BYTES}"),
])
def test_malformed_environment_is_refused(chunks: tuple[bytes, ...], message: str) -> None:
    async def body() -> None:
        with pytest.raises(AgiProtocolError, match=re.escape(message)):
            await read_environment(await feed(*chunks), 1)

    asyncio.run(body())


async def _environment_line_by_line(reader: asyncio.StreamReader) -> dict[str, str]:
    """The reference: every line read and checked on its own, as the reader always did."""
    env: dict[str, str] = {}
    total = 0
    while True:
        try:
            raw = await _read_line(reader)
        except PeerGone:
            if total == 0:
                raise
            raise AgiProtocolError("connection closed inside the environment block") from None
        total += len(raw) + 1
        pair = _env_line(raw, len(env), total)
        if pair is None:
            return env
        env[pair[0]] = pair[1]


_GOOD = st.builds(lambda k, v: f"agi_{k}: {v}".encode(), st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True),
                  st.text(st.characters(min_codepoint=32, max_codepoint=0x4e2d,
                                        blacklist_characters="\x7f"), max_size=30))
_ODD = st.sampled_from([b"", b"\r", b"GET / HTTP/1.1", b"agi_x: \x1b", b"\xff\xfe",
                        b"agi_long: " + b"y" * (MAX_LINE_BYTES - 9), b"agi_long: " + b"y" * MAX_LINE_BYTES])


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.one_of(_GOOD, _GOOD, _GOOD, _ODD), min_size=0, max_size=40),
       many=st.integers(0, 200), crlf=st.sampled_from(["", "first", "all"]),
       after=st.sampled_from([b"", b"HANGUP\n", b"200 result=1 (x)\n", b"\n\n"]),
       cuts=st.lists(st.integers(1, 9000), max_size=4), eof=st.booleans())
def test_the_block_read_at_once_is_read_as_line_by_line(lines, many, crlf, after, cuts, eof) -> None:
    """Whatever the bytes and however they are cut into segments: the same environment or the
    same error as reading and checking one line at a time, and the same bytes left unread."""
    lines = [*lines, *[b"agi_n%d: v" % i for i in range(many)]] if many > 150 else lines
    ends = [b"\r\n" if crlf == "all" or (crlf == "first" and i == 0) else b"\n"
            for i in range(len(lines) + 1)]
    data = b"".join(line + end for line, end in zip([*lines, b""], ends, strict=True)) + after
    points = sorted({c for c in cuts if c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]

    async def outcome(read):  # noqa: ANN001, ANN202
        reader = await feed(*chunks, eof=eof)
        try:
            async with asyncio.timeout(0.2):
                result = await read(reader)
        except (AgiProtocolError, PeerGone, TimeoutError) as exc:
            return type(exc).__name__, re.sub(r"\(\d+ bytes\)", "", str(exc)), None
        left = reader._buffer[:]  # noqa: SLF001  (what the next reply read would see)
        return "env", result, bytes(left)

    async def body() -> None:
        expected = await outcome(_environment_line_by_line)
        got = await outcome(lambda r: read_environment(r, 0.2))
        block = data.split(b"\n\n", 1)[0]
        if expected[0] == "TimeoutError":  # read_environment reports its own timeout
            assert got[0] == "AgiProtocolError" and "within 0.2 s" in got[1]
        elif expected[0] == "env" and crlf == "" and b"\n\r\n" in b"\n" + block + b"\n":
            # LF lines, then a CRLF empty line: refused rather than read past (unless the
            # block was too long to take at once: then read line by line as the reference)
            assert got == expected or got[0] == "AgiProtocolError" and ("mixes LF and CRLF" in got[1]
                                                     or "within 0.2 s" in got[1]
                                                     or "closed inside" in got[1]), got
        else:
            assert got == expected

    asyncio.run(body())


def test_silence_and_immediate_close() -> None:
    async def body() -> None:
        with pytest.raises(AgiProtocolError, match="sent nothing within 0.05 s"):
            await read_environment(await feed(eof=False), 0.05)
        with pytest.raises(PeerGone):
            await read_environment(await feed(), 1)

    asyncio.run(body())


def test_every_captured_reply_line_parses() -> None:
    lines = [line for name in ASTERISK.glob("agi_*.txt")
             for chunk in trace_chunks(name.name, "<< RX") if not chunk.startswith(b"agi_")
             for line in chunk.decode().splitlines()]
    firsts = [x for x in lines if re.match(r"\d{3}[ -]", x)]
    assert len(firsts) > 40
    for line in firsts:
        assert parse_reply_line(line).code in (200, 510, 511, 520)
    assert parse_reply_line("200 result=1 (checked ok: dnc=no tz=ok)").data == "checked ok: dnc=no tz=ok"
    assert parse_reply_line('200 result=1 ("CW Test Caller" <15551230000>)').data == \
        '"CW Test Caller" <15551230000>'
    assert parse_reply_line("200 result=1 (hangup)").data == "hangup"  # a value, not a hangup
    assert parse_reply_line("200 result=0").result == 0 and parse_reply_line("200 result=-2").result == -2
    assert parse_reply_line("511 Command Not Permitted on a dead channel or intercept routine").dead_channel
    with pytest.raises(AgiProtocolError):
        parse_reply_line("HTTP/1.1 200 OK")


def test_quote_refuses_what_agi_cannot_carry() -> None:
    assert quote("/var/spool/x y.wav") == '"/var/spool/x y.wav"'
    for bad in ('a"b', "a\\b", "a\nb", "a\x00b"):
        with pytest.raises(ValueError):
            quote(bad)


def test_mset_argument_escapes_commas_and_refuses_what_mset_would_misread() -> None:
    r"""Commas in a value go out as ``\\,`` (AGI leaves ``\,``, MSet a literal comma); anything
    MSet's argument parser treats specially makes the caller set the variables one by one."""
    argument = mset_argument([("A", "deny"), ("B", "QUIET_HOURS,NO_CONSENT"), ("C", "")])
    assert argument == '"A=deny,B=QUIET_HOURS\\\\,NO_CONSENT,C="'
    data = parse_agi_args(f"EXEC MSet {argument}")[2]
    assert [separate_app_args(e, "=", 2) for e in separate_app_args(data, ",", 100)] == [
        ["A", "deny"], ["B", "QUIET_HOURS,NO_CONSENT"], ["C", ""]]
    for bad in [("A", 'x"y'), ("A", "x\\y"), ("A", "f(x)"), ("A", "x=y"), ("A", "a b"),
                ("A", "${X}"), ("A", "x|y"), ("A B", "x"), ("1A", "x")]:
        assert mset_argument([bad]) is None, bad
    assert mset_argument([]) is None


@pytest.mark.parametrize("value, hidden", [
    ("0", False), ("3", False), ("32", True), ("35", True), ("67", True), ("64", True),
    ("allowed_not_screened", False), ("prohib_not_screened", True), ("prohib", True),
    ("unavailable", True), ("0 (Presentation Allowed, Not Screened)", False),
    ("32 (Presentation Prohibited, Not Screened)", True), ("", False), (None, False),
])
def test_presentation(value: str | None, hidden: bool) -> None:
    assert is_hidden_presentation(value) is hidden


def test_master_csv_from_the_capture() -> None:
    rows = read_master_csv(ASTERISK / "cdr_master.csv", {"1795480795.17", "1795480687.5"}, None)
    s = merge(rows["1795480795.17"])  # the Dial record and the h-extension record
    assert len(rows["1795480795.17"]) == 2
    assert s == type(s)(answered_at=dt.datetime(2026, 11, 24, 0, 39, 56, tzinfo=UTC),
                        ended_at=dt.datetime(2026, 11, 24, 0, 39, 58, tzinfo=UTC),
                        billsec=2, disposition="ANSWERED")
    blocked = merge(rows["1795480687.5"])
    assert (blocked.answered_at, blocked.billsec, blocked.disposition) == (None, 0, "NO ANSWER")


def test_master_csv_tail_only(tmp_path) -> None:
    src = (ASTERISK / "cdr_master.csv").read_bytes()
    path = tmp_path / "Master.csv"
    path.write_bytes(b"x" * 5000 + b"\n" + src)
    rows = read_master_csv(path, {"1795480931.37"}, None, max_bytes=len(src) + 100)
    assert merge(rows["1795480931.37"]).billsec == 2


def test_cdr_event_times_in_the_pbx_zone() -> None:
    """A PBX on China time writes local times; the event's Timestamp proves the offset."""
    event = {"StartTime": "2026-11-24 08:39:55", "AnswerTime": "2026-11-24 08:39:56",
             "EndTime": "2026-11-24 08:39:58", "BillableSeconds": "2", "Disposition": "ANSWERED",
             "Timestamp": "1795480798.547521", "UniqueID": "1795480795.17"}
    row, proven = row_from_event(event, None)
    assert proven == dt.timedelta(hours=8)
    assert row.answer == dt.datetime(2026, 11, 24, 0, 39, 56, tzinfo=UTC)
    # an h-extension record alone cannot prove it; the offset learned before is used
    h_row = {**event, "StartTime": "2026-11-24 08:52:58", "UniqueID": "1795480795.17"}
    row, proven = row_from_event(h_row, dt.timedelta(hours=8))
    assert proven is None and row.end == dt.datetime(2026, 11, 24, 0, 39, 58, tzinfo=UTC)
    assert learn_offset("2026-11-24 00:00:00", dt.datetime(2026, 11, 22, tzinfo=UTC)) is None


def test_cause_names() -> None:
    assert [cause_name(c) for c in ("16", 21, "52", "0", "99", None)] == \
        ["NORMAL_CLEARING", "CALL_REJECTED", "OUTGOING_CALL_BARRED", "UNSPECIFIED", "Q850_99", None]
