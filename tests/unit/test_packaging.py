"""The package as pip installs it from a wheel (the Docker image does), not as the editable
checkout the tests otherwise run: every file of ``callwarden/`` must be in it. (The migrations'
``env.py`` once was not: an installed callwarden could not create its store.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What docker/Dockerfile copies in before ``pip install``.
SOURCES = ("setup.cfg", "pyproject.toml", "README.md")


def test_the_wheel_holds_every_file_of_the_package(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a clean copy: an in-tree build would reuse build/ and egg-info
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "callwarden", src / "callwarden",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path / "dist"), str(src)],
                   check=True, timeout=300, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("callwarden-*.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    package = {p.relative_to(src).as_posix() for p in (src / "callwarden").rglob("*") if p.is_file()}
    assert "callwarden/store/migrations/env.py" in package
    missing = sorted(package - in_wheel)
    assert not missing, f"not in the wheel: {missing}"
