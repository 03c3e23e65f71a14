"""Console accounts: create, disable, change password, authenticate (argon2id hashes).

Roles: ``admin`` (everything), ``auditor`` (every tenant, read and export), ``tenant-auditor``
(one tenant only). Every change is one audit-log entry naming who made it; hashes and
passwords never reach the log.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from callwarden.audit.access import Scope
from callwarden.store import audit
from callwarden.store.models import Tenant, User, utcnow

ROLES = ("admin", "auditor", "tenant-auditor")
MIN_PASSWORD = 10
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_hasher = PasswordHasher()
# verified against when the user does not exist, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user change that cannot be made (the message says which field and why)."""


@dataclass(frozen=True, slots=True)
class Account:
    """What a request knows about its signed-in user."""

    id: int
    username: str
    role: str
    tenant: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def scope(self) -> Scope:
        """The auditor scope used by callwarden.audit: tenant-auditors see one tenant only."""
        return Scope(actor=self.username, tenant=self.tenant if self.role == "tenant-auditor" else None)


def account_of(u: User) -> Account:
    return Account(u.id, u.username, u.role, u.tenant_id)


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: must be at least {MIN_PASSWORD} characters")


def _get(session: Session, username: str) -> User:
    u = session.scalar(select(User).where(User.username == username))
    if u is None:
        raise UserError(f"unknown user {username!r}")
    return u


def add_user(session: Session, actor: str, username: str, role: str, password: str,
             tenant: str | None = None) -> User:
    if not _NAME.match(username):
        raise UserError("username: 1-64 letters, digits or . _ @ -")
    if role not in ROLES:
        raise UserError(f"role: must be one of {', '.join(ROLES)}")
    if role == "tenant-auditor":
        if not tenant:
            raise UserError("tenant: a tenant-auditor needs --tenant")
        if session.get(Tenant, tenant) is None:
            raise UserError(f"tenant: unknown tenant {tenant!r}")
    elif tenant:
        raise UserError(f"tenant: only a tenant-auditor is limited to a tenant (role is {role})")
    _check_password(password)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise UserError(f"username: {username!r} exists already")
    u = User(username=username, role=role, tenant_id=tenant, password_hash=_hasher.hash(password))
    session.add(u)
    session.flush()
    audit.append(session, actor, "users.created", username, {"role": role, "tenant": tenant})
    return u


def set_disabled(session: Session, actor: str, username: str, disabled: bool) -> User:
    u = _get(session, username)
    u.disabled = disabled
    audit.append(session, actor, "users.disabled" if disabled else "users.enabled", username,
                 {"role": u.role, "tenant": u.tenant_id})
    return u


def set_password(session: Session, actor: str, username: str, password: str) -> User:
    u = _get(session, username)
    _check_password(password)
    u.password_hash = _hasher.hash(password)
    audit.append(session, actor, "users.password", username, {})
    return u


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The enabled user with this name and password, or None (same work either way)."""
    u = session.scalar(select(User).where(User.username == username))
    try:
        _hasher.verify(u.password_hash if u else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if u is None or u.disabled:
        return None
    if _hasher.check_needs_rehash(u.password_hash):
        u.password_hash = _hasher.hash(password)
    u.last_login_at = utcnow()
    return u


def active_account(session: Session, user_id: int) -> Account | None:
    """The account behind a session, if it still exists and is enabled."""
    u = session.get(User, user_id)
    return None if u is None or u.disabled else account_of(u)
