"""``callwarden users add|disable|enable|passwd|list``: web console accounts (argon2 hashes).

Passwords come from a prompt, from standard input (``--password-stdin``, for scripts) or are
generated (``--generate``) and printed once. Every change is audit-logged with ``--actor``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from callwarden.cli.app import App, pass_app
from callwarden.cli.output import emit
from callwarden.store.models import User
from callwarden.web.users import (
    ROLES,
    UserError,
    add_user,
    generate_password,
    list_users,
    set_disabled,
    set_password,
)


def _password(stdin: bool, generate: bool) -> tuple[str, bool]:
    if stdin and generate:
        raise click.UsageError("--password-stdin and --generate are exclusive")
    if generate:
        return generate_password(), True
    if stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return click.prompt("password", hide_input=True, confirmation_prompt=True), False


def _change(app: App, fn: Callable[[Session], object]) -> None:
    """One change in one unit of work; a UserError exits 1 with nothing changed."""
    try:
        with app.session() as s:
            fn(s)
    except UserError as exc:
        click.echo(f"error: {exc} (nothing was changed)", err=True)
        raise SystemExit(1) from None


password_opts = [
    click.option("--password-stdin", "stdin", is_flag=True, help="Read the password from standard input."),
    click.option("--generate", is_flag=True, help="Generate a password and print it once."),
]


def _with_password_opts(f):  # type: ignore[no-untyped-def]
    for opt in reversed(password_opts):
        f = opt(f)
    return f


@click.group("users")
def users_group() -> None:
    """Web console accounts: admin, auditor (all tenants), tenant-auditor (one tenant)."""


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--tenant", help="The one tenant a tenant-auditor sees.")
@click.option("--if-missing", is_flag=True, help="Do nothing (exit 0) if the user exists already.")
@_with_password_opts
@pass_app
def users_add(app: App, username: str, role: str, tenant: str | None, if_missing: bool, stdin: bool,
              generate: bool) -> None:
    """Create an account."""
    if if_missing:
        with app.reader() as s:
            if s.scalar(select(User.id).where(User.username == username)) is not None:
                click.echo(f"user {username} exists already (its password is not shown again)")
                return
    password, show = _password(stdin, generate)
    _change(app, lambda s: add_user(s, app.actor, username, role, password, tenant))
    click.echo(f"user {username} created, role {role}" + (f", tenant {tenant}" if tenant else ""))
    if show:
        click.echo(f"password: {password}   (shown once; change it with `callwarden users passwd {username}`)")


def _toggle(name: str, disabled: bool, doc: str) -> click.Command:
    @users_group.command(name, help=doc)
    @click.argument("username")
    @pass_app
    def cmd(app: App, username: str) -> None:
        _change(app, lambda s: set_disabled(s, app.actor, username, disabled))
        click.echo(f"user {username} {'disabled' if disabled else 'enabled'}")

    return cmd


_toggle("disable", True, "Disable an account: it can no longer sign in, its sessions end.")
_toggle("enable", False, "Enable a disabled account again.")


@users_group.command("passwd")
@click.argument("username")
@_with_password_opts
@pass_app
def users_passwd(app: App, username: str, stdin: bool, generate: bool) -> None:
    """Set an account's password."""
    password, show = _password(stdin, generate)
    _change(app, lambda s: set_password(s, app.actor, username, password))
    click.echo(f"password of {username} changed")
    if show:
        click.echo(f"password: {password}   (shown once)")


@users_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def users_list(app: App, as_json: bool) -> None:
    """Every account (never its hash)."""
    with app.reader() as s:
        rows = [{"username": u.username, "role": u.role, "tenant": u.tenant_id, "disabled": u.disabled,
                 "created_at": u.created_at, "last_login_at": u.last_login_at} for u in list_users(s)]
    emit(rows, ["username", "role", "tenant", "disabled", "created_at", "last_login_at"], as_json)


def register(cli: click.Group) -> None:
    cli.add_command(users_group)
