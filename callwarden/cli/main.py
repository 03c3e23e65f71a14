"""Entry point: ``callwarden [--config FILE] COMMAND ...``."""

from __future__ import annotations

import getpass
import os

import click

from callwarden import __version__
from callwarden.cli import admin, audit_cmd, check, db, registry_cmd, serve
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


for module in (db, registry_cmd, admin, check, audit_cmd, serve):
    module.register(cli)


def main() -> None:
    cli(prog_name="callwarden")


if __name__ == "__main__":
    main()
