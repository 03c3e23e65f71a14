"""A store as a running call center's looks: a month of CDRs before the bench's calls, and on
PostgreSQL the planner statistics autovacuum keeps.

Without them the benches measured a store no production PostgreSQL is: freshly created, never
analyzed. With no statistics the planner read the decision's call-history lookup through the
(tenant, time) index instead of the (tenant, party, direction, time) one, so every batch
read all of the tenant's calls of the week: its cost grew with every call the bench placed
(0.25 ms more per 1,000 calls of the tenant, one decision at a time). Autovacuum analyzes a
live table within a minute or so of its changing; a bench's few seconds never saw it.

The history lies between 30 and 4 days before the bench's calls: past the frequency limits'
day and week, the 72-hour callback window and the detector's windows, so it changes no
decision and raises no alert; it only gives the indexes and the statistics a realistic shape.
SQLite is not analyzed (callwarden never runs ANALYZE there; its planner has no statistics in
production either).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence

#: CDRs seeded by default: a month of a small call center (~2,000 calls a day).
DEFAULT_CALLS = 60_000


def seed_history(url: str, tenant: str, access: str, before: dt.datetime, *,
                 calls: int = DEFAULT_CALLS, known: Sequence[str] = (), pbx: str = "freeswitch",
                 seed: int = 5) -> None:
    """Insert ``calls`` CDRs of ``tenant`` (outbound from ``access``, a fifth inbound), spread
    over the 4-30 days before ``before``; one in ten is with one of ``known`` (the bench's own
    callees), the rest with random mobiles. Then ANALYZE on PostgreSQL (store.statistics)."""
    from callwarden.store.db import make_engine
    from callwarden.store.statistics import analyze
    from tests.policing.helpers import cdr, insert_calls, random_mobile

    rng = random.Random(seed)
    span = 26 * 86_400
    rows = []
    for _ in range(calls):
        at = before - dt.timedelta(days=4, seconds=rng.randrange(span))
        party = known[rng.randrange(len(known))] if known and rng.random() < 0.1 else random_mobile(rng)
        inbound = rng.random() < 0.2
        rows.append(cdr(tenant, party, at, access=access, pbx=pbx,
                        direction="inbound" if inbound else "outbound"))
    insert_calls(url, rows)
    engine = make_engine(url)
    try:
        analyze(engine)  # the store's own tables, as `callwarden db upgrade` does; SQLite: nothing
    finally:
        engine.dispose()


def describe(calls: int) -> str:
    return (f"store seeded with {calls:,} CDRs of history (PostgreSQL analyzed)" if calls
            else "store without history (PostgreSQL never analyzed)")
