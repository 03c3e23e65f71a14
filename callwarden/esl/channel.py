"""What callwarden reads from FreeSWITCH channel data: the ``connect`` reply and plain events.

Pure functions over decoded header dicts, shared by the outbound server (decision) and the
inbound listener (caller-ID watch, CDR completion), so both read the presented caller ID the
same way. Channel variable names are a public contract (docs/freeswitch.md).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass

PBX = "freeswitch"

#: Channel variables the dialplan sets before ``socket`` (lower-case Asterisk names).
VAR_ROUTE = "callwarden_route"  # outbound (default) | inbound | optout
VAR_TENANT = "callwarden_tenant"
VAR_TRUNK = "callwarden_trunk"
VAR_CAMPAIGN = "callwarden_campaign"
VAR_PURPOSE = "callwarden_purpose"
VAR_CALLEE = "callwarden_callee"  # the number dialled, when destination_number carries prefixes
VAR_OPTOUT_NUMBER = "callwarden_optout_number"
#: Channel variables callwarden sets.
VAR_DECISION = "callwarden_decision"  # allow | deny
VAR_REASONS = "callwarden_reasons"  # comma-separated reason codes
VAR_CALL_ID = "callwarden_call_id"
VAR_ENFORCED = "callwarden_enforced"  # no: a deny that observe mode lets through; else yes
VAR_HANGUP_CAUSE = "callwarden_hangupcause"  # on deny: the FreeSWITCH cause name used
VAR_OPTOUT = "callwarden_optout"  # ok | rejected | failed (optout route)
VAR_ERROR = "callwarden_error"  # why callwarden could not act (unknown_route ...)

ROUTES = ("outbound", "inbound", "optout")

#: The switch's name, in the connect reply and in every event (``switch.conf.xml``'s
#: ``switchname``, else the host name): the node a call is stored under.
SWITCHNAME_HEADER = "FreeSWITCH-Switchname"
#: The store's ``calls.node`` width; longer names are cut to it (the same way on both sides:
#: calls stamped from the connect reply, the listener's node learned from events).
NODE_MAX_LEN = 64

_PRIVACY_HIDES_NUMBER = {"yes", "full", "number", "true"}


def _var(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get("variable_" + name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def presented_caller(headers: Mapping[str, str]) -> str | None:
    """The caller ID number the far end sees: ``effective_caller_id_number`` if the dialplan
    set it, else the caller profile's number (``Caller-`` in events, ``Channel-`` in the
    connect reply). None when the data carries no caller ID at all."""
    return (_var(headers, "effective_caller_id_number")
            or headers.get("Caller-Caller-ID-Number")
            or headers.get("Channel-Caller-ID-Number"))


def caller_hidden(headers: Mapping[str, str]) -> bool:
    """Presentation restricted: the profile's privacy flag, ``privacy`` or
    ``origination_privacy`` asking to hide the number."""
    for key in ("Caller-Privacy-Hide-Number", "Channel-Privacy-Hide-Number"):
        if headers.get(key, "").lower() == "true":
            return True
    privacy = (_var(headers, "privacy") or "").lower()
    if privacy in _PRIVACY_HIDES_NUMBER:
        return True
    origination = (_var(headers, "origination_privacy") or "").lower()
    return "hide_number" in origination.replace("+", ":").split(":")


def node_name(value: str | None) -> str | None:
    """A switchname fit to store and compare: surrounding blanks removed, at most
    ``NODE_MAX_LEN`` characters; None when absent, empty or not printable (a control character
    in a name only a hostile peer would send)."""
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isprintable():
        return None
    return value[:NODE_MAX_LEN]


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """The facts of one channel handed to the outbound socket."""

    uuid: str | None
    channel_name: str | None
    route: str
    route_given: str | None  # the raw callwarden_route value, for error reports
    caller: str | None
    caller_name: str | None
    hidden: bool  # presentation restricted (an empty or anonymous number is judged later)
    destination: str | None
    tenant: str | None
    trunk: str | None
    campaign: str | None
    purpose: str | None
    optout_number: str | None
    socket_mode: str | None
    control: str | None
    node: str | None = None  # the switch's name (node_name of FreeSWITCH-Switchname)

    @property
    def route_known(self) -> bool:
        return self.route in ROUTES


def channel_info(headers: Mapping[str, str]) -> ChannelInfo:
    """Read the ``connect`` reply (CHANNEL_DATA) of the outbound socket."""
    route_given = _var(headers, VAR_ROUTE)
    route = (route_given or "outbound").lower()
    caller = presented_caller(headers)
    return ChannelInfo(
        uuid=headers.get("Unique-ID") or _var(headers, "uuid"),
        channel_name=headers.get("Channel-Name"),
        route=route,
        route_given=route_given,
        caller=caller,
        caller_name=(_var(headers, "effective_caller_id_name")
                     or headers.get("Caller-Caller-ID-Name") or headers.get("Channel-Caller-ID-Name")),
        hidden=caller_hidden(headers),
        destination=(_var(headers, VAR_CALLEE) or headers.get("Caller-Destination-Number")
                     or headers.get("Channel-Destination-Number")),
        tenant=_var(headers, VAR_TENANT),
        trunk=_var(headers, VAR_TRUNK),
        campaign=_var(headers, VAR_CAMPAIGN),
        purpose=_var(headers, VAR_PURPOSE),
        optout_number=_var(headers, VAR_OPTOUT_NUMBER),
        socket_mode=headers.get("Socket-Mode"),
        control=headers.get("Control"),
        node=node_name(headers.get(SWITCHNAME_HEADER)),
    )


# -- events seen by the inbound listener ------------------------------------------------------


def _epoch_us(headers: Mapping[str, str], name: str) -> dt.datetime | None:
    value = _var(headers, name)
    if not value or not value.isdigit() or int(value) <= 0:
        return None
    return dt.datetime.fromtimestamp(int(value) / 1_000_000, dt.UTC)


_BUSY = {"USER_BUSY", "BUSY_EVERYWHERE"}
_NO_ANSWER = {"NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL", "PROGRESS_TIMEOUT",
              "NO_PICKUP", "SUBSCRIBER_ABSENT"}


def disposition(answered: bool, cause: str | None) -> str:
    """The CDR disposition, in Asterisk's words so both PBXes report alike."""
    if answered:
        return "ANSWERED"
    if cause in _BUSY:
        return "BUSY"
    if cause in _NO_ANSWER:
        return "NO ANSWER"
    return "FAILED"


