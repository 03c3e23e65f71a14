"""Asyncio simulator of Asterisk 22.10 for callwarden's tests, over real TCP on 127.0.0.1.

It is byte-faithful to the captures in ``tests/sim/captures/asterisk/`` (see that README):

* :class:`AgiCall` is what Asterisk's ``AGI(agi://host:port/script?query,args)`` does: it
  connects to a FastAGI server, sends the ``agi_*`` environment block (in two TCP writes, split
  where the captures split it), answers AGI commands the way ``res_agi.c`` does, injects the
  unsolicited ``HANGUP`` line, and reports ``AGISTATUS`` in an :class:`AgiResult`.
* :class:`AmiServer` is Asterisk's manager interface: banner, Login (plaintext or md5 Challenge),
  Ping, Hangup, CoreShowChannels, Command, CoreSettings, Getvar, Setvar, StopMixMonitor,
  Originate, Events, Logoff, with CRLF framing; it can drop clients and refuse connections.
* :class:`Pbx` is the shared channel/event core; :class:`OutboundCall` replays the event stream
  of the captured call (``ami_events_one_call.txt``) for any uniqueids/channels/caller IDs/times,
  running a real :class:`AgiCall` in the middle.

Usage from a product test::

    async def scenario(agi_port: int) -> None:
        call = AgiCall(agi_port, script="callwarden?tenant=t1",
                       variables={"CALLWARDEN_TENANT": "t1"}, callerid_num="15551230000")
        result = await call.run(timeout=5)
        assert result.status == "SUCCESS" and result.variables["CW_DECISION"] == "allow"
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import itertools
import json
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

# ---------------------------------------------------------------------------------------------
# Constants taken from the captures and from Asterisk 22's tables
# ---------------------------------------------------------------------------------------------

ASTERISK_VERSION = "22.10.1"
AMI_VERSION = "11.0.0"
AMI_BANNER = f"Asterisk Call Manager/{AMI_VERSION}\r\n".encode()

STATE_DOWN, STATE_RING, STATE_UP = 0, 4, 6
STATE_DESC = {
    0: "Down", 1: "Rsrvd", 2: "OffHook", 3: "Dialing", 4: "Ring", 5: "Ringing", 6: "Up",
    7: "Busy", 8: "Dialing Offhook", 9: "Pre-ring",
}

#: Caller presentation values -> (CALLERPRES() name, AMI description); callerid.c pres_types.
PRESENTATIONS: dict[int, tuple[str, str]] = {
    0x00: ("allowed_not_screened", "Presentation Allowed, Not Screened"),
    0x01: ("allowed_passed_screen", "Presentation Allowed, Passed Screen"),
    0x02: ("allowed_failed_screen", "Presentation Allowed, Failed Screen"),
    0x03: ("allowed", "Presentation Allowed, Network Number"),
    0x20: ("prohib_not_screened", "Presentation Prohibited, Not Screened"),
    0x21: ("prohib_passed_screen", "Presentation Prohibited, Passed Screen"),
    0x22: ("prohib_failed_screen", "Presentation Prohibited, Failed Screen"),
    0x23: ("prohib", "Presentation Prohibited, Network Number"),
    0x43: ("unavailable", "Number Unavailable"),
    0x40: ("unavailable", "Number Unavailable"),
    0x41: ("unavailable", "Number Unavailable"),
    0x42: ("unavailable", "Number Unavailable"),
}
PRES_UNAVAILABLE = 0x43  # 67: what agi_callingpres says when there is no caller ID

#: Q.850 causes as main/channel.c names them: code -> (name, text used in Cause-txt).
HANGUP_CAUSES: dict[int, tuple[str, str]] = {
    1: ("UNALLOCATED", "Unallocated (unassigned) number"),
    2: ("NO_ROUTE_TRANSIT_NET", "No route to specified transmit network"),
    3: ("NO_ROUTE_DESTINATION", "No route to destination"),
    16: ("NORMAL_CLEARING", "Normal Clearing"),
    17: ("USER_BUSY", "User busy"),
    18: ("NO_USER_RESPONSE", "No user responding"),
    19: ("NO_ANSWER", "User alerting, no answer"),
    20: ("SUBSCRIBER_ABSENT", "Subscriber absent"),
    21: ("CALL_REJECTED", "Call Rejected"),
    22: ("NUMBER_CHANGED", "Number changed"),
    27: ("DESTINATION_OUT_OF_ORDER", "Destination out of order"),
    28: ("INVALID_NUMBER_FORMAT", "Invalid number format"),
    29: ("FACILITY_REJECTED", "Facility rejected"),
    31: ("NORMAL_UNSPECIFIED", "Normal, unspecified"),
    34: ("NORMAL_CIRCUIT_CONGESTION", "Circuit/channel congestion"),
    38: ("NETWORK_OUT_OF_ORDER", "Network out of order"),
    41: ("NORMAL_TEMPORARY_FAILURE", "Temporary failure"),
    42: ("SWITCH_CONGESTION", "Switching equipment congestion"),
    44: ("REQUESTED_CHAN_UNAVAIL", "Requested channel not available"),
    50: ("FACILITY_NOT_SUBSCRIBED", "Facility not subscribed"),
    52: ("OUTGOING_CALL_BARRED", "Outgoing call barred"),
    54: ("INCOMING_CALL_BARRED", "Incoming call barred"),
    58: ("BEARERCAPABILITY_NOTAVAIL", "Bearer capability not available"),
    66: ("CHAN_NOT_IMPLEMENTED", "Channel not implemented"),
    69: ("FACILITY_NOT_IMPLEMENTED", "Facility not implemented"),
    88: ("INCOMPATIBLE_DESTINATION", "Incompatible destination"),
    102: ("RECOVERY_ON_TIMER_EXPIRE", "Recover on timer expiry"),
    111: ("PROTOCOL_ERROR", "Protocol error, unspecified"),
    127: ("INTERWORKING", "Interworking, unspecified"),
}

#: Event -> Privilege header, as in the captures (everything else is "call,all").
EVENT_PRIVILEGE = {
    "Newexten": "dialplan,all", "VarSet": "dialplan,all", "AGIExecStart": "agi,all",
    "AGIExecEnd": "agi,all", "Cdr": "cdr,all", "SuccessfulAuth": "security,all",
    "FullyBooted": "system,all",
}

#: Actions real Asterisk 22 has (manager_show_commands.txt); the simulator knows which it fakes.
_MANAGER_ACTION_NAMES = (
    "AbsoluteTimeout AGI AOCMessage Atxfer BlindTransfer Bridge BridgeDestroy BridgeInfo "
    "BridgeKick BridgeList BridgeTechnologyList BridgeTechnologySuspend "
    "BridgeTechnologyUnsuspend CancelAtxfer Challenge Command CoreSettings CoreShowChannelMap "
    "CoreShowChannels CoreStatus CreateConfig DBDel DBDelTree DBGet DBGetTree DBPut "
    "DeviceStateList DialplanExtensionAdd DialplanExtensionRemove Events ExtensionState "
    "ExtensionStateList Filter GetConfig GetConfigJSON Getvar Hangup ListCategories "
    "ListCommands LocalOptimizeAway LoggerRotate Login Logoff MailboxCount MailboxStatus "
    "MessageSend MixMonitor MixMonitorMute ModuleCheck ModuleLoad MuteAudio Originate Ping "
    "PlayDTMF PresenceState PresenceStateList Redirect Reload SendFlash SendText Setvar "
    "ShowDialPlan SorceryMemoryCacheExpire SorceryMemoryCacheExpireObject "
    "SorceryMemoryCachePopulate SorceryMemoryCacheStale SorceryMemoryCacheStaleObject Status "
    "StopMixMonitor UpdateConfig UserEvent WaitEvent"
)
MANAGER_ACTIONS = frozenset(name.lower() for name in _MANAGER_ACTION_NAMES.split())

#: AMI event categories (manager.c perms[]) for the Events/Login "Events:" mask.
EVENT_CATEGORIES = (
    "system", "call", "log", "verbose", "command", "agent", "user", "config", "dtmf",
    "reporting", "cdr", "dialplan", "originate", "agi", "cc", "aoc", "test", "security",
    "message",
)

CORE_SETTINGS = [
    ("AMIversion", AMI_VERSION), ("AsteriskVersion", ASTERISK_VERSION), ("SystemName", ""),
    ("CoreMaxCalls", "0"), ("CoreMaxLoadAvg", "0.000000"), ("CoreRunUser", ""),
    ("CoreRunGroup", ""), ("CoreMaxFilehandles", "0"), ("CoreRealTimeEnabled", "No"),
    ("CoreCDRenabled", "Yes"), ("CoreHTTPenabled", "No"), ("SoundsSearchCustomDir", "No"),
]
CORE_SHOW_VERSION = (
    "Asterisk 22.10.1 built by root @ vm on a x86_64 running Linux on 2026-11-24 00:36:43 UTC"
)

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

Fields = list[tuple[str, str]]
#: A clock returns epoch seconds; it may return a preformatted "%ld.%06lu" string (used to
#: replay captured Timestamp values exactly).
Clock = Callable[[], "float | str"]


def encode_message(fields: Iterable[tuple[str, str]]) -> bytes:
    """One AMI message: ``Key: value`` CRLF lines and a blank line."""
    return "".join(f"{k}: {v}\r\n" for k, v in fields).encode() + b"\r\n"


def format_ts(ts: float | str) -> str:
    """Asterisk's ``%ld.%06lu`` timestamp."""
    return ts if isinstance(ts, str) else f"{ts:.6f}"


def cause_text(cause: int) -> str:
    """``ast_cause2str``: "Unknown" for 0 and unlisted codes."""
    return HANGUP_CAUSES.get(cause, ("", "Unknown"))[1]


def parse_cause(text: str) -> int:
    """``ast_str2cause`` then ``%d``, as ``Hangup()`` parses its argument."""
    for code, (name, _) in HANGUP_CAUSES.items():
        if name.lower() == text.strip().lower():
            return code
    m = re.match(r"\s*(-?\d+)", text)
    return int(m.group(1)) if m else 0


def parse_presentation(text: str) -> int | None:
    """``ast_parse_caller_presentation``: a number or a name such as ``prohib_not_screened``."""
    m = re.match(r"\s*(\d+)", text)
    if m:
        return int(m.group(1))
    for value, (name, _) in PRESENTATIONS.items():
        if name == text.strip().lower():
            return value
    return None


#: One argument of ``parse_args``: runs of quoted text (a missing closing quote runs to the end
#: of the line), backslash escapes and other non-blank characters.
_AGI_ARG = re.compile(r'(?:"(?:[^"\\]|\\.|\\$)*(?:"|$)|\\.|[^ \t"\\])+', re.DOTALL)
#: What ``parse_args`` removes from an argument: unescaped quotes, and the backslash of an escape.
_AGI_UNQUOTE = re.compile(r'\\(.?)|"', re.DOTALL)
_AGI_BLANKS = re.compile(r"[ \t]+")


def parse_agi_args(line: str) -> list[str]:
    """``res_agi.c parse_args``, by regular expression (the load generator's hot path);
    :func:`parse_agi_args_by_char` is the literal model, and a test holds the two equal."""
    if '"' not in line and "\\" not in line:
        return [word for word in _AGI_BLANKS.split(line) if word]
    return [_AGI_UNQUOTE.sub(lambda m: m.group(1) or "", arg) for arg in _AGI_ARG.findall(line)]


def separate_app_args(buf: str, delim: str, arraylen: int) -> list[str]:
    """``__ast_app_separate_args(buf, delim, remove_chars=1, array, arraylen)`` (main/app.c):
    how dialplan applications split their argument. Parentheses and brackets nest (a
    delimiter inside them does not split), double quotes group and are removed, a backslash
    is removed and the character after it taken literally; the last of ``arraylen`` slots
    takes the rest unsplit and unscanned, and a delimiter at the very end adds one empty
    argument."""
    args: list[str] = []
    i, n = 0, len(buf)
    paren = bracket = quote = 0
    ended_on_delim = False
    while i < n and len(args) < arraylen - 1:
        cur: list[str] = []
        ended_on_delim = False
        while i < n:
            ch = buf[i]
            if ch == "(":
                paren += 1
            elif ch == ")":
                paren = max(0, paren - 1)
            elif ch == "[":
                bracket += 1
            elif ch == "]":
                bracket = max(0, bracket - 1)
            elif ch == '"' and delim != '"':
                quote ^= 1
                i += 1
                continue
            elif ch == "\\":
                i += 1
                if i < n:
                    cur.append(buf[i])
                    i += 1
                continue
            elif ch == delim and not paren and not quote and not bracket:
                i += 1
                ended_on_delim = True
                break
            cur.append(ch)
            i += 1
        args.append("".join(cur))
    if i < n:
        args.append(buf[i:])  # the scan stopped: the rest is taken as it is
    elif ended_on_delim:
        args.append("")
    return args


