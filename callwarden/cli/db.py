"""``callwarden db upgrade|status``."""

from __future__ import annotations

import click

from callwarden.audit.pseudonym import AuditKeyError, ensure_store_key
from callwarden.cli.app import App, pass_app
from callwarden.store.migrate import current_revision, head_revision, upgrade
from callwarden.store.statistics import analyze


@click.group("db")
def db_group() -> None:
    """Create and migrate the store's schema."""


@db_group.command("upgrade")
@pass_app
def db_upgrade(app: App) -> None:
    """Create the schema, or migrate it to the newest revision (safe to re-run); create the
    audit key file (audit.key_file) on a new installation. On PostgreSQL, also refresh the
    planner's statistics (ANALYZE): run it after restoring a dump, which brings none."""
    engine = app.raw_engine
    upgrade(engine)
    click.echo(f"schema at revision {current_revision(engine)} ({engine.url.render_as_string()})")
    if analyze(engine):
        click.echo("planner statistics refreshed (ANALYZE)")
    try:
        key, created = ensure_store_key(app.settings, engine)
    except AuditKeyError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(f"audit key {'created' if created else 'found'}: {key.path} "
               f"(fingerprint {key.fingerprint[:12]}...; keep a backup of it)")


@db_group.command("status")
@pass_app
def db_status(app: App) -> None:
    """Show the schema revision; exit 1 when it is behind."""
    current, head = current_revision(app.raw_engine), head_revision()
    click.echo(f"current: {current or '(empty store)'}  newest: {head}")
    if current != head:
        click.echo("run: callwarden db upgrade", err=True)
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
