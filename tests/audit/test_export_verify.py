"""``audit export`` / ``audit verify``: round trip, tampering caught and named, scopes, findings."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from callwarden.audit import bundle as B
from callwarden.audit.verify_bundle import verify_bundle
from callwarden.store.audit import entry_hash
from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.models import AuditEntry, AuditHead
from tests.audit.world import World


def export(run, out: Path, *args: str, code: int = 0, **kw):
    r = run("audit", "export", "--out", str(out), *args, **kw)
    assert r.exit_code == code, r.output + r.stderr
    return r


def rezip(src: Path, dst: Path, member: str, change) -> None:
    """Copy a bundle, replacing one member's bytes with ``change(bytes)`` (valid zip, new CRC)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info, change(data) if info.filename == member else data)


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def failures(run, path: Path) -> str:
    r = run("audit", "verify", str(path))
    assert r.exit_code == 1, r.output
    return r.output


@pytest.fixture
def bundle(world: World, run, tmp_path) -> Path:
    out = tmp_path / "evidence.zip"
    export(run, out, "--from", "2026-03-01", "--to", "2026-03-31")
    return out


def test_round_trip_holds_everything_and_verifies(world, run, bundle, tmp_path):
    r = run("audit", "verify", str(bundle))
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read(B.MANIFEST))
        calls = json.loads(z.read(B.CALLS_JSON))
        rows = list(csv.DictReader(io.StringIO(z.read(B.CALLS_CSV).decode())))
        consents = json.loads(z.read(B.CONSENTS_JSON))
        entries = [json.loads(x) for x in z.read(B.AUDIT_ENTRIES).splitlines()]
        receipt = json.loads(z.read(B.RECEIPT))
        registry = json.loads(z.read(B.REGISTRY_JSON))
        audio = {n: z.read(n) for n in names if n.startswith("recordings/")}
    by_id = {v: k for k, v in world.calls.items()}
    assert {by_id[c["call_id"]] for c in calls} == set(world.calls)
    assert [r["call_id"] for r in rows] == [c["call_id"] for c in calls]
    assert rows[0]["callee"].isdigit(), "an evidence bundle carries full numbers"
    # recordings: decrypted (a2 was stored encrypted), byte-identical to what the PBX recorded
    assert {by_id[Path(n).stem] for n in audio} == {"a1", "a2", "a6", "o1"}
    for name, data in audio.items():
        assert data == world.recordings[by_id[Path(name).stem]].read_bytes()
    assert {r["status"] for r in manifest["recordings"]} == {"ok"}
    assert set(manifest["files"]) == names - B.UNLISTED
    # consents behind the calls, and the inbound call behind the 即时回访
    assert {c["callee"] for c in consents["consents"]} == {"13800138000", "13900139001"}
    cb = {c["call_id"]: c for c in consents["inbound_callbacks"]}
    assert cb[world.calls["a6"]]["inbound_call_id"] == world.calls["in1"]
    assert {t["id"] for t in registry["tenants"]} == {"acme", "beta"}
    # audit excerpt: the decision of every outbound call, entries recompute and are in the store
    decided = {e["subject"] for e in entries if e["action"] == "decision"}
    assert decided == {world.calls[k] for k in world.calls if k != "in1"}
    assert any(e["action"] == "tenants.status" for e in entries)
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    with make_sessionmaker(make_engine(world.url))() as s:
        for e in entries + [receipt]:
            assert s.get(AuditEntry, e["seq"]).hash == e["hash"]
        head = s.get(AuditHead, 1)
        export_entry = s.get(AuditEntry, receipt["seq"])
    assert head.seq == receipt["seq"] and export_entry.action == "audit.export" and export_entry.actor == "inspector"
    assert json.loads(export_entry.details)["manifest_sha256"] == B.sha256_bytes(zipfile.ZipFile(bundle).read(B.MANIFEST))
    assert manifest["audit_log"]["head"]["seq"] == receipt["seq"] - 1
    assert run("audit", "verify", str(bundle), "--against-store").exit_code == 0


