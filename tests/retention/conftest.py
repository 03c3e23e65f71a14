"""A call-center site for retention tests: store (SQLite and PostgreSQL), settings, CLI, calls.

Calls are put in the store the way ``Enforcer.decide`` does (a CDR and a ``recording`` row
whose spool path comes from ``recorder.naming``); the PBX's part, writing the spool file, is
done with a real WAV file; finalization, purge and verify run the production code.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import func, select

from callwarden.cli.main import cli
from callwarden.config import Settings, parse_settings
from callwarden.recorder import recording_relpath, spool_path
from callwarden.service.enforcer import Enforcer
from callwarden.store.audit import verify_chain
from callwarden.store.db import unit_of_work
from callwarden.store.models import AuditEntry, Call, Recording, utcnow
from tests.conftest import seed
from tests.recorder.conftest import s3_client, s3_endpoint, write_wav  # noqa: F401 (fixtures)

KEY_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
OTHER_KEY_HEX = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
NOW = utcnow().replace(microsecond=0)
DAY = dt.timedelta(days=1)


class Site:
    """One store + recording dir + config file, and helpers to make calls and inspect them."""

    def __init__(self, url: str, tmp_path: Path, data: dict[str, Any]) -> None:
        self.url, self.tmp_path, self.data = url, tmp_path, data
        self.settings: Settings = parse_settings(data)
        self.config = tmp_path / f"cw-{uuid.uuid4().hex[:6]}.yaml"
        self.config.write_text(yaml.safe_dump(data))
        self.enforcer = Enforcer(self.settings)
        self.sessions = self.enforcer.sessions
        self.recordings = self.enforcer.recordings
        self.dir = Path(self.settings.recording.dir)
        self.store = self.dir / "store"

    # -- making calls ---------------------------------------------------------------------------

    def call(self, *, tenant: str = "acme", caller: str = "95512", callee: str = "13800138000",
             attempted: dt.datetime | None = None, ended: dt.datetime | None = None,
             answered: bool = True, seconds: float = 1.0, write: bool | str = True,
             age_s: float = 30.0, consent_id: int | None = None) -> str:
        """An allowed outbound call with a recording row; its spool WAV is written unless
        ``write`` is False (``"empty"``: a zero-byte file), aged ``age_s`` seconds."""
        call_id = uuid.uuid4().hex
        attempted = attempted or (ended - dt.timedelta(minutes=3) if ended else NOW)
        relpath = recording_relpath(tenant, call_id, attempted)
        spool = spool_path(self.settings.recording.dir, relpath)
        with unit_of_work(self.sessions) as s:
            call = Call(call_id=call_id, tenant_id=tenant, direction="outbound", pbx="asterisk",
                        pbx_call_id=f"pbx-{call_id[:8]}", caller=caller, callee=callee,
                        party=callee, attempted_at=attempted, ended_at=ended,
                        answered_at=attempted + dt.timedelta(seconds=5) if answered else None,
                        billsec=120 if answered else 0, decision="allow", reasons="",
                        consent_id=consent_id)
            rec = Recording(call_id=call_id, tenant_id=tenant, status="recording",
                            spool_path=str(spool), started_at=attempted)
            s.add_all([call, rec])
            s.flush()
            call.recording_id = rec.id
        if write == "empty":
            spool.parent.mkdir(parents=True, exist_ok=True)
            spool.touch()
        elif write:
            write_wav(spool, seconds)
        if write:
            old = time.time() - age_s
            os.utime(spool, (old, old))
        return call_id

    def stored_call(self, **kw: Any) -> str:
        """A call whose recording went through finalization and is stored."""
        call_id = self.call(**kw)
        result = self.recordings.finalize(call_id, wait_s=0)
        assert result.outcome == "stored", result
        return call_id

    # -- looking ------------------------------------------------------------------------------

    def rec(self, call_id: str) -> Recording | None:
        with self.sessions() as s:
            return s.scalars(select(Recording).where(Recording.call_id == call_id)).first()

    def cdr(self, call_id: str) -> Call | None:
        with self.sessions() as s:
            return s.get(Call, call_id)

    def entries(self, action: str, subject: str | None = None) -> list[AuditEntry]:
        q = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
        if subject is not None:
            q = q.where(AuditEntry.subject == subject)
        with self.sessions() as s:
            return list(s.scalars(q))

    def count(self, model: type, *where: Any) -> int:
        with self.sessions() as s:
            return s.scalar(select(func.count()).select_from(model).where(*where)) or 0

    def chain_ok(self) -> bool:
        with self.sessions() as s:
            return verify_chain(s) == []

    def file(self, call_id: str) -> Path:
        rec = self.rec(call_id)
        assert rec is not None and rec.location and rec.location.startswith("file:")
        return self.store / rec.location.removeprefix("file:")

    # -- the command line -----------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``callwarden --config <this site> ARGS`` in-process; exit code and streams."""
        r = CliRunner().invoke(cli, ["--config", str(self.config), "--actor", "tester", *args],
                               catch_exceptions=False)
        return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)

    def cli_json(self, *args: str) -> tuple[int, Any]:
        p = self.cli(*args, "--json")
        return p.returncode, json.loads(p.stdout)


@pytest.fixture
def make_site(store_url: str, tmp_path: Path) -> Callable[..., Site]:
    """``make_site(retention=..., recording=...)``: a seeded site on this test's store."""
    seed(store_url)
    made: list[Site] = []

    def build(**overrides: Any) -> Site:
        recording = {"dir": str(tmp_path / "rec"), "settle_s": 0.5, "finalize_wait_s": 0.5}
        recording.update(overrides.pop("recording", {}))
        data: dict[str, Any] = {
            "store": {"url": store_url},
            "recording": recording,
            "retention": {"recordings_days": 30, "cdr_days": 30, "consent_days": 30},
            "logging": {"format": "console", "level": "warning"},
        }
        data.update(overrides)
        site = Site(store_url, tmp_path, data)
        made.append(site)
        return site

    yield build
    for site in made:
        site.enforcer.engine.dispose()


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()


def key_file(tmp_path: Path, hex_text: str = KEY_HEX, name: str = "rec.key") -> str:
    path = tmp_path / name
    path.write_text(hex_text)
    return str(path)
