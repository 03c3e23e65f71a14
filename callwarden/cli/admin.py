"""Administrator commands: tenants, numbers, trunks, proofs, consents, refusals, campaigns.

Each command is one unit of work through ``callwarden.store.registry.Registry``, so the rules
(validation, idempotence, audit entries) are the same as for ``registry import``.
"""

from __future__ import annotations

import csv
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from callwarden.cli.app import App, pass_app
from callwarden.cli.output import emit, emit_json
from callwarden.numbers import InvalidNumber, normalize
from callwarden.store import audit
from callwarden.store.facts import GLOBAL
from callwarden.store.models import (
    AccessNumber,
    Campaign,
    Consent,
    ProofDocument,
    Refusal,
    Tenant,
    Trunk,
)
from callwarden.store.registry import (
    Registry,
    RegistryError,
    export_document,
    import_refusals_bulk,
    iter_dnc_numbers,
    validate_entry,
)

json_opt = click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")


def _run(app: App, fn: Callable[[Registry], Any]) -> Any:
    """Run one registry change; a RegistryError exits 1 with nothing changed."""
    try:
        with app.session() as session:
            return fn(Registry(session, app.actor))
    except RegistryError as exc:
        click.echo(f"error: {exc} (nothing was changed)", err=True)
        raise SystemExit(1) from None


def _entry(section: str, raw: dict[str, Any]) -> Any:
    try:
        return validate_entry(section, 0, {k: v for k, v in raw.items() if v is not None})
    except RegistryError as exc:
        click.echo(f"error: {exc.where.split('.', 1)[-1]}: {exc.message}", err=True)
        raise SystemExit(1) from None