def test_verify_needs_no_store_or_config(bundle, tmp_path):
    from click.testing import CliRunner

    from callwarden.cli.main import cli
    r = CliRunner().invoke(cli, ["--config", str(tmp_path / "absent.yaml"), "audit", "verify", str(bundle), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ok"] is True


def test_one_altered_byte_in_a_recording_is_caught_and_named(world, run, bundle, tmp_path):
    member = next(n for n in zipfile.ZipFile(bundle).namelist() if n.endswith(world.calls["a1"] + ".wav"))
    bad = tmp_path / "bad.zip"
    rezip(bundle, bad, member, lambda d: flip(d, len(d) // 2))
    out = failures(run, bad)
    assert f"FAIL {member}: content altered" in out
    assert f"FAIL {member}: audio does not hash to the sha256 taken at finalization" in out


def test_one_altered_csv_row_is_caught_and_named(world, run, bundle, tmp_path):
    bad = tmp_path / "bad.zip"
    rezip(bundle, bad, B.CALLS_CSV, lambda d: d.replace(b"ANSWERED", b"ANSWERES", 1))
    out = failures(run, bad)
    assert f"FAIL {B.CALLS_CSV}: content altered" in out
    assert f"FAIL {B.CALLS_CSV}: row " in out and "differs from calls.json in disposition" in out
    assert "recordings/" not in out


def test_one_altered_byte_in_the_manifest_is_caught_and_named(run, bundle, tmp_path):
    bad = tmp_path / "bad.zip"
    rezip(bundle, bad, B.MANIFEST, lambda d: d.replace(b'"created_by": "inspector"', b'"created_by": "inspectos"'))
    out = failures(run, bad)
    assert f"FAIL {B.MANIFEST}: does not match the sha256 recorded in the export receipt" in out
    bad2 = tmp_path / "bad2.zip"  # a listed hash changed to cover a swapped file
    rezip(bundle, bad2, B.MANIFEST, lambda d: flip(d, d.index(b'"sha256": "') + 12))
    out = failures(run, bad2)
    assert B.MANIFEST in out and "content altered" in out


def test_raw_byte_flip_inside_the_zip_is_named_by_member(world, run, bundle, tmp_path):
    member = next(n for n in zipfile.ZipFile(bundle).namelist() if n.endswith(world.calls["o1"] + ".wav"))
    with zipfile.ZipFile(bundle) as z:
        info = z.getinfo(member)
    raw = bytearray(bundle.read_bytes())
    header = 30 + len(info.filename.encode()) + int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[info.header_offset + header + 100] ^= 0xFF  # inside the stored audio
    bad = tmp_path / "flipped.zip"
    bad.write_bytes(bytes(raw))
    out = failures(run, bad)
    assert f"FAIL {member}: damaged" in out or f"FAIL {member}: content altered" in out


def test_extracted_folder_verifies_and_edits_are_named(world, run, bundle, tmp_path):
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(bundle) as z:
        z.extractall(folder)
    assert run("audit", "verify", str(folder)).exit_code == 0
    (folder / "cdr" / "notes.txt").write_text("added later")
    entries = folder / B.AUDIT_ENTRIES
    lines = entries.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"actor": "', b'"actor": "x', 1)
    entries.write_bytes(b"".join(lines))
    out = failures(run, folder)
    assert "FAIL cdr/notes.txt: is not listed in the manifest" in out
    assert f"FAIL {B.AUDIT_ENTRIES}: content altered" in out
    assert f"FAIL {B.AUDIT_ENTRIES}: line 1: entry" in out and "does not match its hash" in out


def test_missing_member_and_broken_chain_link_are_named(run, bundle, tmp_path):
    with zipfile.ZipFile(bundle) as z:
        entries = [json.loads(x) for x in z.read(B.AUDIT_ENTRIES).splitlines()]
    pair = next(i for i in range(1, len(entries)) if entries[i]["seq"] == entries[i - 1]["seq"] + 1)
    e = entries[pair]
    e["prev_hash"] = "f" * 64  # relinked: recompute its own hash so only the link is wrong
    e["hash"] = entry_hash(e["prev_hash"], e["seq"], dt.datetime.fromisoformat(e["at"]),
                           e["actor"], e["action"], e["subject"], e["details"])
    text = b"".join(json.dumps(x, ensure_ascii=False, sort_keys=True).encode() + b"\n" for x in entries)
    bad = tmp_path / "relinked.zip"
    rezip(bundle, bad, B.AUDIT_ENTRIES, lambda d: text)
    out = failures(run, bad)
    assert f"does not link to entry {entries[pair - 1]['seq']}" in out
    gone = tmp_path / "gone.zip"
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(gone, "w") as zout:
        for info in zin.infolist():
            if info.filename != B.CONSENTS_CSV:
                zout.writestr(info, zin.read(info.filename))
    assert f"FAIL {B.CONSENTS_CSV}: listed in the manifest but missing" in failures(run, gone)


def test_keep_encrypted_copies_ciphertext_and_verifies_with_the_key(world, run, tmp_path):
    out = tmp_path / "enc.zip"
    export(run, out, "--keep-encrypted", "--call-id", world.calls["a2"])
    with zipfile.ZipFile(out) as z:
        member = next(n for n in z.namelist() if n.startswith("recordings/"))
        data = z.read(member)
    assert member.endswith(".wav" + B.ENCRYPTED_SUFFIX) and data.startswith(b"\x89CWREC")
    assert data == next(world.storage.root.rglob(world.calls["a2"] + ".wav")).read_bytes()
    r = run("audit", "verify", str(out))
    assert r.exit_code == 0 and "encrypted; its audio was not checked" in r.output
    assert run("audit", "verify", str(out), "--key-file", str(world.key_file)).exit_code == 0
    other_key = tmp_path / "other.key"
    other_key.write_text("22" * 32)
    r = run("audit", "verify", str(out), "--key-file", str(other_key))
    assert r.exit_code == 1 and "cannot be decrypted" in r.output


def test_tenant_scoped_export_holds_only_that_tenant(world, run, tmp_path):
    out = tmp_path / "beta.zip"
    export(run, out, "--as-tenant", "beta")
    with zipfile.ZipFile(out) as z:
        calls = json.loads(z.read(B.CALLS_JSON))
        entries = [json.loads(x) for x in z.read(B.AUDIT_ENTRIES).splitlines()]
        registry = json.loads(z.read(B.REGISTRY_JSON))
        manifest = json.loads(z.read(B.MANIFEST))
    assert [c["call_id"] for c in calls] == [world.calls["b1"]]
    assert {e["subject"] for e in entries} <= {world.calls["b1"], "beta"}
    assert "acme" not in json.dumps(entries) and [t["id"] for t in registry["tenants"]] == ["beta"]
    assert manifest["scope"] == {"role": "tenant", "tenant": "beta"}
    assert run("audit", "verify", str(out)).exit_code == 0
    r = run("audit", "export", "--out", str(tmp_path / "x.zip"), "--as-tenant", "beta", "--tenant", "acme")
    assert r.exit_code == 4 and not (tmp_path / "x.zip").exists()


def test_storage_problems_become_findings_and_fail_verification(world, run, tmp_path):
    root = world.storage.root
    next(root.rglob(world.calls["a6"] + ".wav")).unlink()
    stored = next(root.rglob(world.calls["o1"] + ".wav"))
    stored.write_bytes(flip(stored.read_bytes(), 500))
    out = tmp_path / "findings.zip"
    r = export(run, out, code=1)
    assert f"FINDING: recording of call {world.calls['a6']}: missing" in r.stderr
    assert f"FINDING: recording of call {world.calls['o1']}: hash_mismatch" in r.stderr
    res = verify_bundle(out)
    named = {(p.file, p.message.split(" (")[0]) for p in res.problems}
    assert (B.MANIFEST, f"recording of call {world.calls['a6']} was missing at export") in named
    assert any(p.file.endswith(world.calls["o1"] + ".wav") and "hash_mismatch" in p.message for p in res.problems)


def test_consent_evidence_files_are_included_and_checked(world, run, tmp_path):
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / "C-2026-17.pdf").write_bytes(b"%PDF-1.4 signed contract")
    out = tmp_path / "ev.zip"
    export(run, out, "--call-id", world.calls["a1"], "--evidence-dir", str(evidence))
    with zipfile.ZipFile(out) as z:
        consents = json.loads(z.read(B.CONSENTS_JSON))["consents"]
        c = next(x for x in consents if x["evidence_ref"] == "C-2026-17")
        assert z.read(c["evidence_file"]) == b"%PDF-1.4 signed contract"
    assert c["evidence_check"] == "no sha256 on record" and c["used_by_calls"] == 1
    assert run("audit", "verify", str(out)).exit_code == 0


def test_export_refuses_to_overwrite_and_leaves_no_partial_file(world, run, bundle, tmp_path):
    r = run("audit", "export", "--out", str(bundle))
    assert r.exit_code == 2 and "exists" in r.output
    assert not list(tmp_path.glob(".*.part"))
    shutil.copy(bundle, tmp_path / "copy.zip")
    export(run, tmp_path / "copy.zip", "--force", "--tenant", "beta")
    assert json.loads(zipfile.ZipFile(tmp_path / "copy.zip").read(B.MANIFEST))["counts"]["calls"] == 1


def test_the_node_is_exported_and_checked(world, run, tmp_path):
    from sqlalchemy import update

    from callwarden.store.models import Call

    with make_sessionmaker(make_engine(world.url))() as s:
        s.execute(update(Call).where(Call.call_id == world.calls["a1"]).values(node="fs-a"))
        s.commit()
    out = tmp_path / "nodes.zip"
    export(run, out, "--from", "2026-03-01", "--to", "2026-03-31")
    with zipfile.ZipFile(out) as z:
        calls = {c["call_id"]: c for c in json.loads(z.read(B.CALLS_JSON))}
        rows = {r["call_id"]: r for r in csv.DictReader(io.StringIO(z.read(B.CALLS_CSV).decode()))}
    a1 = world.calls["a1"]
    assert calls[a1]["node"] == "fs-a" and rows[a1]["node"] == "fs-a"
    assert run("audit", "verify", str(out)).exit_code == 0
    # An edited node is caught like any other column.
    edited = tmp_path / "edited.zip"
    rezip(out, edited, B.CALLS_CSV, lambda d: d.replace(b",fs-a\r\n", b",fs-b\r\n"))
    assert "differs from calls.json in node" in failures(run, edited)


def test_a_bundle_exported_before_the_node_column_still_verifies(world, run, tmp_path, monkeypatch):
    """Bundles from before the upgrade: calls.csv without `node`, calls.json rows without it."""
    import callwarden.audit.export as export_mod
    from callwarden.audit import search as search_mod

    def old_row(*args, **kw):
        row = search_mod.call_row(*args, **kw)
        row.pop("node")
        return row

    old = tmp_path / "old.zip"
    with monkeypatch.context() as m:
        m.setattr(export_mod, "CSV_COLUMNS", search_mod.CSV_COLUMNS_V1)
        m.setattr(export_mod, "csv_values",
                  lambda row: search_mod.csv_values(row, search_mod.CSV_COLUMNS_V1))
        m.setattr(export_mod, "call_row", old_row)
        export(run, old, "--from", "2026-03-01", "--to", "2026-03-31")
    with zipfile.ZipFile(old) as z:
        header = next(csv.reader(io.StringIO(z.read(B.CALLS_CSV).decode())))
        assert "node" not in header and "node" not in json.loads(z.read(B.CALLS_JSON))[0]
    r = run("audit", "verify", str(old))
    assert r.exit_code == 0 and r.output.startswith("OK"), r.output
    # ... and is still checked column by column.
    edited = tmp_path / "old-edited.zip"
    rezip(old, edited, B.CALLS_CSV, lambda d: d.replace(b"ANSWERED", b"BUSY", 1))
    assert "differs from calls.json in disposition" in failures(run, edited)
