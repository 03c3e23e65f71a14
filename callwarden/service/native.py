"""The operating system's sleep and lock, even in a process gevent has monkey-patched.

The FreeSWITCH adapter runs under gevent and calls the enforcer from gevent's *native* thread
pools. There, gevent's patched ``time.sleep`` and ``threading.Lock`` would each need a hub of
their own in every worker thread, which gevent does not support well (LoopExit, crashes at
exit). Code that may wait or lock inside those calls (recording finalization) uses these
instead. gevent is never imported here: if it was not loaded, the standard ones are returned.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import queue
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["NativeExecutor", "native_lock", "native_sleep"]


def _original(module: str, name: str, default: Any) -> Any:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched(module):
        return monkey.get_original(module, name)
    return default


def native_sleep(seconds: float) -> None:
    """Block this OS thread for ``seconds`` (never yields to a gevent hub)."""
    sleep: Callable[[float], None] = _original("time", "sleep", time.sleep)
    sleep(seconds)


def native_lock() -> Any:
    """A new OS-level lock (``with lock: ...``), safe to share between native threads."""
    allocate = _original("_thread", "allocate_lock", _thread.allocate_lock)
    return allocate()


class NativeExecutor(concurrent.futures.ThreadPoolExecutor):
    """A thread pool whose work queue is the operating system's, even under gevent.

    ``ThreadPoolExecutor`` hands work to its threads through ``queue.SimpleQueue``, which
    gevent's patching replaces with a cooperative one that native threads cannot wait on.
    Unlike gevent's own thread pool, a queued task is never dropped when its waiter gives up.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = ""):
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        self._work_queue = _original("queue", "SimpleQueue", queue.SimpleQueue)()
