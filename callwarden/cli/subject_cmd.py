"""``callwarden subject export|erase --number N``: a data subject's requests (PIPL).

Thin over ``callwarden.service.subject``. Both are audit-logged (the number keyed and masked).
Exit codes: 0 done; 1 something due could not be deleted (erase) or another purge is running;
2 usage; 4 access denied (a tenant-scoped account asking to erase).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from callwarden.audit.access import record_access, resolve_scope
from callwarden.audit.snapshot import snapshot
from callwarden.cli.app import App, pass_app
from callwarden.cli.audit_cmd import EXIT_DENIED, _guard, scope_option
from callwarden.cli.output import emit_json
from callwarden.numbers import InvalidNumber, Number, normalize
from callwarden.service.locks import Busy
from callwarden.service.recording_target import LazyTarget
from callwarden.service.subject import SubjectEraser, export_counts, export_subject
from callwarden.store.db import make_sessionmaker


def _number(value: str) -> Number:
    try:
        return normalize(value)
    except InvalidNumber:
        raise click.UsageError("--number: not a phone number") from None


@click.group("subject")
def subject_group() -> None:
    """A data subject's requests: everything held about one number; erase what may go."""


@subject_group.command("export")
@click.option("--number", required=True, metavar="N", help="The subject's phone number.")
@click.option("--out", metavar="FILE", help="Write the JSON here (default: standard output).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@scope_option
@pass_app
def subject_export(app: App, number: str, out: str | None, force: bool, as_tenant: str | None) -> None:
    """Everything the store holds about one number, as one JSON document: CDRs, recordings,
    consents, do-not-call entries, complaints, legal holds naming it, audit entries about it."""
    n = _number(number)
    if out and Path(out).exists() and not force:
        raise click.UsageError(f"{out} exists (use --force to replace it)")
    with _guard():
        scope = resolve_scope(app.actor, as_tenant)
        with snapshot(app.engine) as s:
            doc = export_subject(s, app.audit_key, n, scope)
    counts = export_counts(doc)
    with app.session() as s:
        record_access(s, scope, "subject.exported", scope.tenant,
                      {"number": n.digits, "counts": counts, "out": "stdout" if not out else "file"})
    text = json.dumps(doc, ensure_ascii=False, indent=2)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
        click.echo(f"{out}: " + ", ".join(f"{v} {k}" for k, v in counts.items()), err=True)
    else:
        sys.stdout.write(text + "\n")


@subject_group.command("erase")
@click.option("--number", required=True, metavar="N", help="The subject's phone number.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def subject_erase(app: App, number: str, as_json: bool) -> None:
    """Remove what no legal hold or retention floor requires to keep; say what was kept and why.

    CDRs, recordings, consent evidence and complaints go unless a legal hold covers them or
    the 30-day floor after their end has not passed; active consents are revoked first; do-not-
    call entries are kept. Audit-logged."""
    n = _number(number)
    with _guard():
        scope = resolve_scope(app.actor, None)
        if scope.tenant is not None:
            click.echo("access denied: erasure is for an operator, not a tenant-scoped account",
                       err=True)
            raise SystemExit(EXIT_DENIED)
    eraser = SubjectEraser(app.settings, app.engine, make_sessionmaker(app.engine),
                           LazyTarget(app.settings), actor=app.actor, number=n)
    try:
        report = eraser.run()
    except Busy as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        click.echo(f"erased {n.masked()} as of {report.now.isoformat(timespec='seconds')}: "
                   + ", ".join(f"{v} {k}(s)" for k, v in report.removed.items()) + " removed"
                   + (f"; {len(report.revoked_consents)} consent(s) revoked"
                      if report.revoked_consents else ""))
        for k in report.kept:
            click.echo(f"  KEPT {k.kind} {k.subject}: {k.reason}")
    if not report.ok:
        raise SystemExit(1)


def register(cli: click.Group) -> None:
    cli.add_command(subject_group)
