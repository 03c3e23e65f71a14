"""Entry point: ``callwarden [--config FILE] COMMAND ...``."""

from __future__ import annotations

import getpass
import os

import click
from sqlalchemy.exc import SQLAlchemyError

from callwarden import __version__
from callwarden.cli import (
    admin,
    audit_cmd,
    check,
    db,
    ops_cmd,
    policing_cmd,
    registry_cmd,
    report_cmd,
    retention_cmd,
    serve,
    subject_cmd,
    users_cmd,
    web_cmd,
)
from callwarden.cli.app import App


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", metavar="FILE", envvar="CALLWARDEN_CONFIG",
              help="YAML config (default: $CALLWARDEN_CONFIG, else config/callwarden.example.yaml).")
@click.option("--actor", default=lambda: os.environ.get("CALLWARDEN_ACTOR") or getpass.getuser(),
              show_default="$CALLWARDEN_ACTOR or the login name",
              help="Who is acting, as written to the audit log.")
@click.version_option(__version__, prog_name="callwarden")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, actor: str) -> None:
    """callwarden: outbound-call compliance for Asterisk and FreeSWITCH (MIIT 2020 No. 81)."""
    ctx.obj = App(config_path, actor)


for module in (db, registry_cmd, admin, check, audit_cmd, report_cmd, serve, policing_cmd,
               retention_cmd, ops_cmd, subject_cmd, users_cmd, web_cmd):
    module.register(cli)


def main() -> None:
    try:
        cli(prog_name="callwarden")
    except SQLAlchemyError as exc:
        # No traceback for an operator: say what failed and what to try.
        first = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0][:300]
        click.echo(f"error: the store failed: {type(exc).__name__}: {first}\n"
                   "  check store.url, that the database is reachable, and run `callwarden db upgrade`",
                   err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
