"""A consents import (a call center's callback records: thousands of rows) while calls are
decided. Decisions must not wait for it:

* every row is checked first (a bad row imports nothing), then the rows go in short
  transactions (SQLite has one writer at a time); running it again completes an import cut
  off half-way (a consent already stored is matched, not added twice);
* registry changes' audit entries join the chain when their transaction commits, so the
  audit head, which every decision locks, is not held while the rows go in (PostgreSQL).

Shown without timing: a decision is made from inside the import (PostgreSQL: inside its
transaction; SQLite: between two of its transactions). If the import held what decisions
need there, the decision could only wait for its deadline and be refused POLICY_UNAVAILABLE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from callwarden.cli import admin
from callwarden.policy import CallAttempt
from callwarden.service.enforcer import Enforcer
from callwarden.store.audit import verify_chain
from callwarden.store.models import AuditEntry, Consent
from callwarden.store.registry import Registry
from tests.conftest import at, cli_invoker, seed

HEADER = "tenant,callee,scope,obtained_at,expires_at,evidence_kind,evidence_ref,evidence_sha256\n"


def _csv(path: Path, n: int, tail: str = "") -> Path:
    path.write_text(HEADER + "".join(
        f"acme,139{i:08d},callback,2026-02-01T10:00:00+08:00,,recording,rec-{i},\n"
        for i in range(n)) + tail)
    return path


def _decider(url: str, make_settings) -> tuple[Enforcer, Any]:
    e = Enforcer(make_settings(url, decision_timeout_ms=1000,
                               frequency={"per_day": 1000, "per_week": 7000}))

    def decide(i: int) -> tuple[str, ...]:
        return e.decide(CallAttempt("acme", "95512", "13800138000", at("2026-03-02 10:00"),
                                    pbx="asterisk", pbx_call_id=f"during-import-{i}")).decision.codes
    decide(-1)  # the writer's connection
    return e, decide


def _counts(e: Enforcer) -> tuple[int, int]:
    """Consents stored, and their audit entries (the example registry's included)."""
    with e.sessions() as s:
        return (s.scalar(select(func.count()).select_from(Consent)) or 0,
                s.scalar(select(func.count()).select_from(AuditEntry).where(
                    AuditEntry.action == "consents.created")) or 0)


def test_a_decision_made_inside_a_postgresql_import_is_answered(postgresql_url, make_settings,
                                                                tmp_path, monkeypatch) -> None:
    seed(postgresql_url)
    e, decide = _decider(postgresql_url, make_settings)
    codes: list[tuple[str, ...]] = []
    real = Registry.consent

    def consent_then_decide(self, entry, where="consent"):  # noqa: ANN001, ANN202
        out = real(self, entry, where)
        if not codes:  # the first row written, its transaction open
            self.s.flush()
            codes.append(decide(len(codes)))
        return out

    monkeypatch.setattr(Registry, "consent", consent_then_decide)
    stored, entries = _counts(e)
    cw = cli_invoker(postgresql_url, tmp_path)
    p = cw("consents", "import", str(_csv(tmp_path / "c.csv", 20)))
    assert p.returncode == 0 and "imported 20" in p.stdout, p.stderr
    assert codes == [()]  # allowed, not POLICY_UNAVAILABLE
    assert _counts(e) == (stored + 20, entries + 20)
    with e.sessions() as s:
        assert verify_chain(s) == []
    e.engine.dispose()


def test_an_import_goes_in_short_transactions_checked_whole_first(
        store_url, make_settings, tmp_path, monkeypatch) -> None:
    seed(store_url)
    e, decide = _decider(store_url, make_settings)
    cw = cli_invoker(store_url, tmp_path)
    n = 3 * admin.CONSENT_STEP + 7
    stored, entries = _counts(e)

    # a bad row at the end, found only against the store (unknown tenant): nothing imported
    bad = _csv(tmp_path / "bad.csv", n,
               "nobody,13700000000,callback,2026-02-01T10:00:00+08:00,,recording,r,\n")
    p = cw("consents", "import", str(bad))
    assert p.returncode == 1 and f"line {n + 2}" in p.stderr and "unknown tenant" in p.stderr
    assert _counts(e) == (stored, entries)

    codes: list[tuple[str, ...]] = []
    pause = admin.time.sleep

    def decide_between_steps(seconds: float) -> None:  # the import's pause between two steps
        codes.append(decide(len(codes)))
        pause(seconds)

    monkeypatch.setattr(admin.time, "sleep", decide_between_steps)
    p = cw("consents", "import", str(_csv(tmp_path / "good.csv", n)))
    monkeypatch.setattr(admin.time, "sleep", pause)
    assert p.returncode == 0 and f"imported {n}" in p.stdout, p.stderr
    assert len(codes) >= 3 and all(c == () for c in codes), codes
    assert _counts(e) == (stored + n, entries + n)
    # again: everything is matched, nothing added twice
    assert cw("consents", "import", str(_csv(tmp_path / "good.csv", n))).returncode == 0
    assert _counts(e) == (stored + n, entries + n)
    with e.sessions() as s:
        assert verify_chain(s) == []
    e.engine.dispose()
