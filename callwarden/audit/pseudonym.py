"""Phone numbers in the audit log: a keyed hash and the masked form, never the number itself.

The audit log is hash-chained and cannot be edited, so whatever it holds outlives the CDRs,
recordings and consents that retention purges. New entries therefore carry each number as

    {"hmac": HMAC-SHA256(installation key, canonical digits) in hex, "masked": "138****8000"}

(in a subject: ``h:<hex>``). An auditor looking for one number hashes the query with the same
key (:func:`number_digest`) and finds its entries; without the key the digests say nothing.

The installation key is a file outside the database (``audit.key_file``, :func:`key_path`),
created by ``callwarden db upgrade`` (:func:`ensure_store_key`) with mode 0600. The store keeps
only a fingerprint (HMAC of a fixed label), so that start-up (:func:`open_store_key`) refuses a
missing or wrong key with a clear error instead of writing digests nobody can match.

Which values are numbers is decided here, in one place (:func:`protect`, called by
``store.audit.append`` for every entry): the detail keys in :data:`NUMBER_KEYS` at any depth,
and the subjects of the actions in :data:`NUMBER_SUBJECTS`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import SQLAlchemyError

from callwarden.numbers import mask_raw, try_normalize
from callwarden.store.models import AuditKeyFingerprint

if TYPE_CHECKING:
    from callwarden.config import Settings

#: Detail keys (at any depth) whose string values are phone numbers of people.
NUMBER_KEYS = frozenset({"caller", "callee", "party", "decided_caller", "new_caller", "number"})
#: Actions whose subject names a number: "TENANT:DIGITS" (True) or bare digits (False).
NUMBER_SUBJECTS = {"consents.created": True, "consents.updated": True, "refusals.created": True,
                   "refusals.updated": True, "refusals.removed": True, "refusal_added": False}
#: Legal holds name a number prefix in ``value`` when their scope is ``number``.
_HOLD_ACTIONS = ("legal_hold_set", "legal_hold_lifted")
_FINGERPRINT_LABEL = b"callwarden audit-key fingerprint v1"
_KEY_FILE = re.compile(r"^[0-9a-f]{64}$")
SUBJECT_PREFIX = "h:"


class AuditKeyError(Exception):
    """The audit key is missing, unreadable or not this store's (the message says which)."""


