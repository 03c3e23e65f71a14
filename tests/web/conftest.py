"""Fixtures for the console: the auditor tests' populated store, four accounts, the ASGI app
(in-process, for route tests) and a config file (for a console started as a real process)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.web.app import create_app
from callwarden.web.users import add_user
from tests.audit.world import World, build_world

PASSWORDS = {"root": "root-secret-1", "inspector": "inspector-secret-1",
             "acme-aud": "acme-secret-1", "beta-aud": "beta-secret-1"}


@dataclass
class ConsoleWorld:
    world: World
    settings: Any
    config_file: Path

    def client(self, **web: Any) -> TestClient:
        settings = self.settings
        if web:
            settings = settings.model_copy(update={"web": settings.web.model_copy(update=web)})
        return TestClient(create_app(settings), base_url="http://testserver", follow_redirects=False)


def add_accounts(url: str) -> None:
    with unit_of_work(make_sessionmaker(make_engine(url))) as s:
        add_user(s, "test", "root", "admin", PASSWORDS["root"])
        add_user(s, "test", "inspector", "auditor", PASSWORDS["inspector"])
        add_user(s, "test", "acme-aud", "tenant-auditor", PASSWORDS["acme-aud"], tenant="acme")
        add_user(s, "test", "beta-aud", "tenant-auditor", PASSWORDS["beta-aud"], tenant="beta")


def web_config(world: World, tmp_path: Path, port: int = 8080) -> dict[str, Any]:
    return {"store": {"url": world.url}, "logging": {"format": "console", "level": "warning"},
            "recording": {"dir": world.settings.recording.dir, "encryption": {"key_file": str(world.key_file)}},
            "web": {"host": "127.0.0.1", "port": port, "session_secret_file": str(tmp_path / "session.key")}}


@pytest.fixture
def cw(seeded_url, make_settings, tmp_path) -> ConsoleWorld:
    world = build_world(seeded_url, make_settings, tmp_path)
    add_accounts(seeded_url)
    data = web_config(world, tmp_path)
    path = tmp_path / "callwarden.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    from callwarden.config import parse_settings

    return ConsoleWorld(world, parse_settings(data), path)


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(client: TestClient, path: str = "/login") -> str:
    r = client.get(path)
    m = CSRF.search(r.text)
    assert m, f"no CSRF token on {path}"
    return m.group(1)


def login(client: TestClient, user: str, password: str | None = None) -> Any:
    token = csrf_of(client)
    return client.post("/login", data={"username": user, "password": password or PASSWORDS[user],
                                       "csrf_token": token, "next": "/calls"})


@pytest.fixture
def as_user(cw: ConsoleWorld):
    """``as_user("inspector")`` -> a signed-in TestClient."""

    def make(user: str) -> TestClient:
        c = cw.client()
        r = login(c, user)
        assert r.status_code == 303, r.text
        return c

    return make
