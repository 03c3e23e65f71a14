"""``callwarden purge``, ``callwarden holds ...`` and ``callwarden verify``: retention and proof.

Thin wrappers: the work is in ``callwarden.service.purge``, ``.holds`` and ``.verify``.
Exit codes: 0 all well; 1 something is wrong or could not be done (details on the output);
2 a usage or configuration error.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, NoReturn

import click

from callwarden.cli.app import App, pass_app
from callwarden.cli.output import emit, emit_json
from callwarden.service.holds import HoldError, lift_hold, list_holds, set_hold
from callwarden.service.locks import Busy
from callwarden.service.purge import KINDS, Purger, PurgeReport
from callwarden.service.recording_target import LazyTarget
from callwarden.service.recordings import RecordingService
from callwarden.service.verify import Verifier, VerifyReport
from callwarden.store.db import make_sessionmaker
from callwarden.store.models import LegalHold


def _when(value: str | None, app: App, option: str) -> dt.datetime | None:
    """ISO-8601 instant; without an offset it is read in the configured timezone."""
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("must be ISO-8601, e.g. 2026-03-01T08:00:00+08:00",
                                 param_hint=option) from None
    return t if t.tzinfo else t.replace(tzinfo=app.settings.tz)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(1)


# -- purge -------------------------------------------------------------------------------------

@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Only list what is due; change nothing.")
@click.option("--now", "now_text", metavar="ISO",
              help="Purge as of this instant (default: now; may not be in the future).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def purge_cmd(app: App, dry_run: bool, now_text: str | None, as_json: bool) -> None:
    """Delete recordings, CDRs and consent evidence past retention and not on legal hold.

    One audit entry per deletion. Safe to re-run, and to kill: the next run finishes what an
    interrupted one started. Exits 1 if something due could not be deleted (e.g. S3 object
    lock still holds it), or if another purge is running.
    """
    now = _when(now_text, app, "--now")
    try:
        purger = Purger(app.settings, app.engine, make_sessionmaker(app.engine),
                        LazyTarget(app.settings), actor=app.actor, now=now, dry_run=dry_run)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--now") from None
    try:
        report = purger.run()
    except Busy as exc:
        _fail(str(exc))
    if as_json:
        emit_json(_purge_json(report))
    else:
        _purge_text(report)
    if not report.ok:
        raise SystemExit(1)


def _purge_json(report: PurgeReport) -> dict[str, Any]:
    return {"now": report.now, "dry_run": report.dry_run, "ok": report.ok,
            **{f"{kind}s": counts for kind, counts in report.summary().items()},
            "items": [{"kind": i.kind, "subject": i.subject, "result": i.result,
                       "detail": i.detail} for i in report.items]}


def _purge_text(report: PurgeReport) -> None:
    verb = "would purge" if report.dry_run else "purged"
    click.echo(f"purge as of {report.now.isoformat(timespec='seconds')}"
               f"{' (dry run: nothing changed)' if report.dry_run else ''}")
    summary = report.summary()
    for kind in KINDS:
        c = summary[kind]
        done = c["would_purge"] if report.dry_run else c["purged"]
        extra = [f"{c[k]} {k}" for k in ("locked", "error", "kept") if c[k]]
        click.echo(f"  {kind + 's:':12} {done} {verb}, {c['held']} held" +
                   (", " + ", ".join(extra) if extra else ""))
    for item in report.items:
        if item.result in ("locked", "error", "kept") or report.dry_run:
            click.echo(f"  {item.result.upper():12} {item.kind} {item.subject}"
                       + (f": {item.detail}" if item.detail else ""))


# -- legal holds -------------------------------------------------------------------------------

@click.group("holds")
def holds_group() -> None:
    """Legal holds: keep a call's, a tenant's or a number range's evidence past retention."""


def _hold_row(h: LegalHold) -> dict[str, Any]:
    return {"id": h.id, "scope": h.scope, "value": h.value, "reason": h.reason,
            "set_by": h.set_by, "set_at": h.set_at, "lifted_by": h.lifted_by,
            "lifted_at": h.lifted_at, "active": h.lifted_at is None}


@holds_group.command("set")
@click.option("--call", "call_id", metavar="CALL_ID", help="Hold one call (CDR and recording).")
@click.option("--tenant", metavar="TENANT", help="Hold everything of one tenant.")
@click.option("--number-prefix", "prefix", metavar="DIGITS",
              help="Hold calls from or to numbers starting with these digits (3 or more).")
