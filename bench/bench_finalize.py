"""Benchmark: finalize throughput into LocalStorage, plain and encrypted, against file copies.

Creates N synthetic WAV files of a given size in a temp dir, then in each round measures, on
the same disk and the same bytes:

  copyfile          shutil.copyfile of every file (the baseline asked for)
  copyfile+fsync    the same, plus an fsync per file (finalize makes each copy durable)
  finalize          callwarden.recorder.finalize into LocalStorage (sha256 + durable put)
  finalize+aes      the same with AES-256-GCM encryption at rest

Each round runs every mode once, in the same order, on fresh spool files (hard links to the
templates, so all modes read the same cached bytes). The median round is reported. Nothing
asserts on time: this prints figures only.

    PYTHONPATH=. .venv/bin/python bench/bench_finalize.py [--files 200] [--size-mb 1] \
        [--rounds 3] [--dir /path/on/disk/to/test] [--seed 81]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
import wave
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from callwarden.recorder import Key, LocalStorage, finalize, key_id_for

RATE = 8000  # 16-bit mono 8 kHz, as a PBX records: 16000 bytes per second


def make_templates(where: Path, files: int, size: int, seed: int) -> list[Path]:
    """``files`` WAVs of about ``size`` bytes each, with reproducible pseudo-random audio."""
    rng = random.Random(seed)
    where.mkdir(parents=True)
    frames_bytes = max(2, (size - 44) // 2 * 2)
    paths = []
    for i in range(files):
        path = where / f"{i:05d}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(rng.randbytes(frames_bytes))
        paths.append(path)
    return paths


def stage(templates: list[Path], spool: Path) -> list[Path]:
    """Fresh spool files for one run (hard links: no copying, same cached bytes)."""
    if spool.exists():
        shutil.rmtree(spool)
    spool.mkdir(parents=True)
    staged = []
    for t in templates:
        dst = spool / t.name
        try:
            os.link(t, dst)
        except OSError:
            shutil.copyfile(t, dst)
        staged.append(dst)
    return staged


def run_copyfile(srcs: list[Path], out: Path, fsync: bool) -> None:
    out.mkdir(parents=True)
    for src in srcs:
        dst = out / src.name
        shutil.copyfile(src, dst)
        if fsync:
            fd = os.open(dst, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def run_finalize(srcs: list[Path], out: Path, key: Key | None) -> None:
    storage = LocalStorage(out)
    until = datetime.now(UTC) + timedelta(days=180)
    for src in srcs:
        finalize(
            src,
            storage=storage,
            relpath=f"bench/2026/01/01/{src.name}",
            retain_until=until,
            key=key,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200, help="number of recordings (200)")
    ap.add_argument("--size-mb", type=float, default=1.0, help="size of each, in MB (1)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (3)")
    ap.add_argument("--dir", default=None, help="parent dir of the temp dir (system temp)")
    ap.add_argument("--seed", type=int, default=81, help="seed of the synthetic audio (81)")
    args = ap.parse_args()

    size = int(args.size_mb * 1_000_000)
    key = Key(key_id_for(b"\x07" * 32), b"\x07" * 32)  # fixed key: a benchmark, not a secret
    with tempfile.TemporaryDirectory(prefix="cw-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        templates = make_templates(root / "templates", args.files, size, args.seed)
        total = sum(p.stat().st_size for p in templates)
        modes: dict[str, Callable[[list[Path], Path], None]] = {
            "copyfile": lambda s, o: run_copyfile(s, o, fsync=False),
            "copyfile+fsync": lambda s, o: run_copyfile(s, o, fsync=True),
            "finalize": lambda s, o: run_finalize(s, o, None),
            "finalize+aes": lambda s, o: run_finalize(s, o, key),
        }
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for name, run in modes.items():
                srcs = stage(templates, root / "spool")
                out = root / "out"
                t0 = time.perf_counter()
                run(srcs, out)
                times[name].append(time.perf_counter() - t0)
                shutil.rmtree(out)

    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; dir {args.dir or tempfile.gettempdir()}"
    )
    print(
        f"{args.files} files x {total / args.files / 1e6:.2f} MB = {total / 1e6:.0f} MB, "
        f"median of {args.rounds} rounds\n"
    )
    base = statistics.median(times["copyfile"])
    base_sync = statistics.median(times["copyfile+fsync"])
    print(f"{'mode':<16}{'rec/s':>10}{'MB/s':>10}{'vs copyfile':>14}{'vs copy+fsync':>16}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(
            f"{name:<16}{args.files / t:>10.1f}{total / 1e6 / t:>10.1f}"
            f"{base / t:>13.2f}x{base_sync / t:>15.2f}x"
        )
    print("\n(ratios are throughput relative to the baseline: 1.00x = as fast, 0.50x = half)")


if __name__ == "__main__":
    main()