def _current(app: App, section: str, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    with app.reader() as session:
        for item in export_document(session)[section]:
            if match(item):
                return item
    click.echo(f"error: {what} not found", err=True)
    raise SystemExit(1)


def _sha256_file(path: str | None) -> str | None:
    if not path:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canon(number: str) -> str:
    try:
        return normalize(number).digits
    except InvalidNumber as exc:
        raise click.BadParameter(str(exc)) from None


# -- tenants ---------------------------------------------------------------------------------

@click.group("tenants")
def tenants() -> None:
    """Tenants (one per customer of a seat-rental provider; one for a single company)."""


@tenants.command("add")
@click.option("--id", "tenant_id", required=True)
@click.option("--name", required=True)
@click.option("--commitment", help="Reference of the outbound commitment letter (不违规呼出承诺书).")
@pass_app
def tenants_add(app: App, tenant_id: str, name: str, commitment: str | None) -> None:
    """Add (or update) a tenant."""
    e = _entry("tenants", {"id": tenant_id, "name": name, "outbound_commitment": commitment})
    _run(app, lambda r: r.tenant(e))
    click.echo(f"tenant {tenant_id} saved")


@tenants.command("update")
@click.argument("tenant_id")
@click.option("--name")
@click.option("--commitment")
@pass_app
def tenants_update(app: App, tenant_id: str, name: str | None, commitment: str | None) -> None:
    """Change a tenant's name or commitment letter."""
    cur = _current(app, "tenants", lambda t: t["id"] == tenant_id, f"tenant {tenant_id!r}")
    cur.update({k: v for k, v in {"name": name, "outbound_commitment": commitment}.items() if v is not None})
    e = _entry("tenants", cur)
    _run(app, lambda r: r.tenant(e))
    click.echo(f"tenant {tenant_id} updated")


@tenants.command("list")
@json_opt
@pass_app
def tenants_list(app: App, as_json: bool) -> None:
    with app.reader() as s:
        rows = [{"id": t.id, "name": t.name, "status": t.status, "commitment": t.outbound_commitment,
                 "status_reason": t.status_reason} for t in s.scalars(select(Tenant).order_by(Tenant.id))]
    emit(rows, ["id", "name", "status", "commitment", "status_reason"], as_json)


@tenants.command("show")
@click.argument("tenant_id")
@json_opt
@pass_app
def tenants_show(app: App, tenant_id: str, as_json: bool) -> None:
    """A tenant with its numbers, trunks, proofs and campaigns."""
    with app.reader() as s:
        t = s.get(Tenant, tenant_id)
        if t is None:
            click.echo(f"error: tenant {tenant_id!r} not found", err=True)
            raise SystemExit(1)
        data = {
            "id": t.id, "name": t.name, "status": t.status, "status_reason": t.status_reason,
            "outbound_commitment": t.outbound_commitment,
            "numbers": [n.number for n in s.scalars(select(AccessNumber).where(AccessNumber.tenant_id == t.id))],
            "trunks": [x.name for x in s.scalars(select(Trunk).where(Trunk.tenant_id == t.id))],
            "proofs": [f"{p.subject_kind}:{p.subject}:{p.ref}" for p in
                       s.scalars(select(ProofDocument).where(ProofDocument.tenant_id == t.id))],
            "campaigns": [f"{c.id} ({c.status})" for c in
                          s.scalars(select(Campaign).where(Campaign.tenant_id == t.id))],
        }
    if as_json:
        emit_json(data)
    else:
        for k, v in data.items():
            click.echo(f"{k:>20}: {', '.join(v) if isinstance(v, list) else v}")


def _status_command(name: str, status: str, doc: str) -> click.Command:
    @click.command(name, help=doc)
    @click.argument("tenant_id")
    @click.option("--reason", required=True, help="Why (kept in the audit log).")
    @pass_app
    def cmd(app: App, tenant_id: str, reason: str) -> None:
        _run(app, lambda r: r.set_tenant_status(tenant_id, status, reason))
        click.echo(f"tenant {tenant_id} is now {status}")

    return cmd


tenants.add_command(_status_command("suspend", "suspended", "Stop a tenant's outbound calls at once (inbound still works)."))
tenants.add_command(_status_command("resume", "active", "Allow a suspended tenant's outbound calls again."))
tenants.add_command(_status_command("terminate", "terminated", "End a tenant's service (outbound stays refused)."))


# -- numbers ---------------------------------------------------------------------------------

def _number_options(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        for opt in reversed([
            click.option("--tenant", required=required),
            click.option("--carrier"),
            click.option("--purpose"),
            click.option("--inbound/--no-inbound", default=None),
            click.option("--outbound/--no-outbound", default=None,
                         help="As marked on the number-resource certificate."),
            click.option("--filing", help="Filing (备案) reference."),
            click.option("--filed-on", type=click.DateTime(["%Y-%m-%d"])),
            click.option("--certificate", help="Number-resource certificate reference."),
            click.option("--active/--inactive", default=None),
        ]):
            f = opt(f)
        return f

    return wrap


def _number_values(**kw: Any) -> dict[str, Any]:
    if kw.get("filed_on") is not None:
        kw["filed_on"] = kw["filed_on"].date()
    return {k: v for k, v in kw.items() if v is not None}


@click.group("numbers")
def numbers() -> None:
    """Access numbers (码号) presented as caller ID."""


@numbers.command("add")
@click.argument("number")
@_number_options(required=True)
@pass_app
def numbers_add(app: App, number: str, **kw: Any) -> None:
    """Register an access number (or replace its record)."""
    e = _entry("numbers", {"number": number, **_number_values(**kw)})
    _run(app, lambda r: r.number(e))
    click.echo(f"number {_canon(number)} saved")


@numbers.command("update")
@click.argument("number")
@_number_options(required=False)
@pass_app
def numbers_update(app: App, number: str, **kw: Any) -> None:
    """Change fields of a registered number; filing changes start the 10-working-day re-filing clock."""
    digits = _canon(number)
    cur = _current(app, "numbers", lambda n: _canon(n["number"]) == digits, "number")
    cur.update(_number_values(**kw))
    e = _entry("numbers", cur)
    _run(app, lambda r: r.number(e))
    click.echo(f"number {digits} updated")


@numbers.command("list")
@click.option("--tenant")
@json_opt
@pass_app
def numbers_list(app: App, tenant: str | None, as_json: bool) -> None:
    with app.reader() as s:
        q = select(AccessNumber).order_by(AccessNumber.number)
        if tenant:
            q = q.where(AccessNumber.tenant_id == tenant)
        rows = [{"number": n.number, "tenant": n.tenant_id, "carrier": n.carrier, "inbound": n.inbound,
                 "outbound": n.outbound, "filing": n.filing_ref, "filed_on": n.filed_on, "active": n.active}
                for n in s.scalars(q)]
    emit(rows, ["number", "tenant", "carrier", "inbound", "outbound", "filing", "filed_on", "active"], as_json)


# -- trunks ----------------------------------------------------------------------------------

@click.group("trunks")
def trunks() -> None:
    """Voice trunks (语音中继线路) and their proof of lawful provision."""


@trunks.command("add")
@click.argument("name")
@click.option("--tenant", required=True)
@click.option("--carrier")
@click.option("--verified/--unverified", default=False)
@click.option("--proof", help="Reference of the proof document.")
@pass_app
def trunks_add(app: App, name: str, tenant: str, carrier: str | None, verified: bool, proof: str | None) -> None:
    e = _entry("trunks", {"name": name, "tenant": tenant, "carrier": carrier, "verified": verified, "proof": proof})
    _run(app, lambda r: r.trunk(e))
    click.echo(f"trunk {name} saved")


@trunks.command("update")
@click.argument("name")
@click.option("--carrier")
@click.option("--verified/--unverified", default=None)
@click.option("--proof")
@pass_app
def trunks_update(app: App, name: str, carrier: str | None, verified: bool | None, proof: str | None) -> None:
    cur = _current(app, "trunks", lambda t: t["name"] == name, f"trunk {name!r}")
    cur.update({k: v for k, v in {"carrier": carrier, "verified": verified, "proof": proof}.items() if v is not None})
    e = _entry("trunks", cur)
    _run(app, lambda r: r.trunk(e))
    click.echo(f"trunk {name} updated")


@trunks.command("list")
@click.option("--tenant")
@json_opt
@pass_app
def trunks_list(app: App, tenant: str | None, as_json: bool) -> None:
    with app.reader() as s:
        q = select(Trunk).order_by(Trunk.name)
        if tenant:
            q = q.where(Trunk.tenant_id == tenant)
        rows = [{"name": t.name, "tenant": t.tenant_id, "carrier": t.carrier, "verified": t.verified,
                 "proof": t.proof_ref} for t in s.scalars(q)]
    emit(rows, ["name", "tenant", "carrier", "verified", "proof"], as_json)


# -- proofs ----------------------------------------------------------------------------------

@click.group("proofs")
def proofs() -> None:
    """Proof documents for tenants' numbers, trunks and commitments (§5(1)1)."""


@proofs.command("add")
@click.option("--tenant", required=True)
@click.option("--kind", type=click.Choice(["tenant", "number", "trunk"]), required=True)
@click.option("--subject", required=True, help="Tenant id, number or trunk name the proof is for.")
@click.option("--ref", required=True, help="Document reference.")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), help="The document: its sha256 is stored.")
@pass_app
def proofs_add(app: App, tenant: str, kind: str, subject: str, ref: str, path: str | None) -> None:
    e = _entry("proofs", {"tenant": tenant, "kind": kind, "subject": subject, "ref": ref,
                          "sha256": _sha256_file(path), "filename": Path(path).name if path else None})
    _run(app, lambda r: r.proof(e))
    click.echo(f"proof {ref} saved for {kind} {subject}")


