"""Blocking network probes for ``callwarden doctor``: a real AMI login, a real Event Socket
``auth``, and whether a listening port can be bound. Plain sockets, short timeouts, nothing
kept open: doctor must be safe to run beside a live ``callwarden serve``.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from urllib.parse import unquote

#: Nothing the probes read is larger than this (an AMI response, an ESL reply or status).
MAX_READ = 256 * 1024


class ProbeError(Exception):
    """The probe failed; the message says what an administrator should look at."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    detail: str


class _Reader:
    """Line and block reads with one overall deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""

    def _fill(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProbeError("timed out waiting for the peer")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise ProbeError("timed out waiting for the peer") from None
        if not chunk:
            raise ProbeError("the peer closed the connection")
        self.buf += chunk
        if len(self.buf) > MAX_READ:
            raise ProbeError("the peer sent more than expected (is this the right port?)")

    def line(self, sep: bytes = b"\r\n") -> bytes:
        while sep not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(sep, 1)
        return line

    def block(self, sep: bytes) -> bytes:
        """Up to a blank line (``sep`` twice), which is consumed."""
        end = sep + sep
        while end not in self.buf:
            self._fill()
        block, self.buf = self.buf.split(end, 1)
        return block

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        raise ProbeError(f"no answer from {host}:{port} within {timeout:g} s") from None
    except OSError as exc:
        raise ProbeError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None


def _headers(block: bytes, sep: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split(sep):
        name, _, value = line.partition(":")
        if name and name.strip() not in out:
            out[name.strip()] = value.strip()
    return out


# -- Asterisk Manager Interface -------------------------------------------------------------


def ami_login(host: str, port: int, username: str, secret: str, timeout: float = 5.0) -> ProbeResult:
    """Log in to AMI with the configured account (no events), ask CoreSettings (the account
    needs ``write = reporting`` for callwarden's reconciliation), log off."""
    deadline = time.monotonic() + timeout
    with _connect(host, port, timeout) as sock:
        reader = _Reader(sock, deadline)
        banner = reader.line().decode("utf-8", "replace")
        if not banner.startswith("Asterisk Call Manager/"):
            raise ProbeError(f"{host}:{port} is not an Asterisk manager interface "
                             f"(greeting {banner[:60]!r})")
        sock.sendall(_ami_action("Login", "doctor-login", Username=username, Secret=secret,
                                 Events="off"))
        login = _ami_response(reader, "doctor-login")
        if login.get("Response", "").lower() != "success":
            raise ProbeError(f"login as {username!r} refused: {login.get('Message') or 'no message'}"
                             " (check asterisk.ami.username/secret against manager.conf)")
        sock.sendall(_ami_action("CoreSettings", "doctor-settings"))
        settings = _ami_response(reader, "doctor-settings")
        if settings.get("Response", "").lower() != "success":
            raise ProbeError(f"logged in as {username!r}, but CoreSettings was refused "
                             f"({settings.get('Message') or 'no message'}): the account needs "
                             "write = call,reporting (config/asterisk/manager_callwarden.conf)")
        version = settings.get("AsteriskVersion") or "unknown version"
        sock.sendall(_ami_action("Logoff", "doctor-logoff"))
    return ProbeResult(f"login as {username!r} accepted by Asterisk {version} at {host}:{port}")


def _ami_action(name: str, action_id: str, **fields: str) -> bytes:
    lines = [f"Action: {name}", f"ActionID: {action_id}"] + [f"{k}: {v}" for k, v in fields.items()]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ProbeError("AMI credentials must not contain line breaks")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _ami_response(reader: _Reader, action_id: str) -> dict[str, str]:
    """The response to ``action_id`` (events and other messages in between are skipped)."""
    for _ in range(1000):
        message = _headers(reader.block(b"\r\n"), "\r\n")
        if "Response" in message and message.get("ActionID", action_id) == action_id:
            return message
    raise ProbeError("no response to the AMI action")


# -- FreeSWITCH Event Socket (inbound) -----------------------------------------------------


def esl_auth(host: str, port: int, password: str, timeout: float = 5.0) -> ProbeResult:
    """Connect to mod_event_socket, ``auth`` with the configured password, ask ``api status``
    for the version line, ``exit``."""
    deadline = time.monotonic() + timeout
    with _connect(host, port, timeout) as sock:
        reader = _Reader(sock, deadline)
        greeting = _esl_frame(reader)
        kind = greeting[0].get("Content-Type", "")
        if kind == "text/rude-rejection":
            raise ProbeError(f"{host}:{port} refused the connection by ACL "
                             "(event_socket.conf.xml apply-inbound-acl)")
        if kind != "auth/request":
            raise ProbeError(f"{host}:{port} is not a FreeSWITCH event socket "
                             f"(first frame {kind or 'without Content-Type'!r})")
        if "\n" in password or "\r" in password:
            raise ProbeError("the ESL password must not contain line breaks")
        sock.sendall(f"auth {password}\n\n".encode())
        reply = _esl_reply(reader)
        if not reply.startswith("+OK"):
            raise ProbeError(f"auth refused ({reply or 'no reply'}): check "
                             "freeswitch.esl_inbound.password against event_socket.conf.xml")
        sock.sendall(b"api status\n\n")
        headers, body = _esl_frame(reader)
        status = body.decode("utf-8", "replace")
        version = next((line.strip() for line in status.splitlines() if "FreeSWITCH" in line),
                       "version not reported")
        sock.sendall(b"exit\n\n")
    return ProbeResult(f"auth accepted at {host}:{port} ({version})")


def _esl_frame(reader: _Reader) -> tuple[dict[str, str], bytes]:
    headers = {k: unquote(v) for k, v in _headers(reader.block(b"\n"), "\n").items()}
    length = headers.get("Content-Length", "")
    body = reader.exactly(int(length)) if length.isdigit() else b""
    return headers, body


def _esl_reply(reader: _Reader) -> str:
    """Reply-Text of the next command/reply (events in between are skipped)."""
    for _ in range(1000):
        headers, _body = _esl_frame(reader)
        if headers.get("Content-Type") == "command/reply":
            return headers.get("Reply-Text", "")
        if headers.get("Content-Type") == "text/disconnect-notice":
            raise ProbeError("FreeSWITCH closed the connection")
    raise ProbeError("no reply from FreeSWITCH")


# -- listening ports ----------------------------------------------------------------------


def port_status(host: str, port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """Can callwarden listen on host:port? True when it can bind it now, or when something
    already accepts connections there (``callwarden serve`` running). False otherwise."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        sock.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return False, f"cannot bind {host}:{port}: {exc.strerror or exc}"
    else:
        return True, f"{host}:{port} is free"
    finally:
        sock.close()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} is in use and accepts connections (callwarden serve running?)"
    except OSError as exc:
        return False, (f"{host}:{port} is taken but nothing accepts connections there "
                       f"({exc.strerror or exc}): another program holds the port")
