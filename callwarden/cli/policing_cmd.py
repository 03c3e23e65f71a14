"""Seat-rental policing commands: ``police``, ``tenants risk``, ``complaints ...``, ``alerts ...``.

Thin over ``callwarden.policing``. Exit codes: 0 ok, 1 a bad input or unknown id (nothing
changed), 2 configuration error.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import signal
import threading
from typing import Any

import click
from sqlalchemy import select

from callwarden.cli.admin import tenants as tenants_group
from callwarden.cli.app import App, pass_app
from callwarden.cli.output import emit, emit_json, table
from callwarden.numbers import mask
from callwarden.policing import complaints as complaints_mod
from callwarden.policing.runner import Detector, PassResult
from callwarden.policing.scoring import Risk
from callwarden.store import audit
from callwarden.store.models import Alert, Complaint, Tenant, utcnow

json_opt = click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
now_opt = click.option("--now", "now_text", metavar="ISO",
                       help="Evaluate as of this time (default: now; no offset = config timezone).")


def _now(app: App, text: str | None, option: str = "--now") -> dt.datetime | None:
    if not text:
        return None
    try:
        return complaints_mod.parse_time(text, app.settings.tz)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _detector(app: App) -> Detector:
    return Detector(app.settings, engine=app.engine, run_by=app.actor)


# -- tenants risk ----------------------------------------------------------------------------

def _risk_row(r: Risk) -> dict[str, Any]:
    return {"tenant": r.tenant_id, "status": r.figures.status, "score": r.score, "level": r.level,
            "attempts": r.figures.traffic.attempts,
            "figures": "; ".join(c.brief() for c in r.top(4)) or "-"}


def _contribution_rows(r: Risk) -> list[dict[str, Any]]:
    return [{"feature": c.feature, "value": "-" if c.value is None else f"{c.value:.4g}",
             "sample": c.sample, "start": f"{c.start:g}", "full": f"{c.full:g}",
             "weight": f"{c.weight:g}", "points": f"{c.points:g}", "note": c.note}
            for c in r.contributions]


@click.command("risk")
@click.option("--tenant", "tenant_id", help="Just this tenant, with every figure and sample calls.")
@now_opt
@json_opt
@pass_app
def risk_cmd(app: App, tenant_id: str | None, now_text: str | None, as_json: bool) -> None:
    """Each tenant's risk score with the figures behind it, and its filing/proof findings."""
    now = _now(app, now_text)
    detector = _detector(app)
    if tenant_id is not None:
        with app.reader() as s:
            if s.get(Tenant, tenant_id) is None:
                click.echo(f"error: tenant {tenant_id!r} not found", err=True)
                raise SystemExit(1)
    a = detector.assess(now, None if tenant_id is None else [tenant_id])
    risks = sorted(a.risks, key=lambda r: (-r.score, r.tenant_id))
    cfg = app.settings.policing
    evidence = {r.tenant_id: detector.evidence(r) for r in risks} if tenant_id else {}
    if as_json:
        emit_json({
            "as_of": a.as_of.isoformat(),
            "thresholds": {"warn": cfg.warn_score, "suspend": cfg.suspend_score},
            "tenants": [{**r.as_dict(), **({"evidence": evidence[r.tenant_id]} if evidence else {})}
                        for r in risks],
            "findings": [f.as_dict() for f in a.findings],
        })
        return
    click.echo(f"as of {a.as_of.astimezone(app.settings.tz).isoformat(timespec='seconds')}; "
               f"thresholds: warn {cfg.warn_score:g}, suspend {cfg.suspend_score:g}; "
               f"score = sum of weight x level per figure (docs/policing.md)")
    emit([_risk_row(r) for r in risks], ["tenant", "status", "score", "level", "attempts", "figures"], False)
    for r in risks if tenant_id else []:
        w = r.figures.traffic_window
        click.echo(f"\n{r.tenant_id}: {r.summary()}")
        click.echo(f"traffic window {w.start.isoformat(timespec='seconds')} .. "
                   f"{w.end.isoformat(timespec='seconds')}; counts: "
                   + ", ".join(f"{k} {v}" for k, v in r.figures.counts().items()))
        click.echo(table(_contribution_rows(r), ["feature", "value", "sample", "start", "full",
                                                 "weight", "points", "note"]))
        ev = evidence[r.tenant_id]
        for feature, ids in ev["samples"].items():
            click.echo(f"sample calls for {feature}: {', '.join(ids)}")
        for run in ev["runs"]:
            click.echo(f"sequential run: {run['from']} .. {run['to']} ({run['count']} callees)")
    click.echo("\nfindings:")
    emit([{"kind": f.kind, "tenant": f.tenant_id, "subject": f"{f.subject_kind} {f.shown_subject()}",
           "detail": f.detail} for f in a.findings], ["kind", "tenant", "subject", "detail"], False)


