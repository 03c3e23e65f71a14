"""What every request handler shares: settings, the store, recording storage and keys, templates."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from callwarden.audit.access import record_access
from callwarden.config import Settings
from callwarden.config.model import WebConfig
from callwarden.numbers import mask
from callwarden.recorder import Keyring, Storage, load_key, make_keyring, storage_from_config
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.web.ratelimit import LoginLimiter
from callwarden.web.users import Account


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """The cookie-signing secret; a missing file is created with 32 random bytes, mode 0600."""
    p = Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    text = p.read_text().strip()
    if len(text) < 32:
        raise ValueError(f"web.session_secret_file {p}: must hold at least 32 characters")
    return text.encode()


def cell(value: Any) -> str:
    """A registry value as table text: lists joined, mappings as key=value, no 'None'."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={cell(v)}" for k, v in value.items() if v is not None)
    return str(value)


@dataclass
class Console:
    settings: Settings
    engine: Engine
    web: WebConfig
    sessions: sessionmaker[Session] = field(init=False)
    storage: Storage = field(init=False)
    keyring: Keyring = field(init=False)
    templates: Environment = field(init=False)
    limiter: LoginLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.sessions = make_sessionmaker(self.engine)
        rec = self.settings.recording
        self.storage = storage_from_config(rec.storage.model_dump(), recording_dir=rec.dir)
        keys = []
        if rec.encryption is not None:
            keys.append(load_key(rec.encryption.key_file or None, rec.encryption.key_env or None))
        for k in rec.keyring:
            keys.append(load_key(k.key_file or None, k.key_env or None))
        self.keyring = make_keyring(*keys)
        self.templates = Environment(loader=PackageLoader("callwarden.web", "templates"),
                                     autoescape=select_autoescape(["html"]), trim_blocks=True,
                                     lstrip_blocks=True)
        self.templates.filters["mask"] = mask
        self.templates.filters["local"] = self.local_time
        self.templates.filters["cell"] = cell
        self.limiter = LoginLimiter(self.web.login_attempts, self.web.login_window_s)

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine | None = None) -> Console:
        return cls(settings, engine or make_engine(settings.store.url), settings.web or WebConfig())

    def local_time(self, t: Any) -> str:
        if t is None:
            return "—"
        return t.astimezone(self.settings.tz).strftime("%Y-%m-%d %H:%M:%S")

    @contextmanager
    def unit(self) -> Iterator[Session]:
        with unit_of_work(self.sessions) as s:
            yield s

    def audit(self, account: Account, action: str, subject: str | None, details: dict[str, Any]) -> None:
        """One audit-log entry naming the signed-in user (the same append the CLI uses)."""
        with self.unit() as s:
            record_access(s, account.scope(), action, subject, {"via": "web", "role": account.role, **details})
