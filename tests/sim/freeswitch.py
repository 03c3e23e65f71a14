"""A byte-faithful FreeSWITCH 1.10 simulator for callwarden's tests.

It speaks the event socket exactly as the captures in ``tests/sim/captures/freeswitch/`` show
(FreeSWITCH 1.10.12): the outbound side (:class:`FsCall`, FreeSWITCH's ``socket`` application
dialling into our outbound ESL server) and the inbound side (:class:`FsEventSocketServer`, the
``mod_event_socket`` listener on :8021 that our event listener connects to). Both share one
:class:`FreeSwitch` (core UUID, event sequence, clock, channels), so a call driven through the
outbound socket is seen by inbound listeners as well, like on a real switch.

Only the standard library is used (blocking ``socket`` + ``threading``), so the simulator works
in a plain test process and in one that gevent has monkey-patched.

Provenance is marked in the code: "capture" means the bytes are copied from the traces,
"source" means taken from FreeSWITCH's C sources (mod_event_socket.c, switch_channel.c,
switch_caller.c, mod_commands.c, sofia.c, switch_core_sqldb.c), "modelled" means a best guess
where neither says more. Event-Sequence gaps (events FreeSWITCH fires that the captures did not
subscribe to) are reproduced so sequence numbers match the captures; those hidden events are not
generated.

Usage in a product test::

    switch = FreeSwitch()
    with FsEventSocketServer(switch) as fs:           # our listener connects to fs.address
        call = FsCall("127.0.0.1", outbound_port, switch=switch, profile=CallProfile(
            caller_id_number="13800138000", destination_number="95588",
            variables={"callwarden_tenant": "acme", "callwarden_purpose": "marketing"}))
        result = call.run(timeout=10)                 # or start() ... join(timeout)
        assert result.hangup_cause == "CALL_REJECTED" and not result.recordings
        fs.wait_for_command("api uuid_kill")          # what our listener sent

A test-driven channel for the inbound side alone: ``ch = switch.new_call(profile);
ch.create(); ch.answer(); ch.start_recording(path); ch.update_caller_id(name, number);
ch.hangup("NORMAL_CLEARING")``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import functools
import json
import re
import socket
import struct
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Headers = list[tuple[str, str]]


def _words(text: str) -> tuple[str, ...]:
    """Space-separated names (kept as text so the lists read like the C sources)."""
    return tuple(text.split())


VERSION_LINE = "FreeSWITCH Version 1.10.12-release~64bit ( 64bit)\n"  # capture: api version
GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"  # capture
TICK_US = 20_000  # one 20 ms media frame; FreeSWITCH's timestamps move in such steps (capture)

# Where each event is created (Event-Calling-File/Function/Line-Number).
LOCATIONS: dict[str, tuple[str, str, int]] = {
    # capture
    "CHANNEL_CREATE": ("switch_core_state_machine.c", "switch_core_session_run", 626),
    "CHANNEL_DATA": ("mod_event_socket.c", "parse_command", 2021),
    "CHANNEL_PARK": ("switch_ivr.c", "switch_ivr_park", 1002),
    "CHANNEL_UNPARK": ("switch_ivr.c", "switch_ivr_park", 1213),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", 2944),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", 2967),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", 3846),
    "CHANNEL_PROGRESS_MEDIA": ("switch_channel.c", "switch_channel_perform_mark_pre_answered", 3560),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", 3445),
    "CHANNEL_STATE": ("switch_channel.c", "switch_channel_perform_set_running_state", 2408),
    "RECORD_START": ("switch_ivr_async.c", "record_callback", 1481),
    "RECORD_STOP": ("switch_ivr_async.c", "send_record_stop_event", 1240),
    "CHANNEL_HANGUP_COMPLETE": ("switch_core_state_machine.c", "switch_core_session_reporting_state", 943),
    # modelled: function names from the sources, line numbers unknown for 1.10.12
    "CALL_UPDATE": ("sofia.c", "sofia_update_callee_id", 1249),
    "BACKGROUND_JOB": ("mod_event_socket.c", "api_exec", 1557),
    "CUSTOM": ("mod_event_socket.c", "parse_command", 1938),
    "HEARTBEAT": ("switch_core.c", "send_heartbeat", 74),
}

# Event types that carry the channel variables (source: switch_channel_event_set_extended_data).
EVENTS_WITH_VARIABLES = frozenset(_words(
    "CHANNEL_CREATE CHANNEL_ORIGINATE CHANNEL_UUID CHANNEL_ANSWER CHANNEL_PARK "
    "CHANNEL_UNPARK CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA "
    "CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE REQUEST_PARAMS CHANNEL_DATA CHANNEL_EXECUTE "
    "CHANNEL_EXECUTE_COMPLETE CHANNEL_DESTROY SESSION_HEARTBEAT API RECORD_START RECORD_STOP "
    "PLAYBACK_START PLAYBACK_STOP CALL_UPDATE MEDIA_BUG_START MEDIA_BUG_STOP CUSTOM"
))

# What `myevents` subscribes to (source: parse_command). RECORD_* and CALL_UPDATE are not in it.
MYEVENTS = frozenset(_words(
    "CHANNEL_ANSWER CHANNEL_APPLICATION CHANNEL_BRIDGE CHANNEL_CREATE CHANNEL_DATA "
    "CHANNEL_DESTROY CHANNEL_EXECUTE CHANNEL_EXECUTE_COMPLETE CHANNEL_HANGUP "
    "CHANNEL_HANGUP_COMPLETE CHANNEL_ORIGINATE CHANNEL_UUID CHANNEL_OUTGOING CHANNEL_PARK "
    "CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_STATE CHANNEL_UNBRIDGE CHANNEL_UNPARK "
    "DETECTED_SPEECH DTMF NOTALK TALK"
))

# switch_event.c EVENT_NAMES (source), used to validate `event`/`nixevent` keywords.
EVENT_NAMES = tuple(_words(
    "CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE "
    "CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE "
    "CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE "
    "CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK "
    "CHANNEL_APPLICATION CHANNEL_ORIGINATE CHANNEL_UUID API LOG INBOUND_CHAN OUTBOUND_CHAN "
    "STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK NOTALK SESSION_CRASH MODULE_LOAD MODULE_UNLOAD "
    "DTMF MESSAGE PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE MESSAGE_WAITING "
    "MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE PRIVATE_COMMAND "
    "HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML NOTIFY "
    "PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS "
    "CHANNEL_DATA GENERAL COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED "
    "SEND_INFO RECV_INFO RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START "
    "RECORD_STOP PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA "
    "MEDIA_BUG_START MEDIA_BUG_STOP CONFERENCE_DATA_QUERY CONFERENCE_DATA CALL_SETUP_REQ "
    "CALL_SETUP_RESULT CALL_DETAIL DEVICE_STATE TEXT SHUTDOWN_REQUESTED ALL"
))

# Hangup causes and their Q.850 codes (source: switch_channel.c CAUSE_CHART).
HANGUP_CAUSES: dict[str, int] = {
    "NONE": 0, "UNALLOCATED_NUMBER": 1, "NO_ROUTE_TRANSIT_NET": 2, "NO_ROUTE_DESTINATION": 3,
    "CHANNEL_UNACCEPTABLE": 6, "CALL_AWARDED_DELIVERED": 7, "NORMAL_CLEARING": 16,
    "USER_BUSY": 17, "NO_USER_RESPONSE": 18, "NO_ANSWER": 19, "SUBSCRIBER_ABSENT": 20,
    "CALL_REJECTED": 21, "NUMBER_CHANGED": 22, "REDIRECTION_TO_NEW_DESTINATION": 23,
    "EXCHANGE_ROUTING_ERROR": 25, "DESTINATION_OUT_OF_ORDER": 27, "INVALID_NUMBER_FORMAT": 28,
    "FACILITY_REJECTED": 29, "RESPONSE_TO_STATUS_ENQUIRY": 30, "NORMAL_UNSPECIFIED": 31,
    "NORMAL_CIRCUIT_CONGESTION": 34, "NETWORK_OUT_OF_ORDER": 38, "NORMAL_TEMPORARY_FAILURE": 41,
    "SWITCH_CONGESTION": 42, "ACCESS_INFO_DISCARDED": 43, "REQUESTED_CHAN_UNAVAIL": 44,
    "PRE_EMPTED": 45, "FACILITY_NOT_SUBSCRIBED": 50, "OUTGOING_CALL_BARRED": 52,
    "INCOMING_CALL_BARRED": 54, "BEARERCAPABILITY_NOTAUTH": 57, "BEARERCAPABILITY_NOTAVAIL": 58,
    "SERVICE_UNAVAILABLE": 63, "BEARERCAPABILITY_NOTIMPL": 65, "CHAN_NOT_IMPLEMENTED": 66,
    "FACILITY_NOT_IMPLEMENTED": 69, "SERVICE_NOT_IMPLEMENTED": 79, "INVALID_CALL_REFERENCE": 81,
    "INCOMPATIBLE_DESTINATION": 88, "INVALID_MSG_UNSPECIFIED": 95, "MANDATORY_IE_MISSING": 96,
    "MESSAGE_TYPE_NONEXIST": 97, "WRONG_MESSAGE": 98, "IE_NONEXIST": 99,
    "INVALID_IE_CONTENTS": 100, "WRONG_CALL_STATE": 101, "RECOVERY_ON_TIMER_EXPIRE": 102,
    "MANDATORY_IE_LENGTH_ERROR": 103, "PROTOCOL_ERROR": 111, "INTERWORKING": 127,
    "SUCCESS": 142, "ORIGINATOR_CANCEL": 487, "CRASH": 700, "SYSTEM_SHUTDOWN": 701,
    "LOSE_RACE": 502, "MANAGER_REQUEST": 503, "BLIND_TRANSFER": 600, "ATTENDED_TRANSFER": 601,
    "ALLOTTED_TIMEOUT": 602, "USER_CHALLENGE": 603, "MEDIA_TIMEOUT": 604, "PICKED_OFF": 605,
    "USER_NOT_REGISTERED": 606, "PROGRESS_TIMEOUT": 607, "INVALID_GATEWAY": 608,
    "GATEWAY_DOWN": 609, "INVALID_URL": 610, "INVALID_PROFILE": 611, "NO_PICKUP": 612,
    "SRTP_READ_ERROR": 613, "BOWOUT": 614, "BUSY_EVERYWHERE": 615, "DECLINE": 616,
    "DOES_NOT_EXIST_ANYWHERE": 617, "NOT_ACCEPTABLE": 618, "UNWANTED": 619,
}

# Channel-State-Number is channel->state (the state asked for), Channel-State the running
# state: they differ while a change is pending (capture: "CS_EXECUTE" with 10 after hangup).
STATE_NUMBERS = {
    "CS_NEW": 0, "CS_INIT": 1, "CS_ROUTING": 2, "CS_SOFT_EXECUTE": 3, "CS_EXECUTE": 4,
    "CS_EXCHANGE_MEDIA": 5, "CS_PARK": 6, "CS_CONSUME_MEDIA": 7, "CS_HIBERNATE": 8,
    "CS_RESET": 9, "CS_HANGUP": 10, "CS_REPORTING": 11, "CS_DESTROY": 12,
}

# Apps that need media: executing one on a channel without media pre-answers it first
# (source: switch_core_session_execute_application_get_flags; capture: record before answer).
MEDIA_APPS = frozenset(_words(
    "record_session playback sleep play_and_get_digits read say speak gentones record echo "
    "tone_detect wait_for_silence"
))

# Events FreeSWITCH fires between the visible ones (Event-Sequence gaps, identical in all
# three outbound captures). Keyed by where they happen; values are counts (capture).
HIDDEN_BEFORE_EXECUTE = {"playback": 1, "hangup": 1}
HIDDEN = {
    "create_to_connect": 8,  # between CHANNEL_CREATE (B-leg) and CHANNEL_DATA
    "pre_answer_before": 2,  # before CHANNEL_PROGRESS_MEDIA
    "pre_answer_after": 1,  # CHANNEL_CALLSTATE (EARLY) after it
    "answer_before": 1,  # the originate's BACKGROUND_JOB when one waits (inbound capture)
    "answer_after": 1,  # CHANNEL_CALLSTATE (ACTIVE)
    "record_start_after": 1,  # MEDIA_BUG_START
    "playback": 7,
    "before_unpark": 1,
    "after_record_stop": 3,
    "no_recording_teardown": 2,  # modelled: no capture hangs up without a recording
    "peer_hangup": 5,  # between the B-leg's and the A-leg's CHANNEL_HANGUP_COMPLETE
}


# --------------------------------------------------------------------------- wire format

_URL_UNSAFE = frozenset(b"\r\n #%&+:;<=>?@[\\]^`{|}\"")  # source: SWITCH_URL_UNSAFE
_HEX = b"0123456789ABCDEF"


# What url_encode_by_byte() escapes, as one pattern: a byte outside printable ASCII, an unsafe
# one, or a '%' not followed by two upper-case hex digits (a valid %XX is kept as it is).
_URL_ESCAPE = re.compile(rb'[^\x20-\x7e]|[\r\n #&+:;<=>?@\[\\\]^`{|}"]|%(?![0-9A-F]{2})')


_ESCAPED = {bytes((b,)): b"%%%02X" % b for b in range(256)}


def _escape(match: re.Match[bytes]) -> bytes:
    return _ESCAPED[match.group()]


@functools.lru_cache(maxsize=8192)  # most header values repeat: from one event to the next
def url_encode(value: str) -> str:
    """switch_url_encode(): what FreeSWITCH does to every header value of a plain event.

    Every header of every event goes through here, so the load generator spent a quarter of
    its CPU in the byte loop (:func:`url_encode_by_byte`, kept as the model; a property test
    holds the two equal)."""
    if value.isascii() and _URL_ESCAPE.search(value.encode()) is None:
        return value
    return _URL_ESCAPE.sub(_escape, value.encode("utf-8")).decode("ascii")


def url_encode_by_byte(value: str) -> str:
    """switch_url_encode() byte by byte, as in switch_utils.c: the model for url_encode."""
    raw = value.encode("utf-8")
    out = bytearray()
    for i, b in enumerate(raw):
        keep_pct = b == 0x25 and i + 2 < len(raw) and raw[i + 1] in _HEX and raw[i + 2] in _HEX
        if not keep_pct and (b < 0x20 or b > 0x7E or b in _URL_UNSAFE):
            out += b"%" + bytes((_HEX[b >> 4], _HEX[b & 0x0F]))
        else:
            out.append(b)
    return out.decode("ascii")


def serialize_plain(headers: Headers, body: str | None = None) -> bytes:
    """switch_event_serialize(encode=TRUE): ``Name: url-encoded value`` lines, then the body."""
    text = "".join(f"{name}: {url_encode(value) or '_undef_'}\n" for name, value in headers)
    if body:
        return (text + f"Content-Length: {len(body.encode())}\n\n").encode() + body.encode()
    return (text + "\n").encode()


def serialize_json(headers: Headers, body: str | None = None) -> bytes:
    """switch_event_serialize_json() (modelled: no capture subscribes to JSON events)."""
    obj: dict[str, str] = {}
    for name, value in headers:
        obj.setdefault(name, value)
    if body:
        obj["Content-Length"] = str(len(body.encode()))
        obj["_body"] = body
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Frame:
    """One protocol frame as FreeSWITCH sends it: a header block and an optional body.

    FreeSWITCH writes events, api responses and disconnect notices with two ``send()`` calls
    (header, then body), which is where a frame can be split across TCP reads.
    """

    head: bytes
    body: bytes = b""
    event: str | None = None  # Event-Name, for events

    @property
    def data(self) -> bytes:
        return self.head + self.body


def reply_frame(text: str) -> Frame:
    """A ``command/reply``; a text starting with ``~`` carries its own header lines (source)."""
    if text.startswith("~"):
        return Frame(b"Content-Type: command/reply\n" + text[1:].encode())
    return Frame(f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode())


def api_frame(body: str) -> Frame:
    data = body.encode()
    return Frame(f"Content-Type: api/response\nContent-Length: {len(data)}\n\n".encode(), data)


def event_frame(event: SimEvent, fmt: str = "plain") -> Frame:
    data = serialize_json(event.headers, event.body) if fmt == "json" else serialize_plain(
        event.headers, event.body)
    head = f"Content-Length: {len(data)}\nContent-Type: text/event-{fmt}\n\n".encode()
    return Frame(head, data, event.name)


def disconnect_frame(session_uuid: str | None, message: str = GOODBYE) -> Frame:
    """send_disconnect() (source; bytes confirmed by the captures)."""
    data = message.encode()
    if session_uuid:
        head = (f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {session_uuid}\n"
                f"Content-Disposition: disconnect\nContent-Length: {len(data)}\n\n")
    else:
        head = f"Content-Type: text/disconnect-notice\nContent-Length: {len(data)}\n\n"
    return Frame(head.encode(), data)


def linger_frame(session_uuid: str, channel_name: str, linger_time: int) -> Frame:
    """The notice sent when a lingering session's channel goes down (capture)."""
    return Frame((f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {session_uuid}\n"
                  f"Content-Disposition: linger\nChannel-Name: {channel_name}\n"
                  f"Linger-Time: {linger_time}\nContent-Length: 0\n\n").encode())


