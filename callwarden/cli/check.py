"""``callwarden check``: the decision a call would get, storing nothing."""

from __future__ import annotations

import datetime as dt

import click

from callwarden.cli.app import EXIT_DENY, App, pass_app
from callwarden.cli.output import emit_json
from callwarden.policy import CallAttempt
from callwarden.service.enforcer import Enforcer


def _parse_at(value: str | None, tz) -> dt.datetime:  # type: ignore[no-untyped-def]
    if not value:
        return dt.datetime.now(dt.UTC)
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("must be ISO-8601, e.g. 2026-03-02T10:00:00+08:00", param_hint="--at") from None
    return at if at.tzinfo else at.replace(tzinfo=tz)  # a bare time is the configured zone's


@click.command("check")
@click.option("--tenant", required=True)
@click.option("--caller", required=True, help="Caller ID as it would be presented.")
@click.option("--callee", required=True)
@click.option("--trunk")
@click.option("--campaign")
@click.option("--purpose", help="callback | consultation | notification | survey | ...")
@click.option("--at", "at_text", metavar="ISO-8601", help="When (default now; no offset = config timezone).")
@click.option("--hidden", is_flag=True, help="Caller ID presentation restricted.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def check_cmd(app: App, tenant, caller, callee, trunk, campaign, purpose, at_text, hidden, as_json) -> None:
    """Dry-run one outbound call. Exit 0 = allow, 3 = deny."""
    settings = app.settings
    attempt = CallAttempt(tenant=tenant, caller=caller, callee=callee,
                          at=_parse_at(at_text, settings.tz), caller_hidden=hidden, trunk=trunk,
                          campaign=campaign, purpose=purpose)
    decision = Enforcer(settings, engine=app.engine).check(attempt)
    if as_json:
        emit_json(decision.as_dict())
    else:
        click.echo(f"decision: {decision.decision.upper()}  (purpose {decision.purpose})")
        for r in decision.reasons:
            click.echo(f"  {r.code:<24} {r.clause:<16} {r.message_en} / {r.message_zh}")
        if decision.hangup_cause:
            click.echo(f"hangup cause: {decision.hangup_cause} ({decision.hangup_cause_code})")
    if not decision.allowed:
        raise SystemExit(EXIT_DENY)


def register(cli: click.Group) -> None:
    cli.add_command(check_cmd)
