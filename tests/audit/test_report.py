"""``callwarden report``: the figures of a seeded month, read back out of the HTML, JSON and CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from html.parser import HTMLParser

from sqlalchemy import select

from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.models import AuditEntry

MARCH = ("--tenant", "acme", "--from", "2026-03-01", "--to", "2026-03-31")


class Figures(HTMLParser):
    """Collects the text of elements carrying data-* attributes, keyed by attribute and row."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, list[str]] = defaultdict(list)
        self.rows: dict[str, dict[str, str]] = defaultdict(dict)  # "data-day=2026-03-02" -> metric -> text
        self.findings: list[str] = []
        self.headings: list[str] = []
        self.svgs = 0
        self._stack: list[tuple[str, dict[str, str | None], list[str]]] = []
        self._row: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.svgs += 1
        if tag == "tr":
            self._row = next((f"{k}={v}" for k, v in a.items() if k.startswith("data-")), None)
            if self._row:
                self.rows.setdefault(self._row, {})
        self._stack.append((tag, a, []))

    def handle_data(self, data):
        for _, _, buf in self._stack:
            buf.append(data)

    def handle_endtag(self, tag):
        while self._stack:
            t, a, buf = self._stack.pop()
            text = "".join(buf).strip()
            if "data-metric" in a:
                self.metrics[a["data-metric"]].append(text)
                if self._row:
                    self.rows[self._row][a["data-metric"]] = text
            if "data-finding" in a:
                self.findings.append(a["data-finding"])
            if t == "h2":
                self.headings.append(text)
            if t == tag:
                break


def parse(html: str) -> Figures:
    f = Figures()
    f.feed(html)
    return f


def one(f: Figures, metric: str) -> str:
    values = set(f.metrics[metric])
    assert len(values) == 1, (metric, f.metrics[metric])
    return values.pop()


