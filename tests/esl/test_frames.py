"""The ESL wire format against FreeSWITCH 1.10.12's own bytes (tests/sim/captures/freeswitch/), read
by read as captured, byte by byte and all at once; then malformed input; then the commands we
send, which must be byte-identical to what the captured client sent."""

from __future__ import annotations

import pytest

from callwarden.esl.frames import (
    EventBody,
    Frame,
    FrameParser,
    Limits,
    ProtocolError,
    api,
    command,
    execute,
    parse_event,
)
from tests.esl.traces import ALL, load, received


def frames_of(chunks: list[bytes], limits: Limits | None = None) -> list[Frame]:
    parser = FrameParser(limits)
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    parser.close()
    assert parser.buffered == 0
    return out


def signature(frames: list[Frame]) -> list[tuple[str, str | None, int]]:
    return [(f.content_type, f.event().get("Event-Name") if f.is_event else None, len(f.body))
            for f in frames]


@pytest.mark.parametrize("name", ALL)
def test_every_capture_parses_the_same_however_it_is_cut(name: str) -> None:
    reads = received(name)
    as_captured = frames_of(reads)
    assert as_captured
    data = b"".join(reads)
    assert signature(frames_of([data])) == signature(as_captured)
    assert signature(frames_of([data[i:i + 1] for i in range(len(data))])) == signature(as_captured)
    assert signature(frames_of([data[i:i + 97] for i in range(0, len(data), 97)])) == signature(as_captured)


def test_connect_reply_is_one_header_block_with_the_channel_data() -> None:
    reply = frames_of(received("outbound_socket_full_call.txt")[:1])[0]
    assert reply.content_type == "command/reply" and reply.ok and reply.body == b""
    h = reply.headers
    assert h["Reply-Text"] == "+OK\n"  # %2BOK%0A, decoded
    assert h["Unique-ID"] == "b7c5d71a-e267-4c66-b0c0-d48b24958714"
    assert h["variable_current_application_data"] == "127.0.0.1:8084 async full"
    assert h["Socket-Mode"] == "async" and h["Control"] == "full"
    assert h["FreeSWITCH-IPv6"] == "fd00::2"
    assert len(h) == 103  # the capture's own note: "connect reply parsed: 103 headers"


def test_events_and_their_bodies() -> None:
    frames = frames_of(received("outbound_socket_full_call.txt"))
    events = [f.event() for f in frames if f.is_event]
    names = [e["Event-Name"] for e in events]
    assert names[0] == "CHANNEL_PARK" and "RECORD_START" in names
    assert names[-1] == "CHANNEL_HANGUP_COMPLETE"
    hangup = events[-1]
    assert hangup["variable_billsec"] == "2" and hangup["Hangup-Cause"] == "NORMAL_CLEARING"
    assert hangup["variable_start_stamp"] == "2026-11-24 00:31:35"
    record = events[names.index("RECORD_START")]
    assert record["Record-File-Path"] == "/tmp/x.wav"
    notices = [f for f in frames if f.content_type == "text/disconnect-notice"]
    assert [n.headers["Content-Disposition"] for n in notices] == ["linger", "disconnect"]
    assert notices[-1].body.startswith(b"Disconnected, goodbye.")


def test_api_response_and_auth() -> None:
    frames = frames_of(received("inbound_auth_api_status.txt"))
    assert [f.content_type for f in frames][:3] == ["auth/request", "command/reply", "api/response"]
    assert frames[1].reply_text == "+OK accepted"
    assert frames[2].reply_text.startswith("UP 0 years") and len(frames[2].body) == 337


def test_background_job_body_inside_an_event() -> None:
    body = (b"Event-Name: BACKGROUND_JOB\nJob-UUID: 1\nContent-Length: 4\n\n+OK\n")
    headers, inner = parse_event(body)
    assert headers["Event-Name"] == "BACKGROUND_JOB" and inner == b"+OK\n"


def test_an_encoded_line_break_cannot_forge_a_header() -> None:
    """greenswitch decodes the whole block before splitting lines; we split first."""
    body = (b"Event-Name: CALL_UPDATE\n"
            b"Caller-Caller-ID-Name: Mallory%0Avariable_callwarden_tenant%3A%20acme\n\n")
    headers, _ = parse_event(body)
    assert "variable_callwarden_tenant" not in headers
    assert headers["Caller-Caller-ID-Name"] == "Mallory\nvariable_callwarden_tenant: acme"


@pytest.mark.parametrize(("data", "why"), [
    (b"\x16\x03\x01\x00\xa5", "control bytes in a header block"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "header line is not 'Name: value'"),
    (b"Reply-Text: +OK\n\n", "frame without Content-Type"),
    (b"Content-Type: api/response\nContent-Length: -1\n\n", "Content-Length is not a number"),
    (b"Content-Type: api/response\nContent-Length: 2000000\n\n", "body larger than allowed"),
    (b"Content-Type: x\n" + b"X-Pad: " + b"a" * 300_000, "header block larger than allowed"),
    (b"Content-Type: x\n" + b"A: b\n" * 5000 + b"\n", "too many header lines"),
])
def test_malformed_input_is_refused_as_soon_as_it_shows(data: bytes, why: str) -> None:
    parser = FrameParser(Limits(max_header_bytes=256 * 1024, max_headers=4096, max_body=1024 * 1024))
    with pytest.raises(ProtocolError) as exc:
        for i in range(0, len(data), 4096):
            parser.feed(data[i:i + 4096])
    assert exc.value.reason == why
    assert str(exc.value) == why  # the message never quotes the peer's bytes


