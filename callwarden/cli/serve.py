"""``callwarden serve``: run the enforcement servers for the PBX sections present in the config.

Asterisk (asyncio, panoramisk) runs in this process; FreeSWITCH (gevent, greenswitch) runs in a
child process (``python -m callwarden.esl``) because gevent's monkey-patching and asyncio do not
share one process safely. The child is supervised: restarted with backoff if it dies, stopped
with this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

import click

from callwarden.cli.app import App, pass_app
from callwarden.log import get_logger
from callwarden.service.enforcer import Enforcer
from callwarden.store.migrate import current_revision, head_revision

log = get_logger("callwarden.serve")


def _schema_ready(app: App) -> None:
    current, head = current_revision(app.engine), head_revision()
    if current != head:
        click.echo(f"error: store schema is at {current or 'nothing'}, newest is {head}: "
                   "run `callwarden db upgrade` first", err=True)
        raise SystemExit(1)


@click.command("serve")
@click.option("--only", type=click.Choice(["asterisk", "freeswitch"]),
              help="Run just one PBX adapter (default: every one configured).")
@pass_app
def serve_cmd(app: App, only: str | None) -> None:
    """Start the FastAGI/AMI and Event Socket servers and run until stopped (SIGTERM/SIGINT)."""
    settings = app.settings
    _schema_ready(app)
    want_ast = settings.asterisk is not None and only in (None, "asterisk")
    want_fs = settings.freeswitch is not None and only in (None, "freeswitch")
    want_web = settings.web is not None
    if not (want_ast or want_fs or want_web):
        click.echo("error: nothing to serve: the config has no asterisk:, freeswitch: or web: section", err=True)
        raise SystemExit(2)
    if not want_ast and want_web:
        asyncio.run(_serve_web_only(app, with_freeswitch=want_fs))
        return
    if want_fs and not want_ast:
        from callwarden.esl.process import run_freeswitch

        run_freeswitch(app.config_path)
        return
    asyncio.run(_serve_asterisk(app, with_freeswitch=want_fs))


async def _serve_asterisk(app: App, with_freeswitch: bool) -> None:
    from callwarden.agi import AsteriskAdapter
    from callwarden.ops.service import Operations

    settings = app.settings
    assert settings.asterisk is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ops = Operations(settings)
    adapter = AsteriskAdapter(settings, ops.instrument(Enforcer(settings)))
    try:
        await adapter.start()
    except OSError as exc:
        agi = settings.asterisk.agi
        click.echo(f"error: asterisk.agi: cannot listen on {agi.host}:{agi.port}: "
                   f"{exc.strerror or exc}", err=True)
        raise SystemExit(1) from None
    ops.watch_asterisk(adapter)
    from callwarden.policing.service import start_in_serve

    # the seat-rental detector, every policing.interval_s (its passes are counted in /metrics)
    tasks = start_in_serve(settings, stop, observer=ops.metrics.detector_pass)
    if with_freeswitch:
        report = ops.child_report_socket("freeswitch")
        tasks.append(asyncio.create_task(_supervise_freeswitch(app.config_path, stop, report)))
    if settings.web is not None:
        from callwarden.web.serving import serve_until

        tasks.append(asyncio.create_task(serve_until(settings, stop)))  # the web console (web:)
    ops.start()  # /metrics and /healthz; a port it cannot bind is logged, calls go on
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.shield(adapter.stop())
        ops.close()


async def _serve_web_only(app: App, with_freeswitch: bool) -> None:
    """The web console, and the supervised FreeSWITCH side if configured (no Asterisk side)."""
    from callwarden.web.serving import serve_until

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(serve_until(app.settings, stop))]
    if with_freeswitch:
        tasks.append(asyncio.create_task(_supervise_freeswitch(app.config_path, stop)))
    try:
        await stop.wait()
    finally:
        for t in tasks[1:]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _supervise_freeswitch(config_path: str | None, stop: asyncio.Event,
                                report_socket: str | None = None) -> None:
    """Keep ``python -m callwarden.esl`` running; restart it with backoff if it exits. It
    reports its metrics and links on ``report_socket`` (see callwarden.ops.bridge)."""
    from callwarden.ops.bridge import ENV_SOCKET

    delay = 1.0
    args = [sys.executable, "-m", "callwarden.esl"] + (["--config", config_path] if config_path else [])
    env = dict(os.environ, **({ENV_SOCKET: report_socket} if report_socket else {}))
    while not stop.is_set():
        proc = await asyncio.create_subprocess_exec(*args, env=env)
        log.info("freeswitch_adapter_started", pid=proc.pid)
        try:
            rc = await proc.wait()
        except asyncio.CancelledError:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
            raise
        log.error("freeswitch_adapter_exited", returncode=rc, restart_in_s=delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)


