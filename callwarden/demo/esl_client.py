"""The FreeSWITCH side of the outbound Event Socket, as the dialplan's
``socket 127.0.0.1:8084 async full`` plays it: connect to callwarden, answer ``connect`` with
the channel's data, then answer each command: ``api uuid_setvar`` and friends, ``filter``, ``sendmsg``
applications (``set``, ``record_session``, ``hangup`` ...) with the events FreeSWITCH fires,
``resume``, until callwarden sends ``exit`` or hangs the channel up. Just enough of
FreeSWITCH for the demo's calls."""

from __future__ import annotations

import itertools
import socket
import time
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from callwarden.demo.scenarios import Scenario

_ids = itertools.count(1)
MAX_FRAME = 256 * 1024


@dataclass
class EslOutcome:
    """What callwarden did to the channel."""

    variables: dict[str, str] = field(default_factory=dict)  # set with the `set` app
    recording: str | None = None  # record_session's file
    hangup_cause: str | None = None
    resumed: bool = False  # `resume`: the dialplan goes on (the call is placed)
    commands: list[str] = field(default_factory=list)
    uuid: str = ""  # the channel's Unique-ID (the PBX call id callwarden stores)

    @property
    def decision(self) -> str | None:
        return self.variables.get("callwarden_decision")

    @property
    def reasons(self) -> list[str]:
        return [c for c in self.variables.get("callwarden_reasons", "").split(",") if c]


