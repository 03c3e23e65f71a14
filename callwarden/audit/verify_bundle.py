"""``audit verify``: check an evidence bundle offline, file by file.

Checks, in order (docs/auditors.md, "Verifying a bundle"):

1. the manifest parses and names a known format;
2. every file the manifest lists is there with the listed sha256 and size, and nothing else is
   (a zip member whose stored CRC fails is reported by name too);
3. the export receipt is a well-formed audit-log entry whose hash recomputes and which holds
   the sha256 of this very manifest;
4. the CDRs: calls.json and calls.csv hold the same rows, as many as the manifest counts;
5. every recording the CDRs say is stored is in the bundle, and its audio hashes to the
   sha256 taken at finalization (encrypted ones when a key is given);
6. consent evidence files hash to the sha256 on record;
7. the audit-log excerpt: each entry's hash recomputes with ``entry_hash``, sequence numbers
   rise, consecutive entries link (``prev_hash`` = previous ``hash``), none is past the head.

Every problem names the file it is in. The bundle verifies only when there are none.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from callwarden.audit import bundle as B
from callwarden.audit.pseudonym import has_clear_numbers
from callwarden.audit.search import CSV_COLUMNS, CSV_COLUMNS_V1, csv_values
from callwarden.recorder import DecryptingReader, DecryptionError, Keyring
from callwarden.recorder.streams import PrefixedReader, hash_stream
from callwarden.store.audit import GENESIS, entry_hash
from callwarden.store.models import AuditEntry

_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError)


@dataclass(frozen=True, slots=True)
class Problem:
    """One failed check: the bundle file it concerns and what is wrong."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass
class VerifyResult:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)
    receipt: dict[str, Any] = field(default_factory=dict)
    files_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, file: str, message: str) -> None:
        self.problems.append(Problem(file, message))


def receipt_hash(r: dict[str, Any]) -> str:
    """Recompute an exported audit entry's hash from its fields."""
    return entry_hash(r["prev_hash"], int(r["seq"]), dt.datetime.fromisoformat(r["at"]), r["actor"],
                      r["action"], r["subject"], r["details"])


def _load_json(reader: B.BundleReader, name: str, res: VerifyResult) -> Any:
    try:
        return json.loads(reader.read(name))
    except KeyError:
        res.fail(name, "missing from the bundle")
    except _READ_ERRORS as exc:
        res.fail(name, f"cannot be read ({exc})")
    except (ValueError, B.BundleError) as exc:
        res.fail(name, f"is not valid JSON ({exc})")
    return None


def _check_files(reader: B.BundleReader, files: dict[str, Any], res: VerifyResult,
                 progress: Callable[[int], None] | None) -> dict[str, str]:
    """Hash every listed file; returns path -> actual sha256 of those that could be read."""
    actual: dict[str, str] = {}
    present = set(reader.names())
    for name in sorted(present - set(files) - B.UNLISTED):
        res.fail(name, "is not listed in the manifest (added after export?)")
    for name, meta in sorted(files.items()):
        if name not in present:
            res.fail(name, "listed in the manifest but missing from the bundle")
            continue
        try:
            sha, size = reader.hash(name)
        except _READ_ERRORS as exc:
            res.fail(name, f"damaged: cannot be read back ({exc})")
            continue
        res.files_checked += 1
        res.bytes_checked += size
        if progress:
            progress(size)
        actual[name] = sha
        if sha != meta.get("sha256") or size != meta.get("size"):
            res.fail(name, f"content altered: sha256 {sha} (size {size}) but the manifest lists "
                           f"{meta.get('sha256')} (size {meta.get('size')})")
    return actual


def _check_receipt(reader: B.BundleReader, manifest_bytes: bytes, manifest: dict[str, Any],
                   res: VerifyResult) -> None:
    receipt = _load_json(reader, B.RECEIPT, res)
    if not isinstance(receipt, dict):
        return
    res.receipt = receipt
    try:
        if receipt_hash(receipt) != receipt.get("hash"):
            res.fail(B.RECEIPT, "the receipt entry does not match its hash (receipt altered)")
            return
        details = json.loads(receipt["details"])
    except (KeyError, TypeError, ValueError) as exc:
        res.fail(B.RECEIPT, f"malformed receipt ({exc})")
        return
    if receipt.get("action") != "audit.export":
        res.fail(B.RECEIPT, f"is a {receipt.get('action')!r} entry, not an audit.export entry")
    if details.get("manifest_sha256") != B.sha256_bytes(manifest_bytes):
        res.fail(B.MANIFEST, "does not match the sha256 recorded in the export receipt (manifest altered)")
    head = manifest.get("audit_log", {}).get("head", {})
    if isinstance(head, dict) and int(receipt.get("seq", 0)) <= int(head.get("seq", 0)):
        res.fail(B.RECEIPT, "its sequence number is not after the audit-log head in the manifest")