@proofs.command("list")
@click.option("--tenant")
@json_opt
@pass_app
def proofs_list(app: App, tenant: str | None, as_json: bool) -> None:
    with app.reader() as s:
        q = select(ProofDocument).order_by(ProofDocument.id)
        if tenant:
            q = q.where(ProofDocument.tenant_id == tenant)
        rows = [{"id": p.id, "tenant": p.tenant_id, "kind": p.subject_kind, "subject": p.subject,
                 "ref": p.ref, "sha256": p.sha256} for p in s.scalars(q)]
    emit(rows, ["id", "tenant", "kind", "subject", "ref", "sha256"], as_json)


# -- consents --------------------------------------------------------------------------------

@click.group("consents")
def consents() -> None:
    """User consent evidence (用户同意凭证) behind callbacks and consultations."""


@consents.command("add")
@click.option("--tenant", required=True)
@click.option("--callee", required=True)
@click.option("--scope", type=click.Choice(["callback", "consultation"]), multiple=True, required=True)
@click.option("--obtained-at", required=True, help="ISO-8601 with offset.")
@click.option("--expires-at", help="ISO-8601 with offset (default: no expiry).")
@click.option("--evidence-kind", required=True,
              type=click.Choice(["contract", "ivr_keypress", "recording", "web_form", "other"]))
