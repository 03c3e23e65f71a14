"""Shared state of one CLI invocation: the config file, loaded once, and store access."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from callwarden import log
from callwarden.audit.pseudonym import AuditKey, AuditKeyError, open_store_key
from callwarden.audit.snapshot import snapshot
from callwarden.config import ConfigError, Settings, load_settings
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work

EXIT_DENY = 3
EXIT_CONFIG = 2


class App:
    def __init__(self, config_path: str | None, actor: str):
        self.config_path = config_path
        self.actor = actor

    @cached_property
    def settings(self) -> Settings:
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(EXIT_CONFIG) from None
        log.configure("console" if settings.logging.format == "console" else "json",
                      settings.logging.level)
        return settings

    @cached_property
    def raw_engine(self) -> Engine:
        """The administrator's engine: no decision deadline, long imports allowed."""
        return make_engine(self.settings.store.url)

    @cached_property
    def engine(self) -> Engine:
        """:attr:`raw_engine`, once the audit key has been checked against the store (every
        command that writes or searches audit entries needs it; ``db`` commands do not)."""
        engine = self.raw_engine
        try:
            self._audit_key = open_store_key(self.settings, engine)
        except AuditKeyError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(1) from None
        return engine

    @property
    def audit_key(self) -> AuditKey:
        """The installation's audit key, checked against the store."""
        _ = self.engine
        return self._audit_key

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work; a registry error rolls everything back."""
        with unit_of_work(make_sessionmaker(self.engine)) as session:
            yield session

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only session over one snapshot (``audit.snapshot``): on SQLite it never
        takes the write lock, so listing or checking never holds up the PBX's decisions."""
        with snapshot(self.engine) as session:
            yield session


pass_app = click.make_pass_decorator(App)