def _csv_rows(reader: B.BundleReader) -> Iterator[list[str]]:
    with reader.open(B.CALLS_CSV) as fh:
        yield from csv.reader(io.TextIOWrapper(fh, encoding="utf-8", newline=""))


def _iter_calls(reader: B.BundleReader) -> Iterator[dict[str, Any]]:
    """The calls of calls.json one at a time: the exporter writes one object a line, so even a
    bundle of millions of calls is checked in constant memory. Raises ValueError on any other
    layout (which an intact bundle never has)."""
    with reader.open(B.CALLS_JSON) as fh:
        lines = iter(fh)
        if next(lines, b"").strip() != b"[":
            raise ValueError("does not start with '['")
        closed = False
        for line in lines:
            text = line.strip()
            if closed and text:
                raise ValueError("text after the closing ']'")
            if text == b"]":
                closed = True
                continue
            row = json.loads(text.removesuffix(b","))
            if not isinstance(row, dict):
                raise ValueError("an element is not a call object")
            yield row
        if not closed:
            raise ValueError("does not end with ']'")


def _check_cdrs(reader: B.BundleReader, manifest: dict[str, Any], res: VerifyResult) -> dict[str, str | None]:
    """CSV and JSON agree row by row; returns call id -> recording sha256 of calls with a recording."""
    recorded: dict[str, str | None] = {}
    n_json = n_csv = 0
    missing = [n for n in (B.CALLS_JSON, B.CALLS_CSV) if n not in set(reader.names())]
    for name in missing:
        res.fail(name, "missing from the bundle")
    if missing:
        return recorded
    try:
        rows = _csv_rows(reader)
        header = next(rows, None)
        # Bundles exported before the `node` column have the older header; both are checked
        # column by column against calls.json.
        columns = header if header in (CSV_COLUMNS, CSV_COLUMNS_V1) else CSV_COLUMNS
        if header != columns:
            res.fail(B.CALLS_CSV, "header line differs from the expected columns")
        reported = False
        for call in _iter_calls(reader):
            n_json += 1
            if call.get("recording"):
                recorded[str(call.get("call_id"))] = call["recording"].get("sha256")
            row = next(rows, None)
            if row is None:
                continue
            n_csv += 1
            want = [str(v) for v in csv_values(call, columns)]
            if row != want and not reported:
                diff = [c for c, a, b in zip(columns, row, want, strict=False) if a != b] or ["(column count)"]
                res.fail(B.CALLS_CSV, f"row {n_csv + 1} (call {call.get('call_id')}) differs from calls.json "
                                      f"in {', '.join(diff)}")
                reported = True
        n_csv += sum(1 for _ in rows)
        if n_csv != n_json:
            res.fail(B.CALLS_CSV, f"holds {n_csv} rows, calls.json holds {n_json}")
    except ValueError as exc:
        res.fail(B.CALLS_JSON, f"is not a valid CDR list ({exc})")
        return recorded
    except (*_READ_ERRORS, csv.Error, UnicodeDecodeError) as exc:
        res.fail(B.CALLS_CSV, f"cannot be read ({exc})")
        return recorded
    expected = manifest.get("counts", {}).get("calls")
    if expected != n_json:
        res.fail(B.CALLS_JSON, f"holds {n_json} calls, the manifest counts {expected}")
    return recorded


def _plain_sha(reader: B.BundleReader, name: str, keyring: Keyring) -> tuple[str, int]:
    with reader.open(name) as fh:
        head = fh.read(8)
        with DecryptingReader(PrefixedReader(head, fh), keyring) as plain:
            return hash_stream(plain)