@click.option("--evidence-ref")
@click.option("--evidence-file", type=click.Path(exists=True, dir_okay=False), help="Its sha256 is stored.")
@pass_app
def consents_add(app: App, tenant, callee, scope, obtained_at, expires_at, evidence_kind, evidence_ref, evidence_file) -> None:
    e = _entry("consents", {"tenant": tenant, "callee": callee, "scope": list(scope), "obtained_at": obtained_at,
                            "expires_at": expires_at, "evidence": {"kind": evidence_kind, "ref": evidence_ref,
                                                                   "sha256": _sha256_file(evidence_file)}})
    c = _run(app, lambda r: r.consent(e))
    click.echo(f"consent {c.id} saved")


@consents.command("list")
@click.option("--tenant")
@click.option("--callee")
@json_opt
@pass_app
def consents_list(app: App, tenant: str | None, callee: str | None, as_json: bool) -> None:
    with app.reader() as s:
        q = select(Consent).order_by(Consent.id)
        if tenant:
            q = q.where(Consent.tenant_id == tenant)
        if callee:
            q = q.where(Consent.callee == _canon(callee))
        rows = [{"id": c.id, "tenant": c.tenant_id, "callee": c.callee, "scope": c.scopes,
                 "obtained_at": c.obtained_at, "expires_at": c.expires_at, "evidence": c.evidence_kind,
                 "ref": c.evidence_ref, "revoked_at": c.revoked_at} for c in s.scalars(q)]
    emit(rows, ["id", "tenant", "callee", "scope", "obtained_at", "expires_at", "evidence", "ref", "revoked_at"], as_json)


@consents.command("revoke")
@click.argument("consent_id", type=int)
@click.option("--reason", required=True)
@pass_app
def consents_revoke(app: App, consent_id: int, reason: str) -> None:
    _run(app, lambda r: r.revoke_consent(consent_id, reason))
    click.echo(f"consent {consent_id} revoked")


CSV_COLUMNS = ("tenant", "callee", "scope", "obtained_at", "expires_at", "evidence_kind", "evidence_ref", "evidence_sha256")


@consents.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@pass_app
def consents_import(app: App, file) -> None:
    """Load consents from CSV (columns: tenant, callee, scope [callback;consultation], obtained_at,
    expires_at, evidence_kind, evidence_ref, evidence_sha256). All rows or none: a bad row
    imports nothing. The rows then go in short transactions, so that calls are decided
    meanwhile; re-running completes an import that was cut off."""
    reader = csv.DictReader(file)
    missing = [c for c in ("tenant", "callee", "scope", "obtained_at", "evidence_kind") if c not in (reader.fieldnames or [])]
    if missing:
        click.echo(f"error: {file.name}: missing column(s): {', '.join(missing)}", err=True)
        raise SystemExit(1)
    entries, errors = [], []
    for line, row in enumerate(reader, start=2):
        raw = {"tenant": row.get("tenant"), "callee": row.get("callee"), "scope": row.get("scope"),
               "obtained_at": row.get("obtained_at"), "expires_at": row.get("expires_at") or None,
               "evidence": {"kind": row.get("evidence_kind"), "ref": row.get("evidence_ref") or None,
                            "sha256": row.get("evidence_sha256") or None}}
        try:
            entries.append((line, validate_entry("consents", 0, raw)))
        except RegistryError as exc:
            errors.append(f"line {line}: {exc.where.split('.', 1)[-1]}: {exc.message}")
    if errors:
        click.echo(f"error: {file.name}: {len(errors)} bad row(s), nothing was imported:", err=True)
        for e in errors[:50]:
            click.echo("  " + e, err=True)
        raise SystemExit(1)

    n = _import_consents_in_steps(app, entries)
    click.echo(f"imported {n} consent row(s)")


#: Consent rows per transaction of an import (each row is an upsert with its audit entry,
#: 1-3 ms on a slow 2-CPU host: a step holds SQLite's write lock, or PostgreSQL's audit head
#: at its commit, for a small part of a decision's deadline; 50 rows came within 30 ms of
#: 500 ms there).
CONSENT_STEP = 20
#: The pause after each step of an import in steps (consents on both stores, refusals on
#: SQLite), in which waiting call decisions take the lock.
IMPORT_STEP_PAUSE_S = 0.005


