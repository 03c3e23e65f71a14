"""``callwarden registry import|export``: the registry file of SPEC.md's public contract."""

from __future__ import annotations

import sys

import click
import yaml

from callwarden.cli.app import App, pass_app
from callwarden.cli.output import to_jsonable
from callwarden.store.registry import Registry, RegistryError, export_document


@click.group("registry")
def registry_group() -> None:
    """Load or save tenants, numbers, trunks, proofs, consents, refusals and campaigns."""


@registry_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--dry-run", is_flag=True, help="Validate and report, change nothing.")
@pass_app
def registry_import(app: App, file, dry_run: bool) -> None:
    """Load FILE idempotently: all entries or none; an error names the entry and field."""
    try:
        data = yaml.safe_load(file)
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{file.name}: not valid YAML: {exc}") from None
    try:
        with app.session() as session:
            counts = Registry(session, app.actor).import_document(data)
            if dry_run:
                session.rollback()
    except RegistryError as exc:
        click.echo(f"error: {file.name}: {exc} (nothing was imported)", err=True)
        raise SystemExit(1) from None
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to do"
    click.echo(("dry run, nothing saved: " if dry_run else "imported: ") + summary)


@registry_group.command("export")
@click.option("--out", type=click.File("w", encoding="utf-8"), default="-", help="Default: stdout.")
@pass_app
def registry_export(app: App, out) -> None:
    """Write the whole registry in the import format."""
    with app.reader() as session:
        doc = to_jsonable(export_document(session))
    yaml.safe_dump(doc, out or sys.stdout, allow_unicode=True, sort_keys=False, width=100)


def register(cli: click.Group) -> None:
    cli.add_command(registry_group)
