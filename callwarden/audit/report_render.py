"""Turn ``ReportData`` into HTML (a self-inspection report with inline SVG charts), JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from callwarden.audit import charts
from callwarden.audit.jsonable import to_jsonable
from callwarden.audit.report import ReportData

FORMATS = ("html", "json", "csv")


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _env() -> Environment:
    env = Environment(loader=PackageLoader("callwarden.audit", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = pct
    return env


def _charts(r: ReportData) -> dict[str, str]:
    out = {}
    if r.daily:
        out["daily"] = charts.daily_volume([d.date for d in r.daily], [d.allowed for d in r.daily],
                                           [d.denied for d in r.daily], [d.would_have_denied for d in r.daily],
                                           [d.answered for d in r.daily])
    if r.denials_by_reason:
        out["reasons"] = charts.hbar([f"{x['code']} {x['clause']}" for x in r.denials_by_reason],
                                     [x["calls"] for x in r.denials_by_reason], color=charts.COLORS["denied"])
    rates = [("answer rate 接通率", r.outbound["answer_rate"]), ("consent coverage 同意凭证覆盖率", r.consent["coverage"]),
             ("recording coverage 录音覆盖率", r.recording["coverage"])]
    known = [(k, v) for k, v in rates if v is not None]
    if known:
        out["rates"] = charts.hbar([k for k, _ in known], [v for _, v in known], percent=True,
                                   color=charts.COLORS["answered"])
    return out


def render_html(r: ReportData) -> str:
    return _env().get_template("report.html.j2").render(r=r, charts=_charts(r))


def render_json(r: ReportData) -> str:
    return json.dumps(to_jsonable(r.as_dict()), ensure_ascii=False, indent=2) + "\n"


def csv_rows(r: ReportData) -> list[tuple[str, str, Any]]:
    """Long format: (metric, dimension, value), one figure per row, spreadsheet-pivotable."""
    rows: list[tuple[str, str, Any]] = [("tenant", "", r.tenant["id"]), ("period_from", "", r.period["from"]),
                                        ("period_to", "", r.period["to"])]
    for section in ("outbound", "inbound", "consent", "recording", "quiet_hours", "frequency"):
        for k, v in getattr(r, section).items():
            rows.append((f"{section}.{k}", "", v))
    for d in r.daily:
        for k in ("attempts", "allowed", "denied", "would_have_denied", "answered"):
            rows.append((f"daily.{k}", d.date, getattr(d, k)))
    for x in r.denials_by_reason:
        rows.append(("denials_by_reason", f"{x['code']} {x['clause']}", x["calls"]))
    for x in r.observe["by_reason"]:
        rows.append(("would_have_denied_by_reason", f"{x['code']} {x['clause']}", x["calls"]))
    rows.append(("suspensions.status_changes", "", len(r.suspensions["status_changes"])))
    rows.append(("suspensions.suspended_times", "", r.suspensions["suspended_times"]))
    rows.append(("suspensions.alerts", "", len(r.suspensions["alerts"])))
    rows.append(("complaints.count", "", r.complaints["count"]))
    return rows


def render_csv(r: ReportData) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", "dimension", "value"])
    for metric, dim, value in csv_rows(r):
        w.writerow([metric, dim, "" if value is None else value])
    return buf.getvalue()


def render(r: ReportData, fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    return {"html": render_html, "json": render_json, "csv": render_csv}[fmt](r)
