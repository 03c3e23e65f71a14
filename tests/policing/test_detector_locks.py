"""A detector pass never makes a decision wait for its reading.

A pass reads a lot (every tenant's figures, the evidence of what it will raise) and writes
little. Decisions must go on meanwhile: on SQLite the reading is a WAL snapshot that takes no
write lock (the write lock is taken only to apply the plan); on PostgreSQL the pass holds
its advisory lock, which decisions never take, and takes the audit head only to apply.

Shown without timing: a decision is made from *inside* the pass, while it measures and while
it plans. If the pass held a lock the decision needs, the decision could only wait for its
deadline (the pass cannot go on until the decision returns) and be refused
POLICY_UNAVAILABLE, however fast the machine.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from typing import Any

import pytest

from callwarden.policing.figures import Measurer
from callwarden.policing.runner import Detector
from callwarden.policy import CallAttempt
from callwarden.service.enforcer import Enforcer
from callwarden.store.db import make_engine
from tests.conftest import seed
from tests.policing.helpers import insert_calls, telemarketing

CST = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2026, 3, 2, 10, 0, tzinfo=CST)
#: The example registry: acme's filed number calls a consented callee; beta list-dials.
OTHER_TENANT, OTHER_ACCESS = "beta", "01058001234"


@pytest.mark.parametrize("step", ["measuring", "planning"])
def test_a_decision_made_during_a_pass_is_answered(store_url: str, make_settings, monkeypatch,
                                                   step: str) -> None:
    seed(store_url)
    insert_calls(store_url, telemarketing(OTHER_TENANT, NOW - dt.timedelta(minutes=50),
                                          NOW - dt.timedelta(minutes=1), random.Random(7),
                                          access=OTHER_ACCESS, per_minute=30, first=13700000001))
    enforcer = Enforcer(make_settings(store_url, decision_timeout_ms=2000))
    enforcer.decide(CallAttempt(tenant="acme", caller="95512", callee="13800138000", at=NOW,
                                pbx="asterisk", pbx_call_id="warm"))  # the writer's connection
    decided: list[Any] = []

    def deciding(real: Callable[..., Any]) -> Callable[..., Any]:
        def step_then_decide(*args: Any, **kwargs: Any) -> Any:
            out = real(*args, **kwargs)
            if not decided:  # still inside the pass: its transaction is open
                decided.append(enforcer.decide(CallAttempt(
                    tenant="acme", caller="95512", callee="13800138000", at=NOW,
                    pbx="asterisk", pbx_call_id="during-the-pass")))
            return out
        return step_then_decide

    if step == "measuring":
        monkeypatch.setattr(Measurer, "measure", deciding(Measurer.measure))
    else:
        monkeypatch.setattr(Detector, "_plan", deciding(Detector._plan))
    detector = Detector(make_settings(store_url), engine=make_engine(store_url))
    try:
        result = detector.run_pass(now=NOW)
    finally:
        detector.close()
        detector.engine.dispose()
        enforcer.engine.dispose()

    assert result.ran and OTHER_TENANT in result.suspended  # the pass then wrote its alerts
    [outcome] = decided
    assert outcome.decision.allowed, outcome.decision.codes
    assert outcome.call_id is not None  # stored before the pass went on
