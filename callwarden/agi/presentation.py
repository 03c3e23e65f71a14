"""Caller-ID presentation as Asterisk reports it, reduced to one question: is the number hidden?

Asterisk's presentation is an octet whose 0x60 bits say allowed (0x00), restricted (0x20) or
unavailable (0x40). It appears as a number (``agi_callingpres: 67``), as the name
``CALLERPRES()`` returns (``prohib_not_screened``, ``unavailable``), and in AMI events as
``32 (Presentation Prohibited, Not Screened)``. Restricted and unavailable both mean the callee
sees no number: CID_HIDDEN at decision time, CID_ALTERED when it happens mid-call.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"\s*(\d{1,3})\b")
_RESTRICTED, _UNAVAILABLE, _MASK = 0x20, 0x40, 0x60


def is_hidden_presentation(value: str | None) -> bool:
    """True for restricted/unavailable presentations; False for allowed or unknown text."""
    if not value:
        return False
    m = _NUMBER.match(value)
    if m:
        return int(m.group(1)) & _MASK in (_RESTRICTED, _UNAVAILABLE)
    name = value.strip().lower()
    return name.startswith("prohib") or name == "unavailable"
