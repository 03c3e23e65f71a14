"""``callwarden audit ...`` (search, recording, export, verify).

Thin over ``callwarden.audit``: options are parsed here, the work is done there. Every command
that shows evidence writes an audit-log entry naming who ran it (``--actor``) and in which scope.
Exit codes: 0 ok, 1 the check failed or the bundle has findings, 2 usage, 4 access denied.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from callwarden.audit.access import AccessDenied, Scope, record_access, resolve_scope
from callwarden.audit.entries import entries_for_number, entry_row
from callwarden.audit.export import ExportOptions, export_bundle
from callwarden.audit.filters import FilterError, SearchFilters
from callwarden.audit.search import CSV_COLUMNS, TABLE_COLUMNS, count_query, csv_values, search
from callwarden.audit.snapshot import snapshot
from callwarden.audit.verify_bundle import against_store, verify_bundle
from callwarden.cli.app import App, pass_app
from callwarden.cli.output import emit, emit_json
from callwarden.numbers import InvalidNumber, normalize
from callwarden.recorder import (
    DecryptionError,
    KeyLoadError,
    Keyring,
    LocationNotFound,
    Storage,
    StorageError,
    load_key,
    make_keyring,
    open_recording,
    storage_from_config,
)
from callwarden.recorder.streams import HashingReader
from callwarden.store.models import Call, Recording

EXIT_DENIED = 4


@contextmanager
def _guard() -> Iterator[None]:
    """Turn the library's refusals into CLI exits."""
    try:
        yield
    except AccessDenied as exc:
        click.echo(f"access denied: {exc}", err=True)
        raise SystemExit(EXIT_DENIED) from None
    except FilterError as exc:
        raise click.UsageError(str(exc)) from None


def scope_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--as-tenant", metavar="TENANT",
                        help="Act as this tenant: see only its calls (also $CALLWARDEN_TENANT_SCOPE, "
                             "which --as-tenant cannot override).")(f)


