"""The bench scripts the README quotes figures from still start, and one of them runs whole.

No figure is checked here (speed is for bench/ itself): only that a script's imports and
arguments hold as the code under them changes, so that the documented commands reproduce.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_bench_script_starts(script: str) -> None:
    p = _run(f"bench/{script}", "--help", timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage:" in p.stdout


def test_bench_beside_runs_every_job(tmp_path: Path) -> None:
    """A tiny store, every job through the real CLI in its own process, decisions beside."""
    p = _run("bench/bench_beside.py", "--backends", "sqlite", "--held", "40", "--purgeable", "6",
             "--consents", "12", "--baseline-seconds", "0.3", "--every", "20", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines()
            if line.split() and line.split()[0] in ("none", "purge", "consents", "police", "verify")}
    assert set(rows) == {"none", "purge", "consents", "police", "verify"}, p.stdout
    for job in ("purge", "consents", "police"):
        assert rows[job][2:4] == ["exit", "0"], rows[job]  # the job itself succeeded
    assert rows["verify"][2:4] == ["exit", "1:"]  # it reports the bench's never-ended calls
    assert all(int(row[-5]) > 0 for row in rows.values())  # calls were decided meanwhile
