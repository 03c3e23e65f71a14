"""The README's reason-code table and config reference stay in step with the code."""

import re
from pathlib import Path

from callwarden.config.model import Settings
from callwarden.policy.reasons import REASONS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_reason_code_is_documented_with_its_clause_and_cause():
    for r in REASONS.values():
        row = re.search(rf"^\| `{r.code}` \| (.+?) \| .+ \| .+ \| (\w+) \((\d+)\) \|$", README, re.M)
        assert row, r.code
        assert row.group(1) == r.clause and row.group(2) == r.cause_name and int(row.group(3)) == r.cause_code


def test_every_top_level_config_key_is_documented():
    for key in Settings.model_fields:
        assert f"`{key}" in README, key
