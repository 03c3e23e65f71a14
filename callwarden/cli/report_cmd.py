"""``callwarden report``: the per-tenant compliance report (自查自纠报告), audit-logged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from callwarden.audit.access import AccessDenied, record_access, resolve_scope
from callwarden.audit.filters import FilterError, parse_time
from callwarden.audit.report import UnknownTenant, compute_report, report_rules
from callwarden.audit.report_render import FORMATS, render
from callwarden.audit.snapshot import snapshot
from callwarden.cli.app import App, pass_app

EXIT_DENIED = 4


@click.command("report")
@click.option("--tenant", required=True)
@click.option("--from", "since", required=True, metavar="ISO", help="First day (or instant) of the period.")
@click.option("--to", "until", required=True, metavar="ISO", help="Last day (included) or end instant (excluded).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="html", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write here (default: standard output).")
@click.option("--as-tenant", metavar="TENANT", help="Act as this tenant (also $CALLWARDEN_TENANT_SCOPE).")
@pass_app
def report_cmd(app: App, tenant: str, since: str, until: str, fmt: str, out: str | None, as_tenant: str | None) -> None:
    """Compliance report of one tenant for a period: volume per day, denials by reason (with
    clause), answer rate, average duration, consent and recording coverage, quiet-hours and
    frequency attempts, observe-mode would-have-denied, suspensions. HTML has charts."""
    tz = app.settings.tz
    try:
        start, end = parse_time(since, tz, "--from"), parse_time(until, tz, "--to", upper=True)
        if start is None or end is None or start >= end:
            raise FilterError("--from must be before --to")
        scope = resolve_scope(app.actor, as_tenant)
        with snapshot(app.engine) as session:
            data = compute_report(session, tenant, start, end, tz, scope, report_rules(app.settings))
    except FilterError as exc:
        raise click.UsageError(str(exc)) from None
    except AccessDenied as exc:
        click.echo(f"access denied: {exc}", err=True)
        raise SystemExit(EXIT_DENIED) from None
    except UnknownTenant as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    text = render(data, fmt)
    digest = hashlib.sha256(text.encode()).hexdigest()
    with app.session() as session:
        record_access(session, scope, "report.generate", tenant, {
            "tenant": tenant, "from": data.period["from"], "to": data.period["to"], "format": fmt,
            "sha256": digest, "out": Path(out).name if out else None,
            "attempts": data.outbound["attempts"]})
    if out:
        Path(out).write_text(text, encoding="utf-8")
        click.echo(f"{out}: {fmt} report of {tenant}, {data.period['from']} – {data.period['to']} "
                   f"(sha256 {digest})", err=True)
    else:
        click.echo(text, nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(report_cmd)
