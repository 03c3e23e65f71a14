"""``callwarden users ...`` and the ``web:`` config section."""

from __future__ import annotations

import json

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from callwarden.config import ConfigError, parse_settings
from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.models import AuditEntry, User
from tests.conftest import cli_invoker


def _user(url: str, name: str) -> User | None:
    with make_sessionmaker(make_engine(url))() as s:
        return s.scalar(select(User).where(User.username == name))


def _actions(url: str) -> list[tuple[str, str, str | None]]:
    with make_sessionmaker(make_engine(url))() as s:
        return [(e.actor, e.action, e.subject) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.seq))
                if e.action.startswith("users.")]


def test_users_add_disable_passwd_list(seeded_url, tmp_path):
    run = cli_invoker(seeded_url, tmp_path)
    r = run("users", "add", "alice", "--role", "auditor", "--generate")
    assert r.returncode == 0, r.stderr
    password = r.stdout.split("password: ", 1)[1].split()[0]
    u = _user(seeded_url, "alice")
    assert u is not None and u.role == "auditor" and u.tenant_id is None
    assert u.password_hash.startswith("$argon2id$") and password not in u.password_hash
    assert PasswordHasher().verify(u.password_hash, password)
    r = run("users", "add", "alice", "--role", "auditor", "--generate", "--if-missing")
    assert r.returncode == 0 and "password:" not in r.stdout
    r = run("users", "disable", "alice")
    assert r.returncode == 0 and _user(seeded_url, "alice").disabled
    r = run("users", "enable", "alice")
    assert r.returncode == 0 and not _user(seeded_url, "alice").disabled
    r = run("users", "passwd", "alice", "--generate")
    new = r.stdout.split("password: ", 1)[1].split()[0]
    assert PasswordHasher().verify(_user(seeded_url, "alice").password_hash, new)
    r = run("users", "list", "--json")
    rows = json.loads(r.stdout)
    assert [x["username"] for x in rows] == ["alice"] and "password_hash" not in rows[0]
    assert _actions(seeded_url) == [("tester", "users.created", "alice"), ("tester", "users.disabled", "alice"),
                                    ("tester", "users.enabled", "alice"), ("tester", "users.password", "alice")]


@pytest.mark.parametrize("args, message", [
    (["bob", "--role", "tenant-auditor"], "a tenant-auditor needs --tenant"),
    (["bob", "--role", "tenant-auditor", "--tenant", "nobody"], "unknown tenant 'nobody'"),
    (["bob", "--role", "auditor", "--tenant", "acme"], "only a tenant-auditor"),
    (["b b", "--role", "auditor"], "username:"),
])
def test_users_add_refuses_bad_input(seeded_url, tmp_path, args, message):
    run = cli_invoker(seeded_url, tmp_path)
    r = run("users", "add", *args, "--generate")
    assert r.returncode == 1 and message in r.stderr and "nothing was changed" in r.stderr
    assert _actions(seeded_url) == []


def test_short_password_refused(sqlite_url, tmp_path):
    from click.testing import CliRunner

    from callwarden.cli.main import cli

    run = cli_invoker(sqlite_url, tmp_path)
    run("users", "list")  # writes the config file
    r = CliRunner().invoke(cli, ["--config", str(tmp_path / "cw.yaml"), "users", "add", "carol", "--role",
                                 "admin", "--password-stdin"], input="short\n")
    assert r.exit_code == 1 and "at least 10 characters" in r.stderr
    assert _user(sqlite_url, "carol") is None


def test_unknown_user(sqlite_url, tmp_path):
    run = cli_invoker(sqlite_url, tmp_path)
    r = run("users", "disable", "ghost")
    assert r.returncode == 1 and "unknown user 'ghost'" in r.stderr


def test_web_config_section():
    s = parse_settings({"web": {"port": 9000, "allowed_origins": ["https://audit.example.com"]}})
    assert s.web is not None and s.web.port == 9000 and s.web.idle_timeout_minutes == 30
    assert parse_settings({}).web is None
    with pytest.raises(ConfigError, match="allowed_origins"):
        parse_settings({"web": {"allowed_origins": ["https://x.example/path"]}})
    with pytest.raises(ConfigError, match="web"):
        parse_settings({"web": {"prot": 1}})
