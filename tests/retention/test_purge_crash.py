"""A `callwarden purge` process killed mid-run loses nothing that was not due; a re-run finishes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import func, insert, select, text

from callwarden.recorder import recording_relpath
from callwarden.store import audit
from callwarden.store.db import unit_of_work
from callwarden.store.models import AuditEntry, Call, Recording
from tests.retention.conftest import DAY, NOW

ROOT = Path(__file__).resolve().parents[2]
DUE, NOT_DUE = 1500, 60


def _bulk(site, n: int, ended) -> dict[str, Path]:
    """``n`` stored recordings of calls ended at ``ended``: files in storage, rows, audit entries."""
    files, calls, recs = {}, [], []
    for _ in range(n):
        call_id = uuid.uuid4().hex
        relpath = recording_relpath("acme", call_id, ended)
        path = site.store / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(256)
        path.write_bytes(data)
        files[call_id] = path
        calls.append({"call_id": call_id, "tenant_id": "acme", "direction": "outbound",
                      "pbx": "asterisk", "caller": "95512", "callee": "13800138000",
                      "attempted_at": ended, "ended_at": ended, "decision": "allow", "reasons": ""})
        recs.append({"call_id": call_id, "tenant_id": "acme", "status": "stored",
                     "location": f"file:{relpath}", "sha256": hashlib.sha256(data).hexdigest(),
                     "size": len(data), "started_at": ended, "finalized_at": ended,
                     "retain_until": ended + 30 * DAY, "encrypted": False, "legal_hold": False})
    with unit_of_work(site.sessions) as s:
        s.execute(insert(Call), calls)
        s.execute(insert(Recording), recs)
        s.execute(text("UPDATE calls SET recording_id = (SELECT id FROM recordings "
                       "WHERE recordings.call_id = calls.call_id)"))
        for r in recs:
            audit.append(s, "test", "recording_stored", r["call_id"],
                         {"location": r["location"], "sha256": r["sha256"], "size": r["size"]})
    return files


def _purge_process(site) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "callwarden.cli.main", "--config",
                             str(site.config), "--actor", "purger", "purge"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _purged_entries(site) -> int:
    with site.sessions() as s:
        return s.scalar(select(func.count()).select_from(AuditEntry)
                        .where(AuditEntry.action == "recording_purged")) or 0


def _statuses(site) -> dict[str, str]:
    with site.sessions() as s:
        return dict(s.execute(select(Recording.call_id, Recording.status)).all())


def _entries_per_call(site) -> dict[str, int]:
    with site.sessions() as s:
        return dict(s.execute(select(AuditEntry.subject, func.count())
                              .where(AuditEntry.action == "recording_purged")
                              .group_by(AuditEntry.subject)).all())


def test_killed_purge_loses_nothing_undue_and_a_rerun_completes(make_site):
    site = make_site(retention={"recordings_days": 30, "cdr_days": 3650, "consent_days": 30})
    due = _bulk(site, DUE, NOW - 100 * DAY)
    kept = _bulk(site, NOT_DUE, NOW - DAY)

    proc = _purge_process(site)
    deadline = time.monotonic() + 120
    while _purged_entries(site) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "purge finished before it could be killed"

    # after the crash: a consistent state, nothing undue touched
    statuses, entries = _statuses(site), _entries_per_call(site)
    purged = {c for c, st in statuses.items() if st == "purged"}
    purging = {c for c, st in statuses.items() if st == "purging"}
    assert 20 <= len(purged) < DUE and len(purging) <= 1
    assert entries == dict.fromkeys(purged, 1)  # exactly one audit entry per deletion, no more
    assert not any(due[c].exists() for c in purged)
    assert all(due[c].exists() for c, st in statuses.items() if c in due and st == "stored")
    assert all(statuses[c] == "stored" and path.exists() for c, path in kept.items())

    # the re-run finishes the half-done work and the rest
    rerun = _purge_process(site)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    statuses, entries = _statuses(site), _entries_per_call(site)
    assert all(statuses[c] == "purged" and not due[c].exists() for c in due)
    assert entries == dict.fromkeys(due, 1)
    assert all(statuses[c] == "stored" and path.exists() for c, path in kept.items())
    with site.sessions() as s:
        actors = set(s.scalars(select(AuditEntry.actor).where(AuditEntry.action == "recording_purged")))
    assert actors == {"purger"}
    p = site.cli("verify")
    assert p.returncode == 0, p.stdout
