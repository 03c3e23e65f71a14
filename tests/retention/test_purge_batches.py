"""A purge in batches over a store where a legal hold keeps most of what is due.

The rows a hold keeps stay due for as long as it lasts (a tenant under investigation: a year
of its CDRs). Each batch must start after the last one's rows; starting from the oldest again
walked every held row once per batch. Shown by what is purged (every due row once, whatever
the batch size, rows sharing one instant included) and, on SQLite, by the work the store does:
its virtual-machine steps, counted, not timed.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import event, insert
from sqlalchemy.pool import Pool

from callwarden.audit.snapshot import _sqlite_reader
from callwarden.service.purge import Purger
from callwarden.service.recording_target import LazyTarget
from callwarden.store.db import unit_of_work
from callwarden.store.models import Call, Consent
from tests.retention.conftest import DAY, NOW

OLD = NOW - 100 * DAY  # past the sites' 30-day retention


def _cdrs(site, tenant: str, n: int, at, *, step: dt.timedelta) -> list[str]:
    rows = [{"call_id": uuid.uuid4().hex, "tenant_id": tenant, "direction": "outbound",
             "pbx": "asterisk", "caller": "95512", "callee": f"1390000{i:04d}",
             "party": f"1390000{i:04d}", "caller_hidden": False, "attempted_at": at + i * step,
             "ended_at": at + i * step + dt.timedelta(seconds=30), "decision": "allow",
             "reasons": "", "enforced": True, "billsec": 30, "disposition": "ANSWERED"}
            for i in range(n)]
    with unit_of_work(site.sessions) as s:
        s.execute(insert(Call), rows)
    return [r["call_id"] for r in rows]


def _consents(site, tenant: str, n: int) -> list[int]:
    with unit_of_work(site.sessions) as s:
        made = [Consent(tenant_id=tenant, callee=f"1360000{i:04d}", scopes="callback",
                        evidence_kind="contract", evidence_ref=f"C-{i}",
                        obtained_at=OLD - 300 * DAY, revoked_at=OLD) for i in range(n)]
        s.add_all(made)
        s.flush()
        return [c.id for c in made]


def _purger(site, batch: int) -> Purger:
    engine = site.enforcer.engine
    return Purger(site.settings, engine, site.sessions, LazyTarget(site.settings), actor="test",
                  now=NOW, batch=batch)


@pytest.mark.parametrize("same_instant", [False, True], ids=["spread", "one-instant"])
def test_every_due_row_is_purged_once_around_the_held_ones(make_site, same_instant):
    site = make_site()
    # interleaved in time: the held tenant's rows lie between and around the due ones
    step = dt.timedelta(0) if same_instant else dt.timedelta(minutes=1)
    held = _cdrs(site, "beta", 45, OLD, step=step)
    due = _cdrs(site, "acme", 23, OLD + (dt.timedelta(0) if same_instant else 30 * step), step=step)
    held_consents, due_consents = _consents(site, "beta", 9), _consents(site, "acme", 11)
    assert site.cli("holds", "set", "--tenant", "beta", "--reason", "inquiry 7").returncode == 0

    report = _purger(site, batch=4).run()
    purged = [i.subject for i in report.items if i.kind == "cdr" and i.result == "purged"]
    assert sorted(purged) == sorted(due)  # each once: a batch never re-reads the one before
    assert report.held["cdr"] == 45
    assert all(site.cdr(c) is not None for c in held) and all(site.cdr(c) is None for c in due)
    consents = [i.subject for i in report.items if i.kind == "consent"]
    assert sorted(consents) == sorted(f"consent:{i}" for i in due_consents)
    assert site.count(Consent, Consent.id.in_(held_consents)) == 9
    assert len(site.entries("cdr_purged")) == 23 and len(site.entries("consent_purged")) == 11
    assert site.chain_ok()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_batches_walk_the_held_rows_once(make_site):
    """2,000 held CDRs around 40 due ones, 4 per batch: the old walk re-read the held rows
    before each batch (7x the work of one count of them here); now the CDR phase is
    one walk and the closing count (2.4x: the deletes and their audit entries come on top)."""
    site = make_site()
    _cdrs(site, "beta", 2000, OLD, step=dt.timedelta(minutes=1))
    _cdrs(site, "acme", 40, OLD + dt.timedelta(seconds=30), step=dt.timedelta(minutes=50))
    assert site.cli("holds", "set", "--tenant", "beta", "--reason", "inquiry 7").returncode == 0
    purger = _purger(site, batch=4)
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0  # go on

    def count_steps(dbapi_connection, *_):  # noqa: ANN001, ANN202
        dbapi_connection.set_progress_handler(tick, 100)

    # the purge's store sessions and its snapshots' reader engine: every connection counts
    engines = [site.enforcer.engine, _sqlite_reader(site.enforcer.engine)]
    for engine in engines:
        engine.dispose()
    event.listen(Pool, "checkout", count_steps)
    try:
        with purger._reading() as s:
            assert purger._count_held(s, Call, purger._cdr_due(), purger._cdr_kept()) == 2000
        one_walk, steps[0] = steps[0], 0
        purger._cdrs()
    finally:
        event.remove(Pool, "checkout", count_steps)
        for engine in engines:
            engine.dispose()
    assert sum(1 for i in purger.report.items if i.kind == "cdr") == 40
    assert steps[0] < 4 * one_walk, (steps[0], one_walk)
