"""`callwarden demo`, run the way a new user runs it: a real process, no config, a deadline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from callwarden.store.models import Call, Recording

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {  # scenario -> the reason code its denial must carry (None: allowed)
    "Allowed": None, "Masked caller ID": "CID_HIDDEN", "Marketing campaign": "CAMPAIGN_MARKETING",
    "Quiet hours": "QUIET_HOURS", "No consent": "NO_CONSENT",
}


def run_demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CALLWARDEN_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "callwarden.cli.main", "demo", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


def blocks(stdout: str) -> dict[str, list[str]]:
    """Scenario title prefix -> its output lines."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.splitlines():
        m = re.match(r"^\d\. (.+?):", line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif current is not None and line.startswith("   "):
            current.append(line.strip())
    return out


def test_demo_runs_to_completion_and_prints_each_decision(tmp_path) -> None:
    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10 of 10 decisions as expected" in proc.stdout
    assert "NOT AS EXPECTED" not in proc.stdout
    found = blocks(proc.stdout)
    assert set(found) == set(EXPECTED)
    for title, code in EXPECTED.items():
        lines = found[title]
        for pbx, recorded in (("Asterisk", "MixMonitor started"),
                              ("FreeSWITCH", "record_session started")):
            index = next(i for i, line in enumerate(lines) if line.startswith(pbx))
            verdict, action = lines[index], lines[index + 1]
            if code is None:
                assert verdict.split() == [pbx, "allow"] and recorded in action
            else:
                assert verdict.split()[:2] == [pbx, "deny"] and code in verdict.split()
                assert action.startswith("hung up by callwarden")
        if code is not None:
            assert any(line.startswith(f"{code} (§") for line in lines), lines
    # numbers are personal data: the demo shows them masked
    assert "13800138000" not in proc.stdout and "138****8000" in proc.stdout
    # and it cleans up after itself
    assert not any(tmp_path.iterdir())


def test_demo_observe_mode_keeps_a_verifiable_store(tmp_path) -> None:
    work = tmp_path / "demo"
    proc = run_demo(tmp_path, "--observe", "--dir", str(work))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("deny (observe: let through)") == 8
    engine = create_engine(f"sqlite:///{work / 'demo.db'}")
    try:
        with Session(engine) as s:
            calls = s.scalars(select(Call)).all()
            recordings = s.scalars(select(Recording)).all()
    finally:
        engine.dispose()
    assert len(calls) == 10 and {c.pbx for c in calls} == {"asterisk", "freeswitch"}
    assert sum(c.decision == "deny" for c in calls) == 8
    assert all(c.enforced is False and c.ended_at is not None for c in calls)
    assert len(recordings) == 10 and all(r.status == "stored" and r.sha256 for r in recordings)
    verify = subprocess.run(
        [sys.executable, "-m", "callwarden.cli.main", "--config", str(work / "callwarden.yaml"),
         "verify"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert verify.returncode == 0, verify.stdout + verify.stderr
