"""Who is asking, and what they may see: auditor scopes and the access log.

Two roles (docs/auditors.md, "Roles"):

- **operator auditor** (the call center's compliance staff, or a regulator's inspector working
  through them): ``Scope(actor, tenant=None)``, sees every tenant.
- **tenant**: ``Scope(actor, tenant="acme")``, sees only that tenant's calls, recordings,
  consents, audit entries and report. Every query built for a scope carries the tenant filter,
  so a scoped caller cannot widen it with other filters.

A scope comes from ``--as-tenant T`` or from the ``CALLWARDEN_TENANT_SCOPE`` environment
variable; an operator pins a tenant's accounts with the variable (e.g. in the login profile
of the tenant's shell account or the wrapper it runs), and ``--as-tenant`` cannot name another
tenant than the pinned one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from callwarden.store import audit
from callwarden.store.models import AuditEntry, AuditHead

SCOPE_ENV = "CALLWARDEN_TENANT_SCOPE"


class AccessDenied(Exception):
    """The scope does not allow what was asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """An auditor identity: the actor written to the audit log and an optional tenant scope."""

    actor: str
    tenant: str | None = None

    @property
    def role(self) -> str:
        return "tenant" if self.tenant else "auditor"

    def tenant_filter(self, requested: str | None) -> str | None:
        """The tenant a query must be limited to, given a ``--tenant`` the caller asked for.

        Raises AccessDenied when a tenant-scoped caller asks for another tenant.
        """
        if self.tenant is None:
            return requested
        if requested is not None and requested != self.tenant:
            raise AccessDenied(f"scope is limited to tenant {self.tenant!r}; "
                               f"tenant {requested!r} is not visible")
        return self.tenant

    def check_tenant(self, tenant: str | None) -> None:
        """Raise AccessDenied unless a record of ``tenant`` is visible in this scope."""
        if self.tenant is not None and tenant != self.tenant:
            raise AccessDenied(f"scope is limited to tenant {self.tenant!r}")

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "tenant": self.tenant}


def resolve_scope(actor: str, as_tenant: str | None,
                  environ: Mapping[str, str] | None = None) -> Scope:
    """The scope of one invocation: ``--as-tenant`` narrowed by a pinned environment scope."""
    env = os.environ if environ is None else environ
    pinned = (env.get(SCOPE_ENV) or "").strip() or None
    if pinned and as_tenant and as_tenant != pinned:
        raise AccessDenied(f"this account is pinned to tenant {pinned!r} ({SCOPE_ENV}); "
                           f"--as-tenant {as_tenant!r} is not allowed")
    return Scope(actor=actor, tenant=pinned or as_tenant)


def record_access(session: Session, scope: Scope, action: str, subject: str | None,
                  details: Mapping[str, Any]) -> AuditEntry:
    """Append one evidence-access entry (who, in which scope, what) inside ``session``'s
    transaction; returns the entry as stored (the head is locked until commit, so it is ours)."""
    audit.append(session, scope.actor, action, subject, {"scope": scope.as_dict(), **details})
    head_seq = select(AuditHead.seq).where(AuditHead.id == 1).scalar_subquery()
    return session.execute(select(AuditEntry).where(AuditEntry.seq == head_seq)).scalar_one()