def filter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The search filters, shared by ``audit search`` and ``audit export``."""
    for opt in reversed([
        click.option("--tenant"),
        click.option("--caller", metavar="N", help="Number, or a prefix ending in '*'."),
        click.option("--callee", metavar="N", help="Number, or a prefix ending in '*'."),
        click.option("--from", "since", metavar="ISO",
                     help="Attempted at or after (no offset = config timezone)."),
        click.option("--to", "until", metavar="ISO",
                     help="Attempted before; a date alone includes that whole day."),
        click.option("--direction", type=click.Choice(["outbound", "inbound"])),
        click.option("--decision", type=click.Choice(["allow", "deny"])),
        click.option("--reason", metavar="CODE", help="A reason code, e.g. QUIET_HOURS."),
        click.option("--campaign"),
        click.option("--trunk"),
        click.option("--call-id"),
        click.option("--has-recording/--no-recording", default=None,
                     help="Only calls with (without) a stored recording."),
    ]):
        f = opt(f)
    return f


_FILTER_KEYS = ("tenant", "caller", "callee", "since", "until", "direction", "decision", "reason",
                "campaign", "trunk", "call_id", "has_recording")


def _filters(app: App, kw: dict[str, Any]) -> SearchFilters:
    return SearchFilters.from_cli(app.settings.tz, **{k: kw.pop(k) for k in _FILTER_KEYS})


def _scope(app: App, as_tenant: str | None) -> Scope:
    return resolve_scope(app.actor, as_tenant)


def _storage(app: App) -> Storage:
    rec = app.settings.recording
    return storage_from_config(rec.storage.model_dump(), recording_dir=rec.dir)


def _keyring(app: App, key_files: tuple[str, ...] = ()) -> Keyring:
    """The configured recording key plus any extra (e.g. rotated-out) keys given on the command line."""
    keys = []
    try:
        enc = app.settings.recording.encryption
        if enc is not None:
            keys.append(load_key(enc.key_file or None, enc.key_env or None))
        keys += [load_key(f) for f in key_files]
    except KeyLoadError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    return make_keyring(*keys)


key_file_option = click.option("--key-file", "key_files", multiple=True, type=click.Path(dir_okay=False),
                               help="Extra recording key (repeatable), e.g. a rotated-out one.")


@click.group("audit")
def audit_group() -> None:
    """Auditors: search calls, pull recordings, export and verify evidence bundles."""


# -- search ----------------------------------------------------------------------------------

@audit_group.command("search")
@filter_options
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--offset", default=0, type=click.IntRange(0))
@click.option("--count", "count_only", is_flag=True, help="Print only how many calls match.")
@click.option("--full-numbers", is_flag=True, help="Show numbers unmasked (audit-logged).")
@click.option("--json", "as_json", is_flag=True, help="JSON array, newest first.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line.")
@scope_option
@pass_app
def audit_search(app: App, limit: int, offset: int, count_only: bool, full_numbers: bool, as_json: bool,
                 as_csv: bool, as_tenant: str | None, **kw: Any) -> None:
    """Search calls, newest first. Numbers are masked unless --full-numbers.

    Every search is written to the audit log with who ran it and the filters used.
    """
    if as_json and as_csv:
        raise click.UsageError("--json and --csv are exclusive")
    with _guard():
        scope = _scope(app, as_tenant)
        filters = _filters(app, kw)
        with snapshot(app.engine) as s:
            if count_only:
                total = s.scalar(count_query(filters, scope)) or 0
                rows: list[dict[str, Any]] = []
            else:
                rows = search(s, filters, scope, limit=limit, offset=offset, full_numbers=full_numbers)
    with app.session() as s:
        record_access(s, scope, "audit.full_numbers" if full_numbers else "audit.search",
                      scope.tenant or filters.tenant, {
                          "filters": filters.describe(), "limit": limit, "offset": offset,
                          "rows": total if count_only else len(rows), "count_only": count_only,
                          "full_numbers": full_numbers,
                          "format": "json" if as_json else "csv" if as_csv else "table"})
    if count_only:
        if as_json:
            emit_json({"count": total})
        else:
            click.echo(total)
        return
    if as_json:
        emit_json(rows)
    elif as_csv:
        w = csv.writer(sys.stdout)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow(csv_values(r))
    else:
        emit(rows, TABLE_COLUMNS, False)
        if len(rows) == limit:
            click.echo(f"(first {limit} from offset {offset}; more with --offset {offset + limit})", err=True)


# -- audit-log entries about a number -------------------------------------------------------------

@audit_group.command("log")
@click.option("--number", required=True, metavar="N", help="A phone number (any usual form).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True)
@scope_option
@pass_app
def audit_log(app: App, number: str, limit: int, as_json: bool, as_tenant: str | None) -> None:
    """Audit-log entries about one number, oldest first (audit-logged).

    The number is hashed with the installation key to find entries that hold it keyed; entries
    written before numbers were keyed are matched on its digits. NUMBERS says which form.
    """
    try:
        normalize(number)
    except InvalidNumber:
        raise click.UsageError("--number: not a phone number") from None
    with _guard():
        scope = _scope(app, as_tenant)
        with snapshot(app.engine) as s:
            rows = [entry_row(e) for e in entries_for_number(s, app.audit_key, number, scope, limit)]
    with app.session() as s:
        record_access(s, scope, "audit.log", scope.tenant, {"number": number, "rows": len(rows)})
    emit(rows, ["seq", "at", "actor", "action", "subject", "numbers"], as_json)


# -- one recording -----------------------------------------------------------------------------

@audit_group.command("recording")
@click.argument("call_id")
@click.option("--out", "out", required=True, metavar="FILE", help="Where to write the audio ('-' = stdout).")
@key_file_option
@scope_option
@pass_app
def audit_recording(app: App, call_id: str, out: str, key_files: tuple[str, ...], as_tenant: str | None) -> None:
    """Pull one call's recording (decrypted), checking it against the sha256 taken at finalization."""
    with _guard():
        scope = _scope(app, as_tenant)
        with snapshot(app.engine) as s:
            row = s.execute(select(Call.tenant_id, Call.recording_id).where(Call.call_id == call_id)).first()
            rec = s.get(Recording, row.recording_id) if row and row.recording_id else None
            if row is not None:
                scope.check_tenant(row.tenant_id)
    if row is None:
        click.echo(f"error: no call {call_id}", err=True)
        raise SystemExit(1)
    if rec is None or rec.status != "stored" or not rec.location:
        click.echo(f"error: call {call_id} has no stored recording"
                   + (f" (status {rec.status})" if rec is not None else ""), err=True)
        raise SystemExit(1)
    with app.session() as s:
        record_access(s, scope, "audit.recording", call_id, {"tenant": row.tenant_id, "location": rec.location,
                                                              "sha256": rec.sha256})
    storage, keyring = _storage(app), _keyring(app, key_files)
    try:
        with open_recording(storage, rec.location, keyring) as src:
            reader = HashingReader(src)
            dst = sys.stdout.buffer if out == "-" else open(out, "wb")  # noqa: SIM115
            try:
                while chunk := reader.read(1 << 20):
                    dst.write(chunk)
            finally:
                if dst is not sys.stdout.buffer:
                    dst.close()
    except (LocationNotFound, FileNotFoundError):
        click.echo(f"error: recording of call {call_id} is missing from storage ({rec.location})", err=True)
        raise SystemExit(1) from None
    except (DecryptionError, StorageError, OSError) as exc:
        click.echo(f"error: recording of call {call_id} cannot be read: {exc}", err=True)
        raise SystemExit(1) from None
    if reader.hexdigest() != rec.sha256:
        click.echo(f"WARNING: recording of call {call_id} hashes to {reader.hexdigest()}, not {rec.sha256} "
                   "as at finalization: it was altered in storage", err=True)
        raise SystemExit(1)
    if out != "-":
        click.echo(f"{out}: {reader.size} bytes, sha256 {reader.hexdigest()} (matches finalization)")


