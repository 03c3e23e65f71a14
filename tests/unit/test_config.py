import datetime as dt
from pathlib import Path

import pytest

from callwarden.config import ConfigError, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_contract():
    s = parse_settings({})
    assert s.store.url == "sqlite:///callwarden.db" and s.timezone == "Asia/Shanghai" and s.mode == "enforce"
    assert str(s.calling_hours.window) == "08:00-21:00" and s.calling_hours.blocked == []
    assert (s.frequency.per_day, s.frequency.per_week) == (2, 5)
    assert s.callback_window_hours == 72 and s.decision_timeout_ms == 500
    assert (s.retention.recordings_days, s.retention.cdr_days, s.retention.consent_days) == (180, 180, 180)
    assert s.recording.dir == "recordings" and s.asterisk is None and s.freeswitch is None


def test_the_example_config_loads():
    s = load_settings(ROOT / "config" / "callwarden.example.yaml")
    assert s.asterisk.agi.port == 4573 and s.asterisk.ami.username == "callwarden"
    assert s.freeswitch.esl_outbound.port == 8084 and s.freeswitch.esl_inbound.password == "ClueCon"
    assert dt.date(2026, 10, 1) in s.calling_hours.holidays


@pytest.mark.parametrize("key", ["recordings_days", "cdr_days", "consent_days"])
@pytest.mark.parametrize("days", [29, 0, -5])
def test_retention_below_30_days_is_refused_naming_the_key(key, days):
    with pytest.raises(ConfigError) as e:
        parse_settings({"retention": {key: days}})
    assert f"retention.{key}: {days}: must be at least 30 days" in str(e.value)


def test_retention_of_exactly_30_days_is_allowed():
    assert parse_settings({"retention": {"recordings_days": 30}}).retention.recordings_days == 30


@pytest.mark.parametrize(("data", "needle"), [
    ({"calling_hours": {"window": "21:00-08:00"}}, "calling_hours.window: '21:00-08:00': the start must be before the end"),
    ({"calling_hours": {"window": "8-21"}}, "calling_hours.window: '8-21': must look like HH:MM-HH:MM"),
    ({"calling_hours": {"blocked": ["12:00-25:00"]}}, "calling_hours.blocked"),
    ({"calling_hours": {"holidays": ["2026-13-01"]}}, "calling_hours.holidays.0"),
    ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus': is not an IANA time zone"),
    ({"mode": "lenient"}, "mode: 'lenient'"),
    ({"frequency": {"per_day": 3, "per_week": 2}}, "per_week must be at least per_day"),
    ({"store": {"url": "mysql://x"}}, "store.url: 'mysql://x': must be a sqlite:/// or postgresql"),
    ({"decision_timeout_ms": 0}, "decision_timeout_ms: 0"),
    ({"stroe": {}}, "stroe: unknown key"),
    ({"recording": {"storage": {"kind": "s3"}}}, "kind s3 needs a bucket"),
])
def test_bad_values_name_key_value_and_rule(data, needle):
    with pytest.raises(ConfigError) as e:
        parse_settings(data)
    assert needle in str(e.value)


def test_a_file_that_is_not_yaml_or_missing(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("store: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings(tmp_path / "missing.yaml")


def test_env_var_names_the_default_file(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("mode: observe\n")
    monkeypatch.setenv("CALLWARDEN_CONFIG", str(f))
    assert load_settings().mode == "observe"


def test_day_end_24_00_is_accepted():
    assert parse_settings({"calling_hours": {"window": "00:00-24:00"}}).calling_hours.window.contains(dt.time(23, 59))


def test_freeswitch_switchname_is_optional_and_trimmed():
    assert parse_settings({"freeswitch": {}}).freeswitch.switchname is None
    fs = parse_settings({"freeswitch": {"switchname": " fs-node-1 "}}).freeswitch
    assert fs.switchname == "fs-node-1"
    assert parse_settings({"freeswitch": {"switchname": "x" * 64}}).freeswitch.switchname == "x" * 64


@pytest.mark.parametrize(("value", "needle"), [
    ("", "freeswitch.switchname: '': must not be empty"),
    ("   ", "freeswitch.switchname: '   ': must not be empty"),
    ("x" * 65, "must be at most 64 characters"),
    ("fs\nnode", "must not contain control characters"),
    (12, "freeswitch.switchname: 12: must be a string (quote it in YAML"),
    (["fs-a"], "freeswitch.switchname: ['fs-a']: must be a string"),
])
def test_a_bad_freeswitch_switchname_names_the_key(value, needle):
    with pytest.raises(ConfigError) as e:
        parse_settings({"freeswitch": {"switchname": value}})
    assert needle in str(e.value)


def test_freeswitch_switchname_from_a_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("freeswitch:\n  switchname: fs-a\n")
    assert load_settings(f).freeswitch.switchname == "fs-a"
    f.write_text("freeswitch:\n  switchname: 01\n")  # YAML reads a number: refused, not mangled
    with pytest.raises(ConfigError, match="freeswitch.switchname: 1: must be a string"):
        load_settings(f)