def parse_agi_args_by_char(line: str) -> list[str]:
    """``res_agi.c parse_args`` character by character, as written in C: whitespace split,
    double quotes group, backslash escapes.

    Only space and tab separate arguments; a trailing CR stays part of the last argument,
    exactly as in Asterisk.
    """
    argv: list[str] = []
    cur: list[str] | None = None
    quoted = escaped = False
    whitespace = True
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:
                cur = []
                argv.append("")
                whitespace = False
            escaped = False
            continue
        if ch in " \t" and not quoted and not escaped:
            whitespace = True
            if cur is not None:
                argv[-1] = "".join(cur)
                cur = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            argv.append("")
            cur = []
            whitespace = False
        if cur is None:  # continuing a word after a closing quote
            cur = list(argv[-1])
        cur.append(ch)
        escaped = False
        argv[-1] = "".join(cur)
    return argv


def _time_str(ts: float | None, tz: tzinfo) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(int(ts), tz).strftime("%Y-%m-%d %H:%M:%S")


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 1.0)


# ---------------------------------------------------------------------------------------------
# Channels
# ---------------------------------------------------------------------------------------------

_UID_COUNTER = itertools.count(1)
_CHAN_COUNTER = itertools.count(1)


def _default_channel_name() -> str:
    return f"PJSIP/carrier-{next(_CHAN_COUNTER):08x}"


@dataclass(eq=False)
class Channel:
    """One simulated Asterisk channel: identity, caller ID, variables, state, hangup flag."""

    name: str = field(default_factory=_default_channel_name)
    uniqueid: str = ""
    linkedid: str = ""
    context: str = "callwarden-outbound"
    exten: str = "15557654321"
    priority: int = 1
    state: int = STATE_RING
    callerid_num: str = ""
    callerid_name: str = ""
    callerid_pres: int = 0
    callerid_ani: str = ""
    connected_num: str = ""
    connected_name: str = ""
    dnid: str = ""
    rdnis: str = ""
    ani2: int = 0
    ton: int = 0
    tns: int = 0
    language: str = "en"
    accountcode: str = ""
    variables: dict[str, str] = field(default_factory=dict)
    cdr: dict[str, str] = field(default_factory=dict)
    application: str = ""
    app_data: str = ""
    bridge_id: str = ""
    created: float = field(default_factory=time.time)
    answered: float | None = None
    hangup_cause: int = 0
    hangup_source: str = ""
    mixmonitor_file: str | None = None
    #: True while an AGI session or an :class:`OutboundCall` drives the channel's teardown.
    busy: bool = False
    alive: bool = True

    def __post_init__(self) -> None:
        if not self.uniqueid:
            self.uniqueid = f"{int(self.created)}.{next(_UID_COUNTER)}"
        self.linkedid = self.linkedid or self.uniqueid
        self._hangup = asyncio.Event()

    # -- derived values ------------------------------------------------------------------------
    @property
    def tech(self) -> str:
        """Channel technology, ``agi_type`` (``Local``, ``PJSIP``...)."""
        return self.name.split("/", 1)[0]

    @property
    def presentation(self) -> int:
        """``ast_party_id_presentation``: 67 when neither name nor number is valid."""
        if not self.callerid_num and not self.callerid_name:
            return PRES_UNAVAILABLE
        if (self.callerid_pres & 0x60) == 0x40:
            return PRES_UNAVAILABLE
        return self.callerid_pres

    @property
    def presentation_name(self) -> str:
        return PRESENTATIONS.get(self.presentation, ("unknown", "Unknown"))[0]

    @property
    def presentation_text(self) -> str:
        """``CID-CallingPres`` value, e.g. ``0 (Presentation Allowed, Not Screened)``."""
        desc = PRESENTATIONS.get(self.presentation, ("", "Unknown"))[1]
        return f"{self.presentation} ({desc})"

    def snapshot(self, prefix: str = "") -> Fields:
        """The 14 channel-state fields every channel event carries, in capture order."""
        values = [
            ("Channel", self.name), ("ChannelState", str(self.state)),
            ("ChannelStateDesc", STATE_DESC.get(self.state, "Unknown")),
            ("CallerIDNum", self.callerid_num or "<unknown>"),
            ("CallerIDName", self.callerid_name or "<unknown>"),
            ("ConnectedLineNum", self.connected_num or "<unknown>"),
            ("ConnectedLineName", self.connected_name or "<unknown>"),
            ("Language", self.language), ("AccountCode", self.accountcode),
            ("Context", self.context), ("Exten", self.exten), ("Priority", str(self.priority)),
            ("Uniqueid", self.uniqueid), ("Linkedid", self.linkedid),
        ]
        return [(prefix + k, v) for k, v in values]

    # -- hangup ---------------------------------------------------------------------------------
    @property
    def hangup_requested(self) -> bool:
        return self._hangup.is_set()

    def request_hangup(self, cause: int | None = None, source: str = "") -> None:
        """Soft-hangup the channel (the far end, AMI or AGI hung it up)."""
        if cause:
            self.hangup_cause = cause
        if source and not self.hangup_source:
            self.hangup_source = source
        self._hangup.set()

    async def wait_hangup(self) -> None:
        await self._hangup.wait()

    # -- variables and functions (pbx_retrieve_variable / ast_func_read) ------------------------
    def read(self, name: str, pbx: Pbx | None = None) -> str | None:
        """``GET VARIABLE`` semantics: functions when the name ends with ``)``."""
        if name.endswith(")"):
            return self.read_function(name)
        return self.read_variable(name, pbx)

    def read_variable(self, name: str, pbx: Pbx | None = None) -> str | None:
        builtin = {
            "CALLINGPRES": str(self.presentation), "CALLINGANI2": str(self.ani2),
            "CALLINGTON": str(self.ton), "CALLINGTNS": str(self.tns), "EXTEN": self.exten,
            "CONTEXT": self.context, "PRIORITY": str(self.priority), "CHANNEL": self.name,
            "UNIQUEID": self.uniqueid, "HANGUPCAUSE": str(self.hangup_cause),
        }
        if name in builtin:
            return builtin[name]
        if name == "EPOCH":
            return str(int(time.time()))
        if name in self.variables:
            return self.variables[name]
        if pbx is not None and name in pbx.globals:
            return pbx.globals[name]
        return None

    def read_function(self, expr: str) -> str | None:
        """A few dialplan functions; ``None`` is ``ast_func_read`` failing."""
        m = re.fullmatch(r"([A-Za-z0-9_]+)\((.*)\)", expr, re.S)
        if not m:
            return None
        func, arg = m.group(1).upper(), m.group(2).strip().lower()
        if func == "CALLERID":
            return self._callerid_read(arg)
        if func == "CALLERPRES":
            return self.presentation_name
        if func == "CONNECTEDLINE":
            return {"num": self.connected_num, "name": self.connected_name,
                    "all": f'"{self.connected_name}" <{self.connected_num}>'}.get(arg)
        if func == "CDR":
            return self._cdr_read(arg)
        if func == "CHANNEL":
            return {"name": self.name, "state": STATE_DESC.get(self.state, "Unknown"),
                    "language": self.language, "uniqueid": self.uniqueid,
                    "linkedid": self.linkedid, "accountcode": self.accountcode,
                    "context": self.context, "exten": self.exten,
                    "channeltype": self.tech, "hangupsource": self.hangup_source}.get(arg)
        if func == "LEN":
            return str(len(m.group(2)))
        return None

    def _callerid_read(self, item: str) -> str | None:
        return {
            "num": self.callerid_num, "number": self.callerid_num, "name": self.callerid_name,
            "all": f'"{self.callerid_name}" <{self.callerid_num}>',
            "pres": self.presentation_name, "num-pres": self.presentation_name,
            "name-pres": self.presentation_name, "ani": self.callerid_ani,
            "dnid": self.dnid, "rdnis": self.rdnis, "ton": str(self.ton),
        }.get(item)

    def _cdr_read(self, item: str) -> str:
        computed = {
            "clid": f'"{self.callerid_name}" <{self.callerid_num}>', "src": self.callerid_num,
            "dst": self.exten, "dcontext": self.context, "channel": self.name,
            "lastapp": self.application, "lastdata": self.app_data,
            "uniqueid": self.uniqueid, "linkedid": self.linkedid,
            "accountcode": self.accountcode, "amaflags": "DOCUMENTATION",
        }
        return self.cdr.get(item, computed.get(item, ""))

    def substitute(self, expr: str, pbx: Pbx | None = None) -> str:
        """``ast_str_substitute_variables`` for ``${VAR}``, ``${FUNC(args)}``, nesting and
        ``${VAR:offset:length}``; ``$[...]`` expressions are left as they are."""
        out: list[str] = []
        i = 0
        while i < len(expr):
            if expr.startswith("${", i):
                depth, j = 1, i + 2
                while j < len(expr) and depth:
                    if expr.startswith("${", j) or expr.startswith("$[", j):
                        depth, j = depth + 1, j + 2
                        continue
                    if expr[j] in "}]":
                        depth -= 1
                    j += 1
                inner = self.substitute(expr[i + 2:j - 1], pbx)
                out.append(self._substitute_one(inner, pbx))
                i = j
            else:
                out.append(expr[i])
                i += 1
        return "".join(out)

    def _substitute_one(self, inner: str, pbx: Pbx | None) -> str:
        if inner.endswith(")"):
            return self.read_function(inner) or ""
        name, _, rng = inner.partition(":")
        value = self.read_variable(name, pbx) or ""
        if not rng:
            return value
        parts = rng.split(":")
        offset = int(parts[0] or 0)
        length = int(parts[1]) if len(parts) > 1 and parts[1] else None
        sliced = value[offset:]
        if length is not None:
            sliced = sliced[:length] if length >= 0 else sliced[:length]
        return sliced


# ---------------------------------------------------------------------------------------------
# The PBX core: channel registry and event bus
# ---------------------------------------------------------------------------------------------

EventSink = Callable[[str, str, bytes], None]  # (event name, privilege, encoded message)


