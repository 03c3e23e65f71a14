"""Chinese numbering plan: normalize and classify telephone numbers.

Every rule compares numbers in one canonical form, the national digits a caller in mainland
China would dial: mobiles as 11 digits (``13800138000``), fixed lines with their trunk ``0`` and
area code (``01012345678``), service numbers as filed (``95512``, ``4001234567``). International
prefixes (``+86``, ``0086``, ``86`` before a mobile) are removed; foreign numbers keep a ``+``.
Parsing of mobiles and area codes is delegated to ``phonenumbers``; the call-center number
ranges it does not model (95/96 short numbers) are ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import phonenumbers
from phonenumbers import PhoneNumberType

_STRIP = re.compile(r"[\s\-().]")
_MOBILE = re.compile(r"1[3-9]\d{9}")
_HIDDEN = {"", "anonymous", "unknown", "restricted", "private", "unavailable", "0000000000"}


class NumberKind(StrEnum):
    """What kind of number a canonical digit string is."""

    MOBILE = "mobile"
    FIXED = "fixed"
    SERVICE_95 = "95"
    SERVICE_96 = "96"
    SERVICE_400 = "400"
    SERVICE_800 = "800"
    CARRIER_SHORT = "carrier_short"  # 10086, 12345, 110 ...
    FOREIGN = "foreign"
    OTHER = "other"


#: Kinds that belong to a subscriber (a person or an ordinary line), never an access number.
SUBSCRIBER_KINDS = frozenset({NumberKind.MOBILE, NumberKind.FIXED})
#: Kinds shown unmasked in logs: published service numbers are not personal data.
PUBLIC_KINDS = frozenset(
    {NumberKind.SERVICE_95, NumberKind.SERVICE_96, NumberKind.SERVICE_400, NumberKind.SERVICE_800,
     NumberKind.CARRIER_SHORT}
)


class InvalidNumber(ValueError):
    """A string that cannot be a telephone number (the message never repeats the number)."""


@dataclass(frozen=True, slots=True)
class Number:
    """A normalized number: canonical ``digits`` and its ``kind``."""

    digits: str
    kind: NumberKind

    def masked(self) -> str:
        return mask(self.digits, self.kind)


def is_hidden(raw: str | None) -> bool:
    """True when a caller ID is absent or one of the placeholders PBXes use for 'withheld'."""
    return raw is None or raw.strip().lower() in _HIDDEN


def _clean(raw: str) -> str:
    text = raw.strip()
    for scheme in ("tel:", "sip:", "sips:"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    text = text.split("@", 1)[0].split(";", 1)[0]
    text = _STRIP.sub("", text)
    if not text or not re.fullmatch(r"\+?\d+", text):
        raise InvalidNumber("not a telephone number: only digits and a leading '+' are allowed")
    if len(text) > 20:
        raise InvalidNumber("not a telephone number: longer than 20 digits")
    return text


def _national(text: str) -> str | None:
    """Strip the China country code; None when the number is foreign."""
    if text.startswith("+"):
        return text[3:] if text.startswith("+86") else None
    if text.startswith("0086"):
        return text[4:]
    if text.startswith("86") and len(text) == 13 and _MOBILE.fullmatch(text[2:]):
        return text[2:]
    return text


@lru_cache(maxsize=65536)
def normalize(raw: str) -> Number:
    """Parse ``raw`` into its canonical form; raises InvalidNumber for non-numbers."""
    text = _clean(raw)
    had_country_code = text.startswith(("+", "0086"))
    national = _national(text)
    if national is None:
        return Number("+" + text.lstrip("+"), NumberKind.FOREIGN)
    if not national:
        raise InvalidNumber("not a telephone number: nothing after the country code")
    if had_country_code and not (
        _MOBILE.fullmatch(national) or national.startswith(("0", "400", "800", "95", "96"))
    ):
        national = "0" + national  # +86 10 1234 5678 drops the trunk prefix
    return Number(national, classify(national))


def classify(digits: str) -> NumberKind:
    """Classify canonical national digits (see ``normalize``)."""
    n = len(digits)
    if n == 11 and _MOBILE.fullmatch(digits):
        return NumberKind.MOBILE
    if n == 10 and digits.startswith("400"):
        return NumberKind.SERVICE_400
    if n == 10 and digits.startswith("800"):
        return NumberKind.SERVICE_800
    if digits.startswith("95") and 5 <= n <= 8:
        return NumberKind.SERVICE_95
    if digits.startswith("96") and 5 <= n <= 8:
        return NumberKind.SERVICE_96
    if digits.startswith("1") and 3 <= n <= 6:
        return NumberKind.CARRIER_SHORT
    if digits.startswith("0"):
        area_local = _area_local_part(digits)
        if area_local is not None and area_local.startswith("96") and 5 <= len(area_local) <= 8:
            return NumberKind.SERVICE_96  # local 96 number dialled with its area code
        if _is_fixed_line(digits):
            return NumberKind.FIXED
    return NumberKind.OTHER


def _area_local_part(digits: str) -> str | None:
    for area_len in (3, 4):  # 010/02x, or 0xxx
        area = digits[:area_len]
        if area_len == 3 and not (area == "010" or area.startswith("02")):
            continue
        return digits[area_len:]
    return None


def _is_fixed_line(digits: str) -> bool:
    try:
        parsed = phonenumbers.parse(digits, "CN")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed) and phonenumbers.number_type(parsed) in (
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.FIXED_LINE_OR_MOBILE,
    )


def try_normalize(raw: str | None) -> Number | None:
    """``normalize`` that returns None for hidden or unparseable input."""
    if is_hidden(raw):
        return None
    try:
        return normalize(raw)  # type: ignore[arg-type]
    except InvalidNumber:
        return None


def mask(digits: str | None, kind: NumberKind | None = None) -> str:
    """Mask a number for logs: ``138****8000``. Service numbers stay readable."""
    if not digits:
        return ""
    if kind is None:
        number = try_normalize(digits)
        kind = number.kind if number else NumberKind.OTHER
    if kind in PUBLIC_KINDS:
        return digits
    if len(digits) >= 8:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    if len(digits) >= 4:
        return digits[:2] + "*" * (len(digits) - 2)
    return "*" * len(digits)


def mask_raw(raw: str | None) -> str:
    """Mask a number as received from a PBX (normalizing first when possible)."""
    if is_hidden(raw):
        return "(hidden)"
    number = try_normalize(raw)
    return number.masked() if number else mask(re.sub(r"\D", "", raw) or "?", NumberKind.OTHER)
