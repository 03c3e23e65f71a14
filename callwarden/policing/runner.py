"""The detector pass: measure, score, plan, and (under the pass lock) raise and suspend.

One pass, as of ``now``:

1. measure every tenant's figures (``figures.Measurer``) and the registry findings (``filing``);
2. score them (``scoring``) and plan the alerts whose dedup keys do not exist yet, with evidence;
3. apply the plan in one transaction holding the pass lock (``db``): alerts, audit entries,
   suspensions; commit;
4. after the commit: log events and hand the webhook payloads to the background notifier.

On PostgreSQL all of it runs in one transaction that first takes ``pg_try_advisory_xact_lock``:
a node that does not get the lock skips its pass, so exactly one pass runs at a time across the
nodes sharing the store. On SQLite steps 1-2 read a snapshot without locking (decisions keep
flowing) and step 3 runs under the database write lock, re-checking every alert key and tenant
status, so concurrent passes still raise nothing twice. ``dry_run`` stops after step 2.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from callwarden.config import Settings
from callwarden.log import get_logger
from callwarden.policing import actions, evidence
from callwarden.policing.actions import PlannedAlert, RaisedAlert
from callwarden.policing.db import is_postgres, try_pass_lock, tune
from callwarden.policing.figures import Measurer
from callwarden.policing.filing import Finding, all_findings
from callwarden.policing.scoring import Risk, score
from callwarden.policing.webhook import WebhookNotifier
from callwarden.store.db import make_engine, make_read_engine, make_sessionmaker
from callwarden.store.models import utcnow

log = get_logger("callwarden.policing")


@dataclass
class Assessment:
    """Scores and findings as of one instant (what ``tenants risk`` prints)."""

    as_of: dt.datetime
    risks: list[Risk]
    findings: list[Finding]


@dataclass
class PassResult:
    as_of: dt.datetime
    dry_run: bool
    ran: bool
    skipped: str | None = None
    assessment: Assessment | None = None
    planned: list[PlannedAlert] = field(default_factory=list)
    raised: list[RaisedAlert] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def suspended(self) -> list[str]:
        return [r.planned.tenant_id for r in self.raised if r.suspended]

    def as_dict(self) -> dict[str, Any]:
        a = self.assessment
        return {
            "as_of": self.as_of.isoformat(), "dry_run": self.dry_run, "ran": self.ran,
            "skipped": self.skipped, "duration_s": round(self.duration_s, 3),
            "tenants_scored": len(a.risks) if a else 0,
            "levels": {lvl: sorted(r.tenant_id for r in a.risks if r.level == lvl)
                       for lvl in ("warn", "suspend")} if a else {},
            "findings": len(a.findings) if a else 0,
            "would_raise" if self.dry_run else "planned": [p.as_dict() for p in self.planned],
            "raised": [{"id": r.id, **r.planned.as_dict(), "suspended": r.suspended}
                       for r in self.raised],
            "suspended": self.suspended,
        }


class Detector:
    """The policing detector over one store. Thread-safe: one session per pass."""

    def __init__(self, settings: Settings, engine: Engine | None = None, *,
                 notifier: WebhookNotifier | None = None, actor: str = "policing",
                 run_by: str | None = None):
        self.settings = settings
        self.cfg = settings.policing
        self.engine = engine or make_engine(settings.store.url, pool_size=2)
        self.sessions = make_sessionmaker(self.engine)
        self.read_engine = make_read_engine(self.engine)
        self.readers = make_sessionmaker(self.read_engine)
        self.measurer = Measurer(settings)
        if notifier is None and self.cfg.webhook is not None:
            notifier = WebhookNotifier(self.cfg.webhook)
        self.notifier = notifier
        self.actor = actor
        self.context = {"node": socket.gethostname(), "run_by": run_by or actor}

    # -- read-only -------------------------------------------------------------------------

    def assess(self, now: dt.datetime | None = None, tenant_ids: Iterable[str] | None = None
               ) -> Assessment:
        now = (now or utcnow()).astimezone(dt.UTC)
        with self.readers() as session, session.begin():
            return self._assess(session, now, tenant_ids)

    def _assess(self, session: Session, now: dt.datetime, tenant_ids: Iterable[str] | None = None
                ) -> Assessment:
        tune(session, self.cfg.work_mem_mb)
        ids = None if tenant_ids is None else list(tenant_ids)
        figures = self.measurer.measure(session, now, ids)
        risks = [score(f, self.cfg) for f in figures.values()]
        findings = all_findings(session, self.settings, now, ids)
        return Assessment(now, risks, findings)

    def evidence(self, risk: Risk) -> dict[str, Any]:
        with self.readers() as session, session.begin():
            return evidence.collect(session, self.settings, risk)

    def _plan(self, session: Session, a: Assessment) -> list[PlannedAlert]:
        day = a.as_of.astimezone(self.settings.tz).date()
        candidates: list[tuple[str, Risk | Finding]] = []
        for risk in a.risks:
            if risk.level != "ok" and risk.figures.status == "active":
                candidates.append((actions.risk_key(risk, day), risk))
        for finding in a.findings:
            candidates.append((finding.dedup_key, finding))
        have = actions.existing_keys(session, [k for k, _ in candidates])
        planned: list[PlannedAlert] = []
        for key, item in candidates:
            if key in have:
                continue
            if isinstance(item, Risk):
                planned.append(actions.plan_risk(item, day, a.as_of,
                                                 evidence.collect(session, self.settings, item)))
            else:
                planned.append(actions.plan_finding(item, a.as_of))
        planned.sort(key=lambda p: (p.level != "suspend", p.tenant_id, p.kind))
        return planned

    # -- the pass --------------------------------------------------------------------------

    def run_pass(self, now: dt.datetime | None = None, dry_run: bool = False) -> PassResult:
        started = time.monotonic()
        as_of = (now or utcnow()).astimezone(dt.UTC)
        result = PassResult(as_of, dry_run, ran=True)
        if dry_run:
            with self.readers() as session, session.begin():
                result.assessment = self._assess(session, as_of)
                result.planned = self._plan(session, result.assessment)
        elif is_postgres(self.engine):
            with self.sessions() as session, session.begin():
                if not try_pass_lock(session):
                    result.ran, result.skipped = False, "another node is running a pass"
                else:
                    result.assessment = self._assess(session, as_of)
                    result.planned = self._plan(session, result.assessment)
                    result.raised = actions.apply(session, result.planned, self.actor, self.context)
        else:
            with self.readers() as session, session.begin():
                result.assessment = self._assess(session, as_of)
                result.planned = self._plan(session, result.assessment)
            if result.planned:
                with self.sessions() as session, session.begin():  # BEGIN IMMEDIATE: the write lock
                    result.raised = actions.apply(session, result.planned, self.actor, self.context)
        result.duration_s = time.monotonic() - started
        self._after_commit(result)
        return result

    def _after_commit(self, result: PassResult) -> None:
        if not result.ran:
            log.info("policing_pass_skipped", reason=result.skipped, as_of=result.as_of.isoformat())
            return
        for r in result.raised:
            p = r.planned
            event = "policing_suspended" if r.suspended else "policing_alert"
            log.warning(event, alert_id=r.id, tenant=p.tenant_id, kind=p.kind, alert_level=p.level,
                        score=p.score, summary=p.summary)
            if self.notifier is not None:
                self.notifier.notify(r.payload())
        a = result.assessment
        log.info("policing_pass", as_of=result.as_of.isoformat(), dry_run=result.dry_run,
                 tenants=len(a.risks) if a else 0, findings=len(a.findings) if a else 0,
                 planned=len(result.planned), raised=len(result.raised),
                 suspended=result.suspended, duration_ms=round(result.duration_s * 1000, 1))

    # -- schedules -------------------------------------------------------------------------

    #: Told of every scheduled pass: its result, or None when it failed (callwarden.metrics).
    observer: Callable[[PassResult | None], None] | None = None

    def _safe_pass(self) -> PassResult | None:
        result = None
        try:
            result = self.run_pass()
        except Exception as exc:  # the store may be down: log, try again next interval
            log.error("policing_pass_failed", error=type(exc).__name__,
                      detail=str(exc).splitlines()[0][:300] if str(exc) else "")
        if self.observer is not None:
            self.observer(result)
        return result

    def run_forever(self, stop: threading.Event, first_delay_s: float = 0.0) -> None:
        """A pass every ``interval_s`` until ``stop`` is set (``callwarden police``, and the
        FreeSWITCH process's policing thread, which waits ``first_delay_s`` before the first)."""
        if first_delay_s and stop.wait(first_delay_s):
            return
        while not stop.is_set():
            self._safe_pass()
            stop.wait(self.cfg.interval_s)

    async def run_periodically(self, stop: asyncio.Event, first_delay_s: float = 5.0) -> None:
        """The same inside an asyncio server: each pass runs in a worker thread."""
        delay = first_delay_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
            await asyncio.to_thread(self._safe_pass)
            delay = self.cfg.interval_s

    def close(self) -> None:
        """Stop the webhook thread and release the reading engine (the caller owns ``engine``)."""
        if self.notifier is not None:
            self.notifier.close()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