class Pbx:
    """Shared state of one simulated Asterisk: channels, globals, clock, AMI event bus."""

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        command_ids: Callable[[], int] | None = None,
        bridge_ids: Callable[[], str] | None = None,
        tz: tzinfo = UTC,
        cel: bool = True,
        system_name: str = "",
        keep_events: bool = True,
    ) -> None:
        self.clock = clock
        #: asterisk.conf ``systemname`` (CoreSettings' SystemName; real uniqueids then start
        #: with "<name>-": give the calls' uniqueids that prefix in tests that set it).
        self.system_name = system_name
        self.tz = tz
        self.cel_enabled = cel
        self.channels: dict[str, Channel] = {}
        self.globals: dict[str, str] = {}
        #: Every message emitted, encoded, in order (whether or not a client received it);
        #: with ``keep_events=False`` (a load generator) nothing is kept, and an event no AMI
        #: client is connected to receive is not even encoded.
        self.events: list[bytes] = []
        self.keep_events = keep_events
        self._sinks: list[EventSink] = []
        self._command_ids = command_ids or (lambda: random.randrange(0, 2**31))
        self._bridge_ids = bridge_ids or (lambda: str(uuid.uuid4()))

    # -- registry -----------------------------------------------------------------------------
    def add_channel(self, chan: Channel) -> Channel:
        self.channels[chan.name.lower()] = chan
        return chan

    def find_channel(self, name: str) -> Channel | None:
        """``ast_channel_get_by_name``: case-insensitive name, then uniqueid."""
        chan = self.channels.get(name.lower())
        if chan is not None:
            return chan
        return next((c for c in self.channels.values() if c.uniqueid == name), None)

    def remove_channel(self, chan: Channel) -> None:
        self.channels.pop(chan.name.lower(), None)

    def next_command_id(self) -> int:
        return self._command_ids()

    def next_bridge_id(self) -> str:
        return self._bridge_ids()

    # -- events -------------------------------------------------------------------------------
    def subscribe(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def unsubscribe(self, sink: EventSink) -> None:
        with contextlib.suppress(ValueError):
            self._sinks.remove(sink)

    def emit(self, event: str, fields: Fields, *, privilege: str | None = None) -> float:
        """Send ``Event/Privilege/Timestamp`` + fields to every subscribed AMI session."""
        ts = self.clock()
        if not self._sinks and not self.keep_events:
            return float(ts)
        privilege = privilege or EVENT_PRIVILEGE.get(event, "call,all")
        head = [("Event", event), ("Privilege", privilege), ("Timestamp", format_ts(ts))]
        data = encode_message(head + fields)
        if self.keep_events:
            self.events.append(data)
        for sink in list(self._sinks):
            sink(event, privilege, data)
        return float(ts)

    def emit_chan(self, event: str, chan: Channel,
                  extra: Sequence[tuple[str, str]] = ()) -> float:
        if not self._sinks and not self.keep_events:
            return float(self.clock())
        return self.emit(event, chan.snapshot() + list(extra))

    def cel(self, name: str, chan: Channel, *, ani: str = "", peer: str = "",
            extra: str = "", exten: str | None = None) -> float:
        """A CEL event as ``cel_manager`` formats it (EventTime from the event's own clock)."""
        ts = self.clock()
        fields = [
            ("EventName", name), ("AccountCode", chan.accountcode),
            ("CallerIDnum", chan.callerid_num), ("CallerIDname", chan.callerid_name),
            ("CallerIDani", ani), ("CallerIDrdnis", ""), ("CallerIDdnid", ""),
            ("Exten", chan.exten if exten is None else exten), ("Context", chan.context),
            ("Channel", chan.name), ("Application", chan.application),
            ("AppData", chan.app_data), ("EventTime", _time_str(float(ts), self.tz)),
            ("AMAFlags", "DOCUMENTATION"), ("UniqueID", chan.uniqueid),
            ("LinkedID", chan.linkedid), ("Userfield", ""), ("Peer", peer),
            ("PeerAccount", ""), ("Extra", extra),
        ]
        head = [("Event", "CEL"), ("Privilege", "call,all"), ("Timestamp", format_ts(ts))]
        data = encode_message(head + fields)
        if self.keep_events:
            self.events.append(data)
        if self.cel_enabled:
            for sink in list(self._sinks):
                sink("CEL", "call,all", data)
        return float(ts)

    # -- channel operations that emit what Asterisk emits --------------------------------------
    def set_variable(self, chan: Channel, name: str, value: str) -> None:
        """``pbx_builtin_setvar_helper``: VarSet for variables, side effects for functions."""
        if name.endswith(")"):
            self._write_function(chan, name, value)
            return
        stored = name[2:] if name.startswith("__") else name[1:] if name.startswith("_") else name
        chan.variables[stored] = value
        self.emit_chan("VarSet", chan, [("Variable", name), ("Value", value)])

    def _write_function(self, chan: Channel, expr: str, value: str) -> None:
        m = re.fullmatch(r"([A-Za-z0-9_]+)\((.*)\)", expr, re.S)
        if not m:
            return
        func, arg = m.group(1).upper(), m.group(2).strip().lower()
        if func == "CALLERID":
            self._write_callerid(chan, arg, value)
        elif func == "CALLERPRES":
            pres = parse_presentation(value)
            if pres is not None:
                chan.callerid_pres = pres
                self.emit_chan("NewCallerid", chan, [("CID-CallingPres", chan.presentation_text)])
        elif func == "CONNECTEDLINE":
            if arg in ("num", "name"):
                setattr(chan, f"connected_{arg}", value)
                self.emit_chan("NewConnectedLine", chan)
        elif func == "CDR":
            chan.cdr[arg] = value
        elif func == "CHANNEL" and arg in ("language", "accountcode"):
            setattr(chan, arg, value)

    def _write_callerid(self, chan: Channel, item: str, value: str) -> None:
        if item in ("num", "number"):
            chan.callerid_num = value
        elif item == "name":
            chan.callerid_name = value
        elif item == "all":
            m = re.fullmatch(r'\s*"?([^"<]*?)"?\s*<([^>]*)>\s*', value)
            chan.callerid_name, chan.callerid_num = (m.group(1), m.group(2)) if m else ("", value)
        elif item in ("pres", "num-pres", "name-pres"):
            pres = parse_presentation(value)
            if pres is None:
                return
            chan.callerid_pres = pres
        elif item == "ani":
            chan.callerid_ani = value
            return
        else:
            return
        self.emit_chan("NewCallerid", chan, [("CID-CallingPres", chan.presentation_text)])

    def set_callerid(self, chan: Channel, num: str | None = None, name: str | None = None,
                     pres: int | str | None = None) -> None:
        """Change the caller ID mid-call and emit ``NewCallerid`` (like ``Set(CALLERID(...))``)."""
        if num is not None:
            chan.callerid_num = num
        if name is not None:
            chan.callerid_name = name
        if pres is not None:
            parsed = parse_presentation(str(pres))
            if parsed is not None:
                chan.callerid_pres = parsed
        self.emit_chan("NewCallerid", chan, [("CID-CallingPres", chan.presentation_text)])

    def set_state(self, chan: Channel, state: int) -> float:
        chan.state = state
        ts = self.emit_chan("Newstate", chan)
        if state == STATE_UP and chan.answered is None:
            chan.answered = ts
        return ts

    def newexten(self, chan: Channel, priority: int, app: str, data: str,
                 exten: str | None = None) -> float:
        """``Newexten`` for one dialplan step; the channel's application/priority change."""
        if exten is not None:
            chan.exten = exten
        chan.priority, chan.application, chan.app_data = priority, app, data
        return self.emit_chan("Newexten", chan, [
            ("Extension", chan.exten), ("Application", app), ("AppData", data)])

    def cdr_fields(self, chan: Channel, *, start: float, answer: float | None, end: float,
                   dest_channel: str = "", lastapp: str | None = None,
                   lastdata: str | None = None, exten: str | None = None) -> Fields:
        """The ``Cdr`` event body (cdr_manager.c), durations truncated to whole seconds."""
        duration = int(end - start)
        billsec = int(end - answer) if answer is not None else 0
        return [
            ("AccountCode", chan.accountcode), ("Source", chan.callerid_num),
            ("Destination", chan.exten if exten is None else exten),
            ("DestinationContext", chan.context),
            ("CallerID", f'"{chan.callerid_name}" <{chan.callerid_num}>'),
            ("Channel", chan.name), ("DestinationChannel", dest_channel),
            ("LastApplication", chan.application if lastapp is None else lastapp),
            ("LastData", chan.app_data if lastdata is None else lastdata),
            ("StartTime", _time_str(start, self.tz)), ("AnswerTime", _time_str(answer, self.tz)),
            ("EndTime", _time_str(end, self.tz)), ("Duration", str(duration)),
            ("BillableSeconds", str(billsec)),
            ("Disposition", "ANSWERED" if answer is not None else "NO ANSWER"),
            ("AMAFlags", "DOCUMENTATION"), ("UniqueID", chan.uniqueid),
            ("UserField", chan.cdr.get("userfield", "")),
        ]

    def destroy_channel(self, chan: Channel) -> None:
        """Generic end of a channel nobody else tears down: ``Hangup`` then ``Cdr``."""
        if not chan.alive:
            return
        chan.alive = False
        end = self.emit_chan("Hangup", chan, [
            ("Cause", str(chan.hangup_cause)), ("Cause-txt", cause_text(chan.hangup_cause))])
        self.emit("Cdr", self.cdr_fields(chan, start=chan.created, answer=chan.answered, end=end))
        self.remove_channel(chan)

    def hangup(self, chan: Channel, cause: int | None = None, *, source: str = "",
               soft_event: bool = False) -> None:
        """Hang a channel up; whoever drives it (AGI session, OutboundCall) finishes it."""
        if soft_event:  # ast_softhangup() publishes this; AMI Hangup and Hangup() do not
            self.emit_chan("SoftHangupRequest", chan, [("Cause", "16")])
        chan.request_hangup(cause, source)
        if not chan.busy:
            self.destroy_channel(chan)


# ---------------------------------------------------------------------------------------------
# FastAGI client side
# ---------------------------------------------------------------------------------------------

RESULT_SUCCESS, RESULT_SHOWUSAGE, RESULT_FAILURE = 0, 1, 2

#: The ``Dead`` column of ``agi show commands`` (agi_show_commands.txt): allowed after hangup.
AGI_DEAD_OK = frozenset({
    "asyncagi break", "database del", "database deltree", "database get", "database put",
    "exec", "get full variable", "get variable", "noop", "set variable", "verbose",
    "speech destroy", "speech unload grammar",
})
#: Every AGI command Asterisk 22 registers, in ``agi show commands`` order.
AGI_COMMANDS = (
    "answer", "asyncagi break", "channel status", "database del", "database deltree",
    "database get", "database put", "exec", "get data", "get full variable", "get option",
    "get variable", "hangup", "noop", "receive char", "receive text", "record file",
    "say alpha", "say digits", "say number", "say phonetic", "say date", "say time",
    "say datetime", "send image", "send text", "set autohangup", "set callerid", "set context",
    "set extension", "set music", "set priority", "set variable", "stream file",
    "control stream file", "tdd mode", "verbose", "wait for digit", "speech create",
    "speech set", "speech destroy", "speech load grammar", "speech unload grammar",
    "speech activate grammar", "speech deactivate grammar", "speech recognize", "gosub",
)

#: AGI_COMMANDS by first word, each group in table order (find_command's first match wins).
_AGI_COMMANDS_BY_FIRST_WORD: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
for _name in AGI_COMMANDS:
    _AGI_COMMANDS_BY_FIRST_WORD.setdefault(_name.split()[0], []).append((_name, tuple(_name.split())))

#: Usage text sent between ``520-...`` and ``520 End of proper usage.`` (xmldoc descriptions,
#: paragraphs joined by newlines). "get variable" is byte-exact from the capture; the others are
#: rendered the same way from res_agi.c's documentation.
AGI_USAGE = {
    "get variable": (
        "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set. "
        "Returns <literal>1</literal> if <replaceable>variablename</replaceable> is set and "
        "returns the variable in parentheses.\nExample return code: 200 result=1 (testvariable)"
    ),
    "get full variable": (
        "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set or "
        "channel does not exist. Returns <literal>1</literal> if <replaceable>variablename"
        "</replaceable> is set and returns the variable in parenthesis. Understands complex "
        "variable names and builtin variables, unlike GET VARIABLE.\n"
        "Example return code: 200 result=1 (testvariable)"
    ),
    "set variable": "Sets a variable to the current channel.",
    "exec": (
        "Executes <replaceable>application</replaceable> with given <replaceable>options"
        "</replaceable>.\nReturns whatever the <replaceable>application</replaceable> returns, "
        "or <literal>-2</literal> on failure to find <replaceable>application</replaceable>."
    ),
    "hangup": (
        "Hangs up the specified channel. If no channel name is given, hangs up the current "
        "channel"
    ),
    "verbose": (
        "Sends <replaceable>message</replaceable> to the console via verbose message system. "
        "<replaceable>level</replaceable> is the verbose level (1-4). Always returns "
        "<literal>1</literal>"
    ),
    "channel status": (
        "Returns the status of the specified <replaceable>channelname</replaceable>. If no "
        "channel name is given then returns the status of the current channel.\nReturn values:"
    ),
    "set callerid": "Changes the callerid of the current channel.",
}

MSG_510 = b"510 Invalid or unknown command\n"
MSG_511 = b"511 Command Not Permitted on a dead channel or intercept routine\n"
USAGE_HEAD = b"520-Invalid command syntax.  Proper usage follows:\n"
USAGE_TAIL = b"520 End of proper usage.\n"
AGI_LINE_MAX = 2047  # fgets() into AGI_BUF_LEN (2048) bytes


class Hostile(enum.Enum):
    """Misbehaving "Asterisk" peers for hardening tests of the FastAGI server."""

    SILENT = "silent"  #: connect and send nothing at all
    HALF_ENV = "half_env"  #: send the first TCP segment of the env block, then nothing
    DISCONNECT_MID_HEADER = "disconnect_mid_header"  #: half an env line, then close
    OVERSIZED_ENV = "oversized_env"  #: an env block with one huge agi_arg line
    GARBAGE = "garbage"  #: binary garbage (NULs, high bytes, no newlines) instead of an env


@dataclass(frozen=True)
class AgiTiming:
    """Delays observed in the captures (seconds); set them to 0 for speed where harmless."""

    env_split_pause: float = 0.002  #: between the two env-block writes, so they arrive apart
    usage_pause: float = 0.045  #: the 520 block's first line came 47 ms before the rest
    answer_delay: float = 0.5  #: ANSWER on a Local channel took ~0.5 s
    wait_scale: float = 1.0  #: ``EXEC Wait N`` sleeps ``N * wait_scale``
    connect_timeout: float = 2.0  #: MAX_AGI_CONNECT (2000 ms)


@dataclass
class AgiExchange:
    """One command the FastAGI server sent and the bytes the simulator answered."""

    command: str
    reply: bytes

    @property
    def reply_text(self) -> str:
        return self.reply.decode("utf-8", "replace")


@dataclass
class AgiResult:
    """Outcome of one AGI() application run."""

    status: str  #: AGISTATUS: SUCCESS, FAILURE or HANGUP
    connected: bool
    env: bytes = b""  #: the environment block as sent
    exchanges: list[AgiExchange] = field(default_factory=list)
    #: Ordered raw traffic: ("tx", bytes) = simulator -> server, ("rx", bytes) = server -> sim.
    wire: list[tuple[str, bytes]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    hung_up: bool = False
    hangup_cause: int = 0
    hangup_source: str = ""  #: "agi" (HANGUP/EXEC Hangup), "far_end", "ami" or ""
    hangup_sent: int = 0  #: how many ``HANGUP`` lines were written to the server
    server_closed: bool = False  #: the server closed (or half-closed) its side
    timed_out: bool = False  #: run(timeout) expired while the server kept the socket open
    error: str = ""

    @property
    def commands(self) -> list[str]:
        return [e.command for e in self.exchanges]

    @property
    def dialplan_continues(self) -> bool:
        """``AGI()`` returns -1 (dialplan stops, ``h`` runs) only when AGISTATUS is HANGUP."""
        return self.status != "HANGUP" and not self.hung_up

    @property
    def sent_bytes(self) -> bytes:
        return b"".join(b for d, b in self.wire if d == "tx")

    @property
    def received_bytes(self) -> bytes:
        return b"".join(b for d, b in self.wire if d == "rx")

    def reply_to(self, command: str) -> str:
        """Reply text of the first exchange whose command equals ``command``."""
        return next(e.reply_text for e in self.exchanges if e.command == command)


_INTERRUPTED = object()


class AgiCall:
    """Asterisk running ``AGI(agi://host:port/script,args...)`` on one channel.

    ``await AgiCall(port, ...).run(timeout=5)`` connects, speaks FastAGI until the server closes
    and returns an :class:`AgiResult`. Far-end hangup: ``far_end_hangup_after`` seconds,
    ``far_end_hangup_after_commands`` replies, or :meth:`far_end_hangup` at any time. Channel
    variables ``AGISIGHUP=no`` and ``AGIEXITONHANGUP=yes`` behave as in Asterisk.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        *,
        script: str | None = "callwarden",
        args: Sequence[str] = (),
        request_url: str | None = None,
        channel: Channel | None = None,
        variables: Mapping[str, str] | None = None,
        callerid_num: str | None = None,
        callerid_name: str | None = None,
        callerid_pres: int | str | None = None,
        pbx: Pbx | None = None,
        far_end_hangup_after: float | None = None,
        far_end_hangup_after_commands: int | None = None,
        far_end_hangup_cause: int = 16,
        mixmonitor_fails: bool = False,
        monitor_dir: str = "/var/spool/asterisk/monitor",
        hostile: Hostile | None = None,
        hostile_size: int = 1_000_000,
        thread_id: int = 139766139414208,
        timing: AgiTiming | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.request = request_url or f"agi://{host}:{port}" + (f"/{script}" if script else "")
        self.script = self.request.split("://", 1)[-1].partition("/")[2]
        self.args = list(args)
        self.pbx = pbx or Pbx()
        self.channel = channel or Channel()
        for key, value in (variables or {}).items():
            self.channel.variables[key] = value
        if callerid_num is not None:
            self.channel.callerid_num = callerid_num
        if callerid_name is not None:
            self.channel.callerid_name = callerid_name
        if callerid_pres is not None:
            self.channel.callerid_pres = parse_presentation(str(callerid_pres)) or 0
        self.far_end_hangup_after = far_end_hangup_after
        self.far_end_hangup_after_commands = far_end_hangup_after_commands
        self.far_end_hangup_cause = far_end_hangup_cause
        self.mixmonitor_fails = mixmonitor_fails
        self.monitor_dir = monitor_dir.rstrip("/")
        self.hostile, self.hostile_size = hostile, hostile_size
        self.thread_id = thread_id
        self.timing = timing or AgiTiming()
        self.result = AgiResult(status="SUCCESS", connected=False)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()
        self._eof = False
        self._read_task: asyncio.Task[bytes] | None = None
        self._dead = False
        self._needhup = False
        self._answered = 0
        self._owned = False  # we registered the channel with the Pbx ourselves
        self.apps: dict[str, Callable[[str], Awaitable[int]]] = {
            "mixmonitor": self._app_mixmonitor, "stopmixmonitor": self._app_stopmixmonitor,
            "verbose": self._app_zero, "noop": self._app_zero, "log": self._app_zero,
            "wait": self._app_wait, "hangup": self._app_hangup, "set": self._app_set,
            "mset": self._app_mset, "answer": self._app_answer, "playback": self._app_zero,
        }

    # -- public API ---------------------------------------------------------------------------
    def far_end_hangup(self, cause: int | None = None) -> None:
        """The caller/callee hangs up now (Asterisk notices it between commands)."""
        self.channel.request_hangup(cause or self.far_end_hangup_cause, "far_end")

    def env_block(self) -> tuple[bytes, bytes]:
        """The environment block as the two TCP writes the captures show (17 lines first)."""
        ch = self.channel
        lines = ["agi_network: yes"]
        if self.script:
            lines.append(f"agi_network_script: {self.script}")
        lines += [
            f"agi_request: {self.request}", f"agi_channel: {ch.name}",
            f"agi_language: {ch.language}", f"agi_type: {ch.tech}",
            f"agi_uniqueid: {ch.uniqueid}", f"agi_version: {ASTERISK_VERSION}",
            f"agi_callerid: {ch.callerid_num or 'unknown'}",
            f"agi_calleridname: {ch.callerid_name or 'unknown'}",
            f"agi_callingpres: {ch.presentation}", f"agi_callingani2: {ch.ani2}",
            f"agi_callington: {ch.ton}", f"agi_callingtns: {ch.tns}",
            f"agi_dnid: {ch.dnid or 'unknown'}", f"agi_rdnis: {ch.rdnis or 'unknown'}",
            f"agi_context: {ch.context}", f"agi_extension: {ch.exten}",
            f"agi_priority: {ch.priority}", "agi_enhanced: 0.0",
            f"agi_accountcode: {ch.accountcode}", f"agi_threadid: {self.thread_id}",
        ]
        lines += [f"agi_arg_{n}: {a}" for n, a in enumerate(self.args, 1)]
        data = [(line + "\n").encode() for line in lines] + [b"\n"]
        return b"".join(data[:17]), b"".join(data[17:])

    async def run(self, timeout: float = 10.0) -> AgiResult:
        """Run the AGI application; never hangs longer than ``timeout`` seconds."""
        if self.pbx.find_channel(self.channel.name) is None:
            self.pbx.add_channel(self.channel)
            self._owned = True
        was_busy, self.channel.busy = self.channel.busy, True
        timer = None
        if self.far_end_hangup_after is not None:
            timer = asyncio.get_running_loop().call_later(
                self.far_end_hangup_after, self.far_end_hangup)
        try:
            await asyncio.wait_for(self._run(), timeout)
        except TimeoutError:
            self.result.timed_out = True
        finally:
            if timer:
                timer.cancel()
            await self._shutdown()
            self.channel.busy = was_busy
        self._finish()
        return self.result

    # -- session ------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.timing.connect_timeout)
        except (OSError, TimeoutError) as exc:
            # res_agi: "Connecting to '...' failed ... FastAGI failed." -> AGISTATUS=FAILURE
            self.result.status, self.result.error = "FAILURE", f"connect failed: {exc!r}"
            return
        self.result.connected = True
        if self.hostile is not None:
            await self._run_hostile()
            return
        first, second = self.env_block()
        self.result.env = first + second
        await self._send(first)
        if self.timing.env_split_pause:
            await asyncio.sleep(self.timing.env_split_pause)
        await self._send(second)
        await self._command_loop()

    async def _command_loop(self) -> None:
        variables = self.channel.variables
        # ast_false() / ast_true() spellings
        sighup = variables.get("AGISIGHUP", "").lower() not in ("no", "false", "n", "f", "0",
                                                                "off")
        exit_on_hangup = variables.get("AGIEXITONHANGUP", "").lower() in (
            "yes", "true", "y", "t", "1", "on")
        while True:
            if self._needhup:
                self._needhup, self._dead = False, True
                if sighup:
                    await self._send(b"HANGUP\n")
                    self.result.hangup_sent += 1
                if exit_on_hangup:
                    break
            if not self._dead and self.channel.hangup_requested:
                self._needhup = True  # ast_read() returned NULL
                if self.result.status == "SUCCESS":
                    self.result.status = "HANGUP"
                continue
            line = await self._read_line(interruptible=not self._dead)
            if line is _INTERRUPTED:
                continue
            if line is None:  # the server closed its side: "AGI Script ... completed"
                self.result.server_closed = True
                break
            assert isinstance(line, bytes)
            await self._handle(line.removesuffix(b"\n"))
        if sighup:  # "Notify process": Asterisk writes HANGUP when the session ends
            await self._send(b"HANGUP\n")
            self.result.hangup_sent += 1

    async def _read_line(self, *, interruptible: bool) -> bytes | None | object:
        """fgets() semantics on a 2048-byte buffer; a pending hangup interrupts the wait."""
        assert self._reader is not None
        while True:
            idx = self._buf.find(b"\n", 0, AGI_LINE_MAX)
            if idx >= 0 or len(self._buf) >= AGI_LINE_MAX:
                end = idx + 1 if idx >= 0 else AGI_LINE_MAX
                line = bytes(self._buf[:end])
                del self._buf[:end]
                return line
            if self._eof:
                if self._buf:  # a last line without newline is still executed
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                return None
            if self._read_task is None:
                self._read_task = asyncio.ensure_future(self._reader.read(65536))
            waiters: set[asyncio.Future[object]] = {self._read_task}  # type: ignore[arg-type]
            hangup = None
            if interruptible:
                hangup = asyncio.ensure_future(self.channel.wait_hangup())
                waiters.add(hangup)
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if hangup is not None and hangup not in done:
                hangup.cancel()
            if self._read_task in done:
                try:
                    data = self._read_task.result()
                except (ConnectionError, OSError):
                    data = b""
                self._read_task = None
                if not data:
                    self._eof = True
                else:
                    self._buf += data
                    self.result.wire.append(("rx", data))
            elif hangup is not None and hangup in done:
                return _INTERRUPTED

    async def _send(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        self.result.wire.append(("tx", data))
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _shutdown(self) -> None:
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(BaseException):
                await self._read_task
        if self._writer is not None:
            await _close_writer(self._writer)

    def _finish(self) -> None:
        ch = self.channel
        self.result.variables = dict(ch.variables)
        self.result.variables["AGISTATUS"] = self.result.status
        self.result.hung_up = ch.hangup_requested
        self.result.hangup_cause = ch.hangup_cause
        self.result.hangup_source = ch.hangup_source
        if self.result.connected and self.hostile is None or self.result.status == "FAILURE":
            ch.variables["AGISTATUS"] = self.result.status
        if self._owned and ch.hangup_requested and not ch.busy:
            self.pbx.destroy_channel(ch)

    # -- hostile peers ------------------------------------------------------------------------
    async def _run_hostile(self) -> None:
        first, second = self.env_block()
        if self.hostile is Hostile.HALF_ENV:
            await self._send(first)
        elif self.hostile is Hostile.DISCONNECT_MID_HEADER:
            await self._send(first[: first.index(b"\n", 40) - 5])
            assert self._writer is not None
            self._writer.transport.abort()
            self.result.server_closed = False
            return
        elif self.hostile is Hostile.OVERSIZED_ENV:
            await self._send(first)
            huge = b"agi_arg_1: " + b"x" * self.hostile_size + b"\n"
            await self._send(second.replace(b"agi_threadid", huge + b"agi_threadid", 1))
        elif self.hostile is Hostile.GARBAGE:
            rnd = random.Random(81)
            garbage = bytes(rnd.choice([0, 1, 0xFF, 0xFE, 0x80, 0x7F, 0x1B, 0xC3])
                            for _ in range(min(self.hostile_size, 65536)))
            await self._send(garbage)
        # then wait until the server gives up (EOF) or run(timeout) expires
        while await self._read_line(interruptible=False) is not None:
            pass
        self.result.server_closed = True

    # -- command dispatch (agi_handle_command) -------------------------------------------------
    async def _handle(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        chan = self.channel
        command_id = self.pbx.next_command_id()
        self.pbx.emit_chan("AGIExecStart", chan, [("CommandId", str(command_id)),
                                                  ("Command", text)])
        argv = parse_agi_args(text)
        name = self._find_command(argv)
        reply_start = len(self.result.wire)
        if name is None:
            await self._send(MSG_510)
            self._exec_end(command_id, text, 510, "Invalid or unknown command")
        elif self._dead and name not in AGI_DEAD_OK:
            await self._send(MSG_511)
            self._exec_end(command_id, text, 511,
                           "Command Not Permitted on a dead channel or intercept routine")
        else:
            res = await getattr(self, "_cmd_" + name.replace(" ", "_"), self._cmd_unsimulated)(
                argv)
            code, ami = {RESULT_SHOWUSAGE: (520, "Usage"), RESULT_FAILURE: (-1, "Failure"),
                         RESULT_SUCCESS: (200, "Success")}.get(res, (200, "Unknown Result"))
            self._exec_end(command_id, text, code, ami)
            if res == RESULT_SHOWUSAGE:
                await self._send_usage(name)
        reply = b"".join(b for d, b in self.result.wire[reply_start:] if d == "tx")
        self.result.exchanges.append(AgiExchange(text, reply))
        self._answered += 1
        limit = self.far_end_hangup_after_commands
        if limit is not None and self._answered == limit:
            self.far_end_hangup()

    def _exec_end(self, command_id: int, text: str, code: int, result: str) -> None:
        self.pbx.emit_chan("AGIExecEnd", self.channel, [
            ("CommandId", str(command_id)), ("Command", text), ("ResultCode", str(code)),
            ("Result", result)])

    @staticmethod
    def _find_command(argv: list[str]) -> str | None:
        """``find_command(argv, 0)``: every word of the command must match, case-insensitive."""
        if not argv:
            return None
        for name, words in _AGI_COMMANDS_BY_FIRST_WORD.get(argv[0].lower(), ()):
            if len(argv) >= len(words) and all(
                    a.lower() == w for a, w in zip(argv, words, strict=False)):
                return name
        return None

    async def _send_usage(self, name: str) -> None:
        usage = AGI_USAGE.get(name)
        if usage is None:
            await self._send(b"520 Invalid command syntax.  Proper usage not available.\n")
            return
        await self._send(USAGE_HEAD)
        if self.timing.usage_pause:
            await asyncio.sleep(self.timing.usage_pause)
        await self._send(usage.encode() + b"\n" + USAGE_TAIL)

    async def _reply(self, text: str) -> None:
        await self._send(text.encode() + b"\n")

    # -- AGI commands -------------------------------------------------------------------------
    async def _cmd_verbose(self, argv: list[str]) -> int:
        if len(argv) < 2:
            return RESULT_SHOWUSAGE
        await self._reply("200 result=1")
        return RESULT_SUCCESS

    async def _cmd_noop(self, argv: list[str]) -> int:
        await self._reply("200 result=0")
        return RESULT_SUCCESS

    async def _cmd_get_variable(self, argv: list[str]) -> int:
        if len(argv) != 3:
            return RESULT_SHOWUSAGE
        value = self.channel.read(argv[2], self.pbx) if argv[2] else None
        await self._reply("200 result=0" if value is None else f"200 result=1 ({value})")
        return RESULT_SUCCESS

    async def _cmd_get_full_variable(self, argv: list[str]) -> int:
        if len(argv) not in (4, 5):
            return RESULT_SHOWUSAGE
        chan = self.pbx.find_channel(argv[4]) if len(argv) == 5 else self.channel
        if chan is None:
            await self._reply("200 result=0")
        else:
            await self._reply(f"200 result=1 ({chan.substitute(argv[3], self.pbx)})")
        return RESULT_SUCCESS

    async def _cmd_set_variable(self, argv: list[str]) -> int:
        if len(argv) != 4:
            return RESULT_SHOWUSAGE
        self.pbx.set_variable(self.channel, argv[2], argv[3])
        await self._reply("200 result=1")
        return RESULT_SUCCESS

    async def _cmd_channel_status(self, argv: list[str]) -> int:
        if len(argv) == 2:
            await self._reply(f"200 result={self.channel.state}")
        elif len(argv) == 3:
            other = self.pbx.find_channel(argv[2])
            await self._reply(f"200 result={other.state if other else -1}")
        else:
            return RESULT_SHOWUSAGE
        return RESULT_SUCCESS

    async def _cmd_answer(self, argv: list[str]) -> int:
        if self.channel.state != STATE_UP:
            if self.timing.answer_delay:
                await asyncio.sleep(self.timing.answer_delay)
            self.pbx.set_state(self.channel, STATE_UP)
        await self._reply("200 result=0")
        return RESULT_SUCCESS

    async def _cmd_hangup(self, argv: list[str]) -> int:
        """``HANGUP [channelname]`` -- the argument is a channel name, never a cause."""
        if len(argv) == 1:
            self.pbx.hangup(self.channel, source="agi", soft_event=True)
            await self._reply("200 result=1")
        elif len(argv) == 2:
            other = self.pbx.find_channel(argv[1])
            if other is not None:
                self.pbx.hangup(other, source="agi", soft_event=True)
            await self._reply("200 result=1" if other else "200 result=-1")
        else:
            return RESULT_SHOWUSAGE
        return RESULT_SUCCESS

    async def _cmd_set_callerid(self, argv: list[str]) -> int:
        if len(argv) != 3:
            return RESULT_SHOWUSAGE
        m = re.fullmatch(r'\s*"?([^"<]*?)"?\s*<([^>]*)>\s*', argv[2])
        name, num = (m.group(1), m.group(2)) if m else ("", argv[2])
        self.pbx.set_callerid(self.channel, num=num, name=name)
        await self._reply("200 result=1")
        return RESULT_SUCCESS

    async def _cmd_exec(self, argv: list[str]) -> int:
        if len(argv) < 2:
            return RESULT_SHOWUSAGE
        app = self.apps.get(argv[1].lower())
        res = await app(argv[2] if len(argv) >= 3 else "") if app else -2
        await self._reply(f"200 result={res}")
        return res  # "Even though this is wrong, users are depending upon this result."

    async def _cmd_unsimulated(self, argv: list[str]) -> int:
        """Real commands the simulator does not model (SAY *, STREAM FILE...): ``result=0``."""
        await self._reply("200 result=0")
        return RESULT_SUCCESS

    # -- dialplan applications for EXEC --------------------------------------------------------
    async def _app_zero(self, data: str) -> int:
        return 0

    async def _app_set(self, data: str) -> int:
        name, sep, value = data.partition("=")
        if sep:
            self.pbx.set_variable(self.channel, name.strip(), value)
        return 0

    async def _app_mset(self, data: str) -> int:
        """``pbx_builtin_setvar_multiple``: comma-separated ``name=value`` pairs (at most 99),
        both split by ``ast_app_separate_args``; an entry without ``=`` is ignored."""
        for entry in separate_app_args(data, ",", 100):
            pair = separate_app_args(entry, "=", 2)
            if len(pair) == 2:
                self.pbx.set_variable(self.channel, pair[0], pair[1])
        return 0

    async def _app_answer(self, data: str) -> int:
        if self.channel.state != STATE_UP:
            self.pbx.set_state(self.channel, STATE_UP)
        return 0

    async def _app_wait(self, data: str) -> int:
        seconds = float(data.split(",")[0] or 0) * self.timing.wait_scale
        if self._dead:
            await asyncio.sleep(seconds)
            return 0
        try:
            await asyncio.wait_for(self.channel.wait_hangup(), seconds)
        except TimeoutError:
            return 0
        return -1

    async def _app_hangup(self, data: str) -> int:
        cause = parse_cause(data) if data else 0
        self.pbx.hangup(self.channel, cause or None, source="agi")
        return -1

    async def _app_mixmonitor(self, data: str) -> int:
        filename = data.split(",")[0]
        if not filename or self.mixmonitor_fails:
            return -1
        if not filename.startswith("/"):
            filename = f"{self.monitor_dir}/{filename}"
        self.pbx.set_variable(self.channel, "MIXMONITOR_FILENAME", filename)
        self.channel.mixmonitor_file = filename
        self.pbx.emit_chan("MixMonitorStart", self.channel)
        return 0

    async def _app_stopmixmonitor(self, data: str) -> int:
        if self.channel.mixmonitor_file is not None:
            self.channel.mixmonitor_file = None
            self.pbx.emit_chan("MixMonitorStop", self.channel)
        return 0


# ---------------------------------------------------------------------------------------------
# AMI server side
# ---------------------------------------------------------------------------------------------


@dataclass
class AmiAction:
    """One action a client sent, as received (headers in order, case kept)."""

    headers: Fields
    session: int
    authenticated: bool
    raw: bytes = b""

    @property
    def name(self) -> str:
        return self.get("Action") or ""

    def get(self, key: str, default: str | None = None) -> str | None:
        """``astman_get_header``: first header matching case-insensitively."""
        key = key.lower()
        return next((v for k, v in self.headers if k.lower() == key), default)


class _AmiSession:
    """One manager connection."""

    def __init__(self, sid: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.id, self.reader, self.writer = sid, reader, writer
        self.authenticated = False
        self.username = ""
        self.challenge = ""
        self.event_mask: set[str] = set(EVENT_CATEGORIES)
        self.peer = writer.get_extra_info("peername") or ("127.0.0.1", 0)
        self.local = writer.get_extra_info("sockname") or ("127.0.0.1", 0)

    def write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)


OriginateHandler = Callable[[AmiAction], Awaitable[None]]


class AmiServer:
    """Asterisk's AMI on 127.0.0.1 (ephemeral port), speaking what the captures show.

    ``users`` maps username -> secret (plaintext ``Secret`` and md5 ``Challenge``/``Key`` both
    work). Every action is recorded in :attr:`actions`. Events come from the shared
    :class:`Pbx` (``server.pbx``).
    """

    def __init__(
        self,
        pbx: Pbx | None = None,
        *,
        users: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        login_failure_delay: float = 1.0,
        cli: Mapping[str, str] | None = None,
        on_originate: OriginateHandler | None = None,
        uptime: int = 122,
        session_ids: Callable[[], str] | None = None,
    ) -> None:
        self.pbx = pbx or Pbx()
        self.users = dict(users or {"callwarden": "callwarden"})
        self.host, self._port = host, port
        self.login_failure_delay = login_failure_delay
        self.cli = {"core show version": CORE_SHOW_VERSION, **(cli or {})}
        self.on_originate = on_originate
        self.uptime = uptime
        self._session_ids = session_ids or (lambda: hex(random.randrange(2**44, 2**47)))
        self.actions: list[AmiAction] = []
        self.sessions: list[_AmiSession] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sid = itertools.count(1)
        self._changed = asyncio.Condition()
        self.pbx.subscribe(self._broadcast)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> AmiServer:
        self._server = await asyncio.start_server(self._serve, self.host, self._port,
                                                  reuse_address=True)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def port(self) -> int:
        return self._port

    async def close(self) -> None:
        await self.refuse_connections()
        await self.drop_clients()
        self.pbx.unsubscribe(self._broadcast)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    async def __aenter__(self) -> AmiServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def drop_clients(self) -> None:
        """Abort every client connection (what a crashing/restarting Asterisk does)."""
        for session in list(self.sessions):
            session.writer.transport.abort()
        self.sessions.clear()
        await self._notify()

    async def refuse_connections(self) -> None:
        """Stop listening: new connections get ECONNREFUSED until :meth:`accept_connections`."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def accept_connections(self) -> None:
        """Listen again on the same port."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, self._port,
                                                      reuse_address=True)

    async def restart(self, down_for: float = 0.0) -> None:
        """Drop clients, refuse connections for ``down_for`` seconds, then listen again."""
        await self.refuse_connections()
        await self.drop_clients()
        if down_for:
            await asyncio.sleep(down_for)
        await self.accept_connections()

    # -- assertions helpers -------------------------------------------------------------------
    def actions_named(self, name: str) -> list[AmiAction]:
        return [a for a in self.actions if a.name.lower() == name.lower()]

    async def wait_action(self, name: str, timeout: float = 5.0, **headers: str) -> AmiAction:
        """Wait until an action ``name`` with the given header values has been received."""

        def match() -> AmiAction | None:
            return next((a for a in self.actions_named(name)
                         if all(a.get(k) == v for k, v in headers.items())), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(match), timeout)
        found = match()
        assert found is not None
        return found

    async def wait_logged_in(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``count`` sessions are authenticated."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(
                lambda: sum(s.authenticated for s in self.sessions) >= count), timeout)

    @property
    def logged_in(self) -> int:
        return sum(s.authenticated for s in self.sessions)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- connection handling ------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        session = _AmiSession(next(self._sid), reader, writer)
        self.sessions.append(session)
        try:
            session.write(AMI_BANNER)
            await self._read_loop(session)
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
            await _close_writer(writer)
            self._tasks.discard(task)  # type: ignore[arg-type]
            with contextlib.suppress(RuntimeError):
                await self._notify()

    async def _read_loop(self, session: _AmiSession) -> None:
        buf = bytearray()
        headers: Fields = []
        raw = bytearray()
        while True:
            data = await session.reader.read(65536)
            if not data:
                return
            buf += data
            while (idx := buf.find(b"\r\n")) >= 0:
                line = bytes(buf[:idx])
                raw += buf[:idx + 2]
                del buf[:idx + 2]
                if line:
                    name, sep, value = line.decode("utf-8", "replace").partition(":")
                    headers.append((name, value.lstrip(" \t")) if sep else (name, ""))
                    continue
                if headers:
                    keep = await self._dispatch(session, AmiAction(
                        headers, session.id, session.authenticated, bytes(raw)))
                    headers, raw = [], bytearray()
                    if not keep:
                        return
            if len(buf) > 1024:  # manager.c: "Dumping long line with no return"
                buf.clear()

    def _broadcast(self, event: str, privilege: str, data: bytes) -> None:
        category = privilege.split(",")[0]
        for session in self.sessions:
            if session.authenticated and category in session.event_mask:
                session.write(data)

    # -- responses (astman_send_response_full) ------------------------------------------------
    @staticmethod
    def _response(action: AmiAction, status: str, message: str | None = None,
                  extra: Sequence[tuple[str, str]] = (), eventlist: str | None = None) -> bytes:
        fields: Fields = [("Response", status)]
        if action.get("ActionID"):
            fields.append(("ActionID", action.get("ActionID") or ""))
        if eventlist:
            fields.append(("EventList", eventlist))
        if message is not None:
            fields.append(("Message", message))
        return encode_message(fields + list(extra))

    def _error(self, session: _AmiSession, action: AmiAction, message: str) -> None:
        session.write(self._response(action, "Error", message))

    async def _dispatch(self, session: _AmiSession, action: AmiAction) -> bool:
        """Run one action; return False when the session must end."""
        self.actions.append(action)
        await self._notify()
        name = action.name.lower()
        if not name:
            self._error(session, action, "Missing action in request")
            return True
        if not session.authenticated and name not in ("login", "logoff", "challenge"):
            self._error(session, action, "Permission denied")
            return True
        handler = getattr(self, f"_action_{name}", None)
        if handler is not None:
            return await handler(session, action) is not False
        if name in MANAGER_ACTIONS:
            self._error(session, action, f"Simulator: action {action.name} is not simulated")
        else:
            self._error(session, action, f"Invalid/unknown command: {action.name}. "
                                         "Use Action: ListCommands to show available commands.")
        return True

    # -- actions ------------------------------------------------------------------------------
    async def _action_challenge(self, session: _AmiSession, action: AmiAction) -> None:
        if (action.get("AuthType") or "").lower() != "md5":
            self._error(session, action, "Must specify AuthType")
            return
        session.challenge = session.challenge or str(random.randrange(0, 2**31))
        session.write(self._response(action, "Success", None, [("Challenge", session.challenge)]))

    def _authenticate(self, session: _AmiSession, action: AmiAction) -> bool:
        username = (action.get("Username") or "").lower()
        secret = next((s for u, s in self.users.items() if u.lower() == username), None)
        if secret is None:
            return False
        if (action.get("AuthType") or "").lower() == "md5":
            key = action.get("Key") or ""
            if not session.challenge:
                return False
            return hashlib.md5((session.challenge + secret).encode()).hexdigest() == key
        return action.get("Secret") == secret

    async def _action_login(self, session: _AmiSession, action: AmiAction) -> bool:
        if session.authenticated:
            session.write(self._response(action, "Success", "Already authenticated"))
            return True
        if not self._authenticate(session, action):
            await asyncio.sleep(self.login_failure_delay)  # manager.c sleep(1)
            self._error(session, action, "Authentication failed")
            return False  # action_login returns -1: Asterisk closes the connection
        session.authenticated = True
        session.username = action.get("Username") or ""
        events = action.get("Events")
        if events is not None:
            session.event_mask = _event_mask(events)
        session.write(self._response(action, "Success", "Authentication accepted"))
        if "system" in session.event_mask:
            session.write(encode_message([
                ("Event", "FullyBooted"), ("Privilege", "system,all"),
                ("Uptime", str(self.uptime)), ("LastReload", str(self.uptime)),
                ("Status", "Fully Booted")]))
        self._successful_auth(session)
        await self._notify()
        return True

    def _successful_auth(self, session: _AmiSession) -> None:
        ts = self.pbx.clock()
        tv = datetime.fromtimestamp(float(ts), self.pbx.tz)
        tv_str = tv.strftime("%Y-%m-%dT%H:%M:%S.") + f"{tv.microsecond // 1000:03d}" + \
            tv.strftime("%z")
        fields = [
            ("EventTV", tv_str), ("Severity", "Informational"), ("Service", "AMI"),
            ("EventVersion", "1"), ("AccountID", session.username),
            ("SessionID", self._session_ids()),
            ("LocalAddress", f"IPV4/TCP/{session.local[0]}/{session.local[1]}"),
            ("RemoteAddress", f"IPV4/TCP/{session.peer[0]}/{session.peer[1]}"),
            ("UsingPassword", "0"), ("SessionTV", tv_str),
        ]
        head = [("Event", "SuccessfulAuth"), ("Privilege", "security,all"),
                ("Timestamp", format_ts(ts))]
        data = encode_message(head + fields)
        self.pbx.events.append(data)
        self._broadcast("SuccessfulAuth", "security,all", data)

    async def _action_logoff(self, session: _AmiSession, action: AmiAction) -> bool:
        session.write(self._response(action, "Goodbye", "Thanks for all the fish."))
        return False

    async def _action_ping(self, session: _AmiSession, action: AmiAction) -> None:
        session.write(self._response(action, "Success", None, [
            ("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}")]))

    async def _action_events(self, session: _AmiSession, action: AmiAction) -> None:
        session.event_mask = _event_mask(action.get("EventMask") or "")
        state = "On" if session.event_mask else "Off"
        session.write(self._response(action, "Success", None, [("Events", state)]))

    async def _action_coresettings(self, session: _AmiSession, action: AmiAction) -> None:
        settings = [(k, self.pbx.system_name if k == "SystemName" else v) for k, v in CORE_SETTINGS]
        session.write(self._response(action, "Success", None, settings))

    async def _action_command(self, session: _AmiSession, action: AmiAction) -> None:
        command = (action.get("Command") or "").strip()
        if not command:
            self._error(session, action, "No command provided")
            return
        output = self.cli.get(command)
        if output is None:
            status, lines = "Error", [f"No such command '{command}' (type 'core show help "
                                      f"{command}' for other possible commands)"]
        else:
            status, lines = "Success", output.split("\n")
        # captured as two writes: the response head, then Message + Output lines
        head = [("Response", status)]
        if action.get("ActionID"):
            head.append(("ActionID", action.get("ActionID") or ""))
        session.write("".join(f"{k}: {v}\r\n" for k, v in head).encode())
        await asyncio.sleep(0)
        body = [("Message", "Command output follows")] + [("Output", ln) for ln in lines]
        session.write(encode_message(body))

    async def _action_getvar(self, session: _AmiSession, action: AmiAction) -> None:
        variable = action.get("Variable") or ""
        if not variable:
            self._error(session, action, "No variable specified")
            return
        chan = None
        if action.get("Channel"):
            chan = self.pbx.find_channel(action.get("Channel") or "")
            if chan is None:
                self._error(session, action, "No such channel")
                return
        if chan is None:
            value = self.pbx.globals.get(variable, "")
        else:
            value = chan.read(variable, self.pbx) or ""
        session.write(self._response(action, "Success", None, [
            ("Variable", variable), ("Value", value)]))

    async def _action_setvar(self, session: _AmiSession, action: AmiAction) -> None:
        variable = action.get("Variable") or ""
        if not variable:
            self._error(session, action, "No variable specified")
            return
        value = action.get("Value") or ""
        if action.get("Channel"):
            chan = self.pbx.find_channel(action.get("Channel") or "")
            if chan is None:
                self._error(session, action, "No such channel")
                return
            self.pbx.set_variable(chan, variable, value)
        else:
            self.pbx.globals[variable] = value
        session.write(self._response(action, "Success", "Variable Set"))

    async def _action_hangup(self, session: _AmiSession, action: AmiAction) -> None:
        target = action.get("Channel") or ""
        if not target:
            self._error(session, action, "No channel specified")
            return
        cause_text_ = action.get("Cause") or ""
        cause = int(cause_text_) if cause_text_.isdigit() and int(cause_text_) <= 127 else 0
        if not target.startswith("/"):
            chan = self.pbx.find_channel(target)
            if chan is None:
                self._error(session, action, "No such channel")
                return
            session.write(self._response(action, "Success", "Channel Hungup"))
            self.pbx.hangup(chan, cause or None, source="ami")
            return
        pattern = re.compile(target.strip("/"))
        matched = [c for c in list(self.pbx.channels.values()) if pattern.search(c.name)]
        session.write(self._response(action, "Success", "Channels hung up will follow",
                                     eventlist="start"))
        aid = [("ActionID", action.get("ActionID") or "")] if action.get("ActionID") else []
        for chan in matched:
            session.write(encode_message([("Event", "ChannelHungup"), ("Channel", chan.name)]
                                         + aid))
            self.pbx.hangup(chan, cause or None, source="ami")
        session.write(encode_message([("Event", "ChannelsHungupListComplete")] + aid + [
            ("EventList", "Complete"), ("ListItems", str(len(matched)))]))

    async def _action_coreshowchannels(self, session: _AmiSession, action: AmiAction) -> None:
        aid = [("ActionID", action.get("ActionID") or "")] if action.get("ActionID") else []
        session.write(self._response(action, "Success", "Channels will follow",
                                     eventlist="start"))
        chans = [c for c in self.pbx.channels.values() if c.alive]
        now = time.time()
        for chan in chans:
            secs = max(0, int(now - chan.created))
            duration = f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"
            session.write(encode_message([("Event", "CoreShowChannel")] + aid + chan.snapshot()
                                         + [("Application", chan.application),
                                            ("ApplicationData", chan.app_data),
                                            ("Duration", duration),
                                            ("BridgeId", chan.bridge_id)]))
        session.write(encode_message([("Event", "CoreShowChannelsComplete")] + aid + [
            ("EventList", "Complete"), ("ListItems", str(len(chans)))]))

    async def _action_stopmixmonitor(self, session: _AmiSession, action: AmiAction) -> None:
        target = action.get("Channel") or ""
        if not target:
            self._error(session, action, "No channel specified")
            return
        chan = self.pbx.find_channel(target)
        if chan is None:
            self._error(session, action, "No such channel")
            return
        if chan.mixmonitor_file is None:
            self._error(session, action, "Could not stop monitoring channel")
            return
        session.write(self._response(action, "Success"))
        chan.mixmonitor_file = None
        self.pbx.emit_chan("MixMonitorStop", chan)
        if chan.bridge_id:  # the bridge re-evaluates BRIDGEPEER (ami_events_stopmixmonitor.txt)
            peers = [c for c in self.pbx.channels.values()
                     if c.bridge_id == chan.bridge_id and c is not chan and c.alive]
            for peer in peers:
                self.pbx.set_variable(peer, "BRIDGEPEER", chan.name)
            if peers:
                self.pbx.set_variable(chan, "BRIDGEPEER", ",".join(c.name for c in peers))

    async def _action_originate(self, session: _AmiSession, action: AmiAction) -> None:
        session.write(self._response(action, "Success", "Originate successfully queued"))
        if self.on_originate is not None:
            task = asyncio.ensure_future(self.on_originate(action))
            self._tasks.add(task)  # type: ignore[arg-type]
            task.add_done_callback(self._tasks.discard)  # type: ignore[arg-type]


def _event_mask(text: str) -> set[str]:
    """``strings_to_mask``: on/off/yes/no or a comma list of categories."""
    value = text.strip().lower()
    if value in ("on", "yes", "true", "y", "t", "1", "all"):
        return set(EVENT_CATEGORIES)
    if value in ("off", "no", "false", "n", "f", "0", ""):
        return set()
    return {c.strip() for c in value.split(",")} & set(EVENT_CATEGORIES) | (
        set(EVENT_CATEGORIES) if "all" in value.split(",") else set())


# ---------------------------------------------------------------------------------------------
# A whole call through the capture's dialplan, with the AMI event stream Asterisk produces
# ---------------------------------------------------------------------------------------------


@dataclass
class CallSpec:
    """Parameters of an :class:`OutboundCall`; defaults reproduce ami_events_one_call.txt.

    The call is ``Originate(Local/{exten}@{context}, Wait({originate_data}))``: ``;1`` waits,
    ``;2`` runs ``pre_agi`` steps, then ``AGI(agi_url,agi_args)``, then ``NoOp``, ``GotoIf``,
    ``Dial(dial_data)`` to a Local callee that runs ``Answer`` + ``Playback``.
    """

    local_base: str = "Local/1001@outbound-test-00000008"
    uniqueid1: str = "1795480795.16"
    uniqueid2: str = "1795480795.17"
    exten: str = "1001"
    context: str = "outbound-test"
    originate_cid_num: str = "15550001111"
    originate_cid_name: str = "AMI Originate"
    originate_app: str = "Wait"
    originate_data: str = "2"
    originate_action_id: str | None = "orig-1"
    #: (application, data) before the AGI; ``{chan}``/``{uid}``/``{exten}``/``{context}``
    #: are formatted.
    pre_agi: Sequence[tuple[str, str]] = (
        ("NoOp", "CW {context} exten={exten} chan={chan} uid={uid}"),
        ("Set", "CALLERID(num)=15551230000"),
        ("Set", "CALLERID(name)=CW Test Caller"),
        ("Set", "CW_CAMPAIGN=camp42"),
        ("Set", "CDR(userfield)=cw-test"),
    )
    agi_url: str = "agi://127.0.0.1:4573/outbound?campaign=camp42&lead=7"
    agi_args: Sequence[str] = ("1001", "arg two", "+15557654321")
    after_agi_noop: str = (
        "after AGI: AGISTATUS=${AGISTATUS} CW_DECISION=${CW_DECISION} "
        "MIXMONITOR_FILENAME=${MIXMONITOR_FILENAME}")
    decision_variable: str = "CW_DECISION"
    block_value: str = "block"
    block_cause: int = 21
    dial_data: str = "Local/2001@callee-test/n,20"
    callee_base: str = "Local/2001@callee-test-00000009"
    uniqueid3: str = "1795480796.18"
    uniqueid4: str = "1795480796.19"
    callee_exten: str = "2001"
    callee_context: str = "callee-test"
    playback: str = "cw-tone"
    h_noop: str = "h-exten: AGISTATUS=${AGISTATUS} HANGUPCAUSE=${HANGUPCAUSE}"
    h_noop_dial: str = " DIALSTATUS=${DIALSTATUS}"
    bridge_id: str | None = "3cb37dc0-d314-47f8-aa60-5ad45940ba88"
    thread_id: int = 139766138390208
    #: Which channel dies last is a race inside Asterisk; both outcomes were captured.
    #: 0 = ami_events_one_call.txt (``;2`` ends the linkedid, its BRIDGE_EXIT has no Peer);
    #: 1 = ami_events_stopmixmonitor.txt (the callee ``;2`` ends it, Peer is the callee ``;1``).
    teardown_variant: int = 0


class OutboundCall:
    """Drives one originated call through the capture's dialplan, emitting its AMI events.

    ``await call.run(agi_port=...)`` runs originate -> dialplan -> real FastAGI session ->
    Dial/answer/bridge -> talk -> hangup. The AGI part is an :class:`AgiCall` (its
    :class:`AgiResult` is :attr:`agi_result`). Hang-up paths: the originator's
    ``Wait(originate_data)`` ending (captured), :meth:`hangup` / AMI ``Hangup`` (modelled).
    """

    def __init__(self, pbx: Pbx, spec: CallSpec | None = None, **agi_kwargs: object) -> None:
        self.pbx, self.spec = pbx, spec or CallSpec()
        self.agi_kwargs = agi_kwargs
        s = self.spec
        self.o1 = self._chan(f"{s.local_base};1", s.uniqueid1, s.uniqueid1, STATE_DOWN)
        self.o2 = self._chan(f"{s.local_base};2", s.uniqueid2, s.uniqueid1, STATE_RING)
        self.c1: Channel | None = None
        self.c2: Channel | None = None
        self.agi: AgiCall | None = None
        self.agi_result: AgiResult | None = None
        self.bridge = ""
        self.finished = asyncio.Event()
        self._hangup_by: Channel | None = None

    def _chan(self, name: str, uid: str, linked: str, state: int, *,
              exten: str | None = None, context: str | None = None) -> Channel:
        return Channel(name=name, uniqueid=uid, linkedid=linked, state=state, busy=True,
                       exten=exten or self.spec.exten, context=context or self.spec.context,
                       created=0.0)

    # -- the whole call -----------------------------------------------------------------------
    async def run(self, *, agi_port: int | None, agi_host: str = "127.0.0.1",
                  agi_timeout: float = 10.0, talk_time: float | None = None,
                  agi_sets: Mapping[str, str] | None = None) -> AgiResult:
        """Run the call to its end; ``talk_time`` defaults to the originator's Wait().

        ``agi_port=None`` runs no FastAGI session (for AMI-listener tests): the AGI step then
        just sets ``agi_sets`` (with their VarSet events) and AGISTATUS=SUCCESS.
        """
        self.originate()
        result = await self.run_dialplan(agi_host, agi_port, agi_timeout, agi_sets)
        if self.finished.is_set():
            return result
        wait = float(self.spec.originate_data) if talk_time is None else talk_time
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._any_hangup(), wait)
        self.teardown()
        return result

    async def _any_hangup(self) -> None:
        waits = [asyncio.ensure_future(c.wait_hangup()) for c in self._live()]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _live(self) -> list[Channel]:
        return [c for c in (self.o1, self.o2, self.c1, self.c2) if c is not None and c.alive]

    # -- steps --------------------------------------------------------------------------------
    def originate(self) -> None:
        """``Originate``: the Local pair comes up and ``;1`` dials ``;2`` (events #11-#21)."""
        p, s, o1, o2 = self.pbx, self.spec, self.o1, self.o2
        o1.created = p.cel("CHAN_START", o1)
        p.add_channel(o1)
        p.emit_chan("Newchannel", o1)
        o2.created = p.cel("CHAN_START", o2)
        p.add_channel(o2)
        p.emit_chan("Newchannel", o2)
        p.newexten(o1, 1, "AppDial2", "(Outgoing Line)")
        if s.originate_cid_num or s.originate_cid_name:
            o1.callerid_num, o1.callerid_name = s.originate_cid_num, s.originate_cid_name
            o1.callerid_ani = s.originate_cid_num
            p.emit_chan("NewCallerid", o1, [("CID-CallingPres", o1.presentation_text)])
            o1.connected_num, o1.connected_name = s.originate_cid_num, s.originate_cid_name
            p.emit_chan("NewConnectedLine", o1)
            o2.callerid_num, o2.callerid_name = s.originate_cid_num, s.originate_cid_name
            o2.connected_num, o2.connected_name = s.originate_cid_num, s.originate_cid_name
            p.emit_chan("NewCallerid", o2, [("CID-CallingPres", o2.presentation_text)])
            p.emit_chan("NewConnectedLine", o2)
        p.emit("LocalBridge", o1.snapshot("LocalOne") + o2.snapshot("LocalTwo") + [
            ("Context", s.context), ("Exten", s.exten), ("LocalOptimization", "Yes")])
        p.emit("DialBegin", o1.snapshot("Dest") + [("DialString", f"{s.exten}@{s.context}")])

    async def run_dialplan(self, host: str, port: int | None, timeout: float,
                           agi_sets: Mapping[str, str] | None = None) -> AgiResult:
        """``;2``'s dialplan: pre-AGI steps, the AGI session, then allow/block/hangup."""
        p, s, o2 = self.pbx, self.spec, self.o2
        prio = 1
        for app, data in s.pre_agi:
            data = data.format(chan=o2.name, uid=o2.uniqueid, exten=o2.exten,
                               context=o2.context)
            p.newexten(o2, prio, app, data)
            if app.lower() == "set" and "=" in data:
                name, _, value = data.partition("=")
                p.set_variable(o2, name, value)
            prio += 1
        p.newexten(o2, prio, "AGI", ",".join([s.agi_url, *s.agi_args]))
        if port is None:
            for name, value in (agi_sets or {}).items():
                p.set_variable(o2, name, value)
            result = AgiResult(status="SUCCESS", connected=False, variables=dict(o2.variables))
        else:
            kwargs: dict[str, object] = {"thread_id": s.thread_id, **self.agi_kwargs}
            self.agi = AgiCall(port, host, request_url=s.agi_url, args=s.agi_args, channel=o2,
                               pbx=p, **kwargs)  # type: ignore[arg-type]
            result = await self.agi.run(timeout=timeout)
        self.agi_result = result
        p.set_variable(o2, "AGISTATUS", result.status)
        if result.status == "HANGUP" or o2.hangup_requested:
            self._h_exten_and_end(dial=False)
            return result
        blocked = o2.variables.get(s.decision_variable) == s.block_value
        if not blocked:
            self.c1 = self._chan(f"{s.callee_base};1", s.uniqueid3, o2.linkedid, STATE_DOWN,
                                 exten=s.callee_exten, context=s.callee_context)
            self.c2 = self._chan(f"{s.callee_base};2", s.uniqueid4, o2.linkedid, STATE_RING,
                                 exten=s.callee_exten, context=s.callee_context)
            self.c1.created = p.cel("CHAN_START", self.c1)
        p.newexten(o2, prio + 1, "NoOp", o2.substitute(s.after_agi_noop, p))
        if not blocked:
            assert self.c2 is not None
            self.c2.created = p.cel("CHAN_START", self.c2)
        p.newexten(o2, prio + 2, "GotoIf", f"{int(blocked)}?blocked")
        if blocked:
            p.newexten(o2, prio + 3, "Hangup", str(s.block_cause))
            o2.hangup_cause = s.block_cause
            o2.request_hangup(s.block_cause, "dialplan/builtin")
            self._h_exten_and_end(dial=False)
            return result
        self._dial(prio + 3)
        return result

    def _dial(self, prio: int) -> None:
        """``Dial(Local/callee/n)``: callee pair, answer, bridge (events #80-#131)."""
        p, s, o1, o2 = self.pbx, self.spec, self.o1, self.o2
        c1, c2 = self.c1, self.c2
        assert c1 is not None and c2 is not None
        dial_target = s.dial_data.split(",")[0].split("/", 1)[1]
        p.newexten(o2, prio, "Dial", s.dial_data)
        for var in ("DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME",
                    "ANSWEREDTIME_MS", "DIALEDTIME", "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS",
                    "PROGRESSTIME", "PROGRESSTIME_MS"):
            p.set_variable(o2, var, "")
        for c in (c1, c2):
            p.add_channel(c)
            p.emit_chan("Newchannel", c)
        p.set_variable(c1, "DIALEDPEERNUMBER", dial_target)
        c1.callerid_num, c1.callerid_name = o2.exten, o2.connected_name
        c1.connected_num, c1.connected_name = o2.callerid_num, o2.callerid_name
        p.newexten(c1, 1, "AppDial", "(Outgoing Line)", exten=o2.exten)
        p.emit_chan("NewCallerid", c1, [("CID-CallingPres", c1.presentation_text)])
        p.emit_chan("NewConnectedLine", c1)
        p.set_variable(c2, "DIALEDPEERNUMBER", dial_target)
        c2.callerid_num, c2.callerid_name = o2.callerid_num, o2.callerid_name
        c2.connected_num, c2.connected_name = o2.exten, o2.connected_name
        p.emit_chan("NewCallerid", c2, [("CID-CallingPres", c2.presentation_text)])
        p.emit_chan("NewConnectedLine", c2)
        p.emit("LocalBridge", c1.snapshot("LocalOne") + c2.snapshot("LocalTwo") + [
            ("Context", s.callee_context), ("Exten", s.callee_exten),
            ("LocalOptimization", "No" if "/n" in s.dial_data else "Yes")])
        p.emit("DialBegin", o2.snapshot() + c1.snapshot("Dest") + [("DialString", dial_target)])
        p.newexten(c2, 1, "Answer", "")
        c2.answered = p.cel("ANSWER", c2)
        c1.answered = p.cel("ANSWER", c1)
        o2.answered = p.cel("ANSWER", o2)
        c2.state = c1.state = STATE_UP
        p.emit_chan("Newstate", c2)
        p.emit_chan("Newstate", c1)
        p.set_variable(o2, "DIALSTATUS", "ANSWER")
        p.set_variable(o2, "DIALEDPEERNAME", c1.name)
        p.set_variable(o2, "DIALEDPEERNUMBER", dial_target)
        c1.exten = ""
        p.emit("DialEnd", o2.snapshot() + c1.snapshot("Dest") + [("DialStatus", "ANSWER")])
        o2.state = STATE_UP
        p.emit_chan("Newstate", o2)
        self.bridge = s.bridge_id or p.next_bridge_id()
        p.emit("BridgeCreate", self._bridge_fields(0))
        extra = json.dumps({"bridge_id": self.bridge, "bridge_technology": "simple_bridge"},
                           separators=(",", ":"))
        p.cel("BRIDGE_ENTER", c1, extra=extra)
        o1.answered = p.cel("ANSWER", o1, ani=o1.callerid_ani)
        p.newexten(c1, 1, "AppDial", "(Outgoing Line)")
        o1.state = STATE_UP
        p.emit_chan("Newstate", o1)
        c1.bridge_id = self.bridge
        p.emit("BridgeEnter", self._bridge_fields(1) + c1.snapshot())
        p.emit("DialEnd", o1.snapshot("Dest") + [("DialStatus", "ANSWER")])
        o2.application, o2.app_data = "Dial", s.dial_data
        p.cel("BRIDGE_ENTER", o2, peer=c1.name, extra=extra)
        o2.bridge_id = self.bridge
        p.emit("BridgeEnter", self._bridge_fields(2) + o2.snapshot())
        for device in (self._device(c1), self._device(c1), self._device(o1), self._device(o1)):
            p.emit("DeviceStateChange", [("Device", device), ("State", "INUSE")])
        p.set_variable(c1, "BRIDGEPEER", o2.name)
        p.set_variable(o2, "BRIDGEPEER", c1.name)
        if s.originate_action_id is not None:
            p.emit("OriginateResponse", [
                ("ActionID", s.originate_action_id), ("Response", "Success"),
                ("Channel", o1.name), ("Application", s.originate_app),
                ("Data", s.originate_data), ("Reason", "4"), ("Uniqueid", o1.uniqueid),
                ("CallerIDNum", o1.callerid_num or "<unknown>"),
                ("CallerIDName", o1.callerid_name or "<unknown>")])
        p.newexten(c2, 2, "Playback", s.playback)
        p.cel("STREAM_BEGIN", c2, extra=json.dumps(
            {"sound": s.playback, "format": "slin", "language": c2.language},
            separators=(",", ":")))

    def _bridge_fields(self, count: int) -> Fields:
        return [("BridgeUniqueid", self.bridge), ("BridgeType", "basic"),
                ("BridgeTechnology", "simple_bridge"), ("BridgeCreator", "<unknown>"),
                ("BridgeName", "<unknown>"), ("BridgeNumChannels", str(count)),
                ("BridgeVideoSourceMode", "none")]

    @staticmethod
    def _device(chan: Channel) -> str:
        return re.sub(r"-[0-9a-f]{8};\d$", "", chan.name)

    # -- hangups ------------------------------------------------------------------------------
    def hangup(self, chan: Channel | None = None, cause: int = 16) -> None:
        """Hang ``chan`` (default: the AGI channel ``;2``) up, as AMI ``Hangup`` would."""
        self.pbx.hangup(chan or self.o2, cause, source="ami")

    def change_callerid(self, num: str | None = None, name: str | None = None,
                        pres: int | str | None = None) -> None:
        """A caller-ID change mid-call on ``;2`` (emits ``NewCallerid``)."""
        self.pbx.set_callerid(self.o2, num, name, pres)

    def teardown(self) -> None:
        """End of the bridged call (events #132-#171 of the capture)."""
        if self.finished.is_set():
            return
        if self.c1 is None or self.c2 is None:
            self._h_exten_and_end(dial=False)
            return
        p, o1, o2, c1, c2 = self.pbx, self.o1, self.o2, self.c1, self.c2
        ami_hangup = o2.hangup_requested and o2.hangup_source == "ami"
        if not ami_hangup:  # the originator's Wait() ended: ;1 hangs up, ;2 gets the request
            p.emit_chan("HangupRequest", o2, [("Cause", str(o1.hangup_cause))])
        o1_end = p.emit_chan("Hangup", o1, [("Cause", str(o1.hangup_cause)),
                                            ("Cause-txt", cause_text(o1.hangup_cause))])
        o1.alive = False
        p.emit("Cdr", p.cdr_fields(o1, start=o1.created, answer=o1.answered, end=o1_end,
                                   lastapp=self.spec.originate_app,
                                   lastdata=self.spec.originate_data))
        p.set_variable(o2, "BRIDGEPEER", "")
        p.set_variable(c1, "BRIDGEPEER", "")
        left = p.emit("BridgeLeave", self._bridge_fields(1) + o2.snapshot())
        ans_ms, dial_ms = int((left - (o2.answered or left)) * 1000), int((left - o2.created)
                                                                           * 1000)
        p.set_variable(o2, "ANSWEREDTIME", str(ans_ms // 1000))
        p.set_variable(o2, "ANSWEREDTIME_MS", str(ans_ms))
        p.set_variable(o2, "DIALEDTIME", str(dial_ms // 1000))
        p.set_variable(o2, "DIALEDTIME_MS", str(dial_ms))
        p.set_variable(o2, "DIALSTATUS", "ANSWER")
        p.emit_chan("SoftHangupRequest", o2, [("Cause", "16")])
        cause = o2.hangup_cause or 16
        o2.hangup_cause = cause
        dial_app, dial_data = o2.application, o2.app_data
        h_text = o2.substitute(self.spec.h_noop + self.spec.h_noop_dial, p)
        h_start = p.newexten(o2, 1, "NoOp", h_text, exten="h")
        hangup_extra = '{{"hangupcause":{},"hangupsource":"","dialstatus":"{}"}}'
        p.cel("HANGUP", o1, ani=o1.callerid_ani,
              extra=hangup_extra.format(o1.hangup_cause, ""), exten=self.spec.exten)
        p.cel("CHAN_END", o1, ani=o1.callerid_ani, exten=self.spec.exten)
        bridge_extra = json.dumps({"bridge_id": self.bridge, "bridge_technology":
                                   "simple_bridge"}, separators=(",", ":"))
        o2_view = Channel(name=o2.name, uniqueid=o2.uniqueid, linkedid=o2.linkedid,
                          callerid_num=o2.callerid_num, callerid_name=o2.callerid_name,
                          exten=self.spec.exten, context=o2.context, application=dial_app,
                          app_data=dial_data)
        variant = self.spec.teardown_variant
        p.cel("BRIDGE_EXIT", o2_view, extra=bridge_extra, peer=c1.name if variant else "")
        p.cel("BRIDGE_EXIT", c1, extra=bridge_extra)
        c1.hangup_cause = c2.hangup_cause = 16
        p.cel("HANGUP", c1, extra=hangup_extra.format(16, ""))
        p.cel("CHAN_END", c1)
        p.cel("STREAM_END", c2)
        c2.application = c2.app_data = ""
        p.cel("HANGUP", c2, extra=hangup_extra.format(16, ""))
        p.cel("CHAN_END", c2)
        o2.application = o2.app_data = ""
        p.cel("HANGUP", o2, extra=hangup_extra.format(cause, "ANSWER"))
        p.cel("CHAN_END", o2)
        if not variant:
            p.cel("LINKEDID_END", o2)
        o2.application, o2.app_data = "NoOp", h_text
        p.emit("BridgeLeave", self._bridge_fields(0) + c1.snapshot())
        c2.application, c2.app_data = "Playback", self.spec.playback
        p.emit_chan("HangupRequest", c2, [("Cause", "16")])
        p.emit_chan("Hangup", c1, [("Cause", "16"), ("Cause-txt", cause_text(16))])
        c1.alive = False
        p.emit("DeviceStateChange", [("Device", self._device(o1)), ("State", "NOT_INUSE")])
        p.emit("BridgeDestroy", self._bridge_fields(0))
        p.set_variable(c2, "PLAYBACKSTATUS", "SUCCESS")
        p.emit_chan("SoftHangupRequest", c2, [("Cause", "16")])
        if variant:
            c2.application = c2.app_data = ""
            p.cel("LINKEDID_END", c2)
            c2.application, c2.app_data = "Playback", self.spec.playback
        c2_end = p.emit_chan("Hangup", c2, [("Cause", "16"), ("Cause-txt", cause_text(16))])
        c2.alive = False
        o2.priority = 2
        h_end = p.emit_chan("Hangup", o2, [("Cause", str(cause)),
                                           ("Cause-txt", cause_text(cause))])
        o2.alive = False
        for device in (self._device(c2), self._device(o1), self._device(c2)):
            p.emit("DeviceStateChange", [("Device", device), ("State", "NOT_INUSE")])
        p.emit("Cdr", p.cdr_fields(c2, start=c2.created, answer=c2.answered, end=c2_end))
        p.emit("Cdr", p.cdr_fields(o2, start=o2.created, answer=o2.answered, end=left,
                                   dest_channel=c1.name, lastapp=dial_app,
                                   lastdata=dial_data, exten=self.spec.exten))
        p.emit("Cdr", p.cdr_fields(o2, start=h_start, answer=h_start, end=h_end))
        self._forget()

    def _h_exten_and_end(self, *, dial: bool) -> None:
        """Modelled (not captured on AMI): ``;2`` ends without a bridge, ``h`` runs, both
        Local halves hang up, CDRs follow (cdr_master.csv shows their content)."""
        p, o1, o2 = self.pbx, self.o1, self.o2
        cause = o2.hangup_cause
        last_app, last_data = o2.application, o2.app_data
        text = o2.substitute(self.spec.h_noop + (self.spec.h_noop_dial if dial else ""), p)
        h_start = p.newexten(o2, 1, "NoOp", text, exten="h")
        o2.priority = 2
        end = p.emit_chan("Hangup", o2, [("Cause", str(cause)),
                                         ("Cause-txt", cause_text(cause))])
        o2.alive = False
        p.emit_chan("HangupRequest", o1, [("Cause", str(cause))])
        o1_end = p.emit_chan("Hangup", o1, [("Cause", str(cause)),
                                            ("Cause-txt", cause_text(cause))])
        o1.alive = False
        p.emit("Cdr", p.cdr_fields(o2, start=o2.created, answer=o2.answered, end=end,
                                   lastapp=last_app, lastdata=last_data,
                                   exten=self.spec.exten))
        if o2.answered is not None:
            p.emit("Cdr", p.cdr_fields(o2, start=h_start, answer=h_start, end=end))
        p.emit("Cdr", p.cdr_fields(o1, start=o1.created, answer=o1.answered, end=o1_end))
        self._forget()

    def _forget(self) -> None:
        for chan in (self.o1, self.o2, self.c1, self.c2):
            if chan is not None:
                chan.alive = False
                self.pbx.remove_channel(chan)
        self.finished.set()