def _check_recordings(reader: B.BundleReader, manifest: dict[str, Any], recorded: dict[str, str | None],
                      actual: dict[str, str], keyring: Keyring | None, res: VerifyResult) -> None:
    listed = {r.get("call_id"): r for r in manifest.get("recordings", []) if isinstance(r, dict)}
    for cid, want in recorded.items():
        entry = listed.get(cid)
        if entry is None:
            res.fail(B.CALLS_JSON, f"call {cid} has a stored recording the manifest does not account for")
            continue
        path = entry.get("path")
        if entry.get("status") != "ok":
            res.fail(path or B.MANIFEST, f"recording of call {cid} was {entry.get('status')} at export"
                                         + (f": {entry['error']}" if entry.get("error") else ""))
            continue
        if entry.get("stored_sha256") != want:
            res.fail(B.MANIFEST, f"recording of call {cid}: sha256 differs from the CDR's")
        if not path or path not in actual:
            continue  # already reported as missing or damaged
        if entry.get("form") == "plain":
            if actual[path] != want:
                res.fail(path, f"audio does not hash to the sha256 taken at finalization ({want})")
        elif keyring:
            try:
                sha, _ = _plain_sha(reader, path, keyring)
            except (DecryptionError, *_READ_ERRORS) as exc:
                res.fail(path, f"cannot be decrypted ({exc})")
                continue
            if sha != want:
                res.fail(path, f"decrypted audio does not hash to the sha256 taken at finalization ({want})")
        else:
            res.notes.append(f"{path}: encrypted; its audio was not checked (give --key-file)")
    for cid in listed:
        if cid not in recorded:
            res.fail(B.MANIFEST, f"lists a recording of call {cid} that no CDR has")


def _check_consents(manifest: dict[str, Any], doc: Any, actual: dict[str, str], res: VerifyResult) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("consents"), list):
        if doc is not None:
            res.fail(B.CONSENTS_JSON, "has no consents list")
        return
    if manifest.get("counts", {}).get("consents") != len(doc["consents"]):
        res.fail(B.CONSENTS_JSON, "holds a different number of consents than the manifest counts")
    for c in doc["consents"]:
        path, want = c.get("evidence_file"), c.get("evidence_sha256")
        if not path:
            continue
        if path not in manifest.get("files", {}):
            res.fail(B.CONSENTS_JSON, f"consent {c.get('id')} names evidence file {path}, not in the manifest")
        elif path in actual and want and actual[path] != want:
            res.fail(path, f"consent {c.get('id')}: evidence does not hash to the sha256 on record ({want})")


def _check_entries(reader: B.BundleReader, manifest: dict[str, Any], res: VerifyResult) -> int:
    head = manifest.get("audit_log", {}).get("head") or {}
    head_seq = int(head.get("seq", 0))
    prev: dict[str, Any] | None = None
    n = clear = 0
    try:
        with reader.open(B.AUDIT_ENTRIES) as fh:
            for lineno, line in enumerate(fh, start=1):
                where = B.AUDIT_ENTRIES
                try:
                    e = json.loads(line)
                    ok = receipt_hash(e) == e["hash"]
                    seq = int(e["seq"])
                except (KeyError, TypeError, ValueError) as exc:
                    res.fail(where, f"line {lineno}: malformed entry ({exc})")
                    prev = None
                    continue
                n += 1
                # Both forms verify: numbers keyed (since revision 0008) or, before, in clear.
                clear += has_clear_numbers(e["action"], e["subject"], e["details"])
                if not ok:
                    res.fail(where, f"line {lineno}: entry {seq} does not match its hash (entry altered)")
                if seq == 1 and e["prev_hash"] != GENESIS:
                    res.fail(where, f"line {lineno}: entry 1 does not start from the genesis hash")
                if prev is not None:
                    if seq <= prev["seq"]:
                        res.fail(where, f"line {lineno}: entry {seq} is out of order (after {prev['seq']})")
                    elif seq == prev["seq"] + 1 and e["prev_hash"] != prev["hash"]:
                        res.fail(where, f"line {lineno}: entry {seq} does not link to entry {prev['seq']}")
                if seq > head_seq:
                    res.fail(where, f"line {lineno}: entry {seq} is past the chain head {head_seq}")
                if seq == head_seq and e["hash"] != head.get("hash"):
                    res.fail(where, f"line {lineno}: entry {seq} is the head but its hash differs from the manifest's")
                prev = {"seq": seq, "hash": e["hash"]}
    except KeyError:
        res.fail(B.AUDIT_ENTRIES, "missing from the bundle")
    except _READ_ERRORS as exc:
        res.fail(B.AUDIT_ENTRIES, f"cannot be read ({exc})")
    if clear:
        res.notes.append(f"{B.AUDIT_ENTRIES}: {clear} of {n} entries hold phone numbers in clear "
                         "(written before numbers were keyed); the others hold them as keyed hashes")
    expected = manifest.get("counts", {}).get("audit_entries")
    if expected is not None and expected != n:
        res.fail(B.AUDIT_ENTRIES, f"holds {n} entries, the manifest counts {expected}")
    return n


