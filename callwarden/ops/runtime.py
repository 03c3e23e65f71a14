"""What one process runs, as the adapters expose it: servers with open sessions, and the
connections (links) it keeps to PBXes. Metrics and the health check read it when asked, so
nothing is counted on the call path.

The callables read state the adapters already keep (``FastAgiServer.active``,
``AmiListener.connected``, ``OutboundServer.connection_count``, ``EventListener.connected``);
they must be cheap and must not block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerState:
    """A server PBXes connect to (FastAGI, outbound Event Socket)."""

    pbx: str  # asterisk | freeswitch
    name: str  # fastagi | esl_outbound
    open_sessions: Callable[[], int]
    refused: Callable[[], int] | None = None  # connections closed on arrival (at capacity)


@dataclass(frozen=True, slots=True)
class LinkState:
    """A connection callwarden keeps to a PBX (AMI, inbound Event Socket)."""

    pbx: str
    name: str  # ami | esl_inbound
    endpoint: str  # host:port, for the health report
    up: Callable[[], bool]
    connects: Callable[[], int] | None = None  # sessions established so far


@dataclass(frozen=True, slots=True)
class ServerReading:
    pbx: str
    name: str
    open_sessions: int | None
    refused: int | None


@dataclass(frozen=True, slots=True)
class LinkReading:
    pbx: str
    name: str
    endpoint: str
    up: bool
    connects: int | None

    def as_dict(self) -> dict[str, object]:
        return {"pbx": self.pbx, "name": self.name, "endpoint": self.endpoint, "up": self.up,
                "connects": self.connects}


@dataclass(slots=True)
class Runtime:
    """The servers and links of this process (registered once the adapters have started)."""

    servers: list[ServerState] = field(default_factory=list)
    links: list[LinkState] = field(default_factory=list)

    def add_server(self, state: ServerState) -> None:
        self.servers.append(state)

    def add_link(self, state: LinkState) -> None:
        self.links.append(state)

    def read_servers(self) -> list[ServerReading]:
        return [ServerReading(s.pbx, s.name, _read(s.open_sessions, None),
                              _read(s.refused, None) if s.refused else None)
                for s in self.servers]

    def read_links(self) -> list[LinkReading]:
        """A link whose state cannot be read counts as down."""
        return [LinkReading(link.pbx, link.name, link.endpoint, bool(_read(link.up, False)),
                            _read(link.connects, None) if link.connects else None)
                for link in self.links]


def _read(reader: Callable[[], T], failed: T) -> T:
    try:
        return reader()
    except Exception:  # reading adapter state must never break a scrape or a health check
        return failed