def split_frames(data: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Cut what FreeSWITCH sent into (headers, body) frames; a tool for tests."""
    frames = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n\n", pos)
        if end < 0:
            raise ValueError(f"truncated frame at {pos}")
        headers = {}
        for line in data[pos:end].decode().split("\n"):
            name, _, value = line.partition(": ")
            headers[name] = value
        length = int(headers.get("Content-Length", "0"))
        body = data[end + 2:end + 2 + length]
        if len(body) < length:
            raise ValueError(f"truncated body at {end + 2}")
        frames.append((headers, body))
        pos = end + 2 + length
    return frames


def parse_event_body(body: bytes) -> Headers:
    """The (still URL-encoded) header lines of a plain event body."""
    head, _, _ = body.partition(b"\n\n")
    return [(name, value) for name, _, value in
            (line.partition(": ") for line in head.decode().split("\n") if line)]


@dataclass
class Command:
    """A command as FreeSWITCH's read_packet() parses it: first line, header lines, body."""

    text: str
    headers: Headers = field(default_factory=list)
    body: str | None = None
    raw: bytes = b""
    at: float = 0.0  # time.time() when parsed
    arrived: float = 0.0  # time.time() when its last byte was read from the socket

    @property
    def name(self) -> str:
        return self.text.split(" ", 1)[0].lower()

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class CommandReader:
    """Reads commands from a socket the way mod_event_socket's read_packet() does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.received = bytearray()
        # Reads are lazy (only when no whole command is buffered), so the last read's time is
        # when the command being parsed arrived, even one that shared a read with others.
        self.read_at = 0.0

    def _fill(self, deadline: float | None) -> bool:
        """Read more bytes; False on timeout, EOFError when the peer closed."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if timeout is not None and timeout <= 0:
            return False
        try:
            self.sock.settimeout(timeout)
            chunk = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError as exc:  # reset, or closed under us (drop_connections)
            raise EOFError(str(exc)) from exc
        if not chunk:
            raise EOFError("peer closed")
        self.read_at = time.time()
        self.received += chunk
        self.buf += chunk
        return True

    def read(self, timeout: float | None) -> Command | None:
        """The next command, or None when none completed within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while self.buf[:1] in (b"\r", b"\n"):  # FreeSWITCH skips blank lines between packets
                del self.buf[:1]
            end = self._header_end()
            if end is not None:
                cmd = self._parse(end, deadline)
                if cmd is not None:
                    return cmd
            if not self._fill(deadline):
                return None

    def _header_end(self) -> int | None:
        newlines = 0
        for i, b in enumerate(self.buf):
            if b == 0x0A:
                newlines += 1
                if newlines == 2:
                    return i + 1
            elif b != 0x0D:
                newlines = 0
        return None

    def _parse(self, end: int, deadline: float | None) -> Command | None:
        lines = [ln for ln in re.split(r"[\r\n]+", self.buf[:end].decode("utf-8", "replace")) if ln]
        headers: Headers = []
        length = 0
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers.append((name, value.lstrip(" ")))
                if name.lower() == "content-length":
                    with contextlib.suppress(ValueError):
                        length = int(value.strip())
        while len(self.buf) < end + length:
            if not self._fill(deadline):
                return None
        raw = bytes(self.buf[:end + length])
        body = raw[end:].decode("utf-8", "replace") if length > 0 else None
        del self.buf[:end + length]
        return Command(lines[0] if lines else "", headers, body, raw, time.time(), self.read_at)


# --------------------------------------------------------------------------- chunking


class Chunking:
    """How frames become TCP writes. Each call to :meth:`cut` gets one burst: the frames that
    FreeSWITCH had ready at one moment (a reply plus the events queued with it, or the events
    of one step of the call)."""

    def cut(self, frames: Sequence[Frame]) -> list[bytes]:
        raise NotImplementedError

    def flush(self) -> list[bytes]:
        """Bytes held back at the end of the connection."""
        return []

    @staticmethod
    def capture() -> Chunking:
        """Default, like the captures: one write per burst, but a burst of two or more frames
        has its last frame's body in a second write (several events share a read, one event
        is split across reads)."""
        return _CaptureChunking()

    @staticmethod
    def burst() -> Chunking:
        """One write per burst."""
        return _BurstChunking()

    @staticmethod
    def per_frame() -> Chunking:
        """One write per frame."""
        return _PerFrameChunking()

    @staticmethod
    def fs_sends() -> Chunking:
        """Exactly FreeSWITCH's send() calls: header and body of a frame written separately."""
        return _FsSendsChunking()

    @staticmethod
    def fixed(size: int) -> Chunking:
        """Writes of ``size`` bytes (the last of a burst may be shorter)."""
        return _FixedChunking(size)

    @staticmethod
    def sizes(sizes: Iterable[int]) -> Chunking:
        """Writes of exactly these sizes over the whole connection (e.g. a capture's reads);
        bytes are held until a write is complete. Afterwards: one write per burst."""
        return _SizesChunking(list(sizes))


class _BurstChunking(Chunking):
    def cut(self, frames: Sequence[Frame]) -> list[bytes]:
        data = b"".join(f.data for f in frames)
        return [data] if data else []


class _CaptureChunking(Chunking):
    def cut(self, frames: Sequence[Frame]) -> list[bytes]:
        if len(frames) >= 2 and frames[-1].body:
            return [b"".join(f.data for f in frames[:-1]) + frames[-1].head, frames[-1].body]
        return _BurstChunking().cut(frames)


class _PerFrameChunking(Chunking):
    def cut(self, frames: Sequence[Frame]) -> list[bytes]:
        return [f.data for f in frames]


class _FsSendsChunking(Chunking):
    def cut(self, frames: Sequence[Frame]) -> list[bytes]:
        return [part for f in frames for part in (f.head, f.body) if part]


class _FixedChunking(Chunking):
    def __init__(self, size: int) -> None:
        self.size = max(1, size)

    def cut(self, frames: Sequence[Frame]) -> list[bytes]:
        data = b"".join(f.data for f in frames)
        return [data[i:i + self.size] for i in range(0, len(data), self.size)]


class _SizesChunking(Chunking):
    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.pending = bytearray()

    def cut(self, frames: Sequence[Frame]) -> list[bytes]:
        self.pending += b"".join(f.data for f in frames)
        out = []
        while self.sizes and len(self.pending) >= self.sizes[0]:
            n = self.sizes.pop(0)
            out.append(bytes(self.pending[:n]))
            del self.pending[:n]
        if not self.sizes and self.pending:
            out.append(bytes(self.pending))
            self.pending.clear()
        return out

    def flush(self) -> list[bytes]:
        data, self.pending = bytes(self.pending), bytearray()
        return [data] if data else []


class _Writer:
    """Writes bursts to a socket through a Chunking, keeping a log of every write."""

    def __init__(self, sock: socket.socket, chunking: Chunking, gap: float) -> None:
        self.sock = sock
        self.chunking = chunking
        self.gap = gap
        self.writes: list[bytes] = []
        self.frames: list[Frame] = []
        self.broken = False

    def burst(self, frames: Sequence[Frame]) -> None:
        if not frames:
            return
        self.frames.extend(frames)
        self._send(self.chunking.cut(frames))

    def raw(self, data: bytes) -> None:
        self._send([data])

    def flush(self) -> None:
        self._send(self.chunking.flush())

    def _send(self, chunks: list[bytes]) -> None:
        for i, chunk in enumerate(chunks):
            if self.broken:
                return
            if i and self.gap:
                time.sleep(self.gap)  # lets the peer see the writes as separate reads
            try:
                self.sock.settimeout(5.0)
                self.sock.sendall(chunk)
                self.writes.append(chunk)
            except OSError:
                self.broken = True


# --------------------------------------------------------------------------- clocks


class Clock:
    """Event timestamps in microseconds. FreeSWITCH's media clock advances in 20 ms frames."""

    def now_us(self) -> int:
        raise NotImplementedError

    def advance(self, us: int) -> int:
        """Move on by about ``us`` microseconds (media time passing); returns the new now."""
        raise NotImplementedError


class VirtualClock(Clock):
    """Starts at the wall clock (or ``start_us``) and moves only when media time passes, so a
    2 s playback takes no real time."""

    def __init__(self, start_us: int | None = None) -> None:
        self._now = start_us if start_us is not None else int(time.time() * 1_000_000)
        self._lock = threading.Lock()

    def now_us(self) -> int:
        return self._now

    def advance(self, us: int) -> int:
        with self._lock:
            self._now += max(0, us)
            return self._now


class ScriptedClock(VirtualClock):
    """Replays exact timestamps (e.g. a capture's): each advance takes the next one; when
    they run out it behaves like a VirtualClock."""

    def __init__(self, start_us: int, steps: Iterable[int]) -> None:
        super().__init__(start_us)
        self._steps = list(steps)

    def advance(self, us: int) -> int:
        with self._lock:
            self._now = self._steps.pop(0) if self._steps else self._now + max(0, us)
            return self._now


class WallClock(Clock):
    """Real time; advance() does not wait."""

    def now_us(self) -> int:
        return int(time.time() * 1_000_000)

    def advance(self, us: int) -> int:
        return self.now_us()


# --------------------------------------------------------------------------- events & switch


@dataclass
class SimEvent:
    """An event as FreeSWITCH builds it: ordered raw (not yet encoded) headers and a body."""

    name: str
    headers: Headers
    body: str | None = None
    subclass: str | None = None

    def get(self, name: str) -> str | None:
        low = name.lower()
        for key, value in self.headers:
            if key.lower() == low:
                return value
        return None

    @property
    def unique_id(self) -> str | None:
        return self.get("Unique-ID")