@dataclass(frozen=True, slots=True)
class HangupInfo:
    """What CHANNEL_HANGUP_COMPLETE says about the end of a call."""

    uuid: str
    call_id: str | None  # callwarden_call_id, when callwarden handled this channel
    ended_at: dt.datetime
    answered_at: dt.datetime | None
    billsec: int | None
    hangup_cause: str | None
    disposition: str


def hangup_info(headers: Mapping[str, str]) -> HangupInfo | None:
    """CHANNEL_HANGUP_COMPLETE -> CDR facts (None without a Unique-ID)."""
    uuid = headers.get("Unique-ID")
    if not uuid:
        return None
    ended = _epoch_us(headers, "end_uepoch")
    if ended is None:
        stamp = headers.get("Event-Date-Timestamp", "")
        ended = (dt.datetime.fromtimestamp(int(stamp) / 1_000_000, dt.UTC) if stamp.isdigit()
                 else dt.datetime.now(dt.UTC))
    answered = _epoch_us(headers, "answer_uepoch")
    billsec_raw = _var(headers, "billsec")
    cause = headers.get("Hangup-Cause") or _var(headers, "hangup_cause")
    return HangupInfo(
        uuid=uuid,
        call_id=_var(headers, VAR_CALL_ID),
        ended_at=ended,
        answered_at=answered,
        billsec=int(billsec_raw) if billsec_raw and billsec_raw.isdigit() else None,
        hangup_cause=cause,
        disposition=disposition(answered is not None, cause),
    )


def call_uuids(headers: Mapping[str, str]) -> tuple[str, ...]:
    """UUIDs an event may belong to: its own channel, then the call it is part of (a bridged
    B-leg carries the A-leg's UUID as Channel-Call-UUID)."""
    out = []
    for key in ("Unique-ID", "Channel-Call-UUID"):
        value = headers.get(key)
        if value and value not in out:
            out.append(value)
    return tuple(out)


def parse_show_channels(body: str) -> set[str] | None:
    """UUIDs from ``show channels as json``; None when the answer is not that."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("row_count"), int):
        return None
    rows = data.get("rows", [])
    if not isinstance(rows, list) or len(rows) != data["row_count"]:
        return None
    return {row["uuid"] for row in rows if isinstance(row, dict) and isinstance(row.get("uuid"), str)}
