"""Cut what a PBX sent to the width of the column that keeps it.

Channel names, tenant ids, unparseable numbers and the like come from the PBX and have no length
limit there. SQLite stores any length, but PostgreSQL refuses the whole row (``DataError``): a
decision would then fail closed as POLICY_UNAVAILABLE for a reason that has nothing to do with
the store's health, and its outage-journal entry would fail the same way on every replay. The
decision is taken on the full values; only what is stored is cut.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Table


def widths(table: Table) -> dict[str, int]:
    """Column name -> maximum length, for the table's bounded string columns."""
    return {c.name: c.type.length for c in table.columns
            if isinstance(c.type, String) and c.type.length}


def fit(limits: dict[str, int], row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with every string longer than its column's width cut to that width."""
    return {k: v[:limits[k]] if isinstance(v, str) and k in limits and len(v) > limits[k] else v
            for k, v in row.items()}
