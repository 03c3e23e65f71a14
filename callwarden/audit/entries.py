"""Audit-log entries about one phone number, in either form they were written.

Entries written since numbers are keyed (schema revision 0008) hold a number as its HMAC
(``callwarden.audit.pseudonym``): the query number is hashed with the installation key and the
digest looked up. Entries written before hold it in clear and are matched on the canonical
digits. Both forms are found by one query (a scan of the log: an auditor's query, not a
per-call one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from callwarden.audit.access import Scope
from callwarden.audit.pseudonym import AuditKey, has_clear_numbers, search_terms
from callwarden.store.models import AuditEntry


def entries_for_number(session: Session, key: AuditKey, number: str, scope: Scope,
                       limit: int | None = None) -> Iterator[AuditEntry]:
    """Entries naming ``number`` (hashed or, in entries from before the change, in clear),
    oldest first; a tenant scope sees only entries of its tenant."""
    digest, digits = search_terms(key, number)
    q = (select(AuditEntry).where(or_(
        AuditEntry.details.contains(digest, autoescape=True),
        AuditEntry.subject.contains(digest, autoescape=True),
        AuditEntry.details.contains(f'"{digits}"', autoescape=True),
        AuditEntry.subject == digits,
        AuditEntry.subject.endswith(":" + digits, autoescape=True),
    )).order_by(AuditEntry.seq))
    n = 0
    for e in session.scalars(q.execution_options(yield_per=1000)):
        if scope.tenant is not None and _tenant(e) != scope.tenant:
            continue
        yield e
        n += 1
        if limit is not None and n >= limit:
            return


def _tenant(e: AuditEntry) -> str | None:
    try:
        details = json.loads(e.details)
    except ValueError:
        return None
    tenant = details.get("tenant") if isinstance(details, dict) else None
    if tenant is None and e.subject and ":" in e.subject:
        tenant = e.subject.split(":", 1)[0]
    return tenant


def entry_row(e: AuditEntry) -> dict[str, Any]:
    """One entry for display: its details parsed; ``numbers`` says which form it holds."""
    return {"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action, "subject": e.subject,
            "numbers": "clear" if has_clear_numbers(e.action, e.subject, e.details) else "keyed",
            "details": json.loads(e.details), "hash": e.hash}
