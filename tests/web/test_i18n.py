"""Every word a template asks for exists in both languages."""

from __future__ import annotations

import re
from pathlib import Path

from callwarden.web.i18n import _TEXT, keys, translator

TEMPLATES = Path(__file__).resolve().parents[2] / "callwarden" / "web" / "templates"


def test_every_template_key_is_translated():
    used = set()
    for p in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"\bt\('([a-z_]+)'\)", p.read_text(encoding="utf-8")))
    assert used and used <= keys(), sorted(used - keys())
    for key, (zh, en) in _TEXT.items():
        assert zh and en, key
    assert translator("zh")("calls") == "通话查询" and translator("en")("calls") == "Call search"
