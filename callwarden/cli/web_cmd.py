"""``callwarden web``: serve the web console (also started by ``callwarden serve`` when the
config has a ``web:`` section)."""

from __future__ import annotations

import click
from sqlalchemy import func, select

from callwarden.cli.app import App, pass_app
from callwarden.cli.serve import _schema_ready
from callwarden.store.models import User


@click.command("web")
@click.option("--host", help="Listen address (default: web.host, else 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: web.port, else 8080).")
@pass_app
def web_cmd(app: App, host: str | None, port: int | None) -> None:
    """Serve the web console (auditors, admins, tenant-auditors) until stopped."""
    from callwarden.config.model import WebConfig
    from callwarden.web.serving import address, run

    _schema_ready(app)
    settings = app.settings
    web = settings.web or WebConfig()
    over = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update={"web": web.model_copy(update=over)})
    click.echo(f"web console on {address(settings)}", err=True)
    with app.reader() as s:
        if s.scalar(select(func.count()).select_from(User)) == 0:
            click.echo("no accounts yet: create one with `callwarden users add NAME --role admin --generate`",
                       err=True)
    run(settings)


def register(cli: click.Group) -> None:
    cli.add_command(web_cmd)
