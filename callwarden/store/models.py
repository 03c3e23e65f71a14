"""SQLAlchemy 2.0 typed models: the registries, call records, recordings and the audit log.

Numbers are stored in canonical form (``callwarden.numbers.normalize``) so that every lookup is
an exact, indexed match. Times are stored as UTC.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|suspended|terminated
    outbound_commitment: Mapped[str | None] = mapped_column(String(100))
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AccessNumber(Base):
    __tablename__ = "access_numbers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(24), unique=True)  # canonical digits
    as_filed: Mapped[str] = mapped_column(String(40))  # digits as written on the filing
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    carrier: Mapped[str | None] = mapped_column(String(100))
    purpose: Mapped[str | None] = mapped_column(String(200))
    inbound: Mapped[bool] = mapped_column(Boolean, default=True)
    outbound: Mapped[bool] = mapped_column(Boolean, default=False)
    filing_ref: Mapped[str | None] = mapped_column(String(100))
    filed_on: Mapped[dt.date | None] = mapped_column(Date)
    certificate_ref: Mapped[str | None] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    filing_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Trunk(Base):
    __tablename__ = "trunks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    carrier: Mapped[str | None] = mapped_column(String(100))
    verified: Mapped[bool] = mapped_column(Boolean, default=False)
    proof_ref: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ProofDocument(Base):
    """Evidence that a tenant's number, trunk or commitment was lawfully obtained (§5(1)1)."""

    __tablename__ = "proof_documents"
    __table_args__ = (Index("ix_proof_subject", "subject_kind", "subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    subject_kind: Mapped[str] = mapped_column(String(16))  # tenant | number | trunk
    subject: Mapped[str] = mapped_column(String(100))  # tenant id, canonical number, trunk name
    ref: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str | None] = mapped_column(String(64))
    filename: Mapped[str | None] = mapped_column(String(400))
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Consent(Base):
    __tablename__ = "consents"
    __table_args__ = (Index("ix_consent_lookup", "tenant_id", "callee"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    callee: Mapped[str] = mapped_column(String(24))
    scopes: Mapped[str] = mapped_column(String(64))  # comma-separated: callback,consultation
    obtained_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    evidence_kind: Mapped[str] = mapped_column(String(32))
    evidence_ref: Mapped[str | None] = mapped_column(String(200))
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Refusal(Base):
    """Do-not-call (谢绝来电). ``tenant_id`` is ``*`` for the global list."""

    __tablename__ = "refusals"
    __table_args__ = (UniqueConstraint("tenant_id", "callee", name="uq_refusal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    callee: Mapped[str] = mapped_column(String(24))
    source: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)
    script: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|review|approved|rejected
    classifier_matches: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(100))
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Call(Base):
    """One call attempt (the CDR)."""

    __tablename__ = "calls"
    __table_args__ = (
        # Serves frequency counts, callback windows and per-number audit searches.
        Index("ix_calls_party", "tenant_id", "party", "direction", "attempted_at"),
        Index("ix_calls_pbx", "pbx", "pbx_call_id"),
        # Reconciliation (Enforcer.open_calls): the calls still open, per PBX (the node filter is
        # applied to those few rows). Partial: tiny however many CDRs the store keeps. Same
        # columns as ix_calls_pbx, so SQLite's planner prefers it for that query (with other
        # columns it picks ix_calls_pbx for the `pbx_call_id IS NOT NULL` range and reads every
        # CDR of the PBX).
        Index("ix_calls_open", "pbx", "pbx_call_id", sqlite_where=text("ended_at IS NULL"),
              postgresql_where=text("ended_at IS NULL")),
        Index("ix_calls_attempted", "attempted_at"),
        # Auditor searches (callwarden.audit): one tenant over a period, one number over a period
        # (exact or prefix, with or without a tenant).
        Index("ix_calls_tenant_attempted", "tenant_id", "attempted_at"),
        Index("ix_calls_callee_attempted", "callee", "attempted_at"),
        Index("ix_calls_caller_attempted", "caller", "attempted_at"),
    )

    call_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8))  # outbound | inbound
    pbx: Mapped[str] = mapped_column(String(16))
    pbx_call_id: Mapped[str | None] = mapped_column(String(64))
    # Which PBX node handled the call (FreeSWITCH: its switchname); NULL for rows from before
    # migration 0005 and for PBXes that do not report one. Scopes reconciliation to its node.
    node: Mapped[str | None] = mapped_column(String(64))
    channel: Mapped[str | None] = mapped_column(String(200))
    caller: Mapped[str | None] = mapped_column(String(40))  # canonical when parseable, else raw
    callee: Mapped[str | None] = mapped_column(String(40))
    party: Mapped[str | None] = mapped_column(String(40))  # the outside number (callee out, caller in)
    caller_hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    trunk: Mapped[str | None] = mapped_column(String(100))
    campaign: Mapped[str | None] = mapped_column(String(64))
    purpose: Mapped[str | None] = mapped_column(String(32))
    attempted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    billsec: Mapped[int | None] = mapped_column(Integer)
    disposition: Mapped[str | None] = mapped_column(String(32))
    hangup_cause: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(8))  # allow | deny
    reasons: Mapped[str] = mapped_column(String(400), default="")  # comma-separated codes
    enforced: Mapped[bool] = mapped_column(Boolean, default=True)  # False in observe mode
    consent_id: Mapped[int | None] = mapped_column(Integer)
    consent_basis: Mapped[str | None] = mapped_column(String(32))
    recording_id: Mapped[int | None] = mapped_column(Integer)
    # Why the call's recording never arrived (missing|empty|no_space|permission_denied|
    # storage_error|conflict|lost); set by callwarden.service.recordings, shown by `verify`.
    recording_problem: Mapped[str | None] = mapped_column(String(32))
    latency_ms: Mapped[float | None] = mapped_column()

    @property
    def reason_codes(self) -> list[str]:
        return [c for c in self.reasons.split(",") if c]


