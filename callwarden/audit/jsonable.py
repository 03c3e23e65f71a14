"""Plain JSON values from what the store returns (datetimes and dates as ISO-8601)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def to_jsonable(value: Any) -> Any:
    """``value`` with datetimes/dates as ISO-8601 strings and tuples/sets as lists, recursively."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(to_jsonable(v) for v in value)
    return value
