"""`callwarden holds`: set, lift, list; every change audit-logged; bad requests refused."""

from __future__ import annotations

import json

import pytest

from callwarden.service.holds import HoldError, normalize_prefix
from tests.retention.conftest import NOW


@pytest.mark.parametrize("raw, digits", [
    ("138", "138"), ("+86 139 123", "139123"), ("0086-138-0013", "1380013"),
    ("+86 10 5800", "0105800"), ("010-5800", "0105800"), ("95512", "95512"), ("(400) 800", "400800"),
])
def test_prefixes_are_normalized_like_stored_numbers(raw, digits):
    assert normalize_prefix(raw) == digits


@pytest.mark.parametrize("raw", ["", "13", "+1 415", "138*", "１３８", "1" * 21])
def test_bad_prefixes_are_refused(raw):
    with pytest.raises(HoldError):
        normalize_prefix(raw)


def test_set_lift_list_and_the_audit_trail(site):
    call_id = site.stored_call(ended=NOW)
    p = site.cli("holds", "set", "--call", call_id, "--reason", "court order 17")
    assert p.returncode == 0 and f"on call {call_id}" in p.stdout
    hold_id = int(p.stdout.split()[2])
    listed = site.cli("holds", "list")
    assert listed.returncode == 0 and "court order 17" in listed.stdout
    [entry] = site.entries("legal_hold_set", f"legal_hold:{hold_id}")
    assert entry.actor == "tester" and json.loads(entry.details) == {
        "scope": "call", "value": call_id, "reason": "court order 17"}
    p = site.cli("holds", "lift", str(hold_id), "--reason", "order vacated")
    assert p.returncode == 0 and "lifted" in p.stdout
    [entry] = site.entries("legal_hold_lifted", f"legal_hold:{hold_id}")
    assert json.loads(entry.details)["reason"] == "order vacated"
    [row] = site.cli_json("holds", "list", "--all")[1]
    assert row["lifted_by"] == "tester" and not row["active"]
    assert site.chain_ok()


@pytest.mark.parametrize("args, code, message", [
    (["--call", "no-such-call"], 1, "no call with id"),
    (["--tenant", "nobody"], 1, "no tenant nobody"),
    (["--number-prefix", "12"], 1, "3 to 20 digits"),
    (["--tenant", "acme", "--call", "x"], 2, "exactly one of"),
    ([], 2, "exactly one of"),
])
def test_bad_requests_are_refused_and_nothing_is_written(site, args, code, message):
    before = len(site.entries("legal_hold_set"))
    p = site.cli("holds", "set", *args, "--reason", "r")
    assert p.returncode == code and message in (p.stderr + p.stdout)
    assert len(site.entries("legal_hold_set")) == before and site.cli_json("holds", "list")[1] == []


def test_reason_is_required(site):
    assert site.cli("holds", "set", "--tenant", "acme").returncode == 2
    p = site.cli("holds", "set", "--tenant", "acme", "--reason", "  ")
    assert p.returncode == 1 and "reason is required" in p.stderr
    assert site.cli("holds", "lift", "999", "--reason", "x").returncode == 1