def _encode(headers: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{name}: {quote(value, safe='')}\n" for name, value in headers)


class _Channel:
    def __init__(self, sock: socket.socket, call: Scenario, deadline: float) -> None:
        self.sock = sock
        self.call = call
        self.deadline = deadline
        self.buf = b""
        self.event_names: set[str] = set()  # filtered to these, once one is given
        n = next(_ids)
        self.uuid = str(uuidlib.uuid4())
        self.name = f"sofia/internal/agent{n}@10.0.0.5"
        self.outcome = EslOutcome(uuid=self.uuid)
        self.done = False

    # -- wire ----------------------------------------------------------------------------------

    def read_command(self) -> tuple[str, dict[str, str]] | None:
        while b"\n\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("callwarden did not finish the call in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
            if len(self.buf) > MAX_FRAME:
                raise ValueError("command too large")
        block, self.buf = self.buf.split(b"\n\n", 1)
        first, *rest = block.decode("utf-8", "replace").split("\n")
        headers = {}
        for line in rest:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return first.strip(), headers

    def reply(self, text: str) -> None:
        self.sock.sendall(f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode())

    def event(self, name: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        if self.event_names and name not in self.event_names:  # `event plain ...`, `filter Event-Name ...`
            return
        body = _encode([("Event-Name", name), ("Unique-ID", self.uuid),
                        ("Channel-Name", self.name), *extra]) + "\n"
        data = body.encode()
        self.sock.sendall(f"Content-Length: {len(data)}\nContent-Type: text/event-plain\n\n".encode()
                          + data)

    def api_response(self, body: str) -> None:
        data = body.encode()
        self.sock.sendall(f"Content-Type: api/response\nContent-Length: {len(data)}\n\n".encode()
                          + data)

    def api(self, text: str) -> None:
        """``api uuid_setvar``/``uuid_setvar_multi``/``uuid_kill``/``uuid_exists`` on this
        channel (the ones a controlling application uses); anything else is refused."""
        words = text.split(" ", 3)
        name = words[0].lower() if words else ""
        on_us = len(words) > 1 and words[1] == self.uuid
        if name in ("uuid_setvar", "uuid_setvar_multi", "uuid_kill", "uuid_exists") and not on_us:
            self.api_response("-ERR No such channel!\n")
        elif name == "uuid_setvar" and len(words) >= 3:
            value = words[3] if len(words) > 3 else ""
            if value:
                self.outcome.variables[words[2]] = value
            else:
                self.outcome.variables.pop(words[2], None)
            self.api_response("+OK\n")
        elif name == "uuid_setvar_multi" and len(words) >= 3:
            for pair in " ".join(words[2:]).split(";"):
                key, _, value = pair.partition("=")
                if key and value:
                    self.outcome.variables[key] = value
                elif key:  # an empty value unsets, as uuid_setvar's does
                    self.outcome.variables.pop(key, None)
            self.api_response("+OK\n")
        elif name == "uuid_exists":
            self.api_response("true")
        elif name == "uuid_kill":
            self.api_response("+OK\n")
            self.hang_up(words[2] if len(words) > 2 else "NORMAL_CLEARING")
        else:
            self.api_response(f"-ERR {name} Command not found!\n")

    def hang_up(self, cause: str) -> None:
        self.outcome.hangup_cause = cause
        self.event("CHANNEL_HANGUP", [("Hangup-Cause", cause)])
        self.event("CHANNEL_HANGUP_COMPLETE", [("Hangup-Cause", cause)])
        self.disconnect()
        self.done = True

    def disconnect(self) -> None:
        message = b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
        self.sock.sendall(
            (f"Content-Type: text/disconnect-notice\nControlled-Session-UUID: {self.uuid}\n"
             f"Content-Disposition: disconnect\nContent-Length: {len(message)}\n\n").encode()
            + message)

    # -- FreeSWITCH ---------------------------------------------------------------------------

    def channel_data(self) -> None:
        c = self.call
        headers = [
            ("Event-Name", "CHANNEL_DATA"), ("Channel-Direction", "inbound"),
            ("Channel-Caller-ID-Name", "Agent"), ("Channel-Caller-ID-Number", c.caller),
            ("Channel-Destination-Number", c.callee), ("Channel-Unique-ID", self.uuid),
            ("Channel-Privacy-Hide-Number", "true" if c.hidden else "false"),
            ("Channel-State", "CS_EXECUTE"), ("Channel-Name", self.name),
            ("Unique-ID", self.uuid), ("Call-Direction", "inbound"), ("Answer-State", "ringing"),
            ("Caller-Caller-ID-Number", c.caller), ("Caller-Destination-Number", c.callee),
            ("Caller-Privacy-Hide-Number", "true" if c.hidden else "false"),
            ("variable_callwarden_route", "outbound"), ("variable_callwarden_tenant", "acme"),
            ("variable_callwarden_trunk", c.trunk), ("variable_callwarden_callee", c.callee),
            ("variable_effective_caller_id_number", c.caller),
        ]
        if c.campaign:
            headers.append(("variable_callwarden_campaign", c.campaign))
        if c.purpose:
            headers.append(("variable_callwarden_purpose", c.purpose))
        headers += [("Content-Type", "command/reply"), ("Reply-Text", "+OK\n"),
                    ("Socket-Mode", "async"), ("Control", "full")]
        self.sock.sendall((_encode(headers) + "\n").encode())

    def sendmsg(self, headers: dict[str, str]) -> None:
        self.reply("+OK")
        app, arg = headers.get("execute-app-name", ""), headers.get("execute-app-arg", "")
        app_uuid = headers.get("event-uuid") or str(uuidlib.uuid4())
        executed = [("Application", app), ("Application-Data", arg), ("Application-UUID", app_uuid)]
        self.event("CHANNEL_EXECUTE", executed)
        if app in ("set", "export"):
            name, _, value = arg.partition("=")
            self.outcome.variables[name] = value
        elif app == "unset":
            self.outcome.variables.pop(arg, None)
        elif app == "record_session":
            self.outcome.recording = arg
            self.event("RECORD_START", [("Record-File-Path", arg)])
        elif app == "hangup":
            self.event("CHANNEL_EXECUTE_COMPLETE", executed)
            self.hang_up(arg or "NORMAL_CLEARING")
            return
        self.event("CHANNEL_EXECUTE_COMPLETE", executed)

    def serve(self) -> EslOutcome:
        while not self.done:
            received = self.read_command()
            if received is None:
                break
            text, headers = received
            self.outcome.commands.append(text)
            low = text.lower()
            if low == "connect":
                self.channel_data()
            elif low.startswith("myevents"):
                self.reply("+OK Events Enabled")
            elif low.startswith("event "):
                words = text.split()
                self.event_names.update(words[2:])  # one channel here: the Unique-ID filter holds
                self.reply(f"+OK event listener enabled {words[1]}")
            elif low.startswith("filter "):
                header, _, value = text[7:].strip().partition(" ")
                if header.lower() == "event-name":
                    self.event_names.add(value)
                self.reply(f"+OK filter added. [{header}]=[{value}]")
            elif low.startswith("linger"):
                self.reply("+OK will linger")
            elif low.startswith("sendmsg"):
                self.sendmsg(headers)
            elif low.startswith("api "):
                self.api(text[4:].strip())
            elif low == "resume":
                self.outcome.resumed = True
                self.reply("+OK")
            elif low in ("exit", "..."):
                self.reply("+OK bye")
                self.disconnect()
                break
            else:
                self.reply("-ERR command not found")
        return self.outcome


def esl_call(host: str, port: int, call: Scenario, timeout: float = 15.0) -> EslOutcome:
    """One outbound call handed to callwarden's outbound Event Socket server (blocking)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        return _Channel(sock, call, deadline).serve()