class Recording(Base):
    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.call_id"), index=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # recording -> finalizing -> stored | failed; stored -> purging -> purged (see service.recordings)
    status: Mapped[str] = mapped_column(String(16), default="recording", index=True)
    spool_path: Mapped[str | None] = mapped_column(String(500))  # where the PBX writes it
    location: Mapped[str | None] = mapped_column(String(500))  # where it is kept
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(Integer)
    duration_s: Mapped[float | None] = mapped_column()
    encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    key_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finalized_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    retain_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # finalizing/purging since
    purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """Append-only, hash-chained: ``hash = sha256(prev_hash + canonical JSON of the entry)``."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str | None] = mapped_column(String(200), index=True)
    details: Mapped[str] = mapped_column(Text)  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the chain's last sequence number and hash; locked to append in order."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class RegistryVersion(Base):
    """One row: a counter that moves on every write to the registry tables (database triggers,
    migration 0006), so that a node serves the registry from memory and reloads it only when
    the counter moved (``callwarden.store.snapshot``)."""

    __tablename__ = "registry_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class AuditKeyFingerprint(Base):
    """One row: HMAC of a fixed label under the installation's audit key (never the key)."""

    __tablename__ = "audit_key"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class LegalHold(Base):
    """Keeps recordings past their deadline: one call, a whole tenant, or a number range."""

    __tablename__ = "legal_holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # call | tenant | number_prefix
    value: Mapped[str] = mapped_column(String(64), index=True)  # call id, tenant id, number prefix
    reason: Mapped[str] = mapped_column(Text)
    set_by: Mapped[str] = mapped_column(String(100))
    set_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lifted_by: Mapped[str | None] = mapped_column(String(100))
    lifted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Complaint(Base):
    """A callee's complaint (投诉) about a tenant's calls."""

    __tablename__ = "complaints"
    __table_args__ = (Index("ix_complaints_tenant_at", "tenant_id", "received_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    callee: Mapped[str] = mapped_column(String(24))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    source: Mapped[str | None] = mapped_column(String(64))  # 12321, carrier, hotline ...
    note: Mapped[str | None] = mapped_column(Text)
    call_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Alert(Base):
    """A warning or suspension raised by the policing detector; ``dedup_key`` makes it once-only."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # risk_warn | risk_suspend | filing_overdue | proof_missing
    level: Mapped[str] = mapped_column(String(16))  # warn | suspend
    score: Mapped[float | None] = mapped_column()
    details: Mapped[str] = mapped_column(Text)  # JSON: figures, thresholds, sample call ids
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class User(Base):
    """A web console account (callwarden.web.users): argon2 hash, role, optional tenant."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))  # admin | auditor | tenant-auditor
    tenant_id: Mapped[str | None] = mapped_column(String(64))  # only for tenant-auditor
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