def test_html_report_shows_the_right_figures(world, run, tmp_path):
    out = tmp_path / "report.html"
    r = run("report", *MARCH, "--out", str(out))
    assert r.exit_code == 0, r.output
    html = out.read_text(encoding="utf-8")
    f = parse(html)
    assert "自查自纠报告" in html and f.headings[0].startswith("一、基本情况")
    assert any(h.startswith("四、拦截原因") for h in f.headings) and len(f.headings) == 9
    assert f.svgs == 3  # daily volume, denials by reason, coverage
    expect = {"outbound.attempts": "8", "outbound.allowed": "4", "outbound.denied": "3",
              "outbound.would_have_denied": "1", "outbound.placed": "5", "outbound.answered": "3",
              "outbound.answer_rate": "60.0%", "outbound.avg_duration_s": "33.3 秒 s",
              "outbound.total_billsec": "100", "inbound.calls": "1",
              "consent.coverage": "100.0%", "consent.consent_record": "4", "consent.inbound_callback": "1",
              "consent.without_basis": "0", "recording.coverage": "80.0%", "recording.stored": "4",
              "recording.not_stored": "0 / 0 / 1 / 0",
              "quiet_hours.attempts": "2", "quiet_hours.denied": "1", "quiet_hours.let_through_observe": "1",
              "frequency.attempts": "2", "frequency.denied": "2", "frequency.let_through_observe": "0",
              "complaints.count": "0", "tenant.id": "acme"}
    assert {k: one(f, k) for k in expect} == expect
    denials = {k.split("=")[1]: v["denials"] for k, v in f.rows.items() if k.startswith("data-reason=")}
    assert denials == {"FREQUENCY_EXCEEDED": "2", "QUIET_HOURS": "1", "CALLEE_REFUSED": "1", "NO_CONSENT": "1"}
    assert "§3(2)" in html and "被叫用户已谢绝来电" in html  # clause and the Chinese message
    days = {k.split("=")[1]: v for k, v in f.rows.items() if k.startswith("data-day=")}
    assert {d: (v["daily.attempts"], v["daily.allowed"], v["daily.denied"], v["daily.would_have_denied"],
                v["daily.answered"]) for d, v in days.items()} == {
        "2026-03-02": ("4", "2", "2", "0", "2"), "2026-03-03": ("2", "1", "1", "0", "0"),
        "2026-03-04": ("1", "1", "0", "0", "0"), "2026-03-05": ("1", "0", "0", "1", "1")}
    observed = {k.split("=")[1]: v["observe"] for k, v in f.rows.items() if k.startswith("data-observe-reason=")}
    assert observed == {"QUIET_HOURS": "1"}
    assert sorted(k for k in f.rows if k.startswith("data-status-change=")) == [
        "data-status-change=active", "data-status-change=suspended"]
    assert "data-alert=risk_suspend" in f.rows
    assert f.findings.count("fail") == 1 and "ok" in f.findings  # recording coverage < 100 %
    assert "TRUNK_UNVERIFIED" not in html and "01058001234" not in html  # beta's call stays out
    with make_sessionmaker(make_engine(world.url))() as s:
        e = s.scalars(select(AuditEntry).where(AuditEntry.action == "report.generate")).one()
    details = json.loads(e.details)
    assert e.actor == "inspector" and e.subject == "acme" and details["format"] == "html"
    assert details["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_json_and_csv_carry_the_same_figures(world, run):
    data = json.loads(run("report", *MARCH, "--format", "json").output)
    assert data["outbound"] == {"attempts": 8, "allowed": 4, "denied": 3, "would_have_denied": 1, "placed": 5,
                                "answered": 3, "answer_rate": 0.6, "total_billsec": 100, "avg_duration_s": 33.3,
                                "denial_rate": 0.375}
    assert data["period"]["days"] == 31 and len(data["daily"]) == 31
    assert [(x["code"], x["clause"], x["calls"]) for x in data["denials_by_reason"]] == [
        ("FREQUENCY_EXCEEDED", "§3(2)", 2), ("CALLEE_REFUSED", "§1(2)", 1), ("NO_CONSENT", "§1(2), §3(2)", 1),
        ("QUIET_HOURS", "§4(2)", 1)]
    assert data["suspensions"]["suspended_times"] == 1 and len(data["suspensions"]["alerts"]) == 1
    assert data["recording"]["coverage"] == 0.8 and data["consent"]["coverage"] == 1.0
    rows = list(csv.reader(io.StringIO(run("report", *MARCH, "--format", "csv").output)))
    assert rows[0] == ["metric", "dimension", "value"]
    table = {(m, d): v for m, d, v in rows[1:]}
    assert table[("outbound.attempts", "")] == "8" and table[("outbound.answer_rate", "")] == "0.6"
    assert table[("daily.attempts", "2026-03-02")] == "4" and table[("daily.attempts", "2026-03-10")] == "0"
    assert table[("denials_by_reason", "QUIET_HOURS §4(2)")] == "1"
    assert table[("would_have_denied_by_reason", "QUIET_HOURS §4(2)")] == "1"
    with make_sessionmaker(make_engine(world.url))() as s:
        formats = [json.loads(e.details)["format"] for e in
                   s.scalars(select(AuditEntry).where(AuditEntry.action == "report.generate").order_by(AuditEntry.seq))]
    assert formats == ["json", "csv"]


def test_period_bounds_and_other_tenant(world, run):
    day = json.loads(run("report", "--tenant", "acme", "--from", "2026-03-03", "--to", "2026-03-03",
                         "--format", "json").output)
    assert day["outbound"]["attempts"] == 2 and day["period"]["days"] == 1 and day["inbound"]["calls"] == 1
    assert day["suspensions"]["status_changes"] == []
    beta = json.loads(run("report", "--tenant", "beta", "--from", "2026-03-01", "--to", "2026-03-31",
                          "--format", "json").output)
    assert beta["outbound"]["attempts"] == 1 and beta["outbound"]["placed"] == 0
    assert beta["outbound"]["answer_rate"] is None
    assert {x["code"]: x["calls"] for x in beta["denials_by_reason"]} == {"TRUNK_UNVERIFIED": 1, "NO_CONSENT": 1}
    html = run("report", "--tenant", "beta", "--from", "2026-03-01", "--to", "2026-03-31").output
    assert one(parse(html), "outbound.answer_rate") == "—"


def test_report_scopes_and_errors(world, run):
    r = run("report", *MARCH, "--as-tenant", "beta")
    assert r.exit_code == 4 and "access denied" in r.stderr
    assert run("report", "--tenant", "beta", "--from", "2026-03-01", "--to", "2026-03-31",
               "--format", "json", env={"CALLWARDEN_TENANT_SCOPE": "beta"}).exit_code == 0
    r = run("report", "--tenant", "nobody", "--from", "2026-03-01", "--to", "2026-03-31")
    assert r.exit_code == 1 and "unknown tenant" in r.stderr
    assert run("report", "--tenant", "acme", "--from", "2026-03-31", "--to", "2026-03-01").exit_code == 2