# -- police ----------------------------------------------------------------------------------

def _print_pass(app: App, result: PassResult) -> None:
    if not result.ran:
        click.echo(f"skipped: {result.skipped}")
        return
    a = result.assessment
    assert a is not None
    warn = sum(1 for r in a.risks if r.level == "warn")
    susp = sum(1 for r in a.risks if r.level == "suspend")
    click.echo(f"pass as of {result.as_of.astimezone(app.settings.tz).isoformat(timespec='seconds')}"
               f"{' (dry run: nothing written)' if result.dry_run else ''}: {len(a.risks)} tenant(s) "
               f"scored, {warn} at warn, {susp} at suspend, {len(a.findings)} finding(s), "
               f"{result.duration_s:.2f}s")
    if result.dry_run:
        for p in result.planned:
            click.echo(f"would raise {p.kind} [{p.level}] {p.tenant_id}: {p.summary}"
                       + (" -> tenant would be SUSPENDED" if p.level == "suspend" else ""))
        return
    for r in result.raised:
        p = r.planned
        click.echo(f"raised #{r.id} {p.kind} [{p.level}] {p.tenant_id}: {p.summary}"
                   + (" -> tenant SUSPENDED" if r.suspended else ""))
    if not result.raised:
        click.echo("nothing new to raise")


def _flush_webhooks(detector: Detector) -> None:
    n = detector.notifier
    if n is None:
        return
    c = n.cfg
    budget = min(120.0, (1 + c.retries) * c.timeout_s + sum(c.backoff_s * 2 ** i for i in range(c.retries)) + 1)
    if not n.flush(budget):
        click.echo("warning: webhook deliveries still pending at exit (the alerts are stored)", err=True)
    elif n.stats.failed:
        click.echo(f"warning: {n.stats.failed} webhook delivery(ies) failed: {n.stats.errors[-1]} "
                   "(the alerts are stored and logged)", err=True)


@click.command("police")
@click.option("--once", is_flag=True, help="Run one pass and exit (for cron).")
@click.option("--dry-run", is_flag=True, help="Score and list what would be raised; write nothing.")
@now_opt
@json_opt
@pass_app
def police_cmd(app: App, once: bool, dry_run: bool, now_text: str | None, as_json: bool) -> None:
    """Run the seat-rental detector: raise alerts and suspend tenants past the thresholds.

    Without --once, a pass every policing.interval_s until SIGTERM/SIGINT. With several nodes on
    one PostgreSQL, only one pass runs at a time (the others skip).
    """
    now = _now(app, now_text)
    if (dry_run or now is not None) and not once:
        raise click.UsageError("--dry-run and --now need --once")
    detector = _detector(app)
    try:
        if once:
            result = detector.run_pass(now=now, dry_run=dry_run)
            if as_json:
                emit_json(result.as_dict())
            else:
                _print_pass(app, result)
            _flush_webhooks(detector)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(f"policing every {app.settings.policing.interval_s}s; stop with Ctrl-C", err=True)
        detector.run_forever(stop)
    finally:
        detector.close()


# -- complaints ------------------------------------------------------------------------------

@click.group("complaints")
def complaints() -> None:
    """Complaints (投诉) about tenants' calls: they count in the risk score."""


def _store_one(app: App, raw: dict[str, Any]) -> complaints_mod.Stored:
    try:
        entry = complaints_mod.validate(raw, app.settings.tz)
        with app.session() as s:
            return complaints_mod.record(s, entry, app.actor)
    except complaints_mod.ComplaintError as exc:
        click.echo(f"error: {exc.field}: {exc.message} (nothing was changed)", err=True)
        raise SystemExit(1) from None


