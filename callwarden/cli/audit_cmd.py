"""``callwarden audit search`` and ``callwarden verify``: what auditors run."""

from __future__ import annotations

import csv
import datetime as dt
import sys
from typing import Any

import click
from sqlalchemy import Select, select

from callwarden.cli.app import App, pass_app
from callwarden.cli.output import emit, emit_json
from callwarden.numbers import InvalidNumber, mask, normalize
from callwarden.store import audit
from callwarden.store.models import Call, Recording


def _iso(value: str | None, tz, name: str) -> dt.datetime | None:  # type: ignore[no-untyped-def]
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("must be ISO-8601, e.g. 2026-03-01 or 2026-03-01T08:00:00+08:00",
                                 param_hint=name) from None
    return t if t.tzinfo else t.replace(tzinfo=tz)


def _number_filter(column: Any, value: str) -> Any:
    """Exact match on the canonical number, or a prefix match when the value ends with '*'."""
    prefix = value.endswith("*")
    raw = value.rstrip("*")
    try:
        digits = normalize(raw).digits if not prefix else raw.replace(" ", "").replace("-", "")
    except InvalidNumber as exc:
        raise click.BadParameter(str(exc)) from None
    if prefix:
        return (column >= digits) & (column < digits + ":")
    return column == digits


def search_query(tenant=None, caller=None, callee=None, since=None, until=None, decision=None,
                 reason=None, direction=None, campaign=None, has_recording=None) -> Select:  # type: ignore[no-untyped-def]
    q = select(Call, Recording).outerjoin(Recording, Recording.id == Call.recording_id)
    if tenant:
        q = q.where(Call.tenant_id == tenant)
    if caller:
        q = q.where(_number_filter(Call.caller, caller))
    if callee:
        q = q.where(_number_filter(Call.callee, callee))
    if since:
        q = q.where(Call.attempted_at >= since)
    if until:
        q = q.where(Call.attempted_at < until)
    if decision:
        q = q.where(Call.decision == decision)
    if reason:
        # codes are comma-separated and no code is a substring of another's full form
        q = q.where(("," + Call.reasons + ",").contains("," + reason.upper() + ","))
    if direction:
        q = q.where(Call.direction == direction)
    if campaign:
        q = q.where(Call.campaign == campaign)
    if has_recording is True:
        q = q.where(Recording.status == "stored")
    elif has_recording is False:
        q = q.where((Recording.id.is_(None)) | (Recording.status != "stored"))
    return q.order_by(Call.attempted_at.desc(), Call.call_id)


def call_row(call: Call, rec: Recording | None, full: bool) -> dict[str, Any]:
    show = (lambda n: n) if full else mask
    return {
        "call_id": call.call_id, "tenant": call.tenant_id, "direction": call.direction,
        "caller": show(call.caller), "callee": show(call.callee), "decision": call.decision,
        "reasons": call.reason_codes, "enforced": call.enforced, "trunk": call.trunk,
        "campaign": call.campaign, "purpose": call.purpose, "pbx": call.pbx, "pbx_call_id": call.pbx_call_id,
        "attempted_at": call.attempted_at, "answered_at": call.answered_at, "ended_at": call.ended_at,
        "billsec": call.billsec, "disposition": call.disposition, "hangup_cause": call.hangup_cause,
        "consent_id": call.consent_id, "consent_basis": call.consent_basis,
        "recording": None if rec is None or rec.status != "stored" else {
            "sha256": rec.sha256, "size": rec.size, "location": rec.location,
            "duration_s": rec.duration_s, "encrypted": rec.encrypted},
        "recording_status": rec.status if rec else None,
    }


CSV_COLUMNS = ["call_id", "tenant", "direction", "caller", "callee", "decision", "reasons", "enforced",
               "trunk", "campaign", "purpose", "pbx", "pbx_call_id", "attempted_at", "answered_at",
               "ended_at", "billsec", "disposition", "hangup_cause", "consent_id", "consent_basis",
               "recording_status"]


@click.group("audit")
def audit_group() -> None:
    """Auditors: search calls (and, with later commands, export evidence)."""


@audit_group.command("search")
@click.option("--tenant")
@click.option("--caller", help="Number, or prefix ending in '*'.")
@click.option("--callee", help="Number, or prefix ending in '*'.")
@click.option("--from", "since", metavar="ISO", help="Attempted at or after (no offset = config timezone).")
@click.option("--to", "until", metavar="ISO", help="Attempted before.")
@click.option("--decision", type=click.Choice(["allow", "deny"]))
@click.option("--reason", metavar="CODE")
@click.option("--direction", type=click.Choice(["outbound", "inbound"]))
@click.option("--campaign")
@click.option("--has-recording/--no-recording", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--offset", default=0, type=click.IntRange(0))
@click.option("--full-numbers", is_flag=True, help="Show numbers unmasked (audit-logged).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--csv", "as_csv", is_flag=True)
@pass_app
def audit_search(app: App, tenant, caller, callee, since, until, decision, reason, direction, campaign,
                 has_recording, limit, offset, full_numbers, as_json, as_csv) -> None:
    """Search calls, newest first. Numbers are masked unless --full-numbers."""
    tz = app.settings.tz
    q = search_query(tenant, caller, callee, _iso(since, tz, "--from"), _iso(until, tz, "--to"), decision,
                     reason, direction, campaign, has_recording).limit(limit).offset(offset)
    with app.reader() as s:
        rows = [call_row(c, r, full_numbers) for c, r in s.execute(q)]
    if full_numbers:
        with app.session() as s:
            audit.append(s, app.actor, "audit.full_numbers", None, {
                "filters": {"tenant": tenant, "caller": caller, "callee": callee, "from": since, "to": until,
                            "decision": decision, "reason": reason}, "rows": len(rows)})
    if as_json:
        emit_json(rows)
    elif as_csv:
        cols = CSV_COLUMNS
        w = csv.writer(sys.stdout)
        w.writerow(cols + ["recording_sha256"])
        for r in rows:
            w.writerow([",".join(v) if isinstance(v, list) else v for v in (r[c] for c in cols)]
                       + [r["recording"]["sha256"] if r["recording"] else ""])
    else:
        emit(rows, ["attempted_at", "call_id", "tenant", "direction", "caller", "callee", "decision",
                    "reasons", "billsec", "disposition"], False)


@click.command("verify")
@pass_app
def verify_cmd(app: App) -> None:
    """Walk the audit-log hash chain; exit 1 on any break."""
    with app.reader() as s:
        problems = audit.verify_chain(s)
        head = s.get(audit.AuditHead, 1)
    if problems:
        for p in problems:
            click.echo(f"audit log entry {p.seq}: {p.problem}")
        raise SystemExit(1)
    click.echo(f"audit log: {head.seq if head else 0} entries, chain intact (head {head.hash[:16] if head else '-'})")


def register(cli: click.Group) -> None:
    cli.add_command(audit_group)
    cli.add_command(verify_cmd)
