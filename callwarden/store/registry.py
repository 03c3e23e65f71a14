"""The registries an administrator maintains: validated entries, idempotent upserts, export.

Every change is one unit of work with an audit entry; a batch (registry file, CSV) is all or
nothing, and its first error names the entry and the field.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from callwarden.numbers import InvalidNumber, normalize
from callwarden.policy import CONSENT_SCOPES, classify_text
from callwarden.store import audit
from callwarden.store.facts import GLOBAL
from callwarden.store.models import (
    AccessNumber,
    Campaign,
    Consent,
    ProofDocument,
    Refusal,
    Tenant,
    Trunk,
    utcnow,
)

SECTIONS = ("tenants", "numbers", "trunks", "proofs", "consents", "refusals", "campaigns")


class RegistryError(ValueError):
    """A registry entry that cannot be stored; ``where`` is like ``numbers[2].tenant``."""

    def __init__(self, where: str, message: str):
        self.where, self.message = where, message
        super().__init__(f"{where}: {message}")


def _canonical(value: Any) -> str:
    if value is None or str(value).strip() == "":
        raise ValueError("a number is required")
    try:
        return normalize(str(value)).digits
    except InvalidNumber as exc:
        raise ValueError(str(exc)) from None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("needs a time zone offset, for example 2026-01-05T10:00:00+08:00")
    return value


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TenantIn(_Entry):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = Field(min_length=1, max_length=200)
    status: Literal["active", "suspended", "terminated"] = "active"
    outbound_commitment: str | None = None


class NumberIn(_Entry):
    number: str
    tenant: str
    carrier: str | None = None
    purpose: str | None = None
    inbound: bool = True
    outbound: bool = False
    filing: str | None = None
    filed_on: dt.date | None = None
    certificate: str | None = None
    active: bool = True

    @field_validator("number", mode="before")
    @classmethod
    def _number(cls, v: Any) -> str:
        _canonical(v)
        return str(v).strip()


class TrunkIn(_Entry):
    name: str = Field(min_length=1, max_length=100)
    tenant: str
    carrier: str | None = None
    verified: bool = False
    proof: str | None = None


class ProofIn(_Entry):
    tenant: str
    kind: Literal["tenant", "number", "trunk"]
    subject: str
    ref: str = Field(min_length=1)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    filename: str | None = None


class EvidenceIn(_Entry):
    kind: Literal["contract", "ivr", "ivr_keypress", "recording", "web_form", "web", "other"]
    ref: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ConsentIn(_Entry):
    tenant: str
    callee: str
    scope: list[Literal["callback", "consultation"]] = Field(min_length=1)
    obtained_at: dt.datetime
    expires_at: dt.datetime | None = None
    evidence: EvidenceIn

    @field_validator("scope", mode="before")
    @classmethod
    def _scope(cls, v: Any) -> Any:
        return [s.strip() for s in v.replace(";", ",").split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("callee")
    @classmethod
    def _callee(cls, v: str) -> str:
        _canonical(v)
        return v

    @field_validator("obtained_at", "expires_at")
    @classmethod
    def _tz(cls, v: dt.datetime | None) -> dt.datetime | None:
        return _aware(v)


class RefusalIn(_Entry):
    tenant: str = GLOBAL
    callee: str
    source: str | None = None

    @field_validator("callee", mode="before")
    @classmethod
    def _callee(cls, v: Any) -> str:
        _canonical(v)
        return str(v).strip()


class CampaignIn(_Entry):
    id: str = Field(min_length=1, max_length=64)
    tenant: str
    purpose: str = Field(min_length=1, max_length=32)
    description: str | None = None
    script: str | None = None
    status: Literal["pending", "review", "approved", "rejected"] = "pending"

    @field_validator("purpose")
    @classmethod
    def _purpose(cls, v: str) -> str:
        v = v.lower()
        if v == "marketing":
            raise ValueError("marketing campaigns are not allowed (MIIT 2020-81 §1(2)): refused")
        return v


_MODELS: dict[str, type[_Entry]] = {
    "tenants": TenantIn, "numbers": NumberIn, "trunks": TrunkIn, "proofs": ProofIn,
    "consents": ConsentIn, "refusals": RefusalIn, "campaigns": CampaignIn,
}


def validate_entry(section: str, index: int, raw: Any) -> _Entry:
    where = f"{section}[{index}]"
    if not isinstance(raw, dict):
        raise RegistryError(where, "must be a mapping of fields")
    try:
        return _MODELS[section].model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise RegistryError(f"{where}.{field}" if field else where, msg) from None


class Registry:
    """Administrative operations over one session (the caller owns the transaction)."""

    def __init__(self, session: Session, actor: str):
        self.s, self.actor = session, actor
        self.counts: Counter[str] = Counter()

    def _audit(self, action: str, subject: str, details: dict[str, Any]) -> None:
        # Joins the chain when the transaction commits: a batch (a registry file, a consents
        # CSV) does not hold the audit head, which every decision locks, while its rows go in.
        audit.append_at_commit(self.s, self.actor, action, subject, details)

    def _need_tenant(self, tenant_id: str, where: str) -> Tenant:
        t = self.s.get(Tenant, tenant_id)
        if t is None:
            raise RegistryError(where, f"unknown tenant {tenant_id!r} (add it under tenants first)")
        return t

    @staticmethod
    def _apply(obj: Any, values: dict[str, Any]) -> bool:
        changed = False
        for key, value in values.items():
            if getattr(obj, key) != value:
                setattr(obj, key, value)
                changed = True
        return changed

    def _upsert(self, section: str, obj: Any, existing: Any, values: dict[str, Any], subject: str) -> Any:
        if existing is None:
            self._apply(obj, values)
            self.s.add(obj)
            self.s.flush()
            self.counts[f"{section}.created"] += 1
            self._audit(f"{section}.created", subject, values)
            return obj
        before = {k: getattr(existing, k) for k in values}
        if self._apply(existing, values):
            self.s.flush()
            self.counts[f"{section}.updated"] += 1
            changed = {k: [before[k], v] for k, v in values.items() if before[k] != v}
            self._audit(f"{section}.updated", subject, changed)
        else:
            self.counts[f"{section}.unchanged"] += 1
        return existing

    # -- one upsert per kind of entry ------------------------------------------------------

    def tenant(self, e: TenantIn, where: str = "tenant") -> Tenant:
        existing = self.s.get(Tenant, e.id)
        values = {"name": e.name, "status": e.status, "outbound_commitment": e.outbound_commitment}
        if existing is not None and existing.status != "active" and e.status == "active":
            # A stale file must not lift a suspension: resuming is `callwarden tenants resume`.
            values["status"] = existing.status
            self.counts["tenants.kept_" + existing.status] += 1
        return self._upsert("tenants", Tenant(id=e.id), existing, values, e.id)

    def number(self, e: NumberIn, where: str = "number") -> AccessNumber:
        self._need_tenant(e.tenant, f"{where}.tenant")
        digits = _canonical(e.number)
        existing = self.s.scalar(select(AccessNumber).where(AccessNumber.number == digits))
        values = {"as_filed": e.number, "tenant_id": e.tenant, "carrier": e.carrier, "purpose": e.purpose,
                  "inbound": e.inbound, "outbound": e.outbound, "filing_ref": e.filing,
                  "filed_on": e.filed_on, "certificate_ref": e.certificate, "active": e.active}
        if existing is not None and any(
            getattr(existing, k) != values[k] for k in ("carrier", "purpose", "inbound", "outbound")
        ):
            values["filing_changed_at"] = utcnow()  # §2(2): re-filing due within 10 working days
        return self._upsert("numbers", AccessNumber(number=digits), existing, values, digits)

    def trunk(self, e: TrunkIn, where: str = "trunk") -> Trunk:
        self._need_tenant(e.tenant, f"{where}.tenant")
        values = {"tenant_id": e.tenant, "carrier": e.carrier, "verified": e.verified, "proof_ref": e.proof}
        return self._upsert("trunks", Trunk(name=e.name), self.s.get(Trunk, e.name), values, e.name)

    def proof(self, e: ProofIn, where: str = "proof") -> ProofDocument:
        self._need_tenant(e.tenant, f"{where}.tenant")
        subject = _canonical(e.subject) if e.kind == "number" else e.subject
        existing = self.s.scalar(select(ProofDocument).where(
            ProofDocument.subject_kind == e.kind, ProofDocument.subject == subject,
            ProofDocument.ref == e.ref))
        values = {"tenant_id": e.tenant, "subject_kind": e.kind, "subject": subject,
                  "ref": e.ref, "sha256": e.sha256, "filename": e.filename}
        return self._upsert("proofs", ProofDocument(), existing, values, f"{e.kind}:{subject}")

    def check_consent(self, e: ConsentIn, where: str = "consent") -> None:
        """What :meth:`consent` checks against the store before it writes (it only reads):
        a batch split over several transactions checks every row first."""
        self._need_tenant(e.tenant, f"{where}.tenant")
        if e.expires_at is not None and e.expires_at <= e.obtained_at:
            raise RegistryError(f"{where}.expires_at", "must be after obtained_at")

    def consent(self, e: ConsentIn, where: str = "consent") -> Consent:
        self.check_consent(e, where)
        callee = _canonical(e.callee)
        existing = self.s.scalar(select(Consent).where(
            Consent.tenant_id == e.tenant, Consent.callee == callee,
            Consent.obtained_at == e.obtained_at, Consent.evidence_kind == e.evidence.kind))
        values = {"tenant_id": e.tenant, "callee": callee,
                  "scopes": ",".join(s for s in CONSENT_SCOPES if s in e.scope),
                  "obtained_at": e.obtained_at, "expires_at": e.expires_at,
                  "evidence_kind": e.evidence.kind, "evidence_ref": e.evidence.ref,
                  "evidence_sha256": e.evidence.sha256}
        return self._upsert("consents", Consent(), existing, values, f"{e.tenant}:{callee}")

    def refusal(self, e: RefusalIn, where: str = "refusal") -> Refusal:
        if e.tenant != GLOBAL:
            self._need_tenant(e.tenant, f"{where}.tenant")
        callee = _canonical(e.callee)
        existing = self.s.scalar(select(Refusal).where(Refusal.tenant_id == e.tenant, Refusal.callee == callee))
        values = {"tenant_id": e.tenant, "callee": callee, "source": e.source or (existing.source if existing else None)}
        return self._upsert("refusals", Refusal(), existing, values, f"{e.tenant}:{callee}")

    def campaign(self, e: CampaignIn, where: str = "campaign") -> Campaign:
        self._need_tenant(e.tenant, f"{where}.tenant")
        existing = self.s.get(Campaign, (e.tenant, e.id))
        verdict = classify_text(e.id, e.description, e.script)
        status = e.status
        text_same = existing is not None and (existing.description, existing.script) == (e.description, e.script)
        reviewed = text_same and existing.status in ("approved", "rejected")
        if verdict.marketing and status in ("pending", "approved") and not reviewed:
            status = "review"  # reads as marketing: a person must look at it first
        elif reviewed and status in ("pending", "approved"):
            status = existing.status  # a reviewer's verdict on unchanged text stands
        values = {"purpose": e.purpose, "description": e.description, "script": e.script,
                  "status": status, "classifier_matches": ",".join(verdict.matches) or None}
        return self._upsert("campaigns", Campaign(tenant_id=e.tenant, id=e.id), existing, values,
                            f"{e.tenant}:{e.id}")

    # -- status changes --------------------------------------------------------------------

    def set_tenant_status(self, tenant_id: str, status: str, reason: str) -> Tenant:
        t = self._need_tenant(tenant_id, "tenant")
        before = t.status
        t.status, t.status_reason = status, reason
        self._audit("tenants.status", tenant_id, {"from": before, "to": status, "reason": reason})
        return t

    def review_campaign(self, tenant_id: str, campaign_id: str, approve: bool, note: str) -> Campaign:
        c = self.s.get(Campaign, (tenant_id, campaign_id))
        if c is None:
            raise RegistryError("campaign", f"unknown campaign {campaign_id!r} of tenant {tenant_id!r}")
        if approve and c.purpose == "marketing":
            raise RegistryError("campaign.purpose", "marketing campaigns cannot be approved")
        before = c.status
        c.status = "approved" if approve else "rejected"
        c.reviewed_by, c.reviewed_at = self.actor, utcnow()
        self._audit("campaigns.reviewed", f"{tenant_id}:{campaign_id}",
                    {"from": before, "to": c.status, "note": note,
                     "classifier_matches": c.classifier_matches})
        return c

    def remove_refusal(self, tenant_id: str, callee: str) -> bool:
        digits = _canonical(callee)
        n = self.s.execute(delete(Refusal).where(Refusal.tenant_id == tenant_id, Refusal.callee == digits)).rowcount
        if n:
            self._audit("refusals.removed", f"{tenant_id}:{digits}", {})
        return bool(n)

    def revoke_consent(self, consent_id: int, reason: str) -> Consent:
        c = self.s.get(Consent, consent_id)
        if c is None:
            raise RegistryError("consent", f"unknown consent id {consent_id}")
        c.revoked_at = utcnow()
        self._audit("consents.revoked", str(consent_id), {"reason": reason})
        return c

    # -- whole files -----------------------------------------------------------------------

    def import_document(self, data: Any) -> Counter[str]:
        """Load a registry document (all sections optional); raises RegistryError on the first bad entry."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RegistryError("(top level)", "must be a mapping with sections " + ", ".join(SECTIONS))
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise RegistryError(unknown[0], "unknown section (expected one of " + ", ".join(SECTIONS) + ")")
        for section in SECTIONS:  # dependency order: tenants first
            items = data.get(section) or []
            if not isinstance(items, list):
                raise RegistryError(section, "must be a list of entries")
            upsert = getattr(self, section.removesuffix("s"))
            for i, raw in enumerate(items):
                upsert(validate_entry(section, i, raw), f"{section}[{i}]")
        return self.counts