@complaints.command("add")
@click.option("--tenant", required=True)
@click.option("--callee", required=True, help="The number of the person who complained.")
@click.option("--at", "at_text", metavar="ISO", help="When it was received (default now).")
@click.option("--source", help="12321, carrier, hotline ...")
@click.option("--note")
@click.option("--call-id", help="The call complained about, if known.")
@pass_app
def complaints_add(app: App, tenant: str, callee: str, at_text: str | None, source: str | None,
                   note: str | None, call_id: str | None) -> None:
    """Record one complaint."""
    stored = _store_one(app, {"tenant": tenant, "callee": callee,
                              "received_at": at_text or utcnow().isoformat(), "source": source,
                              "note": note, "call_id": call_id})
    c = stored.complaint
    click.echo(f"complaint {c.id} {'recorded' if stored.created else 'was already recorded'}: "
               f"tenant {c.tenant_id}, callee {mask(c.callee)}")


@complaints.command("list")
@click.option("--tenant")
@click.option("--from", "since", metavar="ISO")
@click.option("--to", "until", metavar="ISO")
@click.option("--limit", default=100, show_default=True)
@click.option("--full-numbers", is_flag=True, help="Show callee numbers unmasked (audit-logged).")
@json_opt
@pass_app
def complaints_list(app: App, tenant: str | None, since: str | None, until: str | None, limit: int,
                    full_numbers: bool, as_json: bool) -> None:
    """Complaints, newest first."""
    start, end = _now(app, since, "--from"), _now(app, until, "--to")
    q = select(Complaint).order_by(Complaint.received_at.desc(), Complaint.id.desc()).limit(limit)
    if tenant:
        q = q.where(Complaint.tenant_id == tenant)
    if start:
        q = q.where(Complaint.received_at >= start)
    if end:
        q = q.where(Complaint.received_at < end)
    with app.session() as s:
        rows = [{"id": c.id, "tenant": c.tenant_id, "callee": c.callee if full_numbers else mask(c.callee),
                 "received_at": c.received_at, "source": c.source, "call_id": c.call_id, "note": c.note}
                for c in s.scalars(q)]
        if full_numbers:
            audit.append(s, app.actor, "complaints.full_numbers", tenant,
                         {"from": since, "to": until, "rows": len(rows)})
    emit(rows, ["id", "tenant", "callee", "received_at", "source", "call_id", "note"], as_json)


@complaints.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@pass_app
def complaints_import(app: App, file) -> None:  # type: ignore[no-untyped-def]
    """Load complaints from CSV: tenant, callee, received_at [, source, note, call_id].

    Every row is checked; any bad row imports nothing and all bad rows are listed. Rows already
    recorded (same tenant, callee, time and source) are skipped, so re-importing is harmless.
    """
    reader = csv.DictReader(file)
    fields = reader.fieldnames or []
    missing = [c for c in complaints_mod.CSV_REQUIRED if c not in fields]
    unknown = [c for c in fields if c not in complaints_mod.CSV_COLUMNS]
    if missing or unknown:
        problem = (f"missing column(s): {', '.join(missing)}" if missing
                   else f"unknown column(s): {', '.join(unknown)}")
        click.echo(f"error: {file.name}: {problem} (expected {', '.join(complaints_mod.CSV_COLUMNS)})",
                   err=True)
        raise SystemExit(1)
    rows = [(line, {k: v for k, v in row.items() if k is not None})
            for line, row in enumerate(reader, start=2)]

    class _Rollback(Exception):
        pass

    result: tuple[int, int, list[str]] = (0, 0, [])
    try:
        with app.session() as s:
            result = complaints_mod.import_rows(s, rows, app.settings.tz, app.actor)
            if result[2]:
                raise _Rollback
    except _Rollback:
        errors = result[2]
        click.echo(f"error: {file.name}: {len(errors)} bad row(s), nothing was imported:", err=True)
        for e in errors[:50]:
            click.echo("  " + e, err=True)
        if len(errors) > 50:
            click.echo(f"  ... and {len(errors) - 50} more", err=True)
        raise SystemExit(1) from None
    added, same, _ = result
    click.echo(f"imported {added} complaint(s)" + (f", {same} already recorded" if same else ""))


