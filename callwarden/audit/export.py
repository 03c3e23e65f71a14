"""``audit export``: write a self-verifying evidence bundle (layout in ``callwarden.audit.bundle``).

Two phases. First, one read snapshot of the store collects the CDRs (spooled to a temporary
file, never held in memory), the consent records, the tenants' registry records and the
audit-log entries about them. Then the zip is written member by member: recordings stream from
storage (decrypted, or as stored with ``keep_encrypted``) in 1 MiB pieces, each file hashed as
it is written. Last, one unit of work appends the ``audit.export`` entry carrying the manifest's
sha256; that entry is written into the bundle as ``export_receipt.json``. The zip is built under
a temporary name and only appears under its final name once the export is in the audit log.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy import Engine, select, tuple_
from sqlalchemy.orm import Session, sessionmaker

from callwarden import __version__
from callwarden.audit import bundle as B
from callwarden.audit import pseudonym
from callwarden.audit.access import Scope, record_access
from callwarden.audit.filters import SearchFilters
from callwarden.audit.jsonable import to_jsonable
from callwarden.audit.search import CSV_COLUMNS, call_row, csv_values, iter_calls
from callwarden.audit.snapshot import snapshot
from callwarden.recorder import (
    DecryptionError,
    Keyring,
    LocationNotFound,
    Storage,
    StorageError,
    open_recording,
)
from callwarden.store.db import make_sessionmaker, unit_of_work
from callwarden.store.models import (
    AccessNumber,
    AuditEntry,
    AuditHead,
    Call,
    Campaign,
    Consent,
    ProofDocument,
    Tenant,
    Trunk,
    utcnow,
)

_CHUNK = 500
Progress = Callable[[int], None]

CONSENT_COLUMNS = ["id", "tenant", "callee", "scopes", "obtained_at", "expires_at", "revoked_at",
                   "evidence_kind", "evidence_ref", "evidence_sha256", "evidence_file", "evidence_check",
                   "used_by_calls"]


@dataclass
class ExportOptions:
    """What goes into the bundle besides the CDRs."""

    keep_encrypted: bool = False
    evidence_dirs: Sequence[Path] = ()
    callback_window: dt.timedelta = dt.timedelta(hours=72)


@dataclass
class ExportResult:
    path: Path
    calls: int
    recordings: int
    recording_bytes: int
    consents: int
    audit_entries: int
    manifest_sha256: str
    receipt_seq: int
    receipt_hash: str
    problems: list[str] = field(default_factory=list)


@dataclass
class _Rec:
    call_id: str
    tenant: str | None
    location: str
    sha256: str | None
    size: int | None
    encrypted: bool
    key_id: str | None


@dataclass
class _Collected:
    calls: IO[bytes]
    n_calls: int = 0
    recs: list[_Rec] = field(default_factory=list)
    tenants: set[str] = field(default_factory=set)
    consents: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    registry: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    entries: IO[bytes] | None = None
    entry_index: list[tuple[int, int, int]] = field(default_factory=list)  # seq, offset, length
    head: dict[str, Any] = field(default_factory=dict)


def _chunks(items: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def entry_dict(e: AuditEntry) -> dict[str, Any]:
    """An audit entry exactly as hashed (``at`` in UTC with microseconds)."""
    return {"seq": e.seq, "at": e.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            "actor": e.actor, "action": e.action, "subject": e.subject, "details": e.details,
            "prev_hash": e.prev_hash, "hash": e.hash}


def _jsonl(obj: Any) -> bytes:
    return json.dumps(to_jsonable(obj), ensure_ascii=False, sort_keys=True).encode() + b"\n"


# -- phase 1: one read snapshot ------------------------------------------------------------------

def _collect(session: Session, filters: SearchFilters, scope: Scope, opts: ExportOptions,
             tmpdir: str) -> _Collected:
    head = session.get(AuditHead, 1)
    head_seq = head.seq if head else 0
    col = _Collected(calls=tempfile.TemporaryFile(dir=tmpdir))  # noqa: SIM115 - closed by export_bundle
    col.head = {"seq": head_seq, "hash": head.hash if head else "0" * 64}
    consent_ids: set[int] = set()
    pairs: set[tuple[str, str]] = set()
    callback_calls: list[tuple[str, str, str, dt.datetime]] = []
    call_ids: list[str] = []
    used_by: dict[int, int] = {}
    for call, rec in iter_calls(session, filters, scope):
        col.calls.write(_jsonl(call_row(call, rec, full_numbers=True)))
        col.n_calls += 1
        call_ids.append(call.call_id)
        if call.tenant_id:
            col.tenants.add(call.tenant_id)
            if call.direction == "outbound" and call.callee:
                pairs.add((call.tenant_id, call.callee))
        if call.consent_id is not None:
            consent_ids.add(call.consent_id)
            used_by[call.consent_id] = used_by.get(call.consent_id, 0) + 1
        if call.consent_basis == "inbound-callback" and call.tenant_id and call.callee:
            callback_calls.append((call.call_id, call.tenant_id, call.callee, call.attempted_at))
        if rec is not None and rec.status == "stored" and rec.location:
            col.recs.append(_Rec(call.call_id, call.tenant_id, rec.location, rec.sha256, rec.size,
                                 rec.encrypted, rec.key_id))
    consents = _consents(session, consent_ids, pairs, scope)
    for c in consents:
        c["used_by_calls"] = used_by.get(c["id"], 0)
    col.consents = consents
    col.callbacks = _inbound_callbacks(session, callback_calls, opts.callback_window)
    col.registry = _registry(session, sorted(col.tenants))
    subjects = set(call_ids) | set(col.tenants)
    subjects |= {c["inbound_call_id"] for c in col.callbacks if c["inbound_call_id"]}
    consent_subjects = {str(c["id"]) for c in consents}
    subjects |= consent_subjects | {f"{c['tenant']}:{c['callee']}" for c in consents}
    key = pseudonym.bound_key(session.get_bind())  # type: ignore[arg-type]
    if key is not None:  # the same subjects as written since numbers are keyed
        subjects |= {pseudonym.protect_subject(key, "consents.created", f"{c['tenant']}:{c['callee']}")
                     for c in consents}
    col.entries = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 - closed by export_bundle
    seen: set[int] = set()
    for chunk in _chunks(sorted(subjects)):
        q = select(AuditEntry).where(AuditEntry.subject.in_(chunk), AuditEntry.seq <= head_seq)
        for e in session.scalars(q):
            if e.seq in seen or not _entry_visible(e, scope, consent_subjects):
                continue
            seen.add(e.seq)
            data = _jsonl(entry_dict(e))
            col.entry_index.append((e.seq, col.entries.tell(), len(data)))
            col.entries.write(data)
    col.entry_index.sort()
    return col


def _entry_visible(e: AuditEntry, scope: Scope, consent_subjects: set[str]) -> bool:
    """Whether an entry found by its subject belongs in the excerpt.

    A bare number as subject is a consent id only for ``consents.revoked``; other actions may
    use numbers for other records. A tenant scope also drops entries naming another tenant.
    """
    if e.subject in consent_subjects and e.action != "consents.revoked":
        return False
    if scope.tenant is None:
        return True
    try:
        details = json.loads(e.details)
    except ValueError:
        return False
    tenant = details.get("tenant") if isinstance(details, dict) else None
    return tenant in (None, scope.tenant)


def _consents(session: Session, ids: set[int], pairs: set[tuple[str, str]], scope: Scope) -> list[dict[str, Any]]:
    found: dict[int, Consent] = {}
    for chunk in _chunks(sorted(ids)):
        for c in session.scalars(select(Consent).where(Consent.id.in_(chunk))):
            found[c.id] = c
    for chunk in _chunks(sorted(pairs)):
        for c in session.scalars(select(Consent).where(tuple_(Consent.tenant_id, Consent.callee).in_(chunk))):
            found[c.id] = c
    out = []
    for c in sorted(found.values(), key=lambda c: c.id):
        if scope.tenant is not None and c.tenant_id != scope.tenant:
            continue
        out.append({"id": c.id, "tenant": c.tenant_id, "callee": c.callee, "scopes": c.scopes.split(","),
                    "obtained_at": c.obtained_at, "expires_at": c.expires_at, "revoked_at": c.revoked_at,
                    "evidence_kind": c.evidence_kind, "evidence_ref": c.evidence_ref,
                    "evidence_sha256": c.evidence_sha256, "evidence_file": None, "evidence_check": None})
    return out


def _inbound_callbacks(session: Session, calls: list[tuple[str, str, str, dt.datetime]],
                       window: dt.timedelta) -> list[dict[str, Any]]:
    """For calls allowed as 即时回访, the inbound call that opened the callback window."""
    by_pair: dict[tuple[str, str], list[tuple[str, dt.datetime]]] = {}
    for call_id, tenant, callee, at in calls:
        by_pair.setdefault((tenant, callee), []).append((call_id, at))
    out = []
    for (tenant, callee), items in sorted(by_pair.items()):
        lo = min(at for _, at in items) - window
        hi = max(at for _, at in items)
        inbound = session.execute(select(Call.call_id, Call.attempted_at).where(
            Call.tenant_id == tenant, Call.party == callee, Call.direction == "inbound",
            Call.attempted_at >= lo, Call.attempted_at <= hi).order_by(Call.attempted_at)).all()
        for call_id, at in items:
            opener = None
            for in_id, in_at in inbound:
                if dt.timedelta(0) <= at - in_at <= window:
                    opener = (in_id, in_at)  # the latest one wins
            out.append({"call_id": call_id, "tenant": tenant, "callee": callee, "attempted_at": at,
                        "inbound_call_id": opener[0] if opener else None,
                        "inbound_at": opener[1] if opener else None})
    return out


def _registry(session: Session, tenants: list[str]) -> dict[str, list[dict[str, Any]]]:
    reg: dict[str, list[dict[str, Any]]] = {"tenants": [], "numbers": [], "trunks": [], "proofs": [], "campaigns": []}
    for chunk in _chunks(tenants):
        for t in session.scalars(select(Tenant).where(Tenant.id.in_(chunk)).order_by(Tenant.id)):
            reg["tenants"].append({"id": t.id, "name": t.name, "status": t.status, "status_reason": t.status_reason,
                                   "outbound_commitment": t.outbound_commitment})
        for n in session.scalars(select(AccessNumber).where(AccessNumber.tenant_id.in_(chunk)).order_by(AccessNumber.number)):
            reg["numbers"].append({"number": n.number, "as_filed": n.as_filed, "tenant": n.tenant_id,
                                   "carrier": n.carrier, "purpose": n.purpose, "inbound": n.inbound,
                                   "outbound": n.outbound, "filing": n.filing_ref, "filed_on": n.filed_on,
                                   "certificate": n.certificate_ref, "active": n.active})
        for tr in session.scalars(select(Trunk).where(Trunk.tenant_id.in_(chunk)).order_by(Trunk.name)):
            reg["trunks"].append({"name": tr.name, "tenant": tr.tenant_id, "carrier": tr.carrier,
                                  "verified": tr.verified, "proof": tr.proof_ref})
        for p in session.scalars(select(ProofDocument).where(ProofDocument.tenant_id.in_(chunk)).order_by(ProofDocument.id)):
            reg["proofs"].append({"tenant": p.tenant_id, "kind": p.subject_kind, "subject": p.subject,
                                  "ref": p.ref, "sha256": p.sha256, "filename": p.filename})
        for cp in session.scalars(select(Campaign).where(Campaign.tenant_id.in_(chunk)).order_by(Campaign.tenant_id, Campaign.id)):
            reg["campaigns"].append({"id": cp.id, "tenant": cp.tenant_id, "purpose": cp.purpose,
                                     "description": cp.description, "status": cp.status,
                                     "reviewed_by": cp.reviewed_by, "reviewed_at": cp.reviewed_at})
    return reg


# -- phase 2: the zip ----------------------------------------------------------------------------

def _iter_lines(f: IO[bytes]) -> Iterator[dict[str, Any]]:
    f.seek(0)
    for line in f:
        yield json.loads(line)


def _write_calls(w: B.BundleWriter, col: _Collected) -> None:
    with w.open(B.CALLS_JSON) as out:
        out.write(b"[")
        for i, row in enumerate(_iter_lines(col.calls)):
            out.write((b",\n" if i else b"\n") + json.dumps(row, ensure_ascii=False).encode())
        out.write(b"\n]\n")
    with w.open(B.CALLS_CSV) as out:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        cw = csv.writer(text)
        cw.writerow(CSV_COLUMNS)
        for row in _iter_lines(col.calls):
            cw.writerow(csv_values(row))
        text.flush()
        text.detach()


def recording_member(rec: _Rec, keep_encrypted: bool) -> str:
    ext = PurePosixPath(rec.location.split(":", 1)[-1]).suffix or ".wav"
    name = B.safe_component(rec.call_id) + (ext if ext[1:].isalnum() else ".wav")
    if keep_encrypted and rec.encrypted:
        name += B.ENCRYPTED_SUFFIX
    return f"recordings/{B.safe_component(rec.tenant, '_unknown')}/{name}"


def _copy(src: Any, out: IO[bytes], progress: Progress | None) -> None:
    while chunk := src.read(B.BUFSIZE):
        out.write(chunk)
        if progress:
            progress(len(chunk))


def _write_recording(w: B.BundleWriter, rec: _Rec, storage: Storage, keyring: Keyring | None,
                     keep_encrypted: bool, progress: Progress | None) -> dict[str, Any]:
    """Stream one recording into the bundle; returns its manifest entry (status says how it went)."""
    entry: dict[str, Any] = {"call_id": rec.call_id, "tenant": rec.tenant, "location": rec.location,
                             "stored_sha256": rec.sha256, "size": rec.size, "encrypted_at_rest": rec.encrypted,
                             "key_id": rec.key_id, "path": None, "form": None, "status": "ok"}
    as_stored = keep_encrypted and rec.encrypted
    try:
        src = storage.open(rec.location) if as_stored else open_recording(storage, rec.location, keyring)
    except (LocationNotFound, FileNotFoundError):
        entry["status"] = "missing"
        return entry
    except DecryptionError as exc:
        entry["status"] = "undecryptable"
        entry["error"] = str(exc)
        return entry
    except (StorageError, OSError) as exc:
        entry["status"] = "unreadable"
        entry["error"] = str(exc)
        return entry
    name = recording_member(rec, as_stored)
    entry["path"], entry["form"] = name, "encrypted" if as_stored else "plain"
    with src:
        try:
            with w.open(name, compress=False) as out:
                _copy(src, out, progress)
        except (DecryptionError, OSError, StorageError) as exc:
            entry["status"] = "damaged"
            entry["error"] = f"{type(exc).__name__}: {exc}"
            return entry
    written = w.files[name]
    if not as_stored and rec.sha256 and written.sha256 != rec.sha256:
        entry["status"] = "hash_mismatch"
        entry["error"] = f"the stored audio hashes to {written.sha256}, not {rec.sha256} as at finalization"
    return entry


def _find_evidence(ref: str | None, dirs: Sequence[Path]) -> Path | None:
    """The consent evidence file ``ref`` names: a path, or a file in one of ``dirs`` (``ref`` or ``ref.*``)."""
    if not ref:
        return None
    ref_path = Path(ref)
    if ref_path.is_absolute():
        return ref_path if ref_path.is_file() else None
    for d in dirs:
        candidate = (d / ref_path).resolve()
        if candidate.is_relative_to(d.resolve()) and candidate.is_file():
            return candidate
        if "/" not in ref and d.is_dir():
            matches = sorted(p for p in d.glob(B.safe_component(ref) + ".*") if p.is_file())
            if matches:
                return matches[0]
    return None


def _write_consents(w: B.BundleWriter, col: _Collected, dirs: Sequence[Path]) -> list[str]:
    problems = []
    for c in col.consents:
        path = _find_evidence(c["evidence_ref"], dirs)
        if path is None:
            c["evidence_check"] = "no file found" if c["evidence_ref"] else "no reference"
            continue
        name = f"consents/evidence/{c['id']}/{B.safe_component(path.name)}"
        with open(path, "rb") as src, w.open(name) as out:
            _copy(src, out, None)
        c["evidence_file"] = name
        sha = w.files[name].sha256
        if not c["evidence_sha256"]:
            c["evidence_check"] = "no sha256 on record"
        elif sha == c["evidence_sha256"]:
            c["evidence_check"] = "match"
        else:
            c["evidence_check"] = "mismatch"
            problems.append(f"consent {c['id']}: evidence file {name} hashes to {sha}, "
                            f"not {c['evidence_sha256']} as registered")
    w.write_bytes(B.CONSENTS_JSON, _json_doc({"consents": col.consents, "inbound_callbacks": col.callbacks}))
    buf = io.StringIO()
    cw = csv.writer(buf)
    cw.writerow(CONSENT_COLUMNS)
    for c in col.consents:
        row = to_jsonable(c)
        cw.writerow(["" if row.get(k) is None else (",".join(row[k]) if isinstance(row[k], list) else row[k])
                     for k in CONSENT_COLUMNS])
    w.write_bytes(B.CONSENTS_CSV, buf.getvalue().encode())
    return problems


def _write_entries(w: B.BundleWriter, col: _Collected) -> None:
    assert col.entries is not None
    with w.open(B.AUDIT_ENTRIES) as out:
        for _seq, offset, length in col.entry_index:
            col.entries.seek(offset)
            out.write(col.entries.read(length))


def _json_doc(obj: Any) -> bytes:
    return json.dumps(to_jsonable(obj), ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"


README_TEXT = """\
callwarden 证据包 / evidence bundle
====================================