def export_document(session: Session, tenant: str | None = None, limit: int | None = None
                    ) -> dict[str, list[dict[str, Any]]]:
    """The whole registry in the import format (round-trips through ``import_document``).

    ``tenant``: only that tenant's entries (filtered in each query); ``limit``: at most that
    many entries per section (for views; an export for import takes neither).
    """

    def q(stmt: Any, column: Any) -> Any:
        if tenant is not None:
            stmt = stmt.where(column == tenant)
        return session.scalars(stmt if limit is None else stmt.limit(limit))

    def iso(t: dt.datetime | None) -> str | None:
        return t.isoformat() if t else None

    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
    for t in q(select(Tenant).order_by(Tenant.id), Tenant.id):
        out["tenants"].append({"id": t.id, "name": t.name, "status": t.status,
                               "outbound_commitment": t.outbound_commitment})
    for n in q(select(AccessNumber).order_by(AccessNumber.number), AccessNumber.tenant_id):
        out["numbers"].append({"number": n.as_filed, "tenant": n.tenant_id, "carrier": n.carrier,
                               "purpose": n.purpose, "inbound": n.inbound, "outbound": n.outbound,
                               "filing": n.filing_ref, "filed_on": n.filed_on,
                               "certificate": n.certificate_ref, "active": n.active})
    for tr in q(select(Trunk).order_by(Trunk.name), Trunk.tenant_id):
        out["trunks"].append({"name": tr.name, "tenant": tr.tenant_id, "carrier": tr.carrier,
                              "verified": tr.verified, "proof": tr.proof_ref})
    for p in q(select(ProofDocument).order_by(ProofDocument.id), ProofDocument.tenant_id):
        out["proofs"].append({"tenant": p.tenant_id, "kind": p.subject_kind, "subject": p.subject,
                              "ref": p.ref, "sha256": p.sha256, "filename": p.filename})
    for c in q(select(Consent).where(Consent.revoked_at.is_(None)).order_by(Consent.id), Consent.tenant_id):
        out["consents"].append({"tenant": c.tenant_id, "callee": c.callee, "scope": c.scopes.split(","),
                                "obtained_at": iso(c.obtained_at), "expires_at": iso(c.expires_at),
                                "evidence": {"kind": c.evidence_kind, "ref": c.evidence_ref,
                                             "sha256": c.evidence_sha256}})
    for r in q(select(Refusal).order_by(Refusal.tenant_id, Refusal.callee), Refusal.tenant_id):
        out["refusals"].append({"tenant": r.tenant_id, "callee": r.callee, "source": r.source})
    for cp in q(select(Campaign).order_by(Campaign.tenant_id, Campaign.id), Campaign.tenant_id):
        out["campaigns"].append({"id": cp.id, "tenant": cp.tenant_id, "purpose": cp.purpose,
                                 "description": cp.description, "script": cp.script, "status": cp.status})
    return out


