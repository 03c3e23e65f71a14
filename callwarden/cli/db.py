"""``callwarden db upgrade|status``."""

from __future__ import annotations

import click

from callwarden.cli.app import App, pass_app
from callwarden.store.migrate import current_revision, head_revision, upgrade


@click.group("db")
def db_group() -> None:
    """Create and migrate the store's schema."""


@db_group.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Create the schema, or migrate it to the newest revision (safe to re-run)."""
    upgrade(app.engine)
    click.echo(f"schema at revision {current_revision(app.engine)} ({app.engine.url.render_as_string()})")


@db_group.command("status")
@pass_app
def db_status(app: App) -> None:
    """Show the schema revision; exit 1 when it is behind."""
    current, head = current_revision(app.engine), head_revision()
    click.echo(f"current: {current or '(empty store)'}  newest: {head}")
    if current != head:
        click.echo("run: callwarden db upgrade", err=True)
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
