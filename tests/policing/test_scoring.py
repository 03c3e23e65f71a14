"""The score is a sum of explicit ramps: boundaries, sample floors, thresholds, config checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from callwarden.config import ConfigError, parse_settings
from callwarden.config.model import FEATURE_DEFAULTS
from callwarden.policing.features import FEATURES
from callwarden.policing.figures import Epoch, TenantFigures, TrafficCounts, Window
from callwarden.policing.scoring import contribution, ramp, score

NOW = dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)
W = Window(NOW - dt.timedelta(hours=1), NOW)


def figures(traffic: TrafficCounts | None = None, complaints: int = 0, edge: tuple[int, int] = (0, 0),
            hours: float = 1.0) -> TenantFigures:
    return TenantFigures("t", "active", Epoch(), W, W, W, hours, traffic or TrafficCounts(),
                         edge_attempts=edge[0], edge_sample=edge[1], complaints=complaints)


def test_the_catalogue_and_the_config_name_the_same_figures():
    assert [f.name for f in FEATURES] == list(FEATURE_DEFAULTS)
    assert parse_settings({}).policing.features.total_weight == 100


@pytest.mark.parametrize(("value", "start", "full", "level"), [
    (0.05, 0.05, 0.4, 0.0), (0.0, 0.05, 0.4, 0.0), (0.4, 0.05, 0.4, 1.0), (0.9, 0.05, 0.4, 1.0),
    (0.225, 0.05, 0.4, 0.5),
    # falling ramps (answer rate): full below start
    (0.45, 0.45, 0.15, 0.0), (0.60, 0.45, 0.15, 0.0), (0.15, 0.45, 0.15, 1.0), (0.30, 0.45, 0.15, 0.5),
])
def test_ramp(value, start, full, level):
    assert ramp(value, start, full) == pytest.approx(level)


def test_each_figure_earns_nothing_at_its_start_and_something_just_past_it():
    cfg = parse_settings({}).policing
    for name, spec in cfg.features.items():
        sample = max(spec.min_sample, 1)
        at_start = contribution(name, spec.start, sample, spec)
        step = 1e-3 if spec.full > spec.start else -1e-3
        past = contribution(name, spec.start + step, sample, spec)
        at_full = contribution(name, spec.full, sample, spec)
        assert at_start.points == 0 and at_start.note is None, name
        assert 0 < past.level < 0.01, name
        assert at_full.points == spec.weight and at_full.level == 1, name


def test_a_figure_below_its_sample_floor_is_shown_but_not_counted():
    spec = parse_settings({}).policing.features.no_consent_share  # min_sample 20
    under = contribution("no_consent_share", 0.9, 19, spec)
    at = contribution("no_consent_share", 0.9, 20, spec)
    assert under.points == 0 and under.value == 0.9 and "below min_sample 20" in under.note
    assert at.points == spec.weight and at.note is None
    empty = contribution("no_consent_share", None, 0, spec)
    assert empty.points == 0 and empty.value is None and "sample 0" in empty.note


def test_score_is_the_sum_of_the_listed_points_and_the_level_follows_the_thresholds():
    cfg = parse_settings({}).policing
    # 100 attempts, 17 NO_CONSENT, 5 refused, 3 complaints: 15 + 10 + 15*(0.12/0.35)
    t = TrafficCounts(attempts=100, completed=78, answered=78, timed=78, no_consent=17, refused=5,
                      distinct_callees=100)
    r = score(figures(t, complaints=3), cfg)
    assert r.score == pytest.approx(30.14) and r.level == "warn"
    assert r.score == pytest.approx(sum(c.points for c in r.contributions))
    assert [c.feature for c in r.top(3)] == ["complaints", "refused_attempts", "no_consent_share"]
    r16 = score(figures(replace(t, no_consent=16), complaints=3), cfg)
    assert r16.score == pytest.approx(29.71) and r16.level == "ok"
    d = r.as_dict()
    assert d["thresholds"] == {"warn": 30, "suspend": 50} and d["counts"]["no_consent"] == 17
    assert {c["feature"] for c in d["contributions"]} == set(FEATURE_DEFAULTS)


def test_threshold_equality_counts_as_crossing():
    cfg = parse_settings({"policing": {"warn_score": 15, "suspend_score": 25}}).policing
    assert score(figures(complaints=3), cfg).level == "warn"  # exactly 15
    assert score(figures(complaints=2), cfg).level == "ok"  # 10
    t = TrafficCounts(refused=5)
    assert score(figures(t, complaints=3), cfg).level == "suspend"  # exactly 25


def test_rates_use_the_configured_window_length():
    cfg = parse_settings({}).policing
    r = score(figures(TrafficCounts(attempts=1650), hours=1.0), cfg)
    rate = next(c for c in r.contributions if c.feature == "attempt_rate")
    assert rate.value == 1650 and rate.points == 2.5  # halfway from 300 to 3000, weight 5
    r2 = score(figures(TrafficCounts(attempts=1650), hours=0.5), cfg)
    assert next(c for c in r2.contributions if c.feature == "attempt_rate").points == 5


def test_weights_and_ramps_are_configurable_per_figure():
    s = parse_settings({"policing": {"features": {"complaints": {"weight": 40, "full": 1}},
                                     "warn_score": 30, "suspend_score": 40}})
    assert s.policing.features.complaints.min_sample == 0  # untouched keys keep their defaults
    r = score(figures(complaints=1), s.policing)
    assert r.score == 40 and r.level == "suspend"


@pytest.mark.parametrize(("policing", "needle"), [
    ({"warn_score": 50, "suspend_score": 50}, "suspend_score must be above warn_score"),
    ({"warn_score": 101, "suspend_score": 200}, "warn_score 101 can never be reached"),
    ({"features": {"answer_rate": {"start": 1.2}}}, "policing.features.answer_rate"),
    ({"features": {"complaints": {"start": 3}}}, "start and full must differ"),
    ({"features": {"complaints": {"weight": -1}}}, "policing.features.complaints.weight"),
    ({"features": {"spam_ness": {"weight": 1}}}, "policing.features.spam_ness: unknown key"),
    ({"window_minutes": 1}, "policing.window_minutes"),
    ({"interval_s": 0}, "policing.interval_s"),
    ({"sequence": {"min_run": 2}}, "policing.sequence.min_run"),
    ({"webhook": {"url": "mailto:x@y"}}, "policing.webhook.url"),
    ({"refiling": {"holidays": ["2026-02-30"]}}, "policing.refiling.holidays.0"),
    ({"bogus": 1}, "policing.bogus: unknown key"),
])
def test_bad_policing_config_names_the_key(policing, needle):
    with pytest.raises(ConfigError) as e:
        parse_settings({"policing": policing})
    assert needle in str(e.value)


def test_policing_defaults():
    p = parse_settings({}).policing
    assert (p.enabled, p.interval_s, p.window_minutes, p.warn_score, p.suspend_score) == (True, 60, 60, 30, 50)
    assert (p.sequence.max_gap, p.sequence.min_run, p.refiling.working_days) == (10, 5, 10)
    assert p.webhook is None
