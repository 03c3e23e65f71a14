"""The FreeSWITCH adapter's process: gevent monkey-patching first, then everything else.

Why a process of its own: greenswitch is built on gevent, and gevent must monkey-patch the
standard library (socket, threading, ...) *before* anything creates sockets, locks or threads.
That patching is process-wide, and the Asterisk adapter runs on asyncio, whose event loop and
thread pools must not see patched primitives; nor should either event loop be able to starve
the other. So the FreeSWITCH side is always ``python -m callwarden.esl``: supervised by
``callwarden serve`` when the config has both PBX sections, or the whole of ``callwarden serve``
when it has only ``freeswitch:`` (or with ``--only freeswitch``).

In that last case ``callwarden serve`` has already imported click, SQLAlchemy, structlog...
before it reaches :func:`run_freeswitch`: patching then would leave locks and socket
references created earlier unpatched. So ``run_freeswitch`` does not patch late; it replaces
the process (``os.execv``, same PID, same signals) with a fresh ``python -m callwarden.esl``
that patches before anything else. This module patches at import only when nothing that
matters was imported before it (which is the case for ``python -m callwarden.esl``).
"""

from __future__ import annotations

import sys

#: Imported before us, these would keep unpatched locks or socket references. (Checked before
#: gevent itself is imported: gevent.monkey imports threading and logging, and copes with that.)
_EARLY_IMPORTS = ("threading", "socket", "ssl", "select", "selectors", "asyncio", "sqlalchemy",
                  "psycopg", "structlog", "click", "pydantic", "logging", "concurrent.futures")
CLEAN_START = not any(name in sys.modules for name in _EARLY_IMPORTS)

from gevent import monkey  # noqa: E402

if CLEAN_START and not monkey.is_module_patched("socket"):
    # Everything but threading. The store runs in native threads (gevent's thread pool: SQLite
    # and psycopg block in C), and the same locks are taken there and on the hub: structlog's
    # write lock, SQLAlchemy's pool. A patched threading.Lock is a gevent semaphore, and one
    # shared between native threads can lose its wake-up (seen here under a 200-call burst: a
    # greenlet parked for ever on structlog's lock). Native locks are held for microseconds
    # and never across a gevent switch, so the hub may wait on them safely; callwarden's own
    # greenlet code uses gevent's primitives explicitly.
    monkey.patch_all(thread=False)


def _psycopg_waits_in_c() -> None:
    """psycopg sees the patched ``select`` and then waits for the server through gevent's
    poll. Here psycopg runs only in native threads (the decision writer, the store gate's
    pools, start-up checks before the hub serves), where that poll brings up a gevent hub per
    thread: measured 2.8 ms of CPU per one-decision batch on PostgreSQL against ~1 ms with
    psycopg's own C wait, which polls with the GIL released."""
    try:
        import psycopg.waiting as waiting
    except ImportError:  # SQLite-only installation
        return
    if getattr(waiting, "wait_c", None) is not None:
        waiting.wait = waiting.wait_c


if CLEAN_START:
    _psycopg_waits_in_c()

import argparse  # noqa: E402 - everything below runs on patched modules
import os  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

EXIT_CONFIG = 2
EXIT_START = 1


def patched() -> bool:
    """True when this process runs on a patched standard library (threading excepted)."""
    return all(monkey.is_module_patched(m) for m in ("socket", "select", "time"))


def run_freeswitch(config_path: str | None) -> None:
    """``callwarden serve`` entry: run the adapter in this process if it was patched in time,
    else exec ``python -m callwarden.esl`` (never returns in that case)."""
    if CLEAN_START and patched():
        raise SystemExit(serve(config_path))
    argv = [sys.executable, "-m", "callwarden.esl"] + (["--config", config_path] if config_path else [])
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)


def serve(config_path: str | None) -> int:
    """Load the config, start the adapter, run until SIGTERM/SIGINT; the exit status."""
    if not patched():
        print("error: the FreeSWITCH adapter must run as `python -m callwarden.esl` "
              "(gevent monkey-patching happens first there)", file=sys.stderr)
        return EXIT_START
    from callwarden import log as cwlog
    from callwarden.config import ConfigError, load_settings

    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if settings.freeswitch is None:
        print("error: freeswitch: the configuration has no freeswitch: section", file=sys.stderr)
        return EXIT_CONFIG
    cwlog.configure(settings.logging.format, settings.logging.level)
    log = cwlog.get_logger("callwarden.esl")
    problem = _schema_problem(settings.store.url) or _audit_key_problem(settings)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_START

    from callwarden.esl.service import FreeswitchService
    from callwarden.ops.esl_side import EslOperations

    service = FreeswitchService(settings)
    # Metrics and health: answered on the parent's report socket when supervised by
    # `callwarden serve`, else served at `metrics:` by this process (callwarden.ops.esl_side).
    ops = EslOperations(settings, service)
    try:
        port = service.start()
    except OSError as exc:
        out = settings.freeswitch.esl_outbound
        print(f"error: freeswitch.esl_outbound: cannot listen on {out.host}:{out.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_START
    ops.start()
    inbound = settings.freeswitch.esl_inbound
    log.info("freeswitch_adapter_ready", pid=os.getpid(), outbound_port=port,
             inbound=f"{inbound.host}:{inbound.port}" if inbound else None, mode=settings.mode)

    from callwarden.policing.service import start_in_thread

    # The seat-rental detector. A child of `callwarden serve` (report socket) leaves it to the
    # parent, which runs it beside the Asterisk adapter.
    policing = None if ops.report_socket else start_in_thread(
        settings, observer=ops.metrics.detector_pass)

    def stop() -> None:
        ops.stop()
        service.stop()
        if policing is not None:  # after the calls drained: joining blocks the hub
            policing.stop()

    return wait_for_signal(stop, log)


def wait_for_signal(stop, log) -> int:  # type: ignore[no-untyped-def]
    """Block the main greenlet until SIGTERM/SIGINT, then ``stop()``."""
    done = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, done.set)
    done.wait()
    log.info("freeswitch_adapter_stopping")
    stop()
    log.info("freeswitch_adapter_stopped")
    return 0


def _schema_problem(url: str) -> str | None:
    from callwarden.store.db import make_engine
    from callwarden.store.migrate import current_revision, head_revision

    engine = make_engine(url)
    try:
        current, head = current_revision(engine), head_revision()
    except Exception as exc:
        return f"store: cannot read the schema version ({type(exc).__name__})"
    finally:
        engine.dispose()
    if current != head:
        return (f"store schema is at {current or 'nothing'}, newest is {head}: "
                "run `callwarden db upgrade` first")
    return None


def _audit_key_problem(settings) -> str | None:  # type: ignore[no-untyped-def]
    from callwarden.audit.pseudonym import AuditKeyError, open_store_key
    from callwarden.store.db import make_engine

    engine = make_engine(settings.store.url)
    try:
        open_store_key(settings, engine)
    except AuditKeyError as exc:
        return str(exc)
    finally:
        engine.dispose()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callwarden.esl",
                                     description="callwarden's FreeSWITCH adapter (Event Socket).")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML config (default: $CALLWARDEN_CONFIG, else "
                             "config/callwarden.example.yaml)")
    args = parser.parse_args(argv)
    return serve(args.config)