@dataclass(frozen=True, slots=True)
class AuditKey:
    secret: bytes
    path: str

    @property
    def fingerprint(self) -> str:
        return hmac.new(self.secret, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never print the secret
        return f"AuditKey(path={self.path!r}, fingerprint={self.fingerprint[:12]}...)"


def canonical_number(value: str) -> str:
    """The form that is hashed: canonical digits when ``value`` is a number, else as given."""
    number = try_normalize(value)
    return number.digits if number else value.strip()


def _digest(key: AuditKey, canonical: str) -> str:
    return hmac.new(key.secret, canonical.encode(), hashlib.sha256).hexdigest()


def number_digest(key: AuditKey, number: str) -> str:
    """HMAC-SHA256 of the number's canonical form under the installation key (hex)."""
    return _digest(key, canonical_number(number))


def pseudonym(key: AuditKey, number: str) -> dict[str, str]:
    """What an audit entry holds instead of ``number``."""
    n = try_normalize(number)  # once: this runs in every call decision
    if n is None:
        return {"hmac": _digest(key, number.strip()), "masked": mask_raw(number)}
    return {"hmac": _digest(key, n.digits), "masked": n.masked()}


# -- what an entry carries ------------------------------------------------------------------

def _needs_key(action: str, subject: str | None, details: Any) -> bool:
    return (subject is not None and action in NUMBER_SUBJECTS) or _has_numbers(details, action)


def _has_numbers(value: Any, action: str) -> bool:
    if isinstance(value, dict):
        if action in _HOLD_ACTIONS and value.get("scope") == "number" and value.get("value"):
            return True
        return any((k in NUMBER_KEYS and _is_clear(v)) or _has_numbers(v, action)
                   for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_numbers(v, action) for v in value)
    return False


def _is_clear(value: Any) -> bool:
    return isinstance(value, str) and bool(value) or (
        isinstance(value, list | tuple) and any(isinstance(v, str) and v for v in value))


def _protect_value(key: AuditKey, value: Any) -> Any:
    if isinstance(value, str) and value:
        return pseudonym(key, value)
    if isinstance(value, list | tuple):
        return [_protect_value(key, v) for v in value]
    return value  # None, or already a pseudonym


def _protect_details(key: AuditKey, value: Any, action: str) -> Any:
    if isinstance(value, dict):
        out = {k: _protect_value(key, v) if k in NUMBER_KEYS else _protect_details(key, v, action)
               for k, v in value.items()}
        if action in _HOLD_ACTIONS and out.get("scope") == "number" and isinstance(out.get("value"), str):
            out["value"] = pseudonym(key, out["value"])
        return out
    if isinstance(value, list | tuple):
        return [_protect_details(key, v, action) for v in value]
    return value


def protect_subject(key: AuditKey, action: str, subject: str) -> str:
    if NUMBER_SUBJECTS[action]:
        tenant, _, digits = subject.rpartition(":")
        return f"{tenant}:{SUBJECT_PREFIX}{number_digest(key, digits)}"
    return SUBJECT_PREFIX + number_digest(key, subject)


def protect(key: AuditKey | None, action: str, subject: str | None,
            details: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(subject, details)`` as an audit entry may hold them: every number keyed and masked.

    Raises AuditKeyError when there is a number to protect and no key (a programming error:
    the process never loaded its store's key; nothing is written in clear instead)."""
    if not _needs_key(action, subject, details):
        return subject, details
    if key is None:
        raise AuditKeyError("no audit key is loaded for this store: a number cannot be written "
                            "to the audit log (start-up must call open_store_key)")
    if subject is not None and action in NUMBER_SUBJECTS:
        subject = protect_subject(key, action, subject)
    return subject, _protect_details(key, details, action)


# -- finding a number's entries, old and new ------------------------------------------------

def search_terms(key: AuditKey, number: str) -> tuple[str, str]:
    """(digest, canonical digits): what an entry about ``number`` contains, new form or old."""
    return number_digest(key, number), canonical_number(number)


def has_clear_numbers(action: str, subject: str | None, details_text: str) -> bool:
    """Whether a stored entry holds a number in clear (written before numbers were keyed)."""
    if subject is not None and action in NUMBER_SUBJECTS and SUBJECT_PREFIX not in subject:
        return True
    if action not in _HOLD_ACTIONS and not any(f'"{k}":' in details_text for k in NUMBER_KEYS):
        return False  # cheap: `verify` asks this of every entry of the chain
    try:
        details = json.loads(details_text)
    except ValueError:
        return False
    return _has_numbers(details, action)


# -- the key file and the store's fingerprint ------------------------------------------------

KEY_ENV = "CALLWARDEN_AUDIT_KEY_FILE"


def key_path(settings: Settings) -> Path:
    """``audit.key_file``, else ``$CALLWARDEN_AUDIT_KEY_FILE``, else beside a SQLite store file
    (``<file>.audit.key``), else ``audit.key`` beside the config file (the current directory
    when there is none)."""
    if settings.audit.key_file:
        return Path(settings.audit.key_file)
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    url = settings.store.url
    if url.startswith("sqlite:///") and url.removeprefix("sqlite:///") not in ("", ":memory:"):
        db = url.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(db + ".audit.key")
    return (settings.config_dir or Path.cwd()) / "audit.key"


def read_key(path: Path) -> AuditKey:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise AuditKeyError(
            f"audit key file {path} is missing (audit.key_file): the audit log's numbers are "
            "keyed with it. Restore it from your backup; a new installation creates it with "
            "`callwarden db upgrade`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditKeyError(f"audit key file {path} cannot be read: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    if not _KEY_FILE.match(text):
        raise AuditKeyError(f"audit key file {path} is not a callwarden audit key "
                            "(64 hex digits expected)")
    return AuditKey(bytes.fromhex(text), str(path))


def create_key(path: Path) -> AuditKey:
    """A new random key in ``path`` (mode 0600; never overwrites a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret.hex() + "\n")
    return AuditKey(secret, str(path))


def _stored_fingerprint(conn: Connection) -> str | None:
    return conn.execute(select(AuditKeyFingerprint.fingerprint)
                        .where(AuditKeyFingerprint.id == 1)).scalar_one_or_none()


def _mismatch(key: AuditKey, stored: str) -> AuditKeyError:
    return AuditKeyError(
        f"audit key file {key.path} does not match this store (the store expects the key with "
        f"fingerprint {stored[:12]}..., the file's is {key.fingerprint[:12]}...): restore this "
        "store's key; a different key would make its audit entries unsearchable")


def ensure_store_key(settings: Settings, engine: Engine) -> tuple[AuditKey, bool]:
    """For ``db upgrade`` (after the schema upgrade): the key, created when this is a new
    installation; its fingerprint recorded in the store. Returns ``(key, created)``."""
    path = key_path(settings)
    with engine.begin() as conn:
        stored = _stored_fingerprint(conn)
        if path.exists() or stored is not None:
            key = read_key(path)  # a store that has a key never gets a new one silently
            created = False
        else:
            key, created = create_key(path), True
        if stored is None:
            conn.execute(insert(AuditKeyFingerprint).values(
                id=1, fingerprint=key.fingerprint, created_at=dt.datetime.now(dt.UTC)))
        elif stored != key.fingerprint:
            raise _mismatch(key, stored)
    bind(engine, key)
    return key, created


def open_store_key(settings: Settings, engine: Engine, *, store_may_be_down: bool = False) -> AuditKey:
    """Start-up: read the key and check it against the store; then entries on ``engine``'s
    store are written with it. Raises AuditKeyError (missing, unreadable, wrong key).

    A store that cannot be reached raises what the store raises, unless ``store_may_be_down``
    (the enforcer: it starts and fails calls closed until the store answers); the key file
    is still read and checked for form."""
    key = read_key(key_path(settings))
    try:
        conn = engine.connect()
    except SQLAlchemyError:
        if not store_may_be_down:
            raise
        bind(engine, key)
        return key
    try:
        with conn:
            stored = _stored_fingerprint(conn)
    except SQLAlchemyError:
        raise AuditKeyError("the store has no audit_key table (schema behind): "
                            "run `callwarden db upgrade`") from None
    if stored is None:
        raise AuditKeyError("this store has no audit key recorded: run `callwarden db upgrade`")
    if stored != key.fingerprint:
        raise _mismatch(key, stored)
    bind(engine, key)
    return key


# -- which key a store's entries are written with ---------------------------------------------

#: Store URL (password hidden) -> its key: every engine on one store (the servers', a
#: read-only one, a detector's) finds the key its process loaded at start-up.
_BOUND: dict[str, AuditKey] = {}


def _store_id(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


#: Engine -> key, so that the per-call append does not render a URL each time.
_BY_ENGINE: WeakKeyDictionary[Engine, AuditKey] = WeakKeyDictionary()


def bind(engine: Engine, key: AuditKey) -> None:
    _BOUND[_store_id(engine)] = key
    _BY_ENGINE.clear()


def bound_key(engine: Engine) -> AuditKey | None:
    key = _BY_ENGINE.get(engine)
    if key is None:
        key = _BOUND.get(_store_id(engine))
        if key is not None:
            _BY_ENGINE[engine] = key
    return key
