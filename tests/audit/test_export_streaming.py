"""A large export streams: peak Python memory stays far below the bytes it exports."""

from __future__ import annotations

import datetime as dt
import os
import tracemalloc
import zipfile

from callwarden.audit.access import Scope
from callwarden.audit.export import export_bundle
from callwarden.audit.filters import SearchFilters
from callwarden.audit.verify_bundle import verify_bundle
from callwarden.recorder import LocalStorage, finalize, load_key, make_keyring
from callwarden.store.db import make_engine, make_sessionmaker, unit_of_work
from callwarden.store.models import Call, Recording
from tests.conftest import at

N = 48
SIZE = 1 << 20  # 1 MiB each: 48 MiB in all


def test_export_of_many_recordings_streams_within_a_memory_budget(sqlite_url, tmp_path):
    storage = LocalStorage(tmp_path / "store")
    key_file = tmp_path / "k"
    key_file.write_text("33" * 32)
    key = load_key(key_file)
    engine = make_engine(sqlite_url)
    spool = tmp_path / "spool"
    spool.mkdir()
    with unit_of_work(make_sessionmaker(engine)) as s:
        for i in range(N):
            call_id = f"{i:032x}"
            src = spool / f"{call_id}.raw"
            src.write_bytes(os.urandom(SIZE))
            fin = finalize(src, storage=storage, relpath=f"acme/2026/03/02/{call_id}.wav",
                           retain_until=at("2026-09-01 00:00"), key=key if i % 2 else None)
            t = at("2026-03-02 09:00") + dt.timedelta(minutes=i)
            s.add(Call(call_id=call_id, tenant_id="acme", direction="outbound", pbx="asterisk", caller="95512",
                       callee="13800138000", party="13800138000", attempted_at=t, decision="allow", reasons="",
                       answered_at=t, ended_at=t + dt.timedelta(seconds=60), billsec=60, disposition="ANSWERED"))
            s.flush()
            rec = Recording(call_id=call_id, tenant_id="acme", status="stored", location=fin.location,
                            sha256=fin.sha256, size=fin.size, encrypted=fin.encrypted, key_id=fin.key_id)
            s.add(rec)
            s.flush()
            s.get(Call, call_id).recording_id = rec.id
    out = tmp_path / "big.zip"
    seen = []
    tracemalloc.start()
    try:
        result = export_bundle(engine, out, SearchFilters(), Scope("inspector"), storage, make_keyring(key),
                               progress=seen.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = N * SIZE
    assert result.recordings == N and result.recording_bytes == total and sum(seen) == total
    assert os.path.getsize(out) > total
    assert peak < total / 8, f"peak {peak / 1e6:.1f} MB for {total / 1e6:.0f} MB exported"
    with zipfile.ZipFile(out) as z:
        assert sum(i.file_size for i in z.infolist() if i.filename.startswith("recordings/")) == total
    assert verify_bundle(out).ok
