"""A small, realistic store for auditor tests: CDRs made by the Enforcer, recordings finalized
into local storage (some encrypted), an observe-mode night, a suspension and an alert.

Figures the tests rely on are listed in ``World`` (labels -> call ids) and in the docstring of
``build_world``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import struct
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from callwarden.config import Settings
from callwarden.policy import CallAttempt
from callwarden.recorder import LocalStorage, finalize, load_key, store_root
from callwarden.service.enforcer import CallEnd, Enforcer, InboundCall
from callwarden.store import audit
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.store.models import Alert, Recording
from tests.conftest import at

KEY_HEX = "11" * 32


def write_wav(path: Path, seconds: float, freq: int = 440, rate: int = 8000) -> Path:
    """A mono 16-bit tone; ``freq`` varies so no two recordings are identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate)))
                      for i in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


@dataclass
class World:
    url: str
    settings: Settings
    observe_settings: Settings
    key_file: Path
    calls: dict[str, str] = field(default_factory=dict)  # label -> call id
    recordings: dict[str, Path] = field(default_factory=dict)  # label -> plaintext copy

    @property
    def storage(self) -> LocalStorage:
        return LocalStorage(store_root(self.settings.recording.dir))


def settings_for(make_settings: Any, url: str, tmp_path: Path, **kw: Any) -> tuple[Settings, Path]:
    key_file = tmp_path / "recording.key"
    key_file.write_text(KEY_HEX)
    return make_settings(url, recording={"dir": str(tmp_path / "rec"), "encryption": {"key_file": str(key_file)}},
                         **kw), key_file


def record(e: Enforcer, world: World, label: str, call_id: str, relpath: str, seconds: float,
           encrypt: bool, freq: int) -> None:
    """Write the PBX's spool file and finalize it as the recorder would."""
    src = write_wav(Path(world.settings.recording.dir) / "spool" / relpath, seconds, freq)
    keep = Path(world.settings.recording.dir) / "plain" / f"{label}.wav"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_bytes(src.read_bytes())
    world.recordings[label] = keep
    key = load_key(world.key_file) if encrypt else None
    fin = finalize(src, storage=world.storage, relpath=relpath, retain_until=at("2026-09-01 00:00"), key=key)
    with unit_of_work(e.sessions) as s:
        r = s.scalars(select(Recording).where(Recording.call_id == call_id)).one()
        r.status, r.location, r.sha256, r.size = "stored", fin.location, fin.sha256, fin.size
        r.duration_s, r.encrypted, r.key_id = fin.duration_s, fin.encrypted, fin.key_id
        r.finalized_at = at("2026-03-10 00:00")


def outbound(e: Enforcer, world: World, label: str, when: str, callee: str, *, tenant: str = "acme",
             caller: str = "95512", trunk: str = "ct-trunk-1", answered_s: int | None = None,
             rec_seconds: float = 0.5, encrypt: bool = False, finalized: bool = True, **kw: Any) -> str:
    pbx_id = f"pbx-{label}"
    out = e.decide(CallAttempt(tenant=tenant, caller=caller, callee=callee, at=at(when), trunk=trunk,
                               pbx="asterisk", pbx_call_id=pbx_id, **kw))
    world.calls[label] = out.call_id
    if out.let_through:
        start = at(when)
        answered = start + dt.timedelta(seconds=5) if answered_s is not None else None
        end = (answered or start) + dt.timedelta(seconds=answered_s or 20)
        e.call_ended(CallEnd("asterisk", pbx_id, end, answered, answered_s or 0,
                             "ANSWERED" if answered_s is not None else "NO ANSWER", "NORMAL_CLEARING"))
        if finalized:
            record(e, world, label, out.call_id, out.recording_relpath, rec_seconds, encrypt,
                   freq=300 + 7 * len(world.calls))
    return out.call_id


def build_world(url: str, make_settings: Any, tmp_path: Path) -> World:
    """Calls, all in March 2026, China time (config default per_day 2, window 08:00-21:00).

    acme (outbound, enforced):
      a1  03-02 10:00 -> 13800138000  allow (consent), answered 60 s, recording (plain)
      a2  03-02 11:00 -> 13800138000  allow (consent), answered 30 s, recording (encrypted)
      a3  03-02 12:00 -> 13800138000  deny FREQUENCY_EXCEEDED
      a4  03-02 22:30 -> 13800138000  deny QUIET_HOURS (+ FREQUENCY_EXCEEDED)
      a5  03-03 10:00 -> 13900139000  deny CALLEE_REFUSED, NO_CONSENT
      in1 03-03 11:00 <- 13600136000  inbound
      a6  03-03 11:30 -> 13600136000  allow (inbound-callback), not answered, recording (plain)
      a7  03-04 10:00 -> 13900139001  allow (consent, consultation), not answered, recording never
                                      finalized (status still "recording")
    acme observe mode:
      o1  03-05 22:00 -> 13800138000  deny QUIET_HOURS, not enforced, let through, answered 10 s,
                                      recording (plain)
    beta:
      b1  03-02 10:00 01058001234 -> 13800138000 via cm-trunk-9: deny TRUNK_UNVERIFIED, NO_CONSENT
    Audit log: acme suspended 03-06 09:00 and resumed 03-06 15:00; one risk_suspend alert 03-06.
    """
    settings, key_file = settings_for(make_settings, url, tmp_path)
    observe, _ = settings_for(make_settings, url, tmp_path, mode="observe")
    world = World(url, settings, observe, key_file)
    e = Enforcer(settings)
    outbound(e, world, "a1", "2026-03-02 10:00", "13800138000", answered_s=60, rec_seconds=1.0)
    outbound(e, world, "a2", "2026-03-02 11:00", "13800138000", answered_s=30, encrypt=True, rec_seconds=0.7)
    outbound(e, world, "a3", "2026-03-02 12:00", "13800138000")
    outbound(e, world, "a4", "2026-03-02 22:30", "13800138000")
    outbound(e, world, "a5", "2026-03-03 10:00", "13900139000")
    world.calls["in1"] = e.log_inbound(InboundCall("acme", "13600136000", "95512", at("2026-03-03 11:00"),
                                                   "asterisk", "pbx-in1"))
    outbound(e, world, "a6", "2026-03-03 11:30", "13600136000", purpose="callback")
    outbound(e, world, "a7", "2026-03-04 10:00", "13900139001", purpose="consultation", finalized=False)
    outbound(Enforcer(observe, e.engine), world, "o1", "2026-03-05 22:00", "13800138000", answered_s=10)
    outbound(e, world, "b1", "2026-03-02 10:00", "13800138000", tenant="beta", caller="01058001234",
             trunk="cm-trunk-9")
    with unit_of_work(make_sessionmaker(make_engine(url))) as s:
        audit.append(s, "ops", "tenants.status", "acme", {"from": "active", "to": "suspended",
                                                          "reason": "complaints"}, at=at("2026-03-06 09:00"))
        audit.append(s, "ops", "tenants.status", "acme", {"from": "suspended", "to": "active",
                                                          "reason": "remediated"}, at=at("2026-03-06 15:00"))
        s.add(Alert(dedup_key="acme:risk:2026-03-06", tenant_id="acme", kind="risk_suspend", level="suspend",
                    score=0.93, details='{"calls": 12}', raised_at=at("2026-03-06 08:55")))
    os.environ.pop("CALLWARDEN_TENANT_SCOPE", None)
    return world