class FreeSwitch:
    """The simulated switch: identity, event sequence, clock, channels and the event bus that
    feeds every connected listener (inbound and outbound)."""

    def __init__(self, *, hostname: str = "vm", switchname: str | None = None,
                 core_uuid: str | None = None, ipv4: str = "192.0.2.2", ipv6: str = "fd00::2",
                 clock: Clock | None = None, event_sequence: int = 1,
                 utc_offset_minutes: int = 0, uuid_factory: Callable[[], str] | None = None,
                 uptime_us: int | None = None) -> None:
        self.hostname = hostname
        self.switchname = switchname or hostname
        self.core_uuid = core_uuid or str(uuidlib.uuid4())
        self.ipv4, self.ipv6 = ipv4, ipv6
        self.clock = clock or VirtualClock()
        self.tz = dt.timezone(dt.timedelta(minutes=utc_offset_minutes))
        self.lock = threading.RLock()
        self._sequence = event_sequence
        self._uuid_factory = uuid_factory
        self._started = time.monotonic()
        self._fixed_uptime_us = uptime_us
        self._session_ids = 0
        self.channels: dict[str, SimChannel] = {}
        self.listeners: list[EslListener] = []
        self.sessions_since_startup = 0
        self.sessions_peak = 0
        self.api_log: list[str] = []
        # `originate ARGS` -> a reply text, or the SimChannel whose answer completes it
        self.originate_handler: Callable[[str], str | SimChannel] | None = None

    # identity & time --------------------------------------------------------
    def new_uuid(self) -> str:
        if self._uuid_factory is not None:
            with contextlib.suppress(StopIteration):
                return self._uuid_factory()
        return str(uuidlib.uuid4())

    def local_time(self, us: int) -> str:
        return dt.datetime.fromtimestamp(us / 1e6, self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def gmt_time(self, us: int) -> str:
        return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime(
            "%a, %d %b %Y %H:%M:%S GMT")

    def restart(self) -> None:
        """As after a FreeSWITCH restart: new Core-UUID, no channels, counters from scratch."""
        with self.lock:
            self.core_uuid = str(uuidlib.uuid4())
            self.channels.clear()
            self._sequence = 1
            self._session_ids = 0
            self._started = time.monotonic()
            self.sessions_since_startup = self.sessions_peak = 0

    def next_session_id(self) -> int:
        with self.lock:
            self._session_ids += 1
            return self._session_ids

    def uptime_us(self) -> int:
        if self._fixed_uptime_us is not None:
            return self._fixed_uptime_us
        return int((time.monotonic() - self._started) * 1e6)

    # events ------------------------------------------------------------------
    def skip(self, count: int) -> None:
        """Consume sequence numbers of events the simulator does not build (see HIDDEN)."""
        with self.lock:
            self._sequence += count

    def new_event(self, name: str, location: tuple[str, str, int] | None = None) -> SimEvent:
        """switch_event_create + prep: the 13 core headers every event starts with."""
        with self.lock:
            seq = self._sequence
            self._sequence += 1
        now = self.clock.now_us()
        file, func, line = location or LOCATIONS.get(name, ("switch_event.c", "switch_event_fire", 1))
        return SimEvent(name, [
            ("Event-Name", name), ("Core-UUID", self.core_uuid),
            ("FreeSWITCH-Hostname", self.hostname), ("FreeSWITCH-Switchname", self.switchname),
            ("FreeSWITCH-IPv4", self.ipv4), ("FreeSWITCH-IPv6", self.ipv6),
            ("Event-Date-Local", self.local_time(now)), ("Event-Date-GMT", self.gmt_time(now)),
            ("Event-Date-Timestamp", str(now)), ("Event-Calling-File", file),
            ("Event-Calling-Function", func), ("Event-Calling-Line-Number", str(line)),
            ("Event-Sequence", str(seq)),
        ])

    def heartbeat(self) -> SimEvent:
        """The HEARTBEAT FreeSWITCH sends every ``event-heartbeat-interval`` (20 s by default);
        not sent on its own here, tests fire it. Header names: source (send_heartbeat);
        values modelled."""
        up = self.uptime_us()
        with self.lock:
            current, total, peak = len(self.channels), self.sessions_since_startup, self.sessions_peak
        secs, usec = divmod(up, 1_000_000)
        minutes, seconds = divmod(secs, 60)
        hours, minutes = divmod(minutes, 60)
        days, hours = divmod(hours, 24)
        ev = self.new_event("HEARTBEAT")
        ev.headers += [
            ("Event-Info", "System Ready"),
            ("Up-Time", f"0 years, {days} days, {hours} hours, {minutes} minutes, {seconds} seconds, "
                        f"{usec // 1000} milliseconds, {usec % 1000} microseconds"),
            ("FreeSWITCH-Version", "1.10.12-release~64bit"), ("Uptime-msec", str(up // 1000)),
            ("Session-Count", str(current)), ("Max-Sessions", "200"), ("Session-Per-Sec", "50"),
            ("Session-Per-Sec-Last", "0"), ("Session-Per-Sec-Max", "0"),
            ("Session-Per-Sec-FiveMin", "0"), ("Session-Since-Startup", str(total)),
            ("Session-Peak-Max", str(peak)), ("Session-Peak-FiveMin", str(peak)),
            ("Idle-CPU", "99.630000"),
        ]
        self.fire(ev)
        return ev

    def fire(self, event: SimEvent) -> None:
        """Deliver to every listener whose subscription matches (source: event_handler)."""
        with self.lock:
            for listener in list(self.listeners):
                listener.offer(event)

    def add_listener(self, listener: EslListener) -> None:
        with self.lock:
            self.listeners.insert(0, listener)

    def remove_listener(self, listener: EslListener) -> None:
        with self.lock:
            if listener in self.listeners:
                self.listeners.remove(listener)

    # channels ----------------------------------------------------------------
    def register(self, channel: SimChannel) -> None:
        with self.lock:
            self.channels[channel.uuid] = channel
            self.sessions_since_startup += 1
            self.sessions_peak = max(self.sessions_peak, len(self.channels))

    def unregister(self, channel: SimChannel) -> None:
        with self.lock:
            self.channels.pop(channel.uuid, None)

    def new_call(self, profile: CallProfile | None = None, *, uuid: str | None = None,
                 loopback_peer: bool = True) -> SimChannel:
        """A channel driven by the test (no outbound socket), e.g. for inbound-listener tests:
        ``ch = switch.new_call(CallProfile(caller_id_number="1001")); ch.create(); ch.answer()``.
        A ``loopback/...`` channel brings its A-leg along unless ``loopback_peer`` is False."""
        return SimChannel(self, profile or CallProfile(), uuid=uuid, loopback_peer=loopback_peer)

    # api ---------------------------------------------------------------------
    def originate(self, arg: str, complete: Callable[[str], None]) -> str | None:
        """Run the test's originate_handler; a reply now, or None when ``complete`` is called
        later, at the answer of the channel it returned (source: originate returns when the
        call is answered; capture: the BACKGROUND_JOB sits between the two CHANNEL_ANSWERs)."""
        with self.lock:
            self.api_log.append(f"originate {arg}")
            if self.originate_handler is None:
                return "-ERR NO_ROUTE_DESTINATION\n"  # modelled: nothing to route to
            result = self.originate_handler(arg)
            if isinstance(result, str):
                return result
            result.originate_jobs.append(complete)
            return None

    def api(self, command: str, arg: str | None, timeout: float = 60.0) -> str:
        """What `api`/`bgapi` return (source: mod_commands.c; status/version from captures)."""
        if command.lower() == "originate":
            done = threading.Event()
            reply: list[str] = []
            with self.lock:
                result = self.originate(arg or "", lambda text: (reply.append(text), done.set()))
            if result is not None:
                return result
            done.wait(timeout)
            return reply[0] if reply else "-ERR PROGRESS_TIMEOUT\n"
        self.api_log.append(command if arg is None else f"{command} {arg}")
        handler = _API.get(command.lower())
        if handler is None:
            return f"-ERR {command} Command not found!\n"
        return handler(self, arg or "")


# --------------------------------------------------------------------------- api commands


def _api_status(sw: FreeSwitch, arg: str) -> str:
    up = sw.uptime_us()
    secs, usec = divmod(up, 1_000_000)
    years, rest = divmod(secs, 365 * 86400)
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    with sw.lock:
        current, total, peak = len(sw.channels), sw.sessions_since_startup, sw.sessions_peak
    return (f"UP {years} years, {days} days, {hours} hours, {minutes} minutes, {seconds} seconds, "
            f"{usec // 1000} milliseconds, {usec % 1000} microseconds\n"
            "FreeSWITCH (Version 1.10.12-release  64bit) is ready\n"
            f"{total} session(s) since startup\n"
            f"{current} session(s) - peak {peak}, last 5min {peak} \n"
            "0 session(s) per Sec out of max 50, peak 0, last 5min 0 \n"
            "200 session(s) max\nmin idle cpu 0.00/99.63\nCurrent Stack Size/Max 240K/8192K\n")


def _api_kill(sw: FreeSwitch, arg: str) -> str:
    if not arg.strip():
        return "-USAGE: <uuid> [cause]\n"
    uuid, _, cause = arg.strip().partition(" ")
    with sw.lock:
        channel = sw.channels.get(uuid)
        if channel is None or channel.down:
            return "-ERR No Such Channel!\n"  # source (1.10 kill_function)
        channel.hangup(cause_from_string(cause) if cause.strip() else "NORMAL_CLEARING",
                       source="uuid_kill")
    return "+OK\n"


def _api_exists(sw: FreeSwitch, arg: str) -> str:
    with sw.lock:
        channel = sw.channels.get(arg.strip())
        return "true" if channel is not None and not channel.down else "false"


def _api_getvar(sw: FreeSwitch, arg: str) -> str:
    parts = arg.split()
    if len(parts) < 2:
        return "-USAGE: <uuid> <var>\n"
    with sw.lock:
        channel = sw.channels.get(parts[0])
        if channel is None:
            return "-ERR No such channel!\n"
        return channel.vars.get(parts[1]) or "_undef_"


def _api_setvar(sw: FreeSwitch, arg: str) -> str:
    parts = arg.split(" ", 2)
    if len(parts) < 2:
        return "-USAGE: <uuid> <var> [value]\n"
    with sw.lock:
        channel = sw.channels.get(parts[0])
        if channel is None:
            return "-ERR No such channel!\n"
        channel.set_var(parts[1], parts[2] if len(parts) > 2 else None, record=True)
    return "+OK\n"


#: mod_commands' usage line for uuid_setvar_multi (source: UUID_MULTISET_SYNTAX).
SETVAR_MULTI_USAGE = "-USAGE: <uuid> <var>=<value>;<var>=<value>...\n"


def _api_setvar_multi(sw: FreeSwitch, arg: str) -> str:
    """uuid_setvar_multi (source: mod_commands.c): the uuid up to the first space, then
    ``name=value`` items split on ``;`` (at most 64); an item without ``=`` or with an empty
    value unsets its variable, one with no name answers ``-ERR No variable specified``. ``+OK``
    once any was set; an unknown channel answers ``-ERR No such channel!`` followed by the
    usage line (the source falls through to it); no space at all: no output, which the event
    socket answers ``-ERR no reply``."""
    if " " not in arg:
        return ""
    uuid, _, rest = arg.partition(" ")
    out, count = "", 0
    with sw.lock:
        channel = sw.channels.get(uuid)
        if channel is None:
            return "-ERR No such channel!\n" + SETVAR_MULTI_USAGE
        for item in rest.split(";")[:64]:
            name, eq, value = item.partition("=")
            if not name:
                out += "-ERR No variable specified\n"
                continue
            channel.set_var(name, (value or None) if eq else None, record=True)
            count += 1
    return out + ("+OK\n" if count else SETVAR_MULTI_USAGE)


CHANNEL_COLUMNS = _words(  # source: switch_core_sqldb.c create_channels_sql (1.10)
    "uuid direction created created_epoch name state cid_name cid_num ip_addr dest application "
    "application_data dialplan context read_codec read_rate read_bit_rate write_codec write_rate "
    "write_bit_rate secure hostname presence_id presence_data accountcode callstate callee_name "
    "callee_num callee_direction call_uuid sent_callee_name sent_callee_num initial_cid_name "
    "initial_cid_num initial_ip_addr initial_dest initial_dialplan initial_context")
CALL_COLUMNS = _words(  # source: basic_calls view
    "uuid direction created created_epoch name state cid_name cid_num ip_addr dest presence_id "
    "presence_data accountcode callstate callee_name callee_num callee_direction call_uuid hostname "
    "sent_callee_name sent_callee_num b_uuid b_direction b_created b_created_epoch b_name b_state "
    "b_cid_name b_cid_num b_ip_addr b_dest b_presence_id b_presence_data b_accountcode b_callstate "
    "b_callee_name b_callee_num b_callee_direction b_sent_callee_name b_sent_callee_num "
    "call_created_epoch")


def _api_show(sw: FreeSwitch, arg: str) -> str:
    """show channels|calls [count] [as json|as delim X] (format: source; row values modelled)."""
    words = arg.split()
    if not words or words[0].lower() not in ("channels", "calls"):
        return "-USAGE: codec|endpoint|application|api|dialplan|file|timer|calls [count]|channels " \
               "[count|like <match string>]|calls|detailed_calls|bridged_calls|detailed_bridged_calls" \
               "|aliases|complete|chat|management|modules|nat_map|say|interfaces|interface_types" \
               "|tasks|limits|status\n"
    fmt, delim = "delim", ","
    if "as" in [w.lower() for w in words]:
        idx = [w.lower() for w in words].index("as")
        fmt = words[idx + 1].lower() if idx + 1 < len(words) else "delim"
        if fmt == "delim" and idx + 2 < len(words):
            delim = words[idx + 2]
    with sw.lock:
        channels = sorted(sw.channels.values(), key=lambda c: c.times.created)
        rows = [c.show_row() for c in channels]
    columns = CHANNEL_COLUMNS
    if words[0].lower() == "calls":
        columns = CALL_COLUMNS
        rows = [{**row, **{c: "" for c in CALL_COLUMNS if c.startswith("b_")},
                 "call_created_epoch": ""} for row in rows]
    if len(words) > 1 and words[1].lower() == "count":
        return f"\n{len(rows)} total.\n"
    if fmt == "json":
        if not rows:
            return '{"row_count":0}'
        data = [{c: row.get(c, "") for c in columns} for row in rows]
        return json.dumps({"row_count": len(rows), "rows": data}, separators=(",", ":"))
    if fmt not in ("delim", "csv"):
        return f"-ERR Cannot find format {fmt}\n"
    out = ""
    if rows:
        out += delim.join(columns) + "\n"
        out += "".join(delim.join(row.get(c, "") for c in columns) + "\n" for row in rows)
    return out + f"\n{len(rows)} total.\n"


_API: dict[str, Callable[[FreeSwitch, str], str]] = {
    "status": _api_status,
    "version": lambda sw, arg: VERSION_LINE,
    "hostname": lambda sw, arg: sw.hostname,
    "uptime": lambda sw, arg: str(sw.uptime_us() // 1_000_000),
    "echo": lambda sw, arg: arg,
    "uuid_kill": _api_kill,
    "uuid_exists": _api_exists,
    "uuid_getvar": _api_getvar,
    "uuid_setvar": _api_setvar,
    "uuid_setvar_multi": _api_setvar_multi,
    "show": _api_show,
}


def cause_from_string(text: str) -> str:
    """switch_channel_str2cause: a name (any case) or a Q.850 number; unknown -> NORMAL_CLEARING
    (modelled: FreeSWITCH would hang up with cause NONE)."""
    text = text.strip()
    if text.isdigit():
        for name, code in HANGUP_CAUSES.items():
            if code == int(text):
                return name
        return "NORMAL_CLEARING"
    upper = text.upper()
    return upper if upper in HANGUP_CAUSES else "NORMAL_CLEARING"


# --------------------------------------------------------------------------- channel model


class VarList:
    """Channel variables in FreeSWITCH's order: setting a variable moves it to the end
    (EF_UNIQ_HEADERS deletes, then appends), setting it empty deletes it (capture)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = {}
        for name, value in items:
            self.set(name, value)

    def set(self, name: str, value: str | None) -> None:
        self._items.pop(name, None)
        if value:
            self._items[name] = value

    def get(self, name: str) -> str | None:
        return self._items.get(name)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items


@dataclass
class Times:
    """switch_channel_timetable_t, microseconds."""

    profile_created: int = 0
    created: int = 0
    answered: int = 0
    progress: int = 0
    progress_media: int = 0
    hungup: int = 0
    transferred: int = 0
    resurrected: int = 0
    bridged: int = 0
    last_hold: int = 0
    hold_accum: int = 0


@dataclass
class CallProfile:
    """Who calls whom, and the channel variables the dialplan set before ``socket``.

    Defaults are the captured loopback B-leg (``loopback/1001-b``)."""

    caller_id_number: str = "0000000000"
    caller_id_name: str = ""
    destination_number: str = "1001"
    callee_id_name: str = "Outbound Call"
    callee_id_number: str = "default"
    ani: str | None = None  # default: the caller ID number
    network_addr: str = ""
    username: str = ""
    context: str = "default"
    dialplan: str = "xml"
    source: str = "mod_loopback"
    rdnis: str = ""
    screen_bit: bool = True
    hide_name: bool = False
    hide_number: bool = False
    direction: str = "inbound"
    channel_name: str | None = None  # default: loopback/<destination>-b
    variables: Mapping[str, str] = field(default_factory=dict)
    codec: tuple[str, int, int] = ("L16", 8000, 128000)  # name, rate, bit rate

    def name_for_channel(self) -> str:
        return self.channel_name or f"loopback/{self.destination_number}-b"


@dataclass
class Recording:
    """A record_session in progress or done."""

    path: str  # as the application got it (and as the events show it)
    started_us: int
    stopped_us: int | None = None
    size: int = 0
    failed: bool = False
    file: str = ""  # where the simulator wrote it (see FsCall's record_path)

    @property
    def file_exists(self) -> bool:
        return bool(self.file) and Path(self.file).exists()


@dataclass
class AppRun:
    """One application executed through ``sendmsg``."""

    name: str
    arg: str | None
    app_uuid: str
    response: str = "_none_"
    event_uuid: str | None = None


def _wav_header(samples: int, rate: int = 8000) -> bytes:
    data = samples * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", data))


class SimChannel:
    """One FreeSWITCH channel: caller profile, variables, state, and the events its life
    produces, in the order and with the header sets of the captures."""

    def __init__(self, switch: FreeSwitch, profile: CallProfile, *, uuid: str | None = None,
                 session_id: int | None = None, peer_uuid: str | None = None,
                 loopback_peer: bool = True) -> None:
        self.sw = switch
        self.profile = profile
        self.uuid = uuid or switch.new_uuid()
        self.name = profile.name_for_channel()
        self.is_loopback = self.name.startswith("loopback/")
        with_peer = self.is_loopback and loopback_peer
        if session_id is None:  # the A-leg is created first (capture: A=7, B=8)
            peer_session_id = switch.next_session_id() if with_peer else 0
            session_id = switch.next_session_id()
        else:
            peer_session_id = session_id - 1
        self.direction = profile.direction
        self.cid_name, self.cid_number = profile.caller_id_name, profile.caller_id_number
        self.orig_cid_name, self.orig_cid_number = profile.caller_id_name, profile.caller_id_number
        self.callee_name, self.callee_number = profile.callee_id_name, profile.callee_id_number
        self.times = Times()
        self.state, self.callstate = "CS_INIT", "DOWN"
        self.state_number = STATE_NUMBERS["CS_ROUTING"]  # capture: CS_INIT with 2
        self.answered = self.early = self.down = False
        self.hangup_cause: str | None = None
        self.hangup_source: str | None = None
        self.hit_dialplan = self.direction == "inbound"
        self.codec = profile.codec
        self.vars = VarList([("direction", self.direction), ("uuid", self.uuid),
                             ("call_uuid", self.uuid), ("session_id", str(session_id)),
                             ("channel_name", self.name), ("read_codec", self.codec[0]),
                             ("read_rate", str(self.codec[1])), ("write_codec", self.codec[0]),
                             ("write_rate", str(self.codec[1]))])
        self.peer: SimChannel | None = None
        if with_peer:
            self.peer = _make_a_leg(self, peer_uuid or switch.new_uuid(), peer_session_id)
        if self.is_loopback:
            self.vars.set("other_loopback_leg_uuid", self.peer.uuid if self.peer else (peer_uuid or ""))
            self.vars.set("loopback_leg", "B")
        self.controlled = False  # an outbound socket controls it (socket app running)
        self.parked = False
        self.socket_app: tuple[str, str] | None = None  # (data, app uuid)
        self.executing: str | None = None
        self.pending_teardown = False
        self.recording: Recording | None = None
        self.recordings: list[Recording] = []
        self.last_app: tuple[str, str | None] | None = None
        self.variables_set: dict[str, str | None] = {}
        self.exported: list[str] = []
        self.record_fails: Callable[[str], bool] = lambda path: False
        self.app_runs: list[AppRun] = []
        self.originate_jobs: list[Callable[[str], None]] = []  # waiting `originate`s
        self.on_teardown: list[Callable[[SimChannel], None]] = []
        self.record_path: Callable[[str], str] = lambda path: path  # where the file really goes

    def _set_state(self, state: str, callstate: str) -> None:
        self.state, self.state_number, self.callstate = state, STATE_NUMBERS[state], callstate

    # event building ---------------------------------------------------------
    def basic_headers(self) -> Headers:
        """switch_channel_event_set_basic_data (source; order confirmed by the captures)."""
        h: Headers = [("Channel-State", self.state), ("Channel-Call-State", self.callstate),
                      ("Channel-State-Number", str(self.state_number)), ("Channel-Name", self.name),
                      ("Unique-ID", self.uuid), ("Call-Direction", self.direction),
                      ("Presence-Call-Direction", self.direction),
                      ("Channel-HIT-Dialplan", "true" if self.hit_dialplan else "false")]
        for var, header in (("presence_id", "Channel-Presence-ID"),
                            ("presence_data", "Channel-Presence-Data")):
            if self.vars.get(var):
                h.append((header, self.vars.get(var) or ""))
        h.append(("Channel-Call-UUID", self.vars.get("call_uuid") or self.uuid))
        answer_state = ("hangup" if self.down else "answered" if self.answered
                        else "early" if self.early else "ringing")
        h.append(("Answer-State", answer_state))
        if self.hangup_cause:
            h.append(("Hangup-Cause", self.hangup_cause))
        name, rate, bits = self.codec
        for side in ("Read", "Write"):
            h += [(f"Channel-{side}-Codec-Name", name), (f"Channel-{side}-Codec-Rate", str(rate)),
                  (f"Channel-{side}-Codec-Bit-Rate", str(bits))]
        return h + self.profile_headers("Caller")

    def profile_headers(self, prefix: str) -> Headers:
        """switch_caller_profile_event_set_data (source): empty fields are left out."""
        p, t = self.profile, self.times
        fields = [("Direction", self.direction), ("Logical-Direction", self.direction),
                  ("Username", p.username), ("Dialplan", p.dialplan),
                  ("Caller-ID-Name", self.cid_name), ("Caller-ID-Number", self.cid_number),
                  ("Orig-Caller-ID-Name", self.orig_cid_name if self.cid_name else ""),
                  ("Orig-Caller-ID-Number", self.orig_cid_number if self.cid_number else ""),
                  ("Callee-ID-Name", self.callee_name), ("Callee-ID-Number", self.callee_number),
                  ("Network-Addr", p.network_addr),
                  ("ANI", p.ani if p.ani is not None else self.orig_cid_number),
                  ("Destination-Number", p.destination_number), ("Unique-ID", self.uuid),
                  ("Source", p.source), ("Context", p.context), ("RDNIS", p.rdnis),
                  ("Channel-Name", self.name), ("Profile-Index", "1")]
        h: Headers = [(f"{prefix}-{k}", v) for k, v in fields if v]
        for k, v in (("Profile-Created-Time", t.profile_created), ("Channel-Created-Time", t.created),
                     ("Channel-Answered-Time", t.answered), ("Channel-Progress-Time", t.progress),
                     ("Channel-Progress-Media-Time", t.progress_media),
                     ("Channel-Hangup-Time", t.hungup), ("Channel-Transfer-Time", t.transferred),
                     ("Channel-Resurrect-Time", t.resurrected), ("Channel-Bridged-Time", t.bridged),
                     ("Channel-Last-Hold", t.last_hold), ("Channel-Hold-Accum", t.hold_accum)):
            h.append((f"{prefix}-{k}", str(v)))
        h += [(f"{prefix}-Screen-Bit", "true" if p.screen_bit else "false"),
              (f"{prefix}-Privacy-Hide-Name", "true" if p.hide_name else "false"),
              (f"{prefix}-Privacy-Hide-Number", "true" if p.hide_number else "false")]
        return h

    def event(self, name: str, pre: Sequence[tuple[str, str]] = (),
              post: Sequence[tuple[str, str]] = ()) -> SimEvent:
        ev = self.sw.new_event(name)
        ev.headers += list(pre) + self.basic_headers()
        if name in EVENTS_WITH_VARIABLES:
            ev.headers += [(f"variable_{k}", v) for k, v in self.vars.items()]
        ev.headers += list(post)
        return ev

    def fire(self, name: str, pre: Sequence[tuple[str, str]] = (),
             post: Sequence[tuple[str, str]] = ()) -> SimEvent:
        ev = self.event(name, pre, post)
        self.sw.fire(ev)
        return ev

    def channel_data(self, reply_headers: Headers) -> SimEvent:
        """The CHANNEL_DATA that answers `connect` (capture: Channel-* profile first)."""
        ev = self.sw.new_event("CHANNEL_DATA")
        ev.headers += self.profile_headers("Channel") + self.basic_headers()
        ev.headers += [(f"variable_{k}", v) for k, v in self.vars.items()] + list(reply_headers)
        return ev

    # variables --------------------------------------------------------------
    def set_var(self, name: str, value: str | None, record: bool = False) -> None:
        self.vars.set(name, value)
        if record:
            self.variables_set[name] = value

    # life cycle ---------------------------------------------------------------
    def create(self) -> None:
        """CHANNEL_CREATE for both loopback legs, as when originated (capture)."""
        with self.sw.lock:
            now = self.sw.clock.now_us()
            for ch in filter(None, (self.peer, self)):
                ch.times.profile_created = ch.times.created = now
                self.sw.register(ch)
            if self.peer:
                self.peer.fire("CHANNEL_CREATE")
            self.fire("CHANNEL_CREATE")

    def start_socket(self, socket_arg: str, host: str, app_uuid: str,
                     variables: Mapping[str, str]) -> None:
        """The dialplan ran up to ``socket HOST:PORT async full`` (capture: variables as in
        CHANNEL_DATA)."""
        with self.sw.lock:
            self.sw.skip(HIDDEN["create_to_connect"])
            self.vars.set("call_uuid", self.vars.get("call_uuid"))
            for k, v in variables.items():
                self.vars.set(k, v)
            self._set_state("CS_EXECUTE", "RINGING")
            self.vars.set("current_application_data", socket_arg)
            self.vars.set("current_application", "socket")
            self.vars.set("socket_host", host)
            self.socket_app = (socket_arg, app_uuid)
            self.last_app = ("socket", socket_arg)
            self.controlled = True

    def park(self) -> None:
        with self.sw.lock:
            self.parked = True
            self.fire("CHANNEL_PARK")

    def pre_answer(self) -> None:
        """Early media (capture: record_session before answer)."""
        with self.sw.lock:
            if self.answered or self.early or self.down:
                return
            self.sw.skip(HIDDEN["pre_answer_before"])
            self.early = True
            self.times.progress_media = self.sw.clock.now_us()
            self.vars.set("endpoint_disposition", "EARLY MEDIA")
            self.fire("CHANNEL_PROGRESS_MEDIA")
            self.sw.skip(HIDDEN["pre_answer_after"])
            self.callstate = "EARLY"

    def answer(self) -> None:
        with self.sw.lock:
            if self.answered or self.down:
                return
            if self.state == "CS_INIT":  # a test-driven channel: routed straight to execute
                self._set_state("CS_EXECUTE", "RINGING")
            now = self.sw.clock.now_us()
            if self.peer is not None:
                self.peer.times.answered = now
                self.peer.answered = True
                self.peer._set_state("CS_CONSUME_MEDIA", self.peer.callstate)
                self.peer.fire("CHANNEL_ANSWER")
            else:
                self.sw.skip(1)
            self._complete_originate(f"+OK {(self.peer or self).uuid}\n")
            self.answered = True
            self.times.answered = now
            self.fire("CHANNEL_ANSWER")
            self.vars.set("endpoint_disposition", "ANSWER")
            self.sw.skip(HIDDEN["answer_after"])
            self.callstate = "ACTIVE"
            if self.peer is not None:
                self.peer._flip_cid_after_answer()

    def _complete_originate(self, reply: str) -> None:
        jobs, self.originate_jobs = self.originate_jobs, []
        for job in jobs:
            job(reply)
        if not jobs:
            self.sw.skip(HIDDEN["answer_before"])

    def start_recording(self, path: str) -> Recording:
        with self.sw.lock:
            rec = Recording(path, 0, failed=self.record_fails(path))
            self.recordings.append(rec)
            if rec.failed or self.down:
                rec.failed = True
                return rec
            rec.started_us = self.sw.clock.advance(TICK_US)
            rec.file = self.record_path(path)
            Path(rec.file).parent.mkdir(parents=True, exist_ok=True)
            Path(rec.file).write_bytes(_wav_header(0))
            self.recording = rec
            self.fire("RECORD_START", post=[("Record-File-Path", path)])
            self.sw.skip(HIDDEN["record_start_after"])
            return rec

    def stop_recording(self) -> None:
        """RECORD_STOP; the file gets its audio (silence) and final size (capture: 32044 bytes
        for 2000 ms)."""
        with self.sw.lock:
            rec = self.recording
            if rec is None:
                return
            self.recording = None
            now = self.sw.clock.now_us()
            ms = round((now - rec.started_us) / TICK_US) * 20 + 40  # capture: 1960 ms -> 2000 ms
            samples = ms * 8
            rec.stopped_us, rec.size = now, 44 + samples * 2
            Path(rec.file).write_bytes(_wav_header(samples) + bytes(samples * 2))
            for k, v in (("record_file_size", str(rec.size)), ("record_samples", str(samples)),
                         ("record_seconds", str(ms // 1000)), ("record_ms", str(ms)),
                         ("record_completion_cause", "success-silence")):
                self.vars.set(k, v)
            self.fire("RECORD_STOP", post=[("Record-File-Path", rec.path),
                                           ("Record-Completion-Cause", "success-silence")])

    def update_caller_id(self, name: str, number: str, bridged_to: str | None = None) -> SimEvent:
        """The far end changed the presented caller ID mid-call (modelled on sofia.c
        sofia_update_callee_id: CALL_UPDATE with Direction: RECV; no capture has one)."""
        with self.sw.lock:
            self.cid_name, self.cid_number = name, number
            pre: Headers = [("Direction", "RECV")]
            if bridged_to:
                pre.append(("Bridged-To", bridged_to))
            return self.fire("CALL_UPDATE", pre=pre)

    def hangup(self, cause: str = "NORMAL_CLEARING", source: str = "api") -> None:
        """switch_channel_hangup: CHANNEL_HANGUP now; the rest of the teardown follows at once
        unless an application is running (then it follows its EXECUTE_COMPLETE)."""
        with self.sw.lock:
            if self.down:
                return
            self.down = True
            self.hangup_cause, self.hangup_source = cause, source
            self.state_number = STATE_NUMBERS["CS_HANGUP"]  # running state follows later
            self.fire("CHANNEL_HANGUP")
            jobs, self.originate_jobs = self.originate_jobs, []
            for job in jobs:  # source: originate fails with the hangup cause
                job(f"-ERR {cause}\n")
            if self.executing:
                self.pending_teardown = True
            else:
                self.teardown()

    def teardown(self) -> None:
        """From the socket app's end to CHANNEL_HANGUP_COMPLETE (capture)."""
        with self.sw.lock:
            self.pending_teardown = False
            if self.controlled and self.parked:
                self.sw.skip(HIDDEN["before_unpark"])
                self.parked = False
                self.fire("CHANNEL_UNPARK")
                data, app_uuid = self.socket_app or ("", "")
                self.fire("CHANNEL_EXECUTE_COMPLETE", post=_app_headers(
                    "socket", data, app_uuid, "_none_"))
            self.controlled = False
            self.state = "CS_HANGUP"
            self.fire("CHANNEL_STATE")
            self.times.hungup = self.sw.clock.now_us()
            if self.recording is not None:
                self.stop_recording()
                self.sw.skip(HIDDEN["after_record_stop"])
            else:
                self.sw.skip(HIDDEN["no_recording_teardown"])
            self._set_state("CS_REPORTING", "HANGUP")
            self.fire("CHANNEL_STATE")
            for k, v in self.cdr_variables():
                self.vars.set(k, v)
            if self.is_loopback:
                self.vars.set("is_loopback", "1")
            self.fire("CHANNEL_HANGUP_COMPLETE", pre=[("Hangup-Cause", self.hangup_cause or "")])
            self.sw.unregister(self)
            if self.peer is not None:
                self.peer._hangup_after_partner(self)
            for hook in self.on_teardown:
                hook(self)

    def cdr_variables(self) -> Headers:
        """switch_channel_set_timestamps + hangup cause variables (capture-verified)."""
        t = self.times
        cause = self.hangup_cause or "NORMAL_CLEARING"
        out: Headers = [("hangup_cause", cause), ("hangup_cause_q850", str(HANGUP_CAUSES.get(cause, 16))),
                        ("digits_dialed", "none"), ("start_stamp", self.sw.local_time(t.created)),
                        ("profile_start_stamp", self.sw.local_time(t.profile_created))]
        for key, us in (("answer_stamp", t.answered), ("bridge_stamp", t.bridged),
                        ("hold_stamp", t.last_hold), ("resurrect_stamp", t.resurrected),
                        ("progress_stamp", t.progress), ("progress_media_stamp", t.progress_media)):
            if us:
                out.append((key, self.sw.local_time(us)))
        out.append(("end_stamp", self.sw.local_time(t.hungup)))
        for key, us in (("start", t.created), ("profile_start", t.profile_created),
                        ("answer", t.answered), ("bridge", t.bridged), ("last_hold", t.last_hold)):
            out += [(f"{key}_epoch", str(us // 1_000_000)), (f"{key}_uepoch", str(us))]
        out += [("hold_accum_seconds", str(t.hold_accum // 1_000_000)),
                ("hold_accum_usec", str(t.hold_accum)), ("hold_accum_ms", str(t.hold_accum // 1000))]
        for key, us in (("resurrect", t.resurrected), ("progress", t.progress),
                        ("progress_media", t.progress_media), ("end", t.hungup)):
            out += [(f"{key}_epoch", str(us // 1_000_000)), (f"{key}_uepoch", str(us))]
        if self.last_app:
            out.append(("last_app", self.last_app[0]))
            if self.last_app[1]:
                out.append(("last_arg", self.last_app[1]))
        out.append(("caller_id", f'"{self.cid_name}" <{self.cid_number}>' if self.cid_name
                    else self.cid_number))

        def diff(end: int, begin: int, div: int) -> str:  # whole seconds/ms/us, truncated
            return str(end // div - begin // div if end and begin else 0)

        for prefix, unit, div in (("", "sec", 1_000_000), ("m", "msec", 1000), ("u", "usec", 1)):
            out += [(f"{prefix}duration", diff(t.hungup, t.created, div)),
                    (f"bill{unit}", diff(t.hungup, t.answered, div)),
                    (f"progress{unit}", diff(t.progress, t.created, div)),
                    (f"answer{unit}", diff(t.answered, t.created, div)),
                    (f"wait{unit}", diff(t.bridged, t.created, div)),
                    (f"progress_media{unit}", diff(t.progress_media, t.created, div)),
                    (f"flow_bill{unit}", diff(t.hungup, t.created, div))]
        return out

    # applications -------------------------------------------------------------
    def execute(self, app: str, arg: str | None, app_uuid: str, *, loops: int = 1,
                first: bool = False, playback_ms: Callable[[str], int | None] | None = None,
                realtime: float = 0.0) -> Iterator[float]:
        """Run an application as switch_ivr_parse_event/switch_core_session_exec do, yielding
        real seconds to wait where media time passes (0 unless ``realtime`` is set)."""
        run = AppRun(app, arg, app_uuid)
        with self.sw.lock:
            if self.down:
                return
            if first:
                self.sw.clock.advance(TICK_US)  # the session wakes on the next frame (capture)
            self.sw.skip(HIDDEN_BEFORE_EXECUTE.get(app, 0))
            self.vars.set("current_loop", "1")
            self.vars.set("total_loops", str(loops))
            if app in MEDIA_APPS:
                self.pre_answer()
            self.vars.set("current_application", app)
            self.vars.set("current_application_data", arg)
            self.vars.set("current_application_response", None)
            self.fire("CHANNEL_EXECUTE", post=_app_headers(app, arg, app_uuid, None))
            self.vars.set("current_application", app)
            self.last_app = (app, arg)
            self.executing = app
        yield from self._run_app(run, playback_ms, realtime)
        with self.sw.lock:
            self.executing = None
            self.fire("CHANNEL_EXECUTE_COMPLETE", post=_app_headers(app, arg, app_uuid, run.response))
            self.vars.set("current_loop", None)
            self.vars.set("total_loops", None)
            self.app_runs.append(run)
            if self.pending_teardown:
                self.teardown()

    def _run_app(self, run: AppRun, playback_ms: Callable[[str], int | None] | None,
                 realtime: float) -> Iterator[float]:
        """The application's own work (events, variables, media time)."""
        app, arg = run.name, run.arg or ""
        if app == "answer":
            self.answer()
        elif app == "pre_answer":
            self.pre_answer()
        elif app == "hangup":
            self.hangup(cause_from_string(arg) if arg else "NORMAL_CLEARING", source="hangup_app")
        elif app in ("set", "export", "unset"):
            name, _, value = arg.partition("=")
            with self.sw.lock:
                self.set_var(name, None if app == "unset" else value, record=True)
                if app == "export" and value:
                    self.exported.append(name)
                    old = self.vars.get("export_vars")
                    self.vars.set("export_vars", f"{old},{name}" if old else name)
        elif app == "record_session":
            self.start_recording(arg)
        elif app == "stop_record_session":
            self.stop_recording()
        elif app in ("playback", "sleep"):
            ms = _media_ms(app, arg, playback_ms)
            with self.sw.lock:
                self.sw.skip(HIDDEN["playback"] if app == "playback" else 0)
                if ms is None:
                    run.response = "FILE NOT FOUND"
                    self.vars.set("current_application_response", run.response)
                else:
                    self.sw.clock.advance(max(0, ms * 1000 - 2 * TICK_US))  # capture: 1960 ms
            if ms and realtime:
                yield ms / 1000 * realtime
            if app == "playback" and ms is not None:
                with self.sw.lock:
                    if self.down:
                        run.response = "PLAYBACK ERROR"  # modelled: hung up while playing
                    else:
                        samples = ms * 8
                        for k, v in (("playback_last_offset_pos", str(samples)),
                                     ("playback_seconds", str(ms // 1000)), ("playback_ms", str(ms)),
                                     ("playback_samples", str(samples)),
                                     ("current_application_response", "FILE PLAYED")):
                            self.vars.set(k, v)
                        run.response = "FILE PLAYED"

    def show_row(self) -> dict[str, str]:
        """This channel's row in the core DB's channels table (modelled from the schema)."""
        p = self.profile
        return {
            "uuid": self.uuid, "direction": self.direction,
            "created": self.sw.local_time(self.times.created),
            "created_epoch": str(self.times.created // 1_000_000), "name": self.name,
            "state": self.state, "cid_name": self.cid_name, "cid_num": self.cid_number,
            "ip_addr": p.network_addr, "dest": p.destination_number,
            "application": self.vars.get("current_application") or "",
            "application_data": self.vars.get("current_application_data") or "",
            "dialplan": p.dialplan.upper(), "context": p.context, "read_codec": self.codec[0],
            "read_rate": str(self.codec[1]), "read_bit_rate": str(self.codec[2]),
            "write_codec": self.codec[0], "write_rate": str(self.codec[1]),
            "write_bit_rate": str(self.codec[2]), "secure": "", "hostname": self.sw.hostname,
            "presence_id": "", "presence_data": "", "accountcode": "", "callstate": self.callstate,
            "callee_name": self.callee_name, "callee_num": self.callee_number,
            "callee_direction": "", "call_uuid": self.vars.get("call_uuid") or self.uuid,
            "sent_callee_name": "", "sent_callee_num": "",
            "initial_cid_name": self.orig_cid_name, "initial_cid_num": self.orig_cid_number,
            "initial_ip_addr": p.network_addr, "initial_dest": p.destination_number,
            "initial_dialplan": p.dialplan.upper(), "initial_context": p.context,
        }

    # loopback A-leg helpers ---------------------------------------------------------
    def _flip_cid_after_answer(self) -> None:
        """The A-leg flips its caller ID when answered (capture: channel_cid_flipped)."""
        if self.callee_number:
            self.vars.set("pre_transfer_caller_id_number", self.cid_number)
        if self.callee_name and self.cid_name:
            self.vars.set("pre_transfer_caller_id_name", self.cid_name)
        self.cid_name, self.callee_name = self.callee_name, self.cid_name
        self.cid_number, self.callee_number = self.callee_number, self.cid_number
        self.vars.set("endpoint_disposition", "ANSWER")
        # order seen in the A-leg's CHANNEL_HANGUP_COMPLETE
        pre = self.vars.get("pre_transfer_caller_id_number")
        self.vars.set("pre_transfer_caller_id_number", pre)
        self.vars.set("channel_cid_flipped", "yes")
        self.vars.set("call_uuid", self.uuid)
        self.vars.set("current_application", "park")
        self.hit_dialplan = True
        self.last_app = ("park", None)

    def _hangup_after_partner(self, partner: SimChannel) -> None:
        """The A-leg ends one frame after the B-leg (capture: +20 ms, 5 events later)."""
        self.sw.skip(HIDDEN["peer_hangup"])
        now = self.sw.clock.advance(TICK_US)
        self.down = True
        self.hangup_cause = partner.hangup_cause
        self.times.hungup = now
        self._set_state("CS_REPORTING", "HANGUP")
        for k, v in self.cdr_variables():
            self.vars.set(k, v)
        self.vars.set("is_loopback", "1")
        self.fire("CHANNEL_HANGUP_COMPLETE", pre=[("Hangup-Cause", self.hangup_cause or "")])
        self.sw.unregister(self)


def _make_a_leg(b_leg: SimChannel, uuid: str, session_id: int) -> SimChannel:
    """The loopback A-leg of an originate (capture: inbound_events_same_call.txt)."""
    profile = CallProfile(
        caller_id_number=b_leg.profile.caller_id_number, caller_id_name=b_leg.profile.caller_id_name,
        destination_number=b_leg.profile.destination_number,
        callee_id_name=b_leg.profile.callee_id_name, callee_id_number=b_leg.profile.callee_id_number,
        direction="outbound", context=b_leg.profile.context, dialplan=b_leg.profile.dialplan,
        source=b_leg.profile.source, codec=b_leg.profile.codec,
        channel_name=b_leg.name[:-2] + "-a" if b_leg.name.endswith("-b") else b_leg.name + "-a",
    )
    a = SimChannel(b_leg.sw, profile, uuid=uuid, session_id=session_id, loopback_peer=False)
    a.vars = VarList([("direction", "outbound"), ("is_outbound", "true"), ("uuid", uuid),
                      ("call_uuid", uuid), ("session_id", str(session_id)),
                      ("read_codec", a.codec[0]), ("read_rate", str(a.codec[1])),
                      ("write_codec", a.codec[0]), ("write_rate", str(a.codec[1])),
                      ("channel_name", a.name), ("originate_early_media", "true"),
                      ("originate_endpoint", "loopback"), ("other_loopback_leg_uuid", b_leg.uuid),
                      ("loopback_leg", "A")])
    a.hit_dialplan = False
    return a


def _app_headers(app: str, arg: str | None, app_uuid: str, response: str | None) -> Headers:
    h: Headers = [("Application", app)]
    if arg:
        h.append(("Application-Data", arg))
    if response is not None:
        h.append(("Application-Response", response))
    return h + [("Application-UUID", app_uuid)]


def _media_ms(app: str, arg: str, playback_ms: Callable[[str], int | None] | None) -> int | None:
    """How long a playback/sleep lasts; None = file not found."""
    if app == "sleep":
        return int(arg) if arg.strip().isdigit() else 0
    if playback_ms is not None:
        return playback_ms(arg)
    m = re.match(r"silence_stream://(\d+)", arg)
    return int(m.group(1)) if m else 1000


# --------------------------------------------------------------------------- ESL listener


class EslListener:
    """One event-socket connection's subscription state (source: struct listener)."""

    def __init__(self, switch: FreeSwitch, session: SimChannel | None = None) -> None:
        self.sw = switch
        self.session = session
        self.authed = session is not None
        self.events = False
        self.event_list: set[str] = set()
        self.custom: set[str] = set()
        self.myevents = False
        self.format = "plain"
        self.filters: list[tuple[str, str]] = []
        self.outbox: list[SimEvent] = []

    def offer(self, event: SimEvent) -> None:
        """event_handler(): subscription, filters, then the myevents UUID check."""
        if not self.events:
            return
        send = "ALL" in self.event_list or (
            event.name in self.event_list and (
                event.name != "CUSTOM" or not event.subclass or event.subclass in self.custom))
        if send and self.filters:
            send = self._filters_pass(event)
        if send and self.myevents:
            uuid = event.unique_id
            send = uuid is not None and (self.session is None or uuid == self.session.uuid)
        if send:
            self.outbox.append(event)

    def _filters_pass(self, event: SimEvent) -> bool:
        send = False
        for name, value in self.filters:
            hval = event.get(name)
            if hval is None:
                continue
            comp, pos = value, True
            while comp[:1] in ("+", "-", " "):  # leading signs: + keeps, - drops
                if comp[0] != " ":
                    pos = comp[0] == "+"
                comp = comp[1:]
            if send and pos:
                continue
            if value.startswith("/"):
                pattern = comp.strip("/")
                cmp = re.search(pattern, hval) is not None
            else:
                cmp = hval.lower() == comp.lower()
            if cmp:
                if not pos:
                    return False
                send = True
        return send

    def drain(self) -> list[SimEvent]:
        with self.sw.lock:
            out, self.outbox = self.outbox, []
        return out


def _event_type(name: str) -> str | None:
    """switch_name_event (source): case-insensitive, SWITCH_EVENT_ prefix allowed."""
    upper = name.upper()
    if len(upper) > 13 and upper.startswith("SWITCH_EVENT_"):
        upper = upper[13:]
    return upper if upper in EVENT_NAMES else None


LOG_LEVELS = {"console": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4,
              "notice": 5, "info": 6, "debug": 7}


class _EslSession:
    """What mod_event_socket's listener_run/parse_command do with one connection; the
    inbound and outbound sides subclass it (source: parse_command, command order kept)."""

    outbound = False
    password: str | None = None  # inbound only; outbound sessions start authenticated

    def __init__(self, switch: FreeSwitch, sock: socket.socket, listener: EslListener,
                 chunking: Chunking, write_gap: float, poll: float) -> None:
        self.sw = switch
        self.sock = sock
        self.listener = listener
        self.reader = CommandReader(sock)
        self.writer = _Writer(sock, chunking, write_gap)
        self.poll = poll
        self.running = True
        self.full = True
        self.linger = False
        self.linger_time = -1
        self.resume = False
        self.commands: list[Command] = []

    # hooks -------------------------------------------------------------------
    def record(self, cmd: Command) -> None:
        self.commands.append(cmd)

    def on_connect(self) -> Frame | None:
        return None

    def on_sendmsg(self, cmd: Command, uuid: str | None) -> str:
        return f"-ERR invalid session id [{uuid or ''}]"

    # parse_command ------------------------------------------------------------
    def process(self, cmd: Command) -> list[Frame]:
        """The frames FreeSWITCH answers ``cmd`` with (an empty list for none)."""
        self.record(cmd)
        text = cmd.text
        low = text.lower()
        reply = ""
        if low.startswith(("exit", "...")):
            self.running = False
            return [reply_frame("+OK bye")]
        if not self.listener.authed:
            if low.startswith("auth "):
                if text[5:] == self.password:
                    self.listener.authed = True
                    return [reply_frame("+OK accepted")]
                self.running = False
                return [reply_frame("-ERR invalid")]
            if low.startswith("userauth "):
                self.running = False
                return [reply_frame("-ERR invalid")]
            return [reply_frame("-ERR command not found")]
        if low.startswith("filter "):
            return [reply_frame(self._filter(text[7:]))]
        session = self.listener.session
        if session is not None and low.startswith("resume"):
            self.resume = True
            with self.sw.lock:
                session.set_var("socket_resume", "true")
            return [reply_frame("+OK")]
        if session is not None or low.startswith("myevents "):
            if session is not None and low.startswith("connect"):
                frame = self.on_connect()
                return [frame] if frame else []
            if session is not None and low.startswith("getvar"):
                _, _, name = text.partition(" ")
                with self.sw.lock:
                    reply = session.vars.get(name) or "" if name else ""
                return [reply_frame(reply or "-ERR command not found")]
            if low.startswith("myevents"):
                return [reply_frame(self._myevents(text))]
        if low.startswith("divert_events"):
            value = text[13:].strip()
            if session is None:
                reply = "-ERR not controlling a session."
            elif not value:
                reply = "-ERR missing value."
            else:
                reply = "+OK events diverted" if value.lower() == "on" else "+OK events not diverted"
            return [reply_frame(reply)]
        if low.startswith("sendmsg"):
            uuid = text[7:].strip() or cmd.header("session-id")
            if uuid and session is not None and uuid == session.uuid:
                uuid = None
            return [reply_frame(self.on_sendmsg(cmd, uuid))]
        if self.outbound and not self.full:
            return [reply_frame("-ERR command not found")]
        if low.startswith("sendevent"):
            return [reply_frame(self._sendevent(cmd))]
        if low.startswith("api "):
            command, sep, arg = text[4:].partition(" ")
            return [api_frame(self.sw.api(command, arg if sep else None) or "-ERR no reply\n")]
        if low.startswith("bgapi "):
            return [reply_frame(self._bgapi(cmd))]
        if low.startswith("log"):
            level = text[4:].strip() if len(text) > 3 else ""
            num = LOG_LEVELS.get(level.lower(), int(level) if level.isdigit() else None) \
                if level else 7
            reply = "-ERR invalid log level" if num is None else f"+OK log level {level} [{num}]"
        elif low.startswith("linger"):
            if session is None:
                reply = "-ERR not controlling a session"
            else:
                self.linger = True
                arg = text[7:].strip() if text[6:7] == " " else ""
                if arg:
                    self.linger_time = int(arg) if arg.lstrip("-").isdigit() else 0
                    reply = f"+OK will linger {self.linger_time} seconds"
                else:
                    self.linger_time = -1
                    reply = "+OK will linger"
        elif low.startswith("nolinger"):
            if session is None:
                reply = "-ERR not controlling a session"
            else:
                self.linger = False
                reply = "+OK will not linger"
        elif low.startswith("nolog"):
            reply = "-ERR not loging"
        elif low.startswith("event"):
            reply = self._event(text)
        elif low.startswith("nixevent"):
            reply = self._nixevent(text)
        elif low.startswith("noevents"):
            with self.sw.lock:
                if self.listener.events:
                    self.listener.events = False
                    self.listener.event_list.clear()
                    self.listener.custom.clear()
                    self.listener.outbox.clear()
                    reply = "+OK no longer listening for events"
                else:
                    reply = "-ERR not listening for events"
        return [reply_frame(reply or "-ERR command not found")]

    def _myevents(self, text: str) -> str:
        lst = self.listener
        if lst.myevents:
            return "-ERR aready enabled."
        fmt_word = text.split()[-1].lower() if len(text.split()) > 1 else ""
        if lst.session is None:
            parts = text.split()
            uuid = parts[1] if len(parts) > 1 else ""
            with self.sw.lock:
                channel = self.sw.channels.get(uuid)
            if channel is None and len(parts) > 2:
                return "-ERR invalid uuid"
            lst.session = channel
        with self.sw.lock:
            lst.event_list |= MYEVENTS
            lst.myevents = lst.events = True
            if "xml" in text.lower() or fmt_word == "xml":
                lst.format = "xml"
            if "json" in text.lower():
                lst.format = "json"
        return "+OK Events Enabled"

    def _event(self, text: str) -> str:
        words = text.split()[1:]
        keys = 0
        custom = False
        with self.sw.lock:
            for i, word in enumerate(words):
                if i == 0 and word.lower() in ("plain", "xml", "json"):
                    self.listener.format = word.lower()
                    continue
                if custom:
                    self.listener.custom.add(word)
                    continue
                etype = _event_type(word)
                if etype is None:
                    continue
                keys += 1
                self.listener.event_list.add(etype)
                custom = custom or etype == "CUSTOM"
            if not keys:
                return "-ERR no keywords supplied"
            self.listener.events = True
        return f"+OK event listener enabled {self.listener.format}"

    def _nixevent(self, text: str) -> str:
        keys = 0
        custom = False
        with self.sw.lock:
            for word in text.split()[1:]:
                if custom:
                    self.listener.custom.discard(word)
                    continue
                etype = _event_type(word)
                if etype is None:
                    continue
                keys += 1
                if etype == "CUSTOM":
                    custom = True
                elif etype == "ALL":
                    self.listener.event_list.clear()
                else:
                    if "ALL" in self.listener.event_list:
                        self.listener.event_list = set(EVENT_NAMES) - {"ALL"}
                    self.listener.event_list.discard(etype)
            if not keys:
                return "-ERR no keywords supplied"
            self.listener.events = True
        return "+OK events nixed"

    def _filter(self, rest: str) -> str:
        rest = rest.lstrip(" ")
        name, _, value = rest.partition(" ")
        with self.sw.lock:
            filters = self.listener.filters
            if name.lower() == "delete" and value:
                name, _, val = value.partition(" ")
                if name.lower() == "all":
                    filters.clear()
                else:
                    filters[:] = [f for f in filters if not (
                        f[0].lower() == name.lower() and (not val or f[1] == val))]
                return f"+OK filter deleted. [{name}][{val}]"
            if value:
                if name.lower() == "add":
                    name, _, value = value.partition(" ")
                filters.append((name, value))
                return f"+OK filter added. [{name}]=[{value}]"
        return "-ERR invalid syntax"

    def _sendevent(self, cmd: Command) -> str:
        event_uuid = self.sw.new_uuid()
        name = _event_type(cmd.text[9:].strip() or "CUSTOM") or "CUSTOM"
        ev = self.sw.new_event(name, LOCATIONS["CUSTOM"])
        ev.headers += [h for h in cmd.headers if h[0].lower() != "content-length"]
        ev.headers.append(("Event-UUID", event_uuid))
        ev.body = cmd.body
        ev.subclass = ev.get("Event-Subclass")
        self.sw.fire(ev)
        return f"+OK {event_uuid}"

    def _bgapi(self, cmd: Command) -> str:
        command, sep, arg = cmd.text[6:].partition(" ")
        job = cmd.header("job-uuid") or self.sw.new_uuid()

        def fire(body: str) -> None:
            with self.sw.lock:
                ev = self.sw.new_event("BACKGROUND_JOB")
                ev.headers += [("Job-UUID", job), ("Job-Command", command)]
                if sep:
                    ev.headers.append(("Job-Command-Arg", arg))
                ev.body = body or "Command returned no output!"
                self.sw.fire(ev)

        def run() -> None:
            if command.lower() == "originate":
                reply = self.sw.originate(arg, fire)
                if reply is not None:
                    fire(reply)
                return
            fire(self.sw.api(command, arg if sep else None))

        threading.Thread(target=run, name=f"bgapi-{job[:8]}", daemon=True).start()
        return f"~Reply-Text: +OK Job-UUID: {job}\nJob-UUID: {job}\n\n"

    # output --------------------------------------------------------------------
    def event_frames(self) -> list[Frame]:
        fmt = "json" if self.listener.format == "json" else "plain"
        return [event_frame(ev, fmt) for ev in self.listener.drain()]


# --------------------------------------------------------------------------- outbound (FsCall)


class Misbehaviour(enum.Enum):
    """Hostile behaviours for hardening the product's outbound server."""

    NONE = "none"
    CLOSE_AFTER_TCP = "close-after-tcp"  # connect, then close without a word
    SILENT = "silent"  # read `connect` (and anything else), never answer
    CLOSE_AFTER_CONNECT = "close-after-connect"  # read `connect`, close without answering
    GARBAGE = "garbage"  # answer `connect` with bytes that are not ESL, then stay silent
    TRUNCATED_REPLY = "truncated-reply"  # send half of the connect reply, then close
    TRUNCATED_EVENT = "truncated-event"  # the first event is cut inside its body, then close
    BAD_CONTENT_LENGTH = "bad-content-length"  # the first event's Content-Length is wrong


GARBAGE = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff\xfe"


@dataclass
class CallResult:
    """What happened on one simulated outbound-socket call (the transcript)."""

    uuid: str
    commands: list[Command] = field(default_factory=list)
    apps: list[AppRun] = field(default_factory=list)
    variables_set: dict[str, str | None] = field(default_factory=dict)
    exported: list[str] = field(default_factory=list)
    answered: bool = False
    pre_answered: bool = False
    hangup_cause: str | None = None
    hangup_source: str | None = None  # hangup_app | sendmsg | far_end | uuid_kill | socket_closed
    resume_sent: bool = False
    socket_resume: bool = False
    resumed: bool = False  # the socket went away, the call went on in the dialplan
    recordings: list[Recording] = field(default_factory=list)
    linger: bool = False
    linger_notice_sent: bool = False
    exit_received: bool = False
    disconnect_notice_sent: bool = False
    closed_by: str | None = None  # "freeswitch" | "peer"
    events_sent: list[str] = field(default_factory=list)
    sent: bytes = b""
    writes: list[bytes] = field(default_factory=list)
    received: bytes = b""
    error: str | None = None
    timed_out: bool = False

    @property
    def command_names(self) -> list[str]:
        return [c.text for c in self.commands]

    @property
    def hung_up(self) -> bool:
        return self.hangup_cause is not None


class FsCall:
    """FreeSWITCH's ``socket HOST:PORT async full``: dials into the product's outbound ESL
    server, answers its commands and runs what it sends, like FreeSWITCH 1.10.12.

    ``call = FsCall("127.0.0.1", port, profile=CallProfile(caller_id_number="13800138000",
    variables={"callwarden_tenant": "acme"})); result = call.run(timeout=10)``

    Identity: ``profile`` (caller, destination, privacy, channel variables), ``switch`` (share
    one with an FsEventSocketServer to see the call there too), ``uuid``/``peer_uuid``/
    ``session_id``, ``loopback_peer`` (model the loopback A-leg), ``emit_create`` (fire
    CHANNEL_CREATE first), ``socket_arg``/``socket_app_uuid`` (the dialplan's socket app).
    Wire: ``chunking`` (default Chunking.capture()), ``write_gap`` (pause between the writes
    of one burst), ``poll`` (idle time before the call makes its next step, FreeSWITCH's
    20 ms), ``park_after``/``apps_after`` (park / run apps only after that many commands, for
    deterministic interleaving), ``connect_timeout`` (FreeSWITCH's 25 s for `connect`).
    Media: ``record_fails`` (True or paths), ``record_path`` (where files really go),
    ``playback_ms`` (file -> duration, None = not found), ``realtime`` (scale of real waiting
    for media time; 0 = instant). Far end: ``far_end_hangup_after_app``,
    ``far_end_hangup_after`` (seconds), ``far_end_cause``, or :meth:`hangup_far_end`.
    Hostility: ``misbehaviour``, ``content_length_delta``; ``nolinger_events_after_hangup``
    (without linger, only so many events after CHANNEL_HANGUP still get out: the race).
    """

    def __init__(self, host: str, port: int, *, profile: CallProfile | None = None,
                 switch: FreeSwitch | None = None, uuid: str | None = None,
                 session_id: int | None = None,
                 peer_uuid: str | None = None, loopback_peer: bool = True, emit_create: bool = True,
                 socket_arg: str | None = None, socket_app_uuid: str | None = None,
                 chunking: Chunking | None = None, write_gap: float = 0.002, poll: float = 0.02,
                 park_after: int | None = None, apps_after: int | None = None,
                 record_path: Callable[[str], str] | None = None,
                 misbehaviour: Misbehaviour = Misbehaviour.NONE,
                 content_length_delta: int = 25, record_fails: bool | Iterable[str] = False,
                 playback_ms: Callable[[str], int | None] | None = None, realtime: float = 0.0,
                 far_end_hangup_after_app: str | None = None,
                 far_end_hangup_after: float | None = None, far_end_cause: str = "NORMAL_CLEARING",
                 connect_timeout: float = 25.0, nolinger_events_after_hangup: int | None = None
                 ) -> None:
        self.host, self.port = host, port
        self.sw = switch or FreeSwitch()
        self.profile = profile or CallProfile()
        self.channel = SimChannel(self.sw, self.profile, uuid=uuid, session_id=session_id,
                                  peer_uuid=peer_uuid, loopback_peer=loopback_peer)
        if isinstance(record_fails, bool):
            fails = record_fails
            self.channel.record_fails = lambda path: fails
        else:
            failing = set(record_fails)
            self.channel.record_fails = lambda path: path in failing
        self.emit_create = emit_create
        self.socket_arg = socket_arg or f"{host}:{port} async full"
        self.socket_app_uuid = socket_app_uuid or self.sw.new_uuid()
        self.chunking = chunking or Chunking.capture()
        self.write_gap, self.poll = write_gap, poll
        self.park_after = park_after
        self.apps_after = apps_after
        if record_path is not None:
            self.channel.record_path = record_path
        self.misbehaviour = misbehaviour
        self.content_length_delta = content_length_delta
        self.playback_ms, self.realtime = playback_ms, realtime
        self.far_end_after_app = far_end_hangup_after_app
        self.far_end_after = far_end_hangup_after
        self.far_end_cause = far_end_cause
        self.connect_timeout = connect_timeout
        self.nolinger_events_after_hangup = nolinger_events_after_hangup
        self.result = CallResult(self.channel.uuid)
        self._thread: threading.Thread | None = None
        self._requests: list[tuple[str, str]] = []
        self._done = threading.Event()
        self._deadline = float("inf")
        self._session: _OutboundSession | None = None

    @property
    def uuid(self) -> str:
        return self.channel.uuid

    def start(self, timeout: float = 30.0) -> FsCall:
        """Dial in from a thread; ``timeout`` bounds the whole call."""
        if self._thread is None:
            self._deadline = time.monotonic() + timeout
            self._thread = threading.Thread(target=self._main, name=f"fscall-{self.uuid[:8]}",
                                            daemon=True)
            self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> CallResult:
        """Wait for the call to end (at most ``timeout`` seconds); returns the transcript."""
        self._done.wait(timeout)
        return self.result

    def run(self, timeout: float = 10.0) -> CallResult:
        """Start and wait; after ``timeout`` the socket is closed and ``timed_out`` set."""
        self.start(timeout)
        self._done.wait(timeout + 5.0)
        return self.result

    def run_here(self, timeout: float = 10.0) -> CallResult:
        """:meth:`run` in the calling thread, for a load generator that already runs each call
        in a thread of its own: a second thread per call doubled the threads contending for
        the GIL, the generator's largest cost."""
        if self._thread is not None:
            raise RuntimeError("call already started")
        self._thread = threading.current_thread()
        self._deadline = time.monotonic() + timeout
        self._main()
        return self.result

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def hangup_far_end(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up now (thread-safe; takes effect between two steps of the call)."""
        with self.sw.lock:
            self._requests.append(("hangup", cause))

    # thread body ----------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._dial()
        except Exception as exc:  # noqa: BLE001 - a test tool reports, never raises in a thread
            self.result.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._finish()
            self._done.set()

    def _dial(self) -> None:
        if self.emit_create:
            self.channel.create()
        else:
            with self.sw.lock:
                now = self.sw.clock.now_us()
                for ch in filter(None, (self.channel.peer, self.channel)):
                    ch.times.profile_created = ch.times.created = now
                    self.sw.register(ch)
        self.channel.start_socket(self.socket_arg, self.host, self.socket_app_uuid,
                                  self.profile.variables)
        sock = socket.create_connection((self.host, self.port), timeout=5.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = _OutboundSession(self, sock)
        self._session = session
        try:
            session.serve()
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _finish(self) -> None:
        r, ch = self.result, self.channel
        with self.sw.lock:
            if ch.controlled and not ch.down:
                if self._session is not None:
                    self._session.release_channel()
                else:  # "Socket Error!": the app returns, the dialplan ends (modelled)
                    ch.controlled = False
                    ch.hangup("NORMAL_CLEARING", source="socket_error")
            s = self._session
            if s is not None:
                r.commands = s.commands
                r.writes = list(s.writer.writes)
                r.sent = b"".join(r.writes)
                r.received = bytes(s.reader.received)
                r.events_sent = [f.event for f in s.writer.frames if f.event]
                r.resume_sent = s.resume
                r.linger = s.linger
            r.apps = list(ch.app_runs)
            r.variables_set = dict(ch.variables_set)
            r.exported = list(ch.exported)
            r.answered = ch.answered
            r.pre_answered = ch.early
            r.hangup_cause = ch.hangup_cause
            r.hangup_source = ch.hangup_source
            r.socket_resume = ch.vars.get("socket_resume") == "true"
            r.recordings = list(ch.recordings)


class _OutboundSession(_EslSession):
    """The listener thread of one outbound socket (source: socket_function, listener_run)."""

    outbound = True

    def __init__(self, call: FsCall, sock: socket.socket) -> None:
        listener = EslListener(call.sw, call.channel)
        super().__init__(call.sw, sock, listener, call.chunking, call.write_gap, call.poll)
        self.call = call
        self.channel = call.channel
        self.queue: list[Command] = []
        self.connected = False
        self.parked = False
        self.first_app = True
        self.engine: Iterator[float] | None = None
        self.engine_wake = 0.0
        self.disco_handled = False
        self.linger_deadline: float | None = None
        self.count = 0
        self.after_hangup: int | None = None
        self.misbehaved = False
        self.started = time.monotonic()

    def record(self, cmd: Command) -> None:
        super().record(cmd)
        if cmd.text.lower().startswith(("exit", "...")):
            self.call.result.exit_received = True

    # protocol hooks ------------------------------------------------------------
    def on_connect(self) -> Frame | None:
        self.connected = True
        with self.sw.lock:
            ev = self.channel.channel_data([("Content-Type", "command/reply"), ("Reply-Text", "+OK\n"),
                                            ("Socket-Mode", "async"), ("Control", "full")])
        return Frame(serialize_plain(ev.headers))

    def on_sendmsg(self, cmd: Command, uuid: str | None) -> str:
        if uuid:
            with self.sw.lock:
                known = uuid in self.sw.channels
            return "+OK" if known else f"-ERR invalid session id [{uuid}]"
        self.queue.append(cmd)
        return "+OK"

    # the loop ----------------------------------------------------------------------
    def serve(self) -> None:
        mis = self.call.misbehaviour
        if mis is Misbehaviour.CLOSE_AFTER_TCP:
            self.call.result.closed_by = "freeswitch"
            return
        self.sw.add_listener(self.listener)
        try:
            if not self._first_packet():
                return
            while self.running and not self._timed_out():
                self._iteration()
                if self._channel_down_check():
                    break
            self._done()
        finally:
            self.sw.remove_listener(self.listener)

    def _timed_out(self) -> bool:
        if time.monotonic() >= self.call._deadline:
            self.call.result.timed_out = True
            return True
        return False

    def _first_packet(self) -> bool:
        """FreeSWITCH waits up to 25 s for the first command; its reply is only sent when it
        is `connect` (source: listener_run)."""
        mis = self.call.misbehaviour
        deadline = min(time.monotonic() + self.call.connect_timeout, self.call._deadline)
        try:
            cmd = self.reader.read(max(0.0, deadline - time.monotonic()))
        except EOFError:
            self.call.result.closed_by = "peer"
            return False
        if cmd is None:
            if self._timed_out():
                return False
            self._goodbye()  # "Socket Error!" -> done: disconnect notice, close
            return False
        if mis in (Misbehaviour.SILENT, Misbehaviour.CLOSE_AFTER_CONNECT, Misbehaviour.GARBAGE,
                   Misbehaviour.TRUNCATED_REPLY):
            self.record(cmd)
            return self._misbehave_at_connect(mis)
        frames = self.process(cmd)
        if frames and cmd.text.lower().startswith("connect"):
            self.writer.burst(frames)
        self._after_command()
        return True

    def _misbehave_at_connect(self, mis: Misbehaviour) -> bool:
        if mis is Misbehaviour.GARBAGE:
            self.writer.raw(GARBAGE)
        elif mis is Misbehaviour.TRUNCATED_REPLY:
            frame = self.on_connect()
            assert frame is not None
            self.writer.raw(frame.data[:len(frame.data) // 2])
        if mis in (Misbehaviour.CLOSE_AFTER_CONNECT, Misbehaviour.TRUNCATED_REPLY):
            self.call.result.closed_by = "freeswitch"
            return False
        while not self._timed_out():  # SILENT / GARBAGE: keep reading until the peer gives up
            try:
                cmd = self.reader.read(0.05)
            except EOFError:
                self.call.result.closed_by = "peer"
                return False
            if cmd is not None:
                self.record(cmd)
        return False

    def _iteration(self) -> None:
        timeout = self._wait_time()
        try:
            cmd = self.reader.read(timeout)
        except EOFError:
            self.call.result.closed_by = "peer"
            self.running = False
            return
        if cmd is not None:
            frames = self.process(cmd)
            if self.running:
                self._after_command()
                frames += self.event_frames()
            self.writer.burst(frames)
            return
        self._requests()
        self._step()
        self._flush_events()

    def _wait_time(self) -> float:
        now = time.monotonic()
        remaining = max(0.0, self.call._deadline - now)
        if self.linger_deadline is not None:
            remaining = min(remaining, max(0.0, self.linger_deadline - now))
        if self.engine is not None:
            return min(remaining, max(self.poll, self.engine_wake - now))
        if self._has_work():
            return min(remaining, self.poll)
        return min(remaining, 0.05)

    def _has_work(self) -> bool:
        ch = self.channel
        return (not self.parked and self.connected and not ch.down) or bool(
            self.queue and not ch.down) or bool(self.call._requests) or (
            self.call.far_end_after is not None and not ch.down)

    def _after_command(self) -> None:
        self.count += 1
        if self.call.park_after is not None and self.count == self.call.park_after:
            self._park()

    def _park(self) -> None:
        if not self.parked and self.connected and not self.channel.down:
            self.parked = True
            self.channel.park()

    def _requests(self) -> None:
        call = self.call
        with self.sw.lock:
            requests, call._requests = call._requests, []
            due = (call.far_end_after is not None and
                   time.monotonic() - self.started >= call.far_end_after)
            if due:
                call.far_end_after = None
                requests.append(("hangup", call.far_end_cause))
            for kind, cause in requests:
                if kind == "hangup" and not self.channel.down:
                    self.channel.hangup(cause, source="far_end")

    def _step(self) -> None:
        """One unit of the session thread: park, or (part of) the next queued message."""
        if not self.connected or self.channel.down and self.engine is None:
            return
        if not self.parked:
            if self.call.park_after is None:
                self._park()
            return
        if self.call.apps_after is not None and self.count < self.call.apps_after:
            return
        if self.engine is not None:
            if time.monotonic() < self.engine_wake:
                return
            self._advance_engine()
            return
        if self.queue:
            self._start_message(self.queue.pop(0))

    def _start_message(self, cmd: Command) -> None:
        command = (cmd.header("call-command") or "").lower()
        if command == "execute":
            app = cmd.header("execute-app-name") or ""
            arg = cmd.header("execute-app-arg")
            if arg is None and (cmd.header("content-type") or "").lower() == "text/plain":
                arg = cmd.body
            loops = int(cmd.header("loops") or "1") if (cmd.header("loops") or "1").isdigit() else 1
            app_uuid = cmd.header("Event-UUID") or self.sw.new_uuid()
            first, self.first_app = self.first_app, False
            self.engine = self.channel.execute(app, arg, app_uuid, loops=loops, first=first,
                                               playback_ms=self.call.playback_ms,
                                               realtime=self.call.realtime)
            self.engine_wake = 0.0
            self._advance_engine()
            if self.channel.app_runs and cmd.header("Event-UUID"):
                self.channel.app_runs[-1].event_uuid = cmd.header("Event-UUID")
        elif command == "hangup":
            cause = cause_from_string(cmd.header("hangup-cause") or "NORMAL_CLEARING")
            self.channel.hangup(cause, source="sendmsg")

    def _advance_engine(self) -> None:
        assert self.engine is not None
        try:
            wait = next(self.engine)
            self.engine_wake = time.monotonic() + wait
        except StopIteration:
            self.engine = None
            last = self.channel.app_runs[-1].name if self.channel.app_runs else None
            if self.call.far_end_after_app and last == self.call.far_end_after_app:
                self.call.far_end_after_app = None
                self.channel.hangup(self.call.far_end_cause, source="far_end")

    def _flush_events(self) -> None:
        frames = self.event_frames()
        limit = self.call.nolinger_events_after_hangup
        if limit is not None and not self.linger:
            kept = []
            for f in frames:  # the listener saw the channel down before these were queued
                if self.after_hangup is None or self.after_hangup < limit:
                    kept.append(f)
                if self.after_hangup is not None:
                    self.after_hangup += 1
                elif f.event == "CHANNEL_HANGUP":
                    self.after_hangup = 0
            frames = kept
        self.writer.burst(frames)

    def event_frames(self) -> list[Frame]:
        return self._misbehave_events(super().event_frames())

    def _misbehave_events(self, frames: list[Frame]) -> list[Frame]:
        mis = self.call.misbehaviour
        if self.misbehaved or not frames or mis not in (Misbehaviour.TRUNCATED_EVENT,
                                                        Misbehaviour.BAD_CONTENT_LENGTH):
            return frames
        first = frames[0]
        if not first.event:
            return frames
        self.misbehaved = True
        if mis is Misbehaviour.BAD_CONTENT_LENGTH:
            n = len(first.body) + self.call.content_length_delta
            head = first.head.replace(f"Content-Length: {len(first.body)}\n".encode(),
                                      f"Content-Length: {n}\n".encode(), 1)
            return [Frame(head, first.body, first.event)] + frames[1:]
        self.writer.raw(first.head + first.body[:len(first.body) // 2])
        self.call.result.closed_by = "freeswitch"
        self.running = False
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        return []

    def _channel_down_check(self) -> bool:
        """Linger notice or end of the session once the channel is down (source: read_packet)."""
        now = time.monotonic()
        if self.disco_handled:
            return self.linger_deadline is not None and now >= self.linger_deadline
        if not self.channel.down or self.engine is not None or self.channel.pending_teardown:
            return False
        self._flush_events()
        self.disco_handled = True
        if not self.linger:
            return True
        self.writer.burst([linger_frame(self.channel.uuid, self.channel.name, self.linger_time)])
        self.call.result.linger_notice_sent = True
        if self.linger_time != -1:
            self.linger_deadline = now + self.linger_time
        return False

    def _done(self) -> None:
        """listener_run's end: queued events are dropped, goodbye is sent, the socket closed."""
        self.listener.drain()
        if self.call.result.closed_by != "peer":
            self._goodbye()
        self.writer.flush()
        self.release_channel()

    def _goodbye(self) -> None:
        self.writer.burst([disconnect_frame(self.channel.uuid)])
        self.writer.flush()
        self.call.result.disconnect_notice_sent = not self.writer.broken
        self.call.result.closed_by = self.call.result.closed_by or "freeswitch"
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def release_channel(self) -> None:
        """The socket is gone while the call is up: with resume the dialplan goes on, else the
        call is hung up (modelled on socket_function/listener_run and the docs)."""
        ch = self.channel
        with self.sw.lock:
            if ch.down or not ch.controlled:
                return
            resume = self.resume or ch.vars.get("socket_resume") == "true"
            ch.controlled = False
            if ch.parked:
                ch.parked = False
                ch.fire("CHANNEL_UNPARK")
                data, app_uuid = ch.socket_app or ("", "")
                ch.fire("CHANNEL_EXECUTE_COMPLETE", post=_app_headers("socket", data, app_uuid, "_none_"))
            if resume:
                self.call.result.resumed = True
            else:
                ch.hangup("NORMAL_CLEARING", source="socket_closed")


# --------------------------------------------------------------------------- inbound server


@dataclass
class ReceivedCommand:
    """A command an inbound connection sent, in arrival order across connections."""

    connection: int
    text: str
    headers: Headers
    body: str | None
    at: float


class _InboundConnection(_EslSession):
    """One client of the inbound event socket (source: listener_run without a session)."""

    def __init__(self, server: FsEventSocketServer, sock: socket.socket, number: int) -> None:
        super().__init__(server.switch, sock, EslListener(server.switch), server.chunking,
                         server.write_gap, server.poll)
        self.server = server
        self.number = number
        self.password = server.password
        self.closed = threading.Event()

    def record(self, cmd: Command) -> None:
        super().record(cmd)
        self.server._record(ReceivedCommand(self.number, cmd.text, cmd.headers, cmd.body, cmd.at))

    def serve(self) -> None:
        self.sw.add_listener(self.listener)
        try:
            self._serve()
        except Exception as exc:  # noqa: BLE001 - recorded for the test, never raised in a thread
            self.server.errors.append(f"connection {self.number}: {type(exc).__name__}: {exc}")
        finally:
            self.sw.remove_listener(self.listener)
            with contextlib.suppress(OSError):
                self.sock.close()
            self.closed.set()
            self.server._forget(self)

    def _serve(self) -> None:
        """auth/request, the auth phase, then commands and events until exit or EOF."""
        if self.server.rude:
            msg = b"Access Denied, go away.\n"
            self.writer.raw(b"Content-Type: text/rude-rejection\nContent-Length: %d\n\n"
                            % len(msg) + msg)  # source: the ACL rejection
            return
        self.writer.burst([Frame(b"Content-Type: auth/request\n\n")])
        if not self._auth_phase():
            self._goodbye()
            return
        while self.running and not self.server._stopping.is_set():
            try:
                cmd = self.reader.read(self.poll)
            except EOFError:
                return
            if cmd is not None:
                frames = self.process(cmd)
                self.writer.burst(frames)
                if not self.running:
                    break
            self.writer.burst(self.event_frames())
            if self.writer.broken:
                return
        self._goodbye()

    def _auth_phase(self) -> bool:
        """Until authenticated, with FreeSWITCH's 25 s limit (source)."""
        deadline = time.monotonic() + self.server.auth_timeout
        while not self.listener.authed:
            try:
                cmd = self.reader.read(max(0.0, deadline - time.monotonic()))
            except EOFError:
                return False
            if cmd is None:
                return False
            self.writer.burst(self.process(cmd))
            break  # source: one reply, then the main loop (still unauthenticated if it failed)
        return self.running

    def _goodbye(self) -> None:
        self.listener.drain()
        self.writer.burst([disconnect_frame(None)])
        self.writer.flush()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def drop(self) -> None:
        """Cut the TCP connection without a word."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


class FsEventSocketServer:
    """FreeSWITCH's inbound event socket (mod_event_socket on :8021) on 127.0.0.1.

    ``with FsEventSocketServer() as fs: listener.connect(*fs.address); ...``

    ``switch`` is the FreeSwitch whose events it serves (share it with FsCall); ``port`` 0
    picks a free one (see ``address``); ``auth_timeout`` is FreeSWITCH's 25 s for `auth`;
    ``chunking`` makes a Chunking per connection (default Chunking.capture); ``poll`` is how
    often a connection sends queued events (FreeSWITCH's 20 ms). Every command is recorded in
    ``commands``; ``drop_connections``, ``refuse``, ``restart`` and ``rude`` inject failures.
    """

    def __init__(self, switch: FreeSwitch | None = None, *, password: str = "ClueCon",
                 host: str = "127.0.0.1", port: int = 0, auth_timeout: float = 25.0,
                 chunking: Callable[[], Chunking] | None = None, write_gap: float = 0.002,
                 poll: float = 0.02) -> None:
        self.switch = switch or FreeSwitch()
        self.password = password
        self.host, self.port = host, port
        self.auth_timeout = auth_timeout
        self._chunking = chunking or Chunking.capture
        self.write_gap, self.poll = write_gap, poll
        self.commands: list[ReceivedCommand] = []
        self.connections: list[_InboundConnection] = []
        self.accepted = 0
        self.rude = False  # answer new connections with text/rude-rejection (ACL denied)
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._listen_sock: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    @property
    def chunking(self) -> Chunking:
        return self._chunking()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def start(self) -> FsEventSocketServer:
        self._stopping.clear()
        self._listen()
        return self

    def __enter__(self) -> FsEventSocketServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._unlisten()
        self.drop_connections()

    # failure injection ----------------------------------------------------------------
    def drop_connections(self) -> int:
        """Cut every open connection (as when FreeSWITCH dies); returns how many."""
        with self._lock:
            conns = list(self.connections)
        for conn in conns:
            conn.drop()
        for conn in conns:
            conn.closed.wait(2.0)
        return len(conns)

    def refuse(self, seconds: float | None = None) -> None:
        """Stop listening (connections are refused); listen again after ``seconds`` if given."""
        self._unlisten()
        if seconds is not None:
            timer = threading.Timer(seconds, self.accept_again)
            timer.daemon = True
            timer.start()

    def accept_again(self) -> None:
        if not self._stopping.is_set() and self._listen_sock is None:
            self._listen()

    def restart(self, *, drop: bool = True) -> None:
        """A FreeSWITCH restart: connections cut, new Core-UUID, no channels."""
        if drop:
            self.drop_connections()
        self.switch.restart()

    # waiting -------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True

    def wait_for_command(self, prefix: str, timeout: float = 5.0) -> ReceivedCommand:
        found: list[ReceivedCommand] = []

        def match() -> bool:
            found[:] = [c for c in self.commands if c.text.lower().startswith(prefix.lower())]
            return bool(found)

        if not self.wait_for(match, timeout):
            raise TimeoutError(f"no command starting with {prefix!r} within {timeout}s")
        return found[0]

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        if not self.wait_for(lambda: self.accepted >= count, timeout):
            raise TimeoutError(f"{count} connections expected, {self.accepted} seen")

    @property
    def live_connections(self) -> int:
        with self._lock:
            return len(self.connections)

    # internals -------------------------------------------------------------------
    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        sock.settimeout(0.05)
        self.port = sock.getsockname()[1]
        self._listen_sock = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(sock,),
                                               name=f"fs-esl-{self.port}", daemon=True)
        self._accept_thread.start()

    def _unlisten(self) -> None:
        sock, self._listen_sock = self._listen_sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if self._accept_thread is not None:
            self._accept_thread.join(2.0)
            self._accept_thread = None

    def _accept_loop(self, sock: socket.socket) -> None:
        while self._listen_sock is sock and not self._stopping.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._changed:
                self.accepted += 1
                session = _InboundConnection(self, conn, self.accepted)
                self.connections.append(session)
                self._changed.notify_all()
            threading.Thread(target=session.serve, name=f"fs-esl-conn-{self.accepted}",
                             daemon=True).start()

    def _record(self, cmd: ReceivedCommand) -> None:
        with self._changed:
            self.commands.append(cmd)
            self._changed.notify_all()

    def _forget(self, conn: _InboundConnection) -> None:
        with self._changed:
            if conn in self.connections:
                self.connections.remove(conn)
            self._changed.notify_all()


__all__ = [
    "GOODBYE", "HANGUP_CAUSES", "AppRun", "CallProfile", "CallResult", "Chunking", "Clock",
    "Command", "FreeSwitch", "FsCall", "FsEventSocketServer", "Frame", "Misbehaviour",
    "ReceivedCommand", "Recording", "ScriptedClock", "SimChannel", "SimEvent", "VirtualClock",
    "WallClock", "parse_event_body", "serialize_plain", "split_frames", "url_encode",
]
