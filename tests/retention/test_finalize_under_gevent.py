"""Finalization as the FreeSWITCH adapter runs it: gevent-patched process, native thread pool."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from callwarden.audit.pseudonym import KEY_ENV
from tests.conftest import seed

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()

    import datetime as dt, os, sys, time, uuid
    import gevent
    from gevent.threadpool import ThreadPool

    from callwarden.config import parse_settings
    from callwarden.recorder import recording_relpath, spool_path
    from callwarden.service.enforcer import Enforcer
    from callwarden.store.db import unit_of_work
    from callwarden.store.models import Call, Recording
    from tests.recorder.conftest import write_wav

    url, rec_dir = sys.argv[1], sys.argv[2]
    settings = parse_settings({"store": {"url": url}, "logging": {"level": "error"},
                               "recording": {"dir": rec_dir, "settle_s": 0.6}})
    e = Enforcer(settings)
    now = dt.datetime.now(dt.UTC)
    ids = []
    for _ in range(3):
        call_id = uuid.uuid4().hex
        spool = spool_path(rec_dir, recording_relpath("acme", call_id, now))
        with unit_of_work(e.sessions) as s:
            call = Call(call_id=call_id, tenant_id="acme", direction="outbound", pbx="freeswitch",
                        attempted_at=now, ended_at=now, decision="allow", reasons="")
            rec = Recording(call_id=call_id, tenant_id="acme", status="recording",
                            spool_path=str(spool), started_at=now)
            s.add_all([call, rec]); s.flush(); call.recording_id = rec.id
        write_wav(spool, 1.0)  # just written: finalize has to wait for it to settle
        ids.append(call_id)

    ticks = []
    def ticker():
        while True:
            ticks.append(time.monotonic()); gevent.sleep(0.01)
    t = gevent.spawn(ticker)
    from gevent._hub_local import get_hub_if_exists

    def finalize(call_id):  # as the adapter's StoreGate runs it, in a native worker thread
        stored = e.finalize_recording(call_id)
        return stored, get_hub_if_exists() is None  # no gevent hub was needed in this thread

    pool = ThreadPool(2)
    started = time.monotonic()
    jobs = [pool.spawn(finalize, c) for c in ids]
    results = [j.get(timeout=30) for j in jobs]
    t.kill(); pool.kill()
    assert all(stored is not None and hubless for stored, hubless in results), results
    assert time.monotonic() - started >= 0.5, "did not wait for the files to settle"
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 40 and max(gaps) < 0.3, (len(ticks), max(gaps))  # the hub kept running
    with e.sessions() as s:
        assert {s.get(Recording, s.get(Call, c).recording_id).status for c in ids} == {"stored"}
    print("OK")
""")


def test_finalize_waits_in_native_threads_without_blocking_the_hub(sqlite_url, tmp_path):
    seed(sqlite_url)
    p = subprocess.run([sys.executable, "-c", SCRIPT, sqlite_url, str(tmp_path / "rec")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                            KEY_ENV: os.environ[KEY_ENV]})  # the store's audit key
    assert p.returncode == 0 and p.stdout.strip().endswith("OK"), p.stdout + p.stderr