@click.option("--reason", required=True, help="Why (case number, request): audit-logged.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def holds_set(app: App, call_id: str | None, tenant: str | None, prefix: str | None,
              reason: str, as_json: bool) -> None:
    """Put evidence on legal hold: purge keeps it until the hold is lifted."""
    given = [(s, v) for s, v in (("call", call_id), ("tenant", tenant), ("number_prefix", prefix))
             if v]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --call, --tenant, --number-prefix")
    scope, value = given[0]
    try:
        with app.session() as s:
            row = _hold_row(set_hold(s, app.actor, scope, value, reason))
    except HoldError as exc:
        _fail(str(exc))
    if as_json:
        emit_json(row)
    else:
        click.echo(f"legal hold {row['id']} set on {row['scope']} {row['value']}")


@holds_group.command("lift")
@click.argument("hold_id", type=int)
@click.option("--reason", required=True, help="Why it may end: audit-logged.")
@pass_app
def holds_lift(app: App, hold_id: int, reason: str) -> None:
    """Lift a legal hold; what it kept is purged by the next run if its deadline has passed."""
    try:
        with app.session() as s:
            hold = lift_hold(s, app.actor, hold_id, reason)
            scope, value = hold.scope, hold.value
    except HoldError as exc:
        _fail(str(exc))
    click.echo(f"legal hold {hold_id} on {scope} {value} lifted")


@holds_group.command("list")
@click.option("--all", "include_lifted", is_flag=True, help="Include lifted holds.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def holds_list(app: App, include_lifted: bool, as_json: bool) -> None:
    """Legal holds, newest first (active ones unless --all)."""
    with app.reader() as s:
        rows = [_hold_row(h) for h in list_holds(s, include_lifted=include_lifted)]
    emit(rows, ["id", "scope", "value", "reason", "set_by", "set_at", "lifted_at"], as_json)


# -- verify ------------------------------------------------------------------------------------

@click.command("verify")
@click.option("--fix", is_flag=True, help="Apply the fixes whose outcome is certain (audit-logged).")
@click.option("--since", metavar="ISO",
              help="Re-hash only recordings started since then (every other check is complete).")
@click.option("--stuck-after", type=click.IntRange(0), default=300, show_default=True,
              metavar="SECONDS", help="How long after a call's end an unfinalized recording is stuck.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def verify_cmd(app: App, fix: bool, since: str | None, stuck_after: int, as_json: bool) -> None:
    """Check the audit-log chain, every recording's hash, and storage and spool against the
    store; exit 1 if anything is wrong. With --fix, fix what can be fixed with certainty."""
    sessions = make_sessionmaker(app.engine)
    verifier = Verifier(app.settings, sessions, RecordingService(app.settings, sessions),
                        actor=app.actor, fix=fix, since=_when(since, app, "--since"),
                        stuck_after=dt.timedelta(seconds=stuck_after))
    report = verifier.run()
    if as_json:
        emit_json(report.as_dict())
    else:
        _verify_text(report)
    if not report.ok:
        raise SystemExit(1)


def _verify_text(report: VerifyReport) -> None:
    chain = [f for f in report.findings if f.kind == "audit_chain_broken"]
    for f in chain:
        click.echo(f"audit log entry {(f.subject or '').removeprefix('audit:')}: {f.detail}")
    if not chain:
        head = (report.audit_head or "-")[:16]
        click.echo(f"audit log: {report.audit_entries} entries, chain intact (head {head})")
    c = report.counts
    statuses = ", ".join(f"{c[k]} {k.removeprefix('recordings_')}" for k in sorted(c)
                         if k.startswith("recordings_") and k != "recordings_hashed")
    click.echo(f"recordings: {statuses or 'none'}; {c['recordings_hashed']} re-hashed; "
               f"{c['storage_files']} file(s) in storage, {c['spool_files']} in the spool")
    for f in report.findings:
        if f.kind == "audit_chain_broken":
            continue
        label = "FIXED" if f.fixed else f.severity.upper()
        click.echo(f"{label:7} {f.kind} {f.subject or ''}: {f.detail}"
                   + (f" [--fix: {f.fix}]" if f.fix else ""))
    problems = sum(1 for f in report.findings if f.severity == "error" and not f.fixed)
    click.echo("verify: OK" if report.ok else f"verify: {problems} problem(s)")


def register(cli: click.Group) -> None:
    cli.add_command(purge_cmd)
    cli.add_command(holds_group)
    cli.add_command(verify_cmd)
