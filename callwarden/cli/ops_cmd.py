"""Operations commands: ``callwarden doctor`` and ``callwarden health``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import click

from callwarden.cli.app import App, pass_app
from callwarden.ops.doctor import MAX_CLOCK_SKEW_S, MIN_FREE_MB, PROBE_TIMEOUT_S, Doctor, Options

_MARK = {"PASS": "PASS", "FAIL": "FAIL", "SKIP": "skip"}


@click.command("doctor")
@click.option("--min-free-mb", type=click.IntRange(min=0), default=MIN_FREE_MB,
              show_default=True, help="Fail when the recording area has less free space.")
@click.option("--max-clock-skew", "max_skew", type=click.FloatRange(min=0),
              default=MAX_CLOCK_SKEW_S, show_default=True,
              help="Fail when this host's clock is further off the database's (seconds).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=60), default=PROBE_TIMEOUT_S,
              show_default=True, help="Seconds each network probe may take.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_app
def doctor_cmd(app: App, min_free_mb: int, max_skew: float, timeout: float, as_json: bool) -> None:
    """Check this installation: config, store, recording area, PBX logins, ports, clock.

    Prints PASS/FAIL for each check; exits 1 if any check failed."""
    doctor = Doctor(app.config_path, Options(min_free_mb=min_free_mb, max_clock_skew_s=max_skew,
                                             timeout_s=timeout))
    results = []
    failed = 0
    if not as_json:
        click.echo("callwarden doctor")
    for result in doctor.checks():
        results.append(result)
        failed += result.status == "FAIL"
        if not as_json:
            click.echo(f"  {_MARK[result.status]}  {result.name:<18} {result.detail}")
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], ensure_ascii=False, indent=2))
    else:
        counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
        click.echo(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    if failed:
        raise SystemExit(1)


@click.command("health")
@click.option("--url", help="Health URL (default: from the config's metrics: section).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=60), default=4.0, show_default=True)
@pass_app
def health_cmd(app: App, url: str | None, timeout: float) -> None:
    """Ask a running `callwarden serve` for /healthz; exit 0 when healthy, 1 when not.

    For container and service-manager health checks (the Dockerfile's HEALTHCHECK)."""
    if url is None:
        where = app.settings.metrics
        if where is None:
            click.echo("error: metrics: is null in the config: no health endpoint", err=True)
            raise SystemExit(2)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(where.host, where.host)
        url = f"http://[{host}]:{where.port}/healthz" if ":" in host else \
            f"http://{host}:{where.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our URL
            click.echo(response.read().decode("utf-8", "replace").rstrip())
    except urllib.error.HTTPError as exc:  # 503: the body says which check failed
        click.echo(exc.read().decode("utf-8", "replace").rstrip())
        raise SystemExit(1) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        click.echo(f"unhealthy: {url} does not answer ({reason})", err=True)
        raise SystemExit(1) from None


@click.command("demo")
@click.option("--observe", is_flag=True, help="Run in observe mode (denied calls let through).")
@click.option("--keep", is_flag=True, help="Keep the temporary store, config and logs.")
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Work in this directory instead of a temporary one (kept).")
def demo_cmd(observe: bool, keep: bool, workdir: Path | None) -> None:
    """Try callwarden: real servers, simulated PBX calls, each decision printed.

    Starts the FastAGI and Event Socket servers on a temporary SQLite store seeded with one
    tenant, and plays Asterisk's and FreeSWITCH's side of five calls over real sockets:
    allowed, masked caller ID, marketing, quiet hours, no consent. Needs no config and no PBX.
    Exits 1 if any decision is not the expected one."""
    from callwarden.demo.runner import run_demo

    raise SystemExit(run_demo(observe=observe, keep=keep or workdir is not None, workdir=workdir))


def register(cli: click.Group) -> None:
    cli.add_command(doctor_cmd)
    cli.add_command(health_cmd)
    cli.add_command(demo_cmd)
