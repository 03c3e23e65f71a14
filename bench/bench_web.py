"""Web console: search page server time on millions of CDRs in PostgreSQL, beside the CLI's
``audit search`` in the same run, and the time to the first byte of a recording.

Loads N CDRs with bench_audit's loader (50 tenants, 200,000 callees, six months, 15 % denied),
then for the typical auditor queries times, each as a median of --reps runs after a warm-up:
  web page      GET /calls?... through the whole ASGI app (session check, search, audit entry,
                template), in process: server time, no network
  CLI search    ``callwarden audit search`` in process (click runner: search, audit entry, table)
  search()      the shared search function alone (first page, 50 rows)
Recording: a 4 MiB WAV-sized recording stored plain and one encrypted (AES-256-GCM), served by
the console under uvicorn on 127.0.0.1; time to first byte of GET .../recording (from byte 0
and from the middle, Range), beside reading the first 64 KiB of the stored file directly.

    python bench/bench_web.py                      # 500,000 CDRs (quick)
    python bench/bench_web.py --rows 5000000       # the issue's scale

PostgreSQL: $CALLWARDEN_BENCH_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
No time asserts: it prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import yaml
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_audit import CST, PG, START, load  # noqa: E402
from click.testing import CliRunner  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx in its TestClient
    from starlette.testclient import TestClient  # noqa: E402

from callwarden.audit.access import Scope  # noqa: E402
from callwarden.audit.filters import SearchFilters  # noqa: E402
from callwarden.audit.search import search  # noqa: E402
from callwarden.cli.main import cli  # noqa: E402
from callwarden.config import parse_settings  # noqa: E402
from callwarden.recorder import LocalStorage, finalize, load_key, store_root  # noqa: E402
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work  # noqa: E402
from callwarden.store.models import Call, Recording  # noqa: E402
from callwarden.web.app import create_app  # noqa: E402
from callwarden.web.serving import _EmbeddedServer  # noqa: E402
from callwarden.web.users import add_user  # noqa: E402

SCHEMA = "bench_web"
PASSWORD = "bench-password-1"


def median_ms(fn, reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def signed_in(app) -> TestClient:
    c = TestClient(app, follow_redirects=False)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 303, r.text
    return c


def bench_search(url: str, settings, cfg_path: Path, reps: int) -> None:
    engine = make_engine(url)
    with engine.connect() as c:
        callee = c.execute(text("SELECT callee FROM calls WHERE direction = 'outbound' AND attempted_at "
                                ">= '2026-03-10' ORDER BY attempted_at LIMIT 1")).scalar_one()
    queries = {
        "callee/month": {"callee": callee, "from": "2026-03-01", "to": "2026-03-31"},
        "tenant/day": {"tenant": "t07", "from": "2026-03-10", "to": "2026-03-10"},
        "reason/week": {"reason": "QUIET_HOURS", "from": "2026-03-02", "to": "2026-03-08"},
        "tenant/deny/month": {"tenant": "t07", "decision": "deny", "from": "2026-03-01", "to": "2026-03-31"},
    }
    client = signed_in(create_app(settings, engine))
    sessions = make_sessionmaker(engine)
    runner = CliRunner()
    print(f"\n{'query':<18} {'web page ms':>12} {'CLI search ms':>14} {'search() ms':>12}   (first page: 50 rows)")
    for name, q in queries.items():
        params = "&".join(f"{k}={v}" for k, v in q.items())

        def web(params=params):
            r = client.get("/calls?" + params)
            assert r.status_code == 200, r.text[:300]

        cli_args = [("--from" if k == "from" else "--to" if k == "to" else f"--{k}", v) for k, v in q.items()]
        flat = [x for pair in cli_args for x in pair]

        def run_cli(flat=flat):
            r = runner.invoke(cli, ["--config", str(cfg_path), "--actor", "bench", "audit", "search",
                                    "--limit", "50", *flat], catch_exceptions=False)
            assert r.exit_code == 0, r.output

        f = SearchFilters.from_cli(CST, **{{"from": "since", "to": "until"}.get(k, k): v for k, v in q.items()})

        def fn(f=f):
            with sessions() as s:
                return search(s, f, Scope("bench"), limit=50)

        print(f"{name:<18} {median_ms(web, reps):>12.2f} {median_ms(run_cli, reps):>14.2f} "
              f"{median_ms(fn, reps):>12.2f}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_first_byte(url: str, settings, reps: int) -> None:
    engine = make_engine(url)
    rec_dir = Path(settings.recording.dir)
    storage = LocalStorage(store_root(rec_dir))
    key = load_key(settings.recording.encryption.key_file)
    size = 4 << 20
    ids = {}
    with unit_of_work(make_sessionmaker(engine)) as s:
        for i, encrypt in enumerate((False, True)):
            call_id = f"web{i:029d}"
            src = rec_dir / "spool" / f"{call_id}.wav"
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_bytes(b"RIFF" + os.urandom(size - 4))
            fin = finalize(src, storage=storage, relpath=f"bw/2026/03/02/{call_id}.wav",
                           retain_until=START + dt.timedelta(days=400), key=key if encrypt else None)
            s.add(Call(call_id=call_id, tenant_id="t01", direction="outbound", pbx="bench", caller="95501",
                       callee="13800000000", party="13800000000", attempted_at=START + dt.timedelta(days=60),
                       decision="allow", reasons=""))
            s.flush()
            rec = Recording(call_id=call_id, tenant_id="t01", status="stored", location=fin.location,
                            sha256=fin.sha256, size=fin.size, encrypted=fin.encrypted, key_id=fin.key_id)
            s.add(rec)
            s.flush()
            s.get(Call, call_id).recording_id = rec.id
            ids["encrypted" if encrypt else "plain"] = (call_id, fin.location)
    port = _free_port()
    web = settings.web.model_copy(update={"port": port})
    server = _EmbeddedServer(__import__("uvicorn").Config(create_app(settings.model_copy(update={"web": web}), engine),
                                                          host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base) as http:
            token = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text).group(1)
            http.post("/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token})

            def first_byte(call_id: str, rng: str) -> float:
                t = time.perf_counter()
                with http.stream("GET", f"/calls/{call_id}/recording", headers={"Range": rng}) as r:
                    assert r.status_code == 206, r.status_code
                    next(r.iter_raw())
                    return (time.perf_counter() - t) * 1000

            print(f"\nrecording first byte ({size >> 20} MiB, uvicorn on 127.0.0.1, median of {reps}):")
            for kind, (call_id, _location) in ids.items():
                for rng in ("bytes=0-", f"bytes={size // 2}-"):
                    first_byte(call_id, rng)
                    ms = statistics.median(first_byte(call_id, rng) for _ in range(reps))
                    print(f"  {kind:<10} Range {rng:<18} {ms:8.2f} ms")
            def raw() -> None:
                with storage.open(ids["plain"][1]) as f:
                    f.read(65536)

            def bare() -> None:
                with http.stream("GET", "/static/console.css") as r:
                    next(r.iter_raw())

            print(f"  baseline: storage.open + read 64 KiB in process          {median_ms(raw, reps):8.2f} ms")
            print(f"  baseline: first byte of a static file from the console   {median_ms(bare, reps):8.2f} ms")
    finally:
        server.should_exit = True
        thread.join(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--schema", default=SCHEMA)
    ap.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    args = ap.parse_args()
    print(f"loading {args.rows:,} CDRs into PostgreSQL schema {args.schema} ...", flush=True)
    url = load(args.rows, args.schema)
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "rec.key"
        key_file.write_text("42" * 32)
        data = {"store": {"url": url}, "logging": {"format": "console", "level": "warning"},
                "recording": {"dir": str(Path(tmp) / "rec"), "encryption": {"key_file": str(key_file)}},
                "web": {"session_secret_file": str(Path(tmp) / "s.key"), "page_size": 50}}
        cfg_path = Path(tmp) / "cw.yaml"
        cfg_path.write_text(yaml.safe_dump(data))
        settings = parse_settings(data)
        with unit_of_work(make_sessionmaker(make_engine(url))) as s:
            add_user(s, "bench", "bench", "auditor", PASSWORD)
        try:
            bench_search(url, settings, cfg_path, args.reps)
            bench_first_byte(url, settings, args.reps)
        finally:
            if not args.keep:
                with create_engine(PG).begin() as c:
                    c.execute(text(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE'))


if __name__ == "__main__":
    main()