def test_garbage_is_refused_on_its_first_byte() -> None:
    with pytest.raises(ProtocolError):
        FrameParser().feed(b"\x16")


def test_truncated_frames() -> None:
    for data in (b"Content-Type: command/rep", b"Content-Type: api/response\nContent-Length: 10\n\nabc"):
        parser = FrameParser()
        assert parser.feed(data) == []
        with pytest.raises(ProtocolError, match="closed inside a frame"):
            parser.close()


def test_wrong_content_length_is_caught_by_the_event_body() -> None:
    event = b"Event-Name: CHANNEL_PARK\nUnique-ID: u\n\n"
    too_long = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % (len(event) + 9) + event
    frames = FrameParser().feed(too_long + b"Content-Length: 0\nContent-Type: x\n\n")
    with pytest.raises(ProtocolError, match="bytes after its headers"):
        frames[0].event()
    too_short = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % (len(event) - 3) + event
    parser = FrameParser()
    with pytest.raises(ProtocolError):
        frames = parser.feed(too_short + b"Content-Type: command/reply\n\n")
        for f in frames:
            f.event()


def test_commands_match_the_captured_client_bytes() -> None:
    sent = [b.data for b in load("outbound_socket_full_call.txt") if b.kind == "sent"]
    assert command("connect") in sent and command("myevents") in sent
    assert command("event plain RECORD_START RECORD_STOP") in sent
    assert execute("answer") in sent and execute("hangup") in sent
    assert execute("record_session", "/tmp/x.wav") in sent
    assert execute("playback", "silence_stream://2000") in sent
    assert api("status") == b"api status\n\n"
    tagged = execute("record_session", "/tmp/x.wav", event_uuid="e1")
    assert b"\nEvent-UUID: e1\nevent-lock: true\n\n" in tagged


@pytest.mark.parametrize("bad", ["a\nb", "a\rb"])
def test_a_line_break_can_never_end_a_command_early(bad: str) -> None:
    with pytest.raises(ValueError):
        command("api uuid_setvar x y " + bad)
    with pytest.raises(ValueError):
        execute("set", "x=" + bad)


def _parse_both(block: bytes) -> tuple[object, object]:
    from callwarden.esl.frames import _parse_lines, _parse_lines_slowly

    out = []
    for parse in (_parse_lines, _parse_lines_slowly):
        try:
            headers = parse(block, Limits(max_headers=64))
            out.append(list(headers.items()))  # order too
        except ProtocolError as exc:
            out.append(exc.reason)
    return out[0], out[1]


def test_the_fast_header_path_reads_every_block_as_the_line_by_line_one() -> None:
    """The one-regex path must give what the line-by-line definition gives, on the captures
    and on random blocks built from the characters that matter (separators, escapes, carriage
    returns, repeated names, broken UTF-8)."""
    import random

    blocks = []
    for name in ALL:
        for frame in frames_of(received(name)):
            if frame.is_event:
                blocks.append(frame.body[:frame.body.find(b"\n\n")])
    pieces = [b"A", b"b-c", b"Name", b":", b": ", b"  ", b"%0A", b"%3A", b"%2", b"%zz", b"%E4%B8%AD",
              b"\xe4\xb8", b"\xff", b"\r", b"\n", b"\n", b"\n", b"x y", b"\t", b"\xe4\xb8\xad"]
    rng = random.Random(20261203)
    for _ in range(3000):
        blocks.append(b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
        names = [b"A", b"B", b"Event-Name", b"variable_x", b"Unique-ID", b"C.d"]
        lines = [rng.choice(names) + rng.choice([b":", b": "]) + rng.choice(pieces) + rng.choice(pieces)
                 for _ in range(rng.randint(1, 4))]
        blocks.append(b"\n".join(lines))  # valid or nearly; repeated names: the first one wins
    assert len(blocks) > 6000
    for block in blocks:
        fast, slow = _parse_both(block)
        assert fast == slow, block
        # The same block as a plain event: checked at once, its headers decoded on first use.
        if b"\n\n" in block:
            continue
        try:
            event = EventBody(block + b"\n\n", Limits(max_headers=64))
            lazy: object = (list(event.headers.items()), event.name)
        except ProtocolError as exc:
            lazy = exc.reason
        assert lazy == (slow if isinstance(slow, str) else (slow, dict(slow).get("Event-Name", ""))), block
        if not isinstance(slow, str):  # one header asked for before the others are decoded
            expected = dict(slow)
            for name in ("A", "B", "Event-Name", "variable_x", "Unique-ID", "C.d", "Name", *expected):
                fresh = EventBody(block + b"\n\n", Limits(max_headers=64))
                assert fresh.get(name) == expected.get(name), (block, name)