def _import_consents_in_steps(app: App, entries: list[tuple[int, Any]]) -> int:
    """A call center's CSV of thousands of consents in one transaction held every call
    decision past its deadline: on SQLite (one writer at a time) for the whole import, on
    PostgreSQL while its thousands of audit entries joined the chain at the commit (the head
    every decision locks; 5,000 entries took ~350 ms there). So every row is first checked
    against the store in a read-only session (a bad row still imports nothing), then the rows
    go in short transactions. An import cut off half-way (the process killed, the store
    changed meanwhile) is completed by running it again: a consent already stored is matched,
    not added twice."""
    try:
        with app.reader() as session:
            checker = Registry(session, app.actor)
            for line, e in entries:
                checker.check_consent(e, f"line {line}")
    except RegistryError as exc:
        click.echo(f"error: {exc} (nothing was changed)", err=True)
        raise SystemExit(1) from None
    done = 0
    for start in range(0, len(entries), CONSENT_STEP):
        step = entries[start:start + CONSENT_STEP]
        try:
            with app.session() as session:
                registry = Registry(session, app.actor)
                for line, e in step:
                    registry.consent(e, f"line {line}")
        except RegistryError as exc:  # the store changed since the check (a tenant removed)
            click.echo(f"error: {exc}; the {done} row(s) before it were imported: fix the file "
                       "and run it again (rows already stored are matched, not added twice)",
                       err=True)
            raise SystemExit(1) from None
        done += len(step)
        time.sleep(IMPORT_STEP_PAUSE_S)  # let a waiting decision take the lock
    return done


# -- refusals --------------------------------------------------------------------------------

@click.group("refusals")
def refusals() -> None:
    """Do-not-call (谢绝来电): per tenant, or global with tenant '*'."""


@refusals.command("add")
@click.argument("callee")
@click.option("--tenant", default=GLOBAL, show_default=True)
@click.option("--source", default="admin", show_default=True)
@pass_app
def refusals_add(app: App, callee: str, tenant: str, source: str) -> None:
    e = _entry("refusals", {"tenant": tenant, "callee": callee, "source": source})
    _run(app, lambda r: r.refusal(e))
    click.echo(f"refusal saved for {_canon(callee)} ({'all tenants' if tenant == GLOBAL else tenant})")


@refusals.command("remove")
@click.argument("callee")
@click.option("--tenant", default=GLOBAL, show_default=True)
@pass_app
def refusals_remove(app: App, callee: str, tenant: str) -> None:
    removed = _run(app, lambda r: r.remove_refusal(tenant, callee))
    click.echo("removed" if removed else "not listed")


@refusals.command("list")
@click.option("--tenant")
@click.option("--callee")
@click.option("--limit", default=100, show_default=True)
@json_opt
@pass_app
def refusals_list(app: App, tenant: str | None, callee: str | None, limit: int, as_json: bool) -> None:
    with app.reader() as s:
        q = select(Refusal).order_by(Refusal.id).limit(limit)
        if tenant:
            q = q.where(Refusal.tenant_id == tenant)
        if callee:
            q = q.where(Refusal.callee == _canon(callee))
        rows = [{"tenant": r.tenant_id, "callee": r.callee, "source": r.source, "since": r.created_at}
                for r in s.scalars(q)]
    emit(rows, ["tenant", "callee", "source", "since"], as_json)


@refusals.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@click.option("--tenant", default=GLOBAL, show_default=True, help="'*' = the national/global list.")
@click.option("--source", default="national-dnc", show_default=True)
@click.option("--skip-invalid", is_flag=True, help="Report bad lines but import the rest.")
@pass_app
def refusals_import(app: App, file, tenant: str, source: str, skip_invalid: bool) -> None:
    """Bulk-load a do-not-call list (one number per line, or CSV with the number first). Streams:
    millions of lines are fine. Without --skip-invalid any bad line imports nothing."""
    bad: list[str] = []

    def numbers() -> Any:
        for lineno, digits, problem in iter_dnc_numbers(file):
            if digits is None:
                bad.append(f"line {lineno}: {problem}")
                if not skip_invalid:
                    raise RegistryError(f"line {lineno}", problem)
                continue
            yield digits

    if tenant != GLOBAL:
        with app.reader() as s:
            if s.get(Tenant, tenant) is None:
                click.echo(f"error: unknown tenant {tenant!r}", err=True)
                raise SystemExit(1)
    if app.engine.dialect.name == "sqlite" and file.seekable():
        added = _import_refusals_in_steps(app, file, tenant, source, skip_invalid, bad)
    else:
        added = _run(app, lambda r: import_refusals_bulk(r.s, tenant, numbers(), source))
    for b in bad[:20]:
        click.echo("skipped " + b, err=True)
    click.echo(f"added {added} refusal(s)" + (f", skipped {len(bad)} bad line(s)" if bad else ""))


