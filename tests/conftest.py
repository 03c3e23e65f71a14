"""Shared fixtures: a migrated store on SQLite and on the real PostgreSQL, settings, seed data.

PostgreSQL: $CALLWARDEN_TEST_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test);
each test gets its own schema, dropped afterwards. When PostgreSQL is unreachable the PG
variants are skipped locally, but fail under CI=true (CI has PostgreSQL, so a skip would hide
a broken store).
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import subprocess
import tempfile
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from sqlalchemy import Engine, create_engine, event, text

from callwarden.audit.pseudonym import KEY_ENV, create_key, ensure_store_key
from callwarden.config import Settings, parse_settings
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.store.migrate import upgrade
from callwarden.store.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "tests" / "sim" / "captures"  # protocol captures from real PBXes (README there)
# One audit key for the session's stores (each records its fingerprint); subprocesses inherit
# it. A test about the key gives its own with audit.key_file, which comes first. (This module
# is imported twice, as `conftest` and `tests.conftest`: the first one makes the key.)
if not os.environ.get(KEY_ENV):
    os.environ[KEY_ENV] = str(create_key(Path(tempfile.mkdtemp(prefix="cw-audit-key-")) / "audit.key").path)
EXAMPLE_CONFIG = ROOT / "config" / "callwarden.example.yaml"
EXAMPLE_REGISTRY = ROOT / "config" / "registry.example.yaml"
PG_URL = os.environ.get("CALLWARDEN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CST = dt.timezone(dt.timedelta(hours=8))


def at(text_: str) -> dt.datetime:
    """'2026-03-02 10:00' in China time."""
    return dt.datetime.fromisoformat(text_).replace(tzinfo=CST)


def _pg_available() -> bool:
    try:
        with create_engine(PG_URL, connect_args={"connect_timeout": 2}).connect() as c:
            c.execute(text("select 1"))
        return True
    except Exception:
        return False


_PG_OK: bool | None = None


@contextmanager
def migrated_store(kind: str, directory: Path) -> Iterator[str]:
    """The URL of a migrated, empty store: a SQLite file in ``directory``, or a PostgreSQL
    schema of its own, dropped on exit (skipped when PostgreSQL is unreachable, failed
    under CI)."""
    global _PG_OK
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'callwarden.db'}"
        migrate(url)
        yield url
        return
    if _PG_OK is None:
        _PG_OK = _pg_available()
    if not _PG_OK:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not reachable at {PG_URL} (required under CI)")
        pytest.skip("PostgreSQL not reachable")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(PG_URL)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        migrate(url)
        yield url
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def migrate(url: str) -> None:
    """Migrate the store at ``url`` and record the session's audit key in it (db upgrade)."""
    engine = make_engine(url)
    upgrade(engine)
    ensure_store_key(parse_settings({"store": {"url": url}}), engine)
    engine.dispose()


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """A test that runs the CLI in process configures logging for the whole process (level
    ``warning``, its runner's stream): put it back afterwards, or a later test's
    ``capture_logs()`` misses the info events it asserts on, depending on test order."""
    config, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


@event.listens_for(Engine, "engine_connect")
def _seen(connection) -> None:
    _ENGINES.add(connection.engine)


@pytest.fixture(autouse=True)
def _pooled_connections_closed() -> Iterator[None]:
    """Close the pooled connections of engines a test left behind (tests often build
    ``make_sessionmaker(make_engine(url))`` in place). They would otherwise stay open until the
    garbage collector finds the engine: on PostgreSQL a few test files' worth reach the
    server's max_connections (100) and fail later tests with "too many clients"; on SQLite each
    holds three file descriptors, and past 1,024 of them ``select()`` fails in later tests.
    (In-memory SQLite is left alone: closing its connection would drop the database.)"""
    before = set(_ENGINES)
    yield
    for engine in set(_ENGINES) - before:
        if engine.url.database not in (None, "", ":memory:"):
            engine.dispose()


@pytest.fixture
def steady_heap() -> Iterator[None]:
    """For a test that holds work done in this process to the product's 500 ms decision
    deadline (a burst through a simulator that lives here, a detector pass, deciding while an
    import runs): the suite's own garbage is collected first and the rest frozen out of the
    collector until the test ends.

    The suite's heap grows test after test; measured late in a run, one full collection of it
    stopped every thread of this process for 0.6-1.3 s. Forced during the ESL burst, a 0.75 s
    collection denied 2 and 6 of 100 calls POLICY_UNAVAILABLE: the simulated FreeSWITCH and
    the detector stood still, not the adapter. The servers freeze their start-up heap likewise
    (``gc.freeze`` in the adapters), so this is the condition they run in."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> Iterator[str]:
    """A migrated, empty store; runs each test once per backend."""
    with migrated_store(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> Iterator[str]:
    with migrated_store("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def postgresql_url(tmp_path) -> Iterator[str]:
    """A migrated PostgreSQL schema of its own, for tests about PostgreSQL alone (its locks)."""
    with migrated_store("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def make_settings(tmp_path) -> Callable[..., Settings]:
    """Settings for a store URL with overrides: ``make_settings(url, mode="observe")``."""

    def build(url: str, **overrides: Any) -> Settings:
        # decision_timeout_ms: generous unless a test is about the deadline, so that a loaded
        # CI host cannot turn a cold first commit into POLICY_UNAVAILABLE in a test of
        # something else
        data: dict[str, Any] = {"store": {"url": url}, "recording": {"dir": str(tmp_path / "rec")},
                                "logging": {"format": "console", "level": "warning"},
                                "decision_timeout_ms": 5000}
        data.update(overrides)
        return parse_settings(data)

    return build


def seed(url: str, doc: dict | None = None) -> None:
    """Import a registry document (default: config/registry.example.yaml)."""
    if doc is None:
        doc = yaml.safe_load(EXAMPLE_REGISTRY.read_text(encoding="utf-8"))
    with unit_of_work(make_sessionmaker(make_engine(url))) as s:
        Registry(s, "test").import_document(doc)


@pytest.fixture
def seeded_url(store_url) -> str:
    seed(store_url)
    return store_url


def cli_invoker(url: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``callwarden --config <tmp config for url> ARGS`` in-process (click's runner)."""
    from click.testing import CliRunner

    from callwarden.cli.main import cli

    cfg = tmp_path / "cw.yaml"
    cfg.write_text(yaml.safe_dump({"store": {"url": url}, "recording": {"dir": str(tmp_path / "rec")},
                                   "logging": {"format": "console", "level": "warning"}}))
    runner = CliRunner()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        r = runner.invoke(cli, ["--config", str(cfg), "--actor", "tester", *args], catch_exceptions=False)
        return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)

    return run