# -- export ------------------------------------------------------------------------------------

@audit_group.command("export")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, writable=True), metavar="FILE.zip")
@filter_options
@click.option("--keep-encrypted", is_flag=True, help="Copy encrypted recordings as stored, not decrypted.")
@click.option("--evidence-dir", "evidence_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Where consent evidence files are kept (found by their reference; repeatable).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@key_file_option
@scope_option
@pass_app
def audit_export(app: App, out: str, keep_encrypted: bool, evidence_dirs: tuple[str, ...], force: bool,
                 key_files: tuple[str, ...], as_tenant: str | None, **kw: Any) -> None:
    """Export an evidence bundle: CDRs (CSV+JSON), recordings, consents, audit log, manifest.

    Takes the same filters as `audit search`. Full numbers are in the bundle; the export is
    audit-logged and its receipt (the audit entry) is written into the bundle.
    """
    if Path(out).exists() and not force:
        raise click.UsageError(f"{out} exists (use --force to replace it)")
    with _guard():
        scope = _scope(app, as_tenant)
        filters = _filters(app, kw)
        storage = _storage(app)
        keyring = _keyring(app, key_files)
        opts = ExportOptions(keep_encrypted=keep_encrypted, evidence_dirs=[Path(d) for d in evidence_dirs],
                             callback_window=dt.timedelta(hours=app.settings.callback_window_hours))
        bar: Any = None

        def on_total(total: int) -> None:
            nonlocal bar
            bar = click.progressbar(length=max(total, 1), label="recordings", file=sys.stderr,
                                    show_pos=False, show_percent=True, show_eta=True)
            bar.__enter__()

        try:
            result = export_bundle(app.engine, out, filters, scope, storage, keyring, opts,
                                   progress=lambda n: bar.update(n) if bar else None, on_total=on_total)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    mb = result.recording_bytes / 1e6
    click.echo(f"{result.path}: {result.calls} calls, {result.recordings} recordings ({mb:.1f} MB), "
               f"{result.consents} consents, {result.audit_entries} audit entries")
    click.echo(f"receipt: audit entry {result.receipt_seq}, hash {result.receipt_hash}")
    click.echo(f"manifest sha256: {result.manifest_sha256}")
    for p in result.problems:
        click.echo(f"FINDING: {p}", err=True)
    if result.problems:
        raise SystemExit(1)


# -- verify a bundle ---------------------------------------------------------------------------

@audit_group.command("verify")
@click.argument("bundle", type=click.Path(exists=True))
@key_file_option
@click.option("--against-store", "check_store", is_flag=True,
              help="Also check the receipt and audit entries against this store's audit log.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def audit_verify(app: App, bundle: str, key_files: tuple[str, ...], check_store: bool, as_json: bool) -> None:
    """Check an evidence bundle offline (a .zip or its extracted folder); exit 0 only if intact.

    Needs no store or config unless --against-store is given.
    """
    try:
        keyring = make_keyring(*[load_key(f) for f in key_files]) if key_files else None
    except KeyLoadError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    result = verify_bundle(bundle, keyring)
    if check_store and result.manifest:
        with snapshot(app.engine) as s:
            result.problems += against_store(s, result, bundle)
    if as_json:
        emit_json({"bundle": str(result.path), "ok": result.ok, "files_checked": result.files_checked,
                   "bytes_checked": result.bytes_checked,
                   "problems": [{"file": p.file, "problem": p.message} for p in result.problems],
                   "notes": result.notes, "receipt": {k: result.receipt.get(k) for k in ("seq", "hash", "actor", "at")}})
    else:
        for p in result.problems:
            click.echo(f"FAIL {p}")
        for n in result.notes:
            click.echo(f"note {n}")
        if result.ok:
            r, m = result.receipt, result.manifest
            click.echo(f"OK {result.path}: {result.files_checked} files ({result.bytes_checked / 1e6:.1f} MB) "
                       f"match the manifest; {m.get('counts', {}).get('calls')} calls, "
                       f"{m.get('counts', {}).get('recordings')} recordings; exported by {r.get('actor')} "
                       f"at {r.get('at')}; receipt audit entry {r.get('seq')} hash {r.get('hash')}")
        else:
            click.echo(f"FAILED {result.path}: {len(result.problems)} problem(s)")
    if not result.ok:
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(audit_group)  # `callwarden verify` lives in retention_cmd
