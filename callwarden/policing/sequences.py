"""Sequential and generated number lists (138xxxx0001, 138xxxx0002, ...).

A *run* is ``min_run`` or more distinct callees of the same length, sorted by value, each within
``max_gap`` of the previous one. Real customers' numbers are scattered over the whole numbering
plan; a dialer working through a generated list produces long runs. Two implementations of the
same rule: ``find_runs`` (pure Python, used for evidence and in tests) and ``run_members_query``
(SQL window functions, used to count over millions of calls without fetching them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, Select, and_, case, cast, collate, func, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from callwarden.numbers import mask
from callwarden.store.models import Call

#: Longest canonical number that fits a signed 64-bit integer with room to spare.
MAX_DIGITS = 18
MIN_DIGITS = 5


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive-ish callees: ``first`` .. ``last`` (canonical digits), ``count`` of them."""

    first: str
    last: str
    count: int
    members: tuple[str, ...]

    def describe(self) -> dict[str, object]:
        """Masked, for alerts and logs (numbers are personal data)."""
        return {"from": mask(self.first), "to": mask(self.last), "count": self.count}


def _eligible(number: str) -> bool:
    return number.isdigit() and MIN_DIGITS <= len(number) <= MAX_DIGITS


def find_runs(numbers: Iterable[str], max_gap: int, min_run: int) -> list[Run]:
    """Runs among ``numbers`` (canonical digits; others are ignored), longest first."""
    by_length: dict[int, set[int]] = {}
    for n in numbers:
        if _eligible(n):
            by_length.setdefault(len(n), set()).add(int(n))
    runs: list[Run] = []
    for length, values in by_length.items():
        ordered = sorted(values)
        current: list[int] = []
        for v in ordered:
            if current and v - current[-1] > max_gap:
                if len(current) >= min_run:
                    runs.append(_run(current, length))
                current = []
            current.append(v)
        if len(current) >= min_run:
            runs.append(_run(current, length))
    runs.sort(key=lambda r: (-r.count, r.first))
    return runs


def _run(values: Sequence[int], length: int) -> Run:
    members = tuple(str(v).zfill(length) for v in values)
    return Run(members[0], members[-1], len(members), members)


def members_in_runs(numbers: Iterable[str], max_gap: int, min_run: int) -> int:
    return sum(r.count for r in find_runs(numbers, max_gap, min_run))


def run_members_query(callees: FromClause, max_gap: int, min_run: int, *,
                      bytewise_collation: str | None = None) -> Select:
    """``(tenant_id, n)``: how many of ``callees`` (distinct ``tenant_id, party`` rows) are in runs.

    Per tenant and number length, ordered by numeric value; ``LAG`` gives each number's gap to
    the previous; a running sum of "gap too large" marks gives each run an id; runs of
    ``min_run`` or more are counted. Works on PostgreSQL and SQLite (3.25+).
    ``bytewise_collation`` (PostgreSQL: ``"C"``) partitions by tenant without locale-aware
    string comparisons, which otherwise dominate the sort.
    """
    length = func.length(callees.c.party)
    tenant = (collate(callees.c.tenant_id, bytewise_collation) if bytewise_collation
              else callees.c.tenant_id)
    eligible = (
        select(tenant.label("tenant_id"), length.label("len"),
               cast(callees.c.party, BigInteger).label("v"))
        .where(~callees.c.party.startswith("+"), length.between(MIN_DIGITS, MAX_DIGITS))
        .subquery("e")
    )
    part = (eligible.c.tenant_id, eligible.c.len)
    gaps = select(
        eligible.c.tenant_id, eligible.c.len, eligible.c.v,
        (eligible.c.v - func.lag(eligible.c.v).over(partition_by=part, order_by=eligible.c.v)).label("gap"),
    ).subquery("g")
    breaks = case((and_(gaps.c.gap.is_not(None), gaps.c.gap <= max_gap), 0), else_=1)
    numbered = select(
        gaps.c.tenant_id, gaps.c.len,
        func.sum(breaks).over(partition_by=(gaps.c.tenant_id, gaps.c.len), order_by=gaps.c.v,
                              rows=(None, 0)).label("run_id"),
    ).subquery("r")
    runs = (
        select(numbered.c.tenant_id, func.count().label("n"))
        .group_by(numbered.c.tenant_id, numbered.c.len, numbered.c.run_id)
        .having(func.count() >= min_run)
        .subquery("runs")
    )
    return select(runs.c.tenant_id.label("tenant_id"), func.sum(runs.c.n).label("n")).group_by(runs.c.tenant_id)


def callees_of(window: ColumnElement[bool]) -> Select:
    """Distinct ``(tenant_id, party)`` of the calls matching ``window``."""
    return (select(Call.tenant_id.label("tenant_id"), Call.party.label("party"))
            .where(window, Call.party.is_not(None)).distinct())