def verify_bundle(path: str | Path, keyring: Keyring | None = None,
                  progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Check the bundle at ``path`` (a zip, or the folder it was extracted to). Never raises for
    a damaged bundle: every problem is in the result."""
    res = VerifyResult(Path(path))
    try:
        reader = B.BundleReader(path)
    except B.BundleError as exc:
        res.fail(str(path), str(exc))
        return res
    with reader:
        try:
            manifest_bytes = reader.read(B.MANIFEST)
            manifest = json.loads(manifest_bytes)
        except KeyError:
            res.fail(B.MANIFEST, "missing: this is not an evidence bundle")
            return res
        except (*_READ_ERRORS, B.BundleError) as exc:
            res.fail(B.MANIFEST, f"cannot be read ({exc})")
            return res
        except ValueError as exc:
            res.fail(B.MANIFEST, f"is not valid JSON (altered?): {exc}")
            _check_receipt(reader, manifest_bytes, {}, res)
            return res
        if not isinstance(manifest, dict) or manifest.get("format") != B.FORMAT:
            res.fail(B.MANIFEST, "does not describe a callwarden evidence bundle")
            return res
        if manifest.get("version") != B.VERSION:
            res.fail(B.MANIFEST, f"bundle format version {manifest.get('version')} is not supported")
            return res
        res.manifest = manifest
        files = manifest.get("files")
        if not isinstance(files, dict):
            res.fail(B.MANIFEST, "has no file list")
            return res
        actual = _check_files(reader, files, res, progress)
        _check_receipt(reader, manifest_bytes, manifest, res)
        recorded = _check_cdrs(reader, manifest, res)
        _check_recordings(reader, manifest, recorded, actual, keyring, res)
        _check_consents(manifest, _load_json(reader, B.CONSENTS_JSON, res), actual, res)
        _check_entries(reader, manifest, res)
    for p in manifest.get("problems") or []:
        res.notes.append(f"noted at export: {p}")
    return res


def against_store(session: Session, result: VerifyResult, path: str | Path) -> list[Problem]:
    """Compare the bundle's receipt, head and excerpt entries with the live audit log.

    Offline verification proves the bundle is intact; this ties it to the operator's chain:
    every (seq, hash) pair the bundle carries must be the store's entry at that seq.
    """
    pairs: dict[int, tuple[str, str]] = {}
    head = result.manifest.get("audit_log", {}).get("head") or {}
    if head.get("seq"):
        pairs[int(head["seq"])] = (str(head.get("hash")), B.MANIFEST)
    if result.receipt.get("seq"):
        pairs[int(result.receipt["seq"])] = (str(result.receipt.get("hash")), B.RECEIPT)
    try:
        with B.BundleReader(path) as reader, reader.open(B.AUDIT_ENTRIES) as fh:
            for line in fh:
                e = json.loads(line)
                pairs.setdefault(int(e["seq"]), (e["hash"], B.AUDIT_ENTRIES))
    except (KeyError, ValueError, TypeError, *_READ_ERRORS):
        pass  # already reported by the offline checks; compare what could be read
    problems = []
    seqs = sorted(pairs)
    stored: dict[int, str] = {}
    for i in range(0, len(seqs), 500):
        chunk = seqs[i:i + 500]
        rows = session.execute(select(AuditEntry.seq, AuditEntry.hash).where(AuditEntry.seq.in_(chunk)))
        stored.update((seq, h) for seq, h in rows)
    for seq in seqs:
        want, where = pairs[seq]
        if seq not in stored:
            problems.append(Problem(where, f"audit entry {seq} is not in the store's audit log"))
        elif stored[seq] != want:
            problems.append(Problem(where, f"audit entry {seq} differs from the store's (hash {stored[seq]})"))
    return problems
