"""Fixtures for the auditor tests: a populated store on SQLite and PostgreSQL, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from callwarden.cli.main import cli
from tests.audit.world import World, build_world


@pytest.fixture
def world(seeded_url, make_settings, tmp_path) -> World:
    return build_world(seeded_url, make_settings, tmp_path)


@pytest.fixture
def config_file(world: World, tmp_path: Path) -> Path:
    """The world's settings as a config file, for the CLI."""
    path = tmp_path / "callwarden.yaml"
    data = {"store": {"url": world.url}, "logging": {"format": "console", "level": "warning"},
            "recording": {"dir": world.settings.recording.dir, "encryption": {"key_file": str(world.key_file)}}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def run(config_file: Path, monkeypatch):
    """``run("audit", "search", ...)`` -> click Result, as actor 'inspector'."""
    monkeypatch.delenv("CALLWARDEN_TENANT_SCOPE", raising=False)

    def invoke(*args: str, actor: str = "inspector", env: dict[str, str] | None = None):
        return CliRunner().invoke(cli, ["--config", str(config_file), "--actor", actor, *args],
                                  env=env, catch_exceptions=False)

    return invoke