def iter_dnc_numbers(lines: Iterable[str]) -> Iterator[tuple[int, str | None, str]]:
    """(line number, canonical digits or None, problem) for a do-not-call list, one number a line.

    Accepts plain lines or CSV whose first column is the number; blank lines and ``#`` comments
    are skipped; a header line whose first field has no digit is skipped.
    """
    for lineno, line in enumerate(lines, 1):
        field = line.split(",", 1)[0].strip().strip('"')
        if not field or field.startswith("#") or (lineno == 1 and not any(c.isdigit() for c in field)):
            continue
        try:
            yield lineno, normalize(field).digits, ""
        except InvalidNumber as exc:
            yield lineno, None, str(exc)


def import_refusals_bulk(session: Session, tenant: str, numbers: Iterable[str], source: str,
                         batch: int = 10_000, audit_entry: bool = True) -> int:
    """Insert canonical ``numbers`` as refusals of ``tenant``, skipping ones already listed.

    Streams in batches (a national list has millions of rows); returns how many were new.
    ``audit_entry=False``: the caller writes the one audit entry for an import it splits
    over several transactions.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    added = 0
    now = utcnow()
    chunk: list[dict[str, Any]] = []

    def flush() -> int:
        if not chunk:
            return 0
        table = Refusal.__table__
        stmt = (insert(table).on_conflict_do_nothing(index_elements=["tenant_id", "callee"])
                .returning(table.c.id))  # only the rows really inserted come back
        n = len(session.connection().execute(stmt, chunk).all())
        chunk.clear()
        return n

    for digits in numbers:
        chunk.append({"tenant_id": tenant, "callee": digits, "source": source, "created_at": now})
        if len(chunk) >= batch:
            added += flush()
    added += flush()
    if audit_entry:
        audit.append(session, "admin", "refusals.bulk_import", tenant,
                     {"source": source, "added": added})
    return added
