"""What the outbound server and the inbound listener of one process share in memory (both
run on one gevent hub, so no locking): the allowed calls watched for caller-ID changes, and
the channels being handled right now.

It is a cache, not the record: after a restart it is empty, and the listener falls back to
asking the store on CALL_UPDATE events (see ``inbound.py``). Bounded: entries leave at hangup,
at reconciliation, or oldest-first beyond ``max_size``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from callwarden.numbers import try_normalize


@dataclass(frozen=True, slots=True)
class Watched:
    call_id: str
    caller: str | None  # canonical digits of the caller ID the decision was made for


class WatchedCalls:
    def __init__(self, max_size: int = 100_000):
        self.max_size = max_size
        self._calls: OrderedDict[str, Watched] = OrderedDict()

    def add(self, uuid: str, call_id: str, caller_raw: str | None) -> None:
        number = try_normalize(caller_raw)
        self._calls[uuid] = Watched(call_id, number.digits if number else None)
        self._calls.move_to_end(uuid)
        while len(self._calls) > self.max_size:
            self._calls.popitem(last=False)

    def find(self, uuids: Iterable[str]) -> tuple[str, Watched] | None:
        """The first of ``uuids`` that is watched, with its entry."""
        for uuid in uuids:
            watched = self._calls.get(uuid)
            if watched is not None:
                return uuid, watched
        return None

    def remove(self, uuid: str) -> None:
        self._calls.pop(uuid, None)

    def retain(self, live: set[str]) -> int:
        """Forget calls FreeSWITCH no longer has; returns how many were dropped."""
        gone = [uuid for uuid in self._calls if uuid not in live]
        for uuid in gone:
            del self._calls[uuid]
        return len(gone)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._calls

    def __len__(self) -> int:
        return len(self._calls)


def changed(watched: Watched, presented_raw: str | None, hidden: bool) -> bool:
    """Does the caller ID now presented differ from the one decided on?"""
    if hidden:
        return True
    number = try_normalize(presented_raw)
    return (number.digits if number else None) != watched.caller


class InFlight:
    """Channels the outbound server is handling right now, and the call id each got.

    A channel can hang up while callwarden is still deciding: its CHANNEL_HANGUP_COMPLETE then
    carries no ``callwarden_call_id`` and may even arrive before the decision is stored. The
    listener parks such a hangup here; when the handler finishes, the parked hangup is handed
    back (``on_release``) with the call id, so that CDR is completed too.
    """

    def __init__(self, max_recent: int = 10_000):
        self.max_recent = max_recent
        self.on_release: Callable[[str, str, Any], None] | None = None
        self._active: dict[str, str | None] = {}
        self._parked: dict[str, Any] = {}
        self._recent: OrderedDict[str, str] = OrderedDict()

    def begin(self, uuid: str) -> None:
        self._active[uuid] = None

    def decided(self, uuid: str, call_id: str) -> None:
        if uuid in self._active:
            self._active[uuid] = call_id

    def finish(self, uuid: str) -> None:
        call_id = self._active.pop(uuid, None)
        parked = self._parked.pop(uuid, None)
        if call_id is not None:
            self._recent[uuid] = call_id
            while len(self._recent) > self.max_recent:
                self._recent.popitem(last=False)
            if parked is not None and self.on_release is not None:
                self.on_release(uuid, call_id, parked)

    def call_id(self, uuid: str) -> str | None:
        return self._active.get(uuid) or self._recent.get(uuid)

    def park(self, uuid: str, item: Any) -> bool:
        """Keep ``item`` until the handler of ``uuid`` finishes; False if none is running."""
        if uuid not in self._active:
            return False
        self._parked[uuid] = item
        return True

    def __len__(self) -> int:
        return len(self._active)