本证据包由 callwarden 导出,包含通话记录(CDR)、录音、用户同意凭证、租户登记信息和相关的审计日志条目。
This bundle holds call records (CDRs), recordings, consent evidence, the tenants' registry
records and the audit-log entries about them, exported by callwarden.

校验 / Verify (offline, no store needed):

    callwarden audit verify {bundle}

manifest.json lists the sha256 and size of every file; export_receipt.json is the audit-log
entry that recorded this export and holds the sha256 of manifest.json. Compare its sequence
number and hash with the operator's audit log (callwarden audit verify --against-store) to tie
the bundle to it.
Phone numbers in this bundle are shown in full: it is personal data, handle it accordingly.
"""


def export_bundle(engine: Engine, out: str | os.PathLike[str] | IO[bytes], filters: SearchFilters,
                  scope: Scope, storage: Storage, keyring: Keyring | None = None,
                  options: ExportOptions | None = None, progress: Progress | None = None,
                  on_total: Callable[[int], None] | None = None, *, name: str | None = None,
                  workdir: str | os.PathLike[str] | None = None) -> ExportResult:
    """Write the bundle for ``filters`` within ``scope`` to ``out`` (a ``.zip``).

    ``out`` may also be a writable binary stream (not seekable: the web console sends the zip as
    it is made); then ``name`` is the bundle's file name and the CDRs are spooled in ``workdir``.
    """
    opts = options or ExportOptions()
    stream: IO[bytes] | None = out if hasattr(out, "write") else None  # type: ignore[assignment]
    out_path = Path(name or "bundle.zip") if stream is not None else Path(out)  # type: ignore[arg-type]
    tenant = scope.tenant_filter(filters.tenant)  # raises AccessDenied before any work
    filters = filters.with_tenant(tenant)
    out_dir = Path(workdir or tempfile.gettempdir()) if stream is not None else out_path.resolve().parent
    now = utcnow()
    sessions = make_sessionmaker(engine)
    with snapshot(engine) as session:
        col = _collect(session, filters, scope, opts, str(out_dir))
    total = sum(r.size or 0 for r in col.recs)
    if on_total:
        on_total(total)
    tmp: Path | None = None
    if stream is None:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".part", dir=out_dir)
        os.close(fd)
        tmp = Path(tmp_name)
    try:
        return _write(sessions, tmp if stream is None else stream, out_path, col, filters, scope, storage,
                      keyring, opts, now, progress)
    finally:
        col.calls.close()
        if col.entries is not None:
            col.entries.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _write(sessions: sessionmaker[Session], tmp: Path | IO[bytes], out_path: Path, col: _Collected, filters: SearchFilters,
           scope: Scope, storage: Storage, keyring: Keyring | None, opts: ExportOptions, now: dt.datetime,
           progress: Progress | None) -> ExportResult:
    local = now.astimezone(filters.since.tzinfo if filters.since else dt.UTC)
    w = B.BundleWriter(tmp, local.timetuple()[:6])  # type: ignore[arg-type]
    problems: list[str] = []
    try:
        _write_calls(w, col)
        recordings = []
        for rec in col.recs:
            entry = _write_recording(w, rec, storage, keyring, opts.keep_encrypted, progress)
            recordings.append(entry)
            if entry["status"] != "ok":
                problems.append(f"recording of call {rec.call_id}: {entry['status']}"
                                + (f" ({entry['error']})" if entry.get("error") else ""))
        problems += _write_consents(w, col, opts.evidence_dirs)
        w.write_bytes(B.REGISTRY_JSON, _json_doc(col.registry))
        _write_entries(w, col)
        w.write_bytes(B.README, README_TEXT.format(bundle=out_path.name).encode())
        counts = {"calls": col.n_calls, "recordings": sum(1 for r in recordings if r["path"]),
                  "recordings_expected": len(col.recs), "consents": len(col.consents),
                  "evidence_files": sum(1 for c in col.consents if c["evidence_file"]),
                  "audit_entries": len(col.entry_index)}
        manifest = {
            "format": B.FORMAT, "version": B.VERSION, "generator": f"callwarden {__version__}",
            "created_at": now, "created_by": scope.actor, "scope": scope.as_dict(),
            "filters": filters.describe(), "numbers": "full",
            "recordings_form": "as stored (encrypted ones stay encrypted)" if opts.keep_encrypted else "plain",
            "counts": counts, "audit_log": {"head": col.head, "entries_file": B.AUDIT_ENTRIES},
            "recordings": recordings, "problems": problems,
            "files": {e.path: {"sha256": e.sha256, "size": e.size} for e in sorted(w.files.values(), key=lambda e: e.path)},
        }
        manifest_bytes = _json_doc(manifest)
        w.write_bytes(B.MANIFEST, manifest_bytes, listed=False)
        manifest_sha = B.sha256_bytes(manifest_bytes)
        with unit_of_work(sessions) as session:
            entry = record_access(session, scope, "audit.export", scope.tenant, {
                "bundle": out_path.name, "filters": filters.describe(), "manifest_sha256": manifest_sha,
                "counts": counts, "keep_encrypted": opts.keep_encrypted, "full_numbers": True,
                "audit_head": col.head, "problems": len(problems)})
            session.flush()
            receipt = entry_dict(entry)
            w.write_bytes(B.RECEIPT, _json_doc(receipt), listed=False)
            w.close()
        if isinstance(tmp, Path):
            os.replace(tmp, out_path)
    except BaseException:
        w.zip.close()
        raise
    return ExportResult(out_path, col.n_calls, counts["recordings"], sum(
        w.files[r["path"]].size for r in recordings if r["path"]), len(col.consents), len(col.entry_index),
        manifest_sha, receipt["seq"], receipt["hash"], problems)