#: Refusals per transaction when a SQLite import is split (a few ms of the write lock each).
SQLITE_IMPORT_STEP = 1_000


def _import_refusals_in_steps(app: App, file: Any, tenant: str, source: str,
                              skip_invalid: bool, bad: list[str]) -> int:
    """SQLite takes one writer at a time: one transaction over millions of lines would hold
    every call decision past its deadline. So the file is checked whole first (a bad line
    without --skip-invalid still imports nothing), then imported in short transactions; an
    import cut off half-way is completed by running it again (numbers already listed are
    skipped)."""
    for lineno, digits, problem in iter_dnc_numbers(file):
        if digits is None:
            if not skip_invalid:
                click.echo(f"error: line {lineno}: {problem} (nothing was changed)", err=True)
                raise SystemExit(1)
            bad.append(f"line {lineno}: {problem}")
    file.seek(0)
    added, step = 0, []
    for _, digits, _ in iter_dnc_numbers(file):
        if digits is not None:
            step.append(digits)
        if len(step) >= SQLITE_IMPORT_STEP:
            added += _run(app, lambda r, s=step: import_refusals_bulk(r.s, tenant, s, source,
                                                                       audit_entry=False))
            step = []
            time.sleep(IMPORT_STEP_PAUSE_S)
    added += _run(app, lambda r: import_refusals_bulk(r.s, tenant, step, source,
                                                      audit_entry=False))
    with app.session() as session:
        audit.append(session, app.actor, "refusals.bulk_import", tenant,
                     {"source": source, "added": added, "transactions": "split"})
    return added


# -- campaigns -------------------------------------------------------------------------------

@click.group("campaigns")
def campaigns() -> None:
    """Outbound campaigns: marketing is refused; marketing-like text is held for review."""


@campaigns.command("register")
@click.option("--tenant", required=True)
@click.option("--id", "campaign_id", required=True)
@click.option("--purpose", required=True, help="callback | consultation | notification | survey | ...")
@click.option("--description")
@click.option("--script", "script_file", type=click.File("r", encoding="utf-8"), help="Call script text file.")
@pass_app
def campaigns_register(app: App, tenant, campaign_id, purpose, description, script_file) -> None:
    """Register a campaign; it stays pending (or held for review) until approved."""
    e = _entry("campaigns", {"id": campaign_id, "tenant": tenant, "purpose": purpose, "description": description,
                             "script": script_file.read() if script_file else None, "status": "pending"})
    c = _run(app, lambda r: r.campaign(e))
    held = c.classifier_matches and c.status != "approved"
    click.echo(f"campaign {campaign_id}: {c.status}" + (f" (reads as marketing: {c.classifier_matches})" if held else ""))


def _review_command(name: str, approve: bool) -> click.Command:
    @click.command(name, help=("Approve" if approve else "Reject") + " a campaign after review.")
    @click.argument("tenant")
    @click.argument("campaign_id")
    @click.option("--note", required=True, help="The reviewer's reasoning (kept in the audit log).")
    @pass_app
    def cmd(app: App, tenant: str, campaign_id: str, note: str) -> None:
        c = _run(app, lambda r: r.review_campaign(tenant, campaign_id, approve, note))
        click.echo(f"campaign {campaign_id}: {c.status}")

    return cmd


campaigns.add_command(_review_command("approve", True))
campaigns.add_command(_review_command("reject", False))


@campaigns.command("list")
@click.option("--tenant")
@json_opt
@pass_app
def campaigns_list(app: App, tenant: str | None, as_json: bool) -> None:
    with app.reader() as s:
        q = select(Campaign).order_by(Campaign.tenant_id, Campaign.id)
        if tenant:
            q = q.where(Campaign.tenant_id == tenant)
        rows = [{"tenant": c.tenant_id, "id": c.id, "purpose": c.purpose, "status": c.status,
                 "marketing_terms": c.classifier_matches, "reviewed_by": c.reviewed_by} for c in s.scalars(q)]
    emit(rows, ["tenant", "id", "purpose", "status", "marketing_terms", "reviewed_by"], as_json)


def register(cli: click.Group) -> None:
    for group in (tenants, numbers, trunks, proofs, consents, refusals, campaigns):
        cli.add_command(group)
