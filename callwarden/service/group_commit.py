"""Group commit: one writer thread per process decides and stores every waiting call at once.

At peak, hundreds of calls wait for a decision at the same moment. Deciding them one
transaction each spends most of the time on what every transaction pays whatever its size
(begin, the audit chain's head lock, statement overhead, commit) and, on SQLite, on waiting
for the single write lock. Here, adapters hand their attempts to :class:`GroupCommit`; its one
thread takes every attempt waiting at that moment, reads their facts together
(``store.facts.BatchFacts``), decides each in arrival order, writes all their CDR rows,
recording rows and audit entries in one transaction, commits, and only then answers each of
them. Durability is unchanged: no call is answered before its decision is stored. The audit
chain stays one chain (the batch's entries are appended in order behind one head lock).

A batch the store refuses fails every attempt in it (fail closed). An attempt whose deadline
passed while it waited is not decided (POLICY_UNAVAILABLE, nothing stored, as before).

The same thread makes the corrections (:class:`Correction`): a decision stored after the adapter
stopped waiting for it (the PBX was told deny) is turned into a deny in the next batch's
transaction, behind the same head lock. Under overload such corrections come by the hundred;
each in a transaction of its own, from another thread, competed with the writer for the audit
head's lock and made the next batch later still.

The thread is native (``threading`` is not monkey-patched in the FreeSWITCH process either),
starts with the first attempt and ends after a short idle time, so an idle enforcer holds no
thread and can be garbage-collected with its engine.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from callwarden.policy import CallAttempt

#: Most attempts in one transaction: bounds the statements' parameter lists and the time the
#: first attempt of a large burst waits for the last one's rows.
MAX_BATCH = 128
#: The thread ends after this long without work (a new attempt starts it again).
IDLE_S = 2.0
#: Without an attempt for this long, the thread lets go of what it keeps between batches.
PAUSE_S = 0.2


@dataclass(slots=True)
class Pending:
    """One attempt waiting for its decision."""

    attempt: CallAttempt
    started: float  # time.monotonic() when the adapter received the call
    deadline: float
    route: str
    call_id: str
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    # Where its time went (logged with the decision): handed to the writer, taken into a batch
    submitted: float = field(default_factory=time.monotonic)
    taken: float = 0.0


@dataclass(frozen=True, slots=True)
class Correction:
    """A stored decision the adapter gave up on: the PBX was told POLICY_UNAVAILABLE, so the
    record must say deny with these ``codes`` (the decision's own plus POLICY_UNAVAILABLE)."""

    call_id: str
    pbx: str
    codes: tuple[str, ...]
    tries: int = 0  # batches that failed with it (the writer gives up after a few)


class GroupCommit:
    """Queue of pending decisions and the thread that stores them in batches.

    ``run_batch(batch, corrections)`` does the work for a list of :class:`Pending` (each
    already marked running; may be empty) and of :class:`Correction`, and must settle every
    future in the batch, whatever happens."""

    def __init__(self, run_batch: Callable[[list[Pending], list[Correction]], None], *, max_batch: int = MAX_BATCH,
                 idle_s: float = IDLE_S, name: str = "callwarden-decisions",
                 release: Callable[[], None] | None = None, pause_s: float = PAUSE_S):
        self._run_batch = run_batch
        # Run by the thread once no attempt came for pause_s, and as it ends: lets go of what
        # it keeps between batches (the store connection).
        self._release = release
        self.pause_s = pause_s
        # A deque under a native condition, not queue.SimpleQueue: gevent's patching may
        # replace that one, and this thread is native in every process.
        self._waiting: deque[Pending] = deque()
        self._corrections: deque[Correction] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.max_batch = max_batch
        self.idle_s = idle_s
        self.name = name
        #: Sizes of the last 1,000 batches: for tests and the benchmark.
        self.batch_sizes: deque[int] = deque(maxlen=1000)

    @property
    def waiting(self) -> int:
        """Attempts queued and not yet taken (a snapshot: for deciding whether to do other
        work first)."""
        return len(self._waiting)

    def submit(self, pending: Pending) -> concurrent.futures.Future:
        self._queue(self._waiting, pending)
        return pending.future

    def correct(self, correction: Correction) -> None:
        """Queue a correction for the next batch (one is started if none is waiting)."""
        self._queue(self._corrections, correction)

    def _queue(self, queue: deque, item: Pending | Correction) -> None:
        with self._lock:
            queue.append(item)
            self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()

    def _has_work(self) -> bool:
        return bool(self._waiting or self._corrections)

    def _next_batch(self) -> tuple[list[Pending], list[Correction]] | None:
        """Wait for an attempt or a correction, then take every one waiting behind it; None
        when idle (the thread then ends, under the lock, so that the next submit starts a new
        one)."""
        released = self._release is None
        while True:
            with self._lock:
                if self._has_work() or self._ready.wait_for(
                        self._has_work, self.idle_s if released else self.pause_s):
                    n = min(len(self._waiting), self.max_batch)
                    m = min(len(self._corrections), self.max_batch)
                    return ([self._waiting.popleft() for _ in range(n)],
                            [self._corrections.popleft() for _ in range(m)])
                if released:
                    self._thread = None
                    return None
            self._release()  # type: ignore[misc]  # a pause: outside the lock, submits go on
            released = True

    def _work(self) -> None:
        try:
            self._serve()
        finally:
            if self._release is not None:
                self._release()

    def _serve(self) -> None:
        while (work := self._next_batch()) is not None:
            batch, corrections = work
            # An adapter that gave up waiting cancels its future: nothing to decide for it.
            running = [p for p in batch if p.future.set_running_or_notify_cancel()]
            taken = time.monotonic()
            for p in running:
                p.taken = taken
            if not running and not corrections:
                continue
            if running:
                self.batch_sizes.append(len(running))
            try:
                self._run_batch(running, corrections)
            except BaseException as exc:  # a bug: no caller may wait for ever
                for p in running:
                    if not p.future.done():
                        p.future.set_exception(exc)
