"""The registry (tenants, access numbers, trunks, campaigns, proof documents) served from memory.

The registry is small (thousands of rows) and changes rarely; decisions read it on every call.
So each process keeps one immutable :class:`RegistrySnapshot` and rebuilds it only when the
store's ``registry_version`` counter has moved: database triggers move it on every write to
those tables (migration 0006), whoever writes (CLI, detector, console, another node, SQL by
hand). The counter is read inside every decision's transaction, so a suspension takes effect
on the next decision on every node, as it did when the registry was read row by row.
Consents, refusals and call history (millions of rows) stay live lookups (``store.facts``).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from callwarden.policy import CampaignFacts, NumberFacts, TenantFacts, TrunkFacts
from callwarden.store.models import (
    AccessNumber,
    Campaign,
    ProofDocument,
    RegistryVersion,
    Tenant,
    Trunk,
)

VERSION = select(RegistryVersion.version).where(RegistryVersion.id == 1)

_TENANTS = select(Tenant.id, Tenant.status, Tenant.outbound_commitment)
_NUMBERS = select(AccessNumber.number, AccessNumber.tenant_id, AccessNumber.outbound,
                  AccessNumber.filing_ref, AccessNumber.active)
_TRUNKS = select(Trunk.name, Trunk.tenant_id, Trunk.verified, Trunk.proof_ref)
_TRUNK_PROOFS = select(ProofDocument.subject).where(ProofDocument.subject_kind == "trunk").distinct()
_CAMPAIGNS = select(Campaign.tenant_id, Campaign.id, Campaign.purpose, Campaign.status)


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """The registry as of one ``registry_version``; lookups match what the decision rules need."""

    version: int
    tenants: dict[str, TenantFacts] = field(default_factory=dict)
    numbers: dict[str, NumberFacts] = field(default_factory=dict)
    sorted_numbers: tuple[str, ...] = ()
    trunks: dict[str, TrunkFacts] = field(default_factory=dict)
    campaigns: dict[tuple[str, str], CampaignFacts] = field(default_factory=dict)

    def tenant(self, tenant_id: str | None) -> TenantFacts | None:
        return self.tenants.get(tenant_id) if tenant_id else None

    def number(self, digits: str | None) -> NumberFacts | None:
        return self.numbers.get(digits) if digits else None

    def length_variant(self, digits: str | None) -> NumberFacts | None:
        """A registered number that ``digits`` extends (95512 -> 955121234: a prefix of at least
        3 digits) or truncates (a registered number that starts with ``digits``)."""
        if not digits:
            return None
        for i in range(3, len(digits)):
            if digits[:i] in self.numbers:
                return NumberFacts(digits[:i], "", False, False, False)
        i = bisect.bisect_right(self.sorted_numbers, digits)
        if i < len(self.sorted_numbers) and self.sorted_numbers[i].startswith(digits):
            return NumberFacts(self.sorted_numbers[i], "", False, False, False)
        return None

    def trunk(self, name: str | None) -> TrunkFacts | None:
        return self.trunks.get(name) if name else None

    def campaign(self, tenant_id: str | None, campaign_id: str | None) -> CampaignFacts | None:
        if not campaign_id:
            return None
        return self.campaigns.get((tenant_id or "", campaign_id))


def load_snapshot(conn: Connection, version: int) -> RegistrySnapshot:
    """Read the whole registry (inside the caller's transaction, so it is consistent)."""
    tenants = {tid: TenantFacts(tid, status, bool(commitment))
               for tid, status, commitment in conn.execute(_TENANTS) if status}
    numbers = {n: NumberFacts(n, tid, bool(outbound), bool(filing), bool(active))
               for n, tid, outbound, filing, active in conn.execute(_NUMBERS)}
    proofs = set(conn.execute(_TRUNK_PROOFS).scalars())
    trunks = {name: TrunkFacts(name, tid, bool(verified), bool(proof) or name in proofs)
              for name, tid, verified, proof in conn.execute(_TRUNKS) if tid is not None}
    campaigns = {(tid, cid): CampaignFacts(cid, tid, purpose, status)
                 for tid, cid, purpose, status in conn.execute(_CAMPAIGNS) if status}
    return RegistrySnapshot(version, tenants, numbers, tuple(sorted(numbers)), trunks, campaigns)


class SnapshotCache:
    """One process's current snapshot; :meth:`current` rebuilds it when the version moved.
    Thread-safe: the snapshot itself is immutable, and a rebuild happens under a lock."""

    def __init__(self) -> None:
        self._snapshot: RegistrySnapshot | None = None
        self._lock = threading.Lock()
        #: How many times the registry was (re)loaded: for tests and metrics.
        self.loads = 0

    def current(self, conn: Connection) -> RegistrySnapshot:
        """The snapshot for the store's version now, read in ``conn``'s transaction."""
        return self.at_version(conn, conn.execute(VERSION).scalar_one_or_none())

    def cached(self, version: int | None) -> RegistrySnapshot | None:
        """The snapshot already held for ``version``, or None when it must be (re)loaded
        (:meth:`at_version`); reads nothing from the store."""
        snap = self._snapshot
        return snap if version is not None and snap is not None and snap.version == version else None

    def at_version(self, conn: Connection, version: int | None) -> RegistrySnapshot:
        """The snapshot for ``version``, already read in ``conn``'s transaction (with
        :data:`VERSION_COLUMN`); rebuilt from ``conn`` if the cached one is older."""
        if version is None:  # a store without migration 0006's row: never cache
            return load_snapshot(conn, -1)
        snap = self.cached(version)
        if snap is not None:
            return snap
        with self._lock:
            snap = self.cached(version)
            if snap is None:
                snap = load_snapshot(conn, version)
                self._snapshot = snap
                self.loads += 1
            return snap
