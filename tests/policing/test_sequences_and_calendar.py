"""Generated-list detection (Python and SQL agree) and the calendar arithmetic."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from callwarden.config import parse_span
from callwarden.policing.figures import outbound_in
from callwarden.policing.sequences import callees_of, find_runs, members_in_runs, run_members_query
from callwarden.policing.timeutil import WorkingCalendar, edge_intervals
from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.models import Call
from tests.conftest import at, seed
from tests.policing.helpers import cdr, insert_calls, random_mobile, registry_doc

SH = ZoneInfo("Asia/Shanghai")


def test_a_generated_list_is_one_run():
    numbers = [f"1380013{i:04d}" for i in range(1, 41)]
    runs = find_runs(numbers, max_gap=10, min_run=5)
    assert len(runs) == 1 and runs[0].count == 40
    assert (runs[0].first, runs[0].last) == ("13800130001", "13800130040")
    assert runs[0].describe() == {"from": "138****0001", "to": "138****0040", "count": 40}


@pytest.mark.parametrize(("gap", "is_run"), [(10, True), (11, False)])
def test_the_gap_limit_is_inclusive(gap, is_run):
    numbers = [str(13800000000 + gap * i) for i in range(5)]
    assert (members_in_runs(numbers, max_gap=10, min_run=5) == 5) is is_run


@pytest.mark.parametrize(("n", "is_run"), [(4, False), (5, True)])
def test_a_run_needs_min_run_callees(n, is_run):
    numbers = [str(13800000100 + i) for i in range(n)]
    assert bool(find_runs(numbers, max_gap=10, min_run=5)) is is_run


def test_lengths_foreign_numbers_and_duplicates():
    numbers = ["95512", "95513", "95514", "95515"]  # short numbers, 4 only
    numbers += ["01012345670", "01012345671", "01012345672", "01012345673", "01012345674"]
    numbers += ["+14155550100", "+14155550101", "+14155550102", "+14155550103", "+14155550104"]
    numbers += ["13800000001"] * 10  # one callee called ten times is not a list
    numbers += ["1380000000", "13800000002"]  # different lengths never join a run
    runs = find_runs(numbers, max_gap=10, min_run=5)
    assert [(r.first, r.count) for r in runs] == [("01012345670", 5)]


def test_scattered_real_customers_make_no_runs():
    rng = random.Random(7)
    numbers = [random_mobile(rng) for _ in range(5000)]
    assert members_in_runs(numbers, max_gap=10, min_run=5) == 0


def test_sql_and_python_count_the_same_runs(store_url):
    seed(store_url, registry_doc("a", "b"))
    rng = random.Random(81)
    t0 = at("2026-03-02 10:00")
    per_tenant: dict[str, list[str]] = {"a": [], "b": []}
    rows = []
    for tenant in per_tenant:
        numbers = [random_mobile(rng) for _ in range(300)]
        for _ in range(6):  # some runs of random length and stride
            base, stride = rng.randrange(13000000000, 19000000000), rng.randint(1, 12)
            numbers += [str(base + stride * i) for i in range(rng.randint(3, 30))]
        numbers += ["+8613800000001", "95512", "95513"]
        for n in numbers:
            per_tenant[tenant].append(n)
            rows.append(cdr(tenant, n, t0 + dt.timedelta(seconds=rng.uniform(0, 3000))))
    insert_calls(store_url, rows)
    engine = make_engine(store_url)
    try:
        with make_sessionmaker(engine)() as s:
            window = outbound_in(t0, t0 + dt.timedelta(hours=1))
            got = {t: int(n) for t, n in s.execute(run_members_query(callees_of(window).subquery(), 10, 5))}
            if store_url.startswith("postgresql"):  # the bytewise-collated variant the detector uses
                fast = run_members_query(callees_of(window).subquery(), 10, 5, bytewise_collation="C")
                assert {t: int(n) for t, n in s.execute(fast)} == got
            parties = {t: list(s.scalars(select(Call.party).where(window, Call.tenant_id == t)))
                       for t in per_tenant}
    finally:
        engine.dispose()
    want = {t: members_in_runs(ns, 10, 5) for t, ns in per_tenant.items()}
    assert got == {t: n for t, n in want.items() if n} and all(want.values())
    assert {t: sorted(p) for t, p in parties.items()} == {t: sorted(ns) for t, ns in per_tenant.items()}


# -- calendar ------------------------------------------------------------------------------------

def test_working_days_skip_weekends_and_holidays_and_count_make_up_days():
    monday = dt.date(2026, 3, 2)
    cal = WorkingCalendar()
    assert cal.add_working_days(monday, 10) == dt.date(2026, 3, 16)
    assert cal.add_working_days(dt.date(2026, 3, 6), 1) == dt.date(2026, 3, 9)  # Friday -> Monday
    with_holiday = WorkingCalendar(holidays=[dt.date(2026, 3, 4)])
    assert with_holiday.add_working_days(monday, 10) == dt.date(2026, 3, 17)
    with_make_up = WorkingCalendar(workdays=[dt.date(2026, 3, 7)])  # a worked Saturday
    assert with_make_up.add_working_days(monday, 10) == dt.date(2026, 3, 13)
    assert cal.working_days_between(dt.date(2026, 3, 16), dt.date(2026, 3, 23)) == 5
    with pytest.raises(ValueError):
        cal.add_working_days(monday, 0)


def test_edges_of_the_calling_window_in_local_time():
    window = parse_span("08:00-21:00")
    start, end = at("2026-03-02 00:00"), at("2026-03-03 00:00")
    spans = edge_intervals(start, end, SH, window, 30)
    local = [(a.astimezone(SH).strftime("%H:%M"), b.astimezone(SH).strftime("%H:%M")) for a, b in spans]
    assert local == [("07:30", "08:30"), ("20:30", "21:30")]
    assert all(a.tzinfo == dt.UTC for a, _ in spans)
    clipped = edge_intervals(at("2026-03-02 08:10"), at("2026-03-02 09:10"), SH, window, 30)
    assert [(a.astimezone(SH).strftime("%H:%M"), b.astimezone(SH).strftime("%H:%M"))
            for a, b in clipped] == [("08:10", "08:30")]
    assert edge_intervals(at("2026-03-02 10:00"), at("2026-03-02 11:00"), SH, window, 30) == []
    day_end = edge_intervals(at("2026-03-02 23:00"), at("2026-03-03 01:00"), SH,
                             parse_span("08:00-24:00"), 30)
    assert [(a.astimezone(SH).strftime("%H:%M"), b.astimezone(SH).strftime("%H:%M"))
            for a, b in day_end] == [("23:30", "00:30")]