# -- alerts ----------------------------------------------------------------------------------

@click.group("alerts")
def alerts() -> None:
    """Alerts raised by the policing detector (warnings, suspensions, filing/proof findings)."""


def _summary(a: Alert) -> str:
    try:
        return str(json.loads(a.details).get("summary", ""))
    except ValueError:
        return ""


@alerts.command("list")
@click.option("--tenant")
@click.option("--kind", help="risk_warn, risk_suspend, filing_overdue, filing_missing, proof_missing")
@click.option("--level", type=click.Choice(["warn", "suspend"]))
@click.option("--open", "only_open", is_flag=True, help="Only alerts not acknowledged yet.")
@click.option("--limit", default=100, show_default=True)
@json_opt
@pass_app
def alerts_list(app: App, tenant: str | None, kind: str | None, level: str | None, only_open: bool,
                limit: int, as_json: bool) -> None:
    """Alerts, newest first."""
    q = select(Alert).order_by(Alert.raised_at.desc(), Alert.id.desc()).limit(limit)
    if tenant:
        q = q.where(Alert.tenant_id == tenant)
    if kind:
        q = q.where(Alert.kind == kind)
    if level:
        q = q.where(Alert.level == level)
    if only_open:
        q = q.where(Alert.acknowledged_at.is_(None))
    with app.reader() as s:
        rows = [{"id": a.id, "raised_at": a.raised_at, "tenant": a.tenant_id, "kind": a.kind,
                 "level": a.level, "score": a.score, "acknowledged_by": a.acknowledged_by,
                 "acknowledged_at": a.acknowledged_at, "summary": _summary(a)} for a in s.scalars(q)]
    emit(rows, ["id", "raised_at", "tenant", "kind", "level", "score", "acknowledged_by", "summary"],
         as_json)


@alerts.command("show")
@click.argument("alert_id", type=int)
@pass_app
def alerts_show(app: App, alert_id: int) -> None:
    """One alert with its full evidence (JSON)."""
    with app.reader() as s:
        a = s.get(Alert, alert_id)
        if a is None:
            click.echo(f"error: unknown alert {alert_id}", err=True)
            raise SystemExit(1)
        emit_json({"id": a.id, "dedup_key": a.dedup_key, "tenant": a.tenant_id, "kind": a.kind,
                   "level": a.level, "score": a.score, "raised_at": a.raised_at,
                   "acknowledged_by": a.acknowledged_by, "acknowledged_at": a.acknowledged_at,
                   "details": json.loads(a.details)})


@alerts.command("ack")
@click.argument("alert_ids", type=int, nargs=-1, required=True)
@click.option("--note", default="", help="What was done about it (kept in the audit log).")
@pass_app
def alerts_ack(app: App, alert_ids: tuple[int, ...], note: str) -> None:
    """Acknowledge alerts (does not resume a suspended tenant: that is `tenants resume`)."""
    with app.session() as s:
        found = {a.id: a for a in s.scalars(select(Alert).where(Alert.id.in_(alert_ids)).with_for_update())}
        unknown = [str(i) for i in alert_ids if i not in found]
        if unknown:
            click.echo(f"error: unknown alert(s): {', '.join(unknown)} (nothing was changed)", err=True)
            raise SystemExit(1)
        now = utcnow()
        for i in dict.fromkeys(alert_ids):
            a = found[i]
            if a.acknowledged_at is not None:
                click.echo(f"alert {i} was already acknowledged by {a.acknowledged_by}")
                continue
            a.acknowledged_by, a.acknowledged_at = app.actor, now
            audit.append(s, app.actor, "alerts.acknowledged", a.tenant_id,
                         {"alert_id": i, "kind": a.kind, "level": a.level, "note": note})
            click.echo(f"alert {i} acknowledged")


def register(cli: click.Group) -> None:
    tenants_group.add_command(risk_cmd)
    for command in (police_cmd, complaints, alerts):
        cli.add_command(command)
