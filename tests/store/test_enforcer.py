"""Decisions through the store, on SQLite and PostgreSQL: durable, counted, fail-closed."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import threading
import time

import pytest
from sqlalchemy import event, func, select, update

from callwarden.audit.snapshot import snapshot
from callwarden.policy import CallAttempt
from callwarden.service.enforcer import CallEnd, Enforcer, InboundCall
from callwarden.store.audit import verify_chain
from callwarden.store.callee_locks import LOCK_CLASS
from callwarden.store.models import AuditEntry, Call, Recording
from tests.conftest import at, seed


def attempt(**kw) -> CallAttempt:
    base = dict(tenant="acme", caller="95512", callee="13800138000", at=at("2026-03-02 10:00"),
                trunk="ct-trunk-1", pbx="asterisk")
    base.update(kw)
    return CallAttempt(**base)


def decide_while_locked(e: Enforcer, sqlite_url: str, a: CallAttempt):  # type: ignore[no-untyped-def]
    """Decide while another connection holds the SQLite store exclusively (an outage)."""
    import sqlite3

    seed(sqlite_url)
    blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        return e.decide(a)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


@pytest.fixture
def enforcer(seeded_url, make_settings) -> Enforcer:
    return Enforcer(make_settings(seeded_url))


def test_allowed_decision_is_durable_before_it_returns(enforcer):
    out = enforcer.decide(attempt(pbx_call_id="1795480861.25"))
    assert out.decision.allowed and out.let_through and out.recording_relpath.startswith("acme/2026/03/02/")
    with enforcer.sessions() as s:
        call = s.get(Call, out.call_id)
        assert (call.decision, call.caller, call.callee, call.party) == ("allow", "95512", "13800138000", "13800138000")
        assert call.consent_id is not None and call.consent_basis == "consent"
        rec = s.get(Recording, call.recording_id)
        assert rec.status == "recording" and rec.spool_path.endswith(out.call_id + ".wav")
        entry = s.scalars(select(AuditEntry).where(AuditEntry.subject == out.call_id)).one()
        assert entry.action == "decision" and '"decision":"allow"' in entry.details
        assert verify_chain(s) == []


def test_denied_decision_is_stored_with_every_reason_and_no_recording(enforcer):
    out = enforcer.decide(attempt(caller="13812345678", callee="13900139000"))
    assert not out.let_through and out.recording_relpath is None
    with enforcer.sessions() as s:
        call = s.get(Call, out.call_id)
        assert call.decision == "deny" and call.reason_codes == [
            "CID_USER_NUMBER", "CID_NOT_REGISTERED", "CALLEE_REFUSED", "NO_CONSENT"]
        assert call.recording_id is None


def test_check_stores_nothing(enforcer):
    enforcer.check(attempt())
    with enforcer.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == 0


def test_number_forms_match_the_registry(enforcer):
    assert enforcer.check(attempt(caller="+86 95512", callee="+86 138 0013 8000")).allowed


def test_length_altered_and_other_tenant_numbers(enforcer):
    assert enforcer.check(attempt(caller="955121234")).codes == ("CID_NOT_REGISTERED", "NUMBER_LENGTH_ALTERED")
    assert enforcer.check(attempt(caller="9551")).codes == ("CID_NOT_REGISTERED", "NUMBER_LENGTH_ALTERED")
    assert "CID_OTHER_TENANT" in enforcer.check(attempt(caller="010-5800-1234")).codes
    assert "NUMBER_INBOUND_ONLY" in enforcer.check(attempt(caller="4008001234")).codes


def test_unverified_trunk_of_other_tenant(enforcer):
    assert enforcer.check(attempt(trunk="cm-trunk-9")).codes == ("TRUNK_UNVERIFIED",)
    assert enforcer.check(attempt(trunk="no-such-trunk")).codes == ("TRUNK_UNVERIFIED",)


def test_campaign_held_for_review_cannot_call(enforcer):
    assert enforcer.check(attempt(campaign="spring-promo")).codes == ("CAMPAIGN_NOT_APPROVED",)
    assert enforcer.check(attempt(campaign="renewals")).allowed


def test_global_refusal_applies_to_every_tenant(enforcer):
    assert "CALLEE_REFUSED" in enforcer.check(attempt(callee="13700137000")).codes


def test_frequency_counts_come_from_stored_calls(enforcer):
    t0 = at("2026-03-02 09:00")
    assert enforcer.decide(attempt(at=t0)).decision.allowed
    assert enforcer.decide(attempt(at=t0 + dt.timedelta(hours=1))).decision.allowed
    third = enforcer.decide(attempt(at=t0 + dt.timedelta(hours=2)))
    assert third.decision.codes == ("FREQUENCY_EXCEEDED",)
    # a denied attempt does not count; the next calendar day starts afresh
    assert enforcer.check(attempt(at=at("2026-03-03 09:00"))).allowed
    # another tenant's or another callee's calls are not counted
    assert enforcer.check(attempt(callee="+86 139 0013 9001", purpose="consultation", at=t0 + dt.timedelta(hours=3))).allowed


def test_weekly_limit_is_a_rolling_seven_days(enforcer):
    for day in range(2, 7):  # Mon..Fri, one call a day
        assert enforcer.decide(attempt(at=at(f"2026-03-0{day} 10:00"))).decision.allowed
    assert enforcer.check(attempt(at=at("2026-03-07 10:00"))).codes == ("FREQUENCY_EXCEEDED",)
    assert enforcer.check(attempt(at=at("2026-03-09 10:00:01"))).allowed  # the Monday call left the window


def test_inbound_call_opens_the_callback_window(enforcer):
    stranger = "13600136000"
    assert enforcer.check(attempt(callee=stranger, purpose="callback")).codes == ("NO_CONSENT",)
    enforcer.log_inbound(InboundCall("acme", "+86 136 0013 6000", "95512", at("2026-03-01 12:00"), "asterisk"))
    d = enforcer.check(attempt(callee=stranger, purpose="callback"))
    assert d.allowed and d.consent_basis == "inbound-callback"
    assert enforcer.check(attempt(callee=stranger, purpose="consultation")).codes == ("NO_CONSENT",)
    late = attempt(callee=stranger, purpose="callback", at=at("2026-03-04 12:00:01"))
    assert enforcer.check(late).codes == ("NO_CONSENT",)
    other = attempt(tenant="beta", caller="01058001234", trunk=None, callee=stranger, purpose="callback")
    assert "NO_CONSENT" in enforcer.check(other).codes


def test_opt_out_becomes_a_refusal(enforcer):
    assert enforcer.opt_out("acme", "+8613800138000", source="ivr", actor="pbx:asterisk")
    assert enforcer.check(attempt()).codes == ("CALLEE_REFUSED",)
    assert enforcer.opt_out("acme", "13800138000", source="ivr", actor="pbx:asterisk")  # idempotent
    assert not enforcer.opt_out(None, "13800138000", source="ivr", actor="x")


def test_call_end_completes_the_cdr_and_cid_change_flags_it(enforcer):
    out = enforcer.decide(attempt(pbx_call_id="1795480861.25"))
    end = at("2026-03-02 10:03")
    assert enforcer.caller_id_changed("asterisk", "1795480861.25", "95512") is None  # same number
    assert enforcer.caller_id_changed("asterisk", "1795480861.25", "13812345678") == out.call_id
    assert enforcer.call_ended(CallEnd("asterisk", "1795480861.25", end, at("2026-03-02 10:00:05"), 175,
                                       "ANSWERED", "NORMAL_CLEARING")) == out.call_id
    with enforcer.sessions() as s:
        call = s.get(Call, out.call_id)
        assert (call.billsec, call.disposition, call.ended_at) == (175, "ANSWERED", end)
        assert call.decision == "deny" and call.reason_codes == ["CID_ALTERED"]
        assert verify_chain(s) == []
    assert enforcer.call_ended(CallEnd("asterisk", "no-such-id", end)) is None


def test_recording_failure_turns_the_call_into_a_deny(enforcer):
    out = enforcer.decide(attempt())
    failed = enforcer.recording_failed(out.call_id, "MixMonitor returned -1")
    assert not failed.let_through and failed.decision.codes == ("RECORDING_UNAVAILABLE",)
    with enforcer.sessions() as s:
        call = s.get(Call, out.call_id)
        assert call.reason_codes == ["RECORDING_UNAVAILABLE"]
        assert s.get(Recording, call.recording_id).status == "failed"


def _recording_status(e: Enforcer, call_id: str) -> str:
    with e.sessions() as s:
        return s.scalars(select(Recording.status).where(Recording.call_id == call_id)).one()


def test_a_correction_leaves_a_recording_the_call_end_has_stored(enforcer):
    """A recording that a call's end already stored (the PBX did record after all) stays
    stored when the call is then corrected to a deny; the call itself becomes the deny."""
    for correct in (lambda cid: enforcer.recording_failed(cid, "no RECORD_START in time"),
                    enforcer.decision_abandoned):
        out = enforcer.decide(attempt())
        with enforcer.engine.begin() as conn:
            conn.execute(update(Recording).where(Recording.call_id == out.call_id)
                         .values(status="stored", sha256="ab" * 32))
        correct(out.call_id)
        assert _recording_status(enforcer, out.call_id) == "stored"
        with enforcer.sessions() as s:
            assert s.get(Call, out.call_id).decision == "deny"


def test_a_correction_racing_the_call_end_does_not_overwrite_its_recording(enforcer):
    """The call's end stores the recording after the correction has read the call and just
    before it writes the recording (forced here: another transaction commits ``stored`` when
    the correction's UPDATE of recordings is about to run). The recording is marked failed
    only while still ``recording``, in that one statement, so the stored row stands; a
    read-then-write would set it back to failed."""
    if enforcer.engine.dialect.name == "sqlite":
        pytest.skip("SQLite: a writer holds the write lock from its BEGIN IMMEDIATE; the "
                    "call's end cannot come in between")
    for correct in (lambda cid: enforcer.recording_failed(cid, "no RECORD_START in time"),
                    enforcer.decision_abandoned):
        out = enforcer.decide(attempt())
        assert _recording_status(enforcer, out.call_id) == "recording"
        raced: list[str] = []

        def call_end_stores_it(_conn, _cursor, statement, *_args,  # type: ignore[no-untyped-def]
                               raced=raced, call_id=out.call_id) -> None:
            if raced or not statement.lstrip().upper().startswith("UPDATE RECORDINGS"):
                return
            raced.append(statement)  # once; the statement below passes through here too
            with enforcer.engine.begin() as other:
                other.execute(update(Recording).where(Recording.call_id == call_id)
                              .values(status="stored", sha256="cd" * 32))

        event.listen(enforcer.engine, "before_cursor_execute", call_end_stores_it)
        try:
            correct(out.call_id)
        finally:
            event.remove(enforcer.engine, "before_cursor_execute", call_end_stores_it)
        assert raced, "the correction never wrote the recording"
        assert _recording_status(enforcer, out.call_id) == "stored"
        with enforcer.sessions() as s:
            assert s.get(Call, out.call_id).decision == "deny"


def test_two_corrections_of_one_call_at_once_keep_both_reasons(enforcer):
    """The recording fails and the decision is abandoned for the same call at the same moment
    (two threads). Each reads the call's reasons and writes them back with its own code; the
    call row is locked at the read (FOR UPDATE), so the second waits and reads the first's
    result, and the CDR keeps both codes. Forced here: when the first is about to write the
    call, the second runs in another thread, given a second to finish before the first goes
    on (without the lock it does finish, and the first then writes over its code)."""
    if enforcer.engine.dialect.name == "sqlite":
        pytest.skip("SQLite: a writer holds the write lock from its BEGIN IMMEDIATE; the "
                    "second correction cannot read before the first commits")
    out = enforcer.decide(attempt())
    first = threading.current_thread()
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            enforcer.recording_failed(out.call_id, "no RECORD_START in time")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            second_done.set()

    started: list[threading.Thread] = []

    def before_first_writes(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if (threading.current_thread() is first and not started
                and statement.lstrip().upper().startswith("UPDATE CALLS")):
            started.append(threading.Thread(target=second))
            started[0].start()
            second_done.wait(1.0)  # with the lock it cannot finish: it waits for our commit

    event.listen(enforcer.engine, "before_cursor_execute", before_first_writes)
    try:
        enforcer.decision_abandoned(out.call_id)
    finally:
        event.remove(enforcer.engine, "before_cursor_execute", before_first_writes)
    assert started, "the first correction never wrote the call"
    started[0].join(10)
    assert not errors and second_done.is_set()
    with enforcer.sessions() as s:
        call = s.get(Call, out.call_id)
        assert call.decision == "deny"
        assert set(call.reason_codes) == {"POLICY_UNAVAILABLE", "RECORDING_UNAVAILABLE"}


def test_observe_mode_lets_denied_calls_through_but_stores_the_deny(seeded_url, make_settings):
    e = Enforcer(make_settings(seeded_url, mode="observe"))
    out = e.decide(attempt(callee="13900139000"))
    assert out.let_through and not out.decision.allowed and out.recording_relpath
    with e.sessions() as s:
        call = s.get(Call, out.call_id)
        assert call.decision == "deny" and not call.enforced and call.recording_id is not None


def test_suspending_a_tenant_takes_effect_on_the_next_call(enforcer):
    from callwarden.store.db import unit_of_work
    from callwarden.store.registry import Registry

    assert enforcer.check(attempt()).allowed
    with unit_of_work(enforcer.sessions) as s:
        Registry(s, "admin").set_tenant_status("acme", "suspended", "complaints")
    assert enforcer.decide(attempt()).decision.codes == ("TENANT_SUSPENDED",)


def test_unreachable_store_fails_closed_in_time(make_settings):
    # a closed port: the connection is refused, the decision must still come back, as a deny
    e = Enforcer(make_settings("postgresql+psycopg://nobody@127.0.0.1:9/none", decision_timeout_ms=200))
    t = time.monotonic()
    out = e.decide(attempt())
    assert out.decision.codes == ("POLICY_UNAVAILABLE",) and not out.let_through
    assert out.decision.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
    assert time.monotonic() - t < 5


def test_locked_sqlite_store_fails_closed(sqlite_url, make_settings):
    seed(sqlite_url)
    e = Enforcer(make_settings(sqlite_url, decision_timeout_ms=100))
    # warm (registry, statements): the recovery below then has its 100 ms for itself
    e.decide(attempt(callee="13800138001"))
    import sqlite3

    path = sqlite_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        t = time.monotonic()
        out = e.decide(attempt())
        assert out.decision.codes == ("POLICY_UNAVAILABLE",)
        assert time.monotonic() - t < 2
    finally:
        blocker.execute("ROLLBACK")
    assert e.decide(attempt()).decision.allowed  # and recovers once the lock is gone


def test_decision_past_its_deadline_is_not_committed(enforcer, monkeypatch):
    import callwarden.service.enforcer as mod

    class Slow(mod.BatchFacts):
        def __init__(self, *a, **kw):
            time.sleep(enforcer.timeout_s + 0.05)
            super().__init__(*a, **kw)

    monkeypatch.setattr(mod, "BatchFacts", Slow)
    out = enforcer.decide(attempt())
    assert out.decision.codes == ("POLICY_UNAVAILABLE",)
    with enforcer.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call)) == 0


def test_denials_during_an_outage_reach_the_store_when_it_is_back(sqlite_url, make_settings):
    e = Enforcer(make_settings(sqlite_url, decision_timeout_ms=100))
    lost = decide_while_locked(e, sqlite_url, attempt(pbx_call_id="during-outage"))
    assert lost.decision.codes == ("POLICY_UNAVAILABLE",) and e.journal.pending
    later = e.decide(attempt(at=at("2026-03-02 11:00")))  # the store answers again: replay
    assert later.decision.allowed
    give_up = time.monotonic() + 5  # the writer replays after answering (never before)
    while e.journal.pending and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not e.journal.pending
    with e.sessions() as s:
        call = s.get(Call, lost.call_id)
        assert (call.decision, call.reason_codes, call.pbx_call_id) == ("deny", ["POLICY_UNAVAILABLE"], "during-outage")
        assert verify_chain(s) == []
    assert e.replay_journal() == 0  # nothing twice


# -- the node a call was handled by (several FreeSWITCH nodes on one store) --------------------


def test_the_node_is_stored_with_decisions_and_inbound_calls(enforcer):
    out = enforcer.decide(attempt(pbx="freeswitch", pbx_call_id="u-a", node="fs-a"))
    denied = enforcer.decide(attempt(callee="13900139000", pbx="freeswitch", node="fs-a"))
    inbound = enforcer.log_inbound(InboundCall("acme", "13600136000", "95512", at("2026-03-02 09:00"),
                                               "freeswitch", "u-in", node="fs-b"))
    legacy = enforcer.decide(attempt(pbx_call_id="1795480861.26"))  # no node (Asterisk, cli)
    with enforcer.sessions() as s:
        assert s.get(Call, out.call_id).node == "fs-a" and s.get(Call, denied.call_id).node == "fs-a"
        assert s.get(Call, inbound).node == "fs-b" and s.get(Call, legacy.call_id).node is None


def test_open_calls_are_scoped_to_a_node_and_to_calls_of_no_known_node(seeded_url, make_settings):
    enforcer = Enforcer(make_settings(seeded_url, frequency={"per_day": 100, "per_week": 700}))

    def let_through(uuid: str, node: str | None) -> str:
        out = enforcer.decide(attempt(pbx="freeswitch", pbx_call_id=uuid, node=node))
        assert out.let_through
        return out.call_id

    a, b, old = let_through("u-a", "fs-a"), let_through("u-b", "fs-b"), let_through("u-old", None)
    ended = let_through("u-a-ended", "fs-a")
    enforcer.call_ended(CallEnd("freeswitch", "u-a-ended", at("2026-03-02 10:05")))
    inbound = enforcer.log_inbound(InboundCall("acme", "13600136000", "95512", at("2026-03-02 10:00"),
                                               "freeswitch", "u-in-b", node="fs-b"))
    assert ended not in {c for c, _ in enforcer.open_calls("freeswitch")}
    assert set(enforcer.open_calls("freeswitch")) == {
        (a, "u-a"), (b, "u-b"), (old, "u-old"), (inbound, "u-in-b")}
    assert set(enforcer.open_calls("freeswitch", node="fs-a")) == {(a, "u-a"), (old, "u-old")}
    assert set(enforcer.open_calls("freeswitch", None, "fs-b")) == {
        (b, "u-b"), (old, "u-old"), (inbound, "u-in-b")}
    assert set(enforcer.open_calls("freeswitch", node="fs-c")) == {(old, "u-old")}
    # `since` and `node` combine; the Asterisk reconciler's positional form still works.
    assert enforcer.open_calls("freeswitch", at("2026-03-02 11:00"), "fs-a") == []
    assert enforcer.open_calls("asterisk", None) == []


def test_a_denial_journalled_during_an_outage_keeps_its_node(sqlite_url, make_settings):
    e = Enforcer(make_settings(sqlite_url, decision_timeout_ms=100))
    lost = decide_while_locked(e, sqlite_url, attempt(pbx="freeswitch", pbx_call_id="u-outage",
                                                      node="fs-a"))
    assert lost.decision.codes == ("POLICY_UNAVAILABLE",)
    assert '"node":"fs-a"' in e.journal.path.read_text(encoding="utf-8")
    assert e.replay_journal() == 1
    with e.sessions() as s:
        call = s.get(Call, lost.call_id)
        assert (call.node, call.pbx, call.pbx_call_id) == ("fs-a", "freeswitch", "u-outage")


def test_a_long_outage_journal_replays_in_short_pieces_between_decisions(store_url, make_settings):
    """450 denials kept during an outage: after the next decision is answered, the
    writer stores them a chunk at a time (each one short transaction), all of them, once."""
    from callwarden.service import enforcer as mod
    from callwarden.service.enforcer import _journal_entry

    seed(store_url)
    e = Enforcer(make_settings(store_url))
    e.journal.add_many([_journal_entry(attempt(pbx_call_id=f"u-{i}"), f"{i:032x}", "outbound")
                        for i in range(450)])
    chunks: list[int] = []
    drain = e.journal.drain

    def counted(store, limit=None):  # type: ignore[no-untyped-def]
        chunks.append(limit)
        return drain(store, limit)

    e.journal.drain = counted  # type: ignore[method-assign]
    assert e.decide(attempt(pbx_call_id="after")).decision.allowed
    give_up = time.monotonic() + 10
    while e.journal.pending and time.monotonic() < give_up:
        time.sleep(0.01)
    assert not e.journal.pending
    assert chunks == [mod.REPLAY_CHUNK] * 3  # 200 + 200 + 50
    with e.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Call).where(
            Call.reasons == "POLICY_UNAVAILABLE")) == 450
        assert s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "decision_replayed")) == 450
        assert verify_chain(s) == []
    assert e.replay_journal() == 0


def test_the_journal_keeps_a_batch_of_denials_with_one_fsync(tmp_path, monkeypatch):
    from callwarden.service import journal as jmod

    synced: list[int] = []
    real = jmod.os.fsync
    monkeypatch.setattr(jmod.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    j = jmod.OutageJournal(tmp_path / "j.jsonl")
    j.add_many([{"call_id": f"c{i}", "n": i} for i in range(100)])
    assert len(synced) == 1 and j.pending
    seen: list[list[int]] = []
    assert j.drain(lambda es: seen.append([x["n"] for x in es]) or len(es), limit=60) == 60
    j.add({"call_id": "late", "n": 100})  # while the rest of the first file waits
    assert j.drain(lambda es: seen.append([x["n"] for x in es]) or len(es), limit=60) == 40
    assert j.drain(lambda es: seen.append([x["n"] for x in es]) or len(es), limit=60) == 1
    assert seen == [list(range(60)), list(range(60, 100)), [100]] and not j.pending


# -- values longer than their columns (the PBX puts no limit on them) ---------------------------


def test_over_long_pbx_values_are_decided_and_stored_cut_not_failed_closed(enforcer):
    """PostgreSQL refuses a too-long value: without the cut such a call would be denied
    POLICY_UNAVAILABLE and its journal entry would never replay."""
    long_id = "node-with-a-very-long-systemname-" + "x" * 80 + ".1"
    out = enforcer.decide(attempt(channel="PJSIP/" + "c" * 300, pbx_call_id=long_id,
                                  node="n" * 100, campaign="k" * 100))
    odd = enforcer.decide(attempt(tenant="t" * 100, callee="9" * 300, trunk="r" * 200))
    assert out.decision.codes == ("CAMPAIGN_UNKNOWN",) or "POLICY_UNAVAILABLE" not in out.decision.codes
    assert "POLICY_UNAVAILABLE" not in odd.decision.codes and "TENANT_UNKNOWN" in odd.decision.codes
    inbound = enforcer.log_inbound(InboundCall("acme", "1" * 300, "95512", at("2026-03-02 09:00"),
                                               "asterisk", long_id + "-in", channel="c" * 300))
    with enforcer.sessions() as s:
        call = s.get(Call, out.call_id)
        assert (len(call.channel), len(call.pbx_call_id), len(call.node), len(call.campaign)) == \
            (200, 64, 64, 64)
        assert call.channel.startswith("PJSIP/ccc") and call.pbx_call_id == long_id[:64]
        other = s.get(Call, odd.call_id)
        assert (len(other.tenant_id), len(other.callee), len(other.trunk)) == (64, 40, 100)
        assert len(s.get(Call, inbound).caller) == 40
    # the PBX keeps sending the full id: lookups find the stored call
    assert enforcer.find_call("asterisk", long_id) == out.call_id
    assert enforcer.call_ended(CallEnd("asterisk", long_id, at("2026-03-02 10:05"),
                                       disposition="D" * 100, hangup_cause="H" * 100)) == out.call_id
    with enforcer.sessions() as s:
        call = s.get(Call, out.call_id)
        assert (len(call.disposition), len(call.hangup_cause)) == (32, 64)


def test_an_over_long_journalled_denial_replays(store_url, make_settings, tmp_path):
    seed(store_url)
    e = Enforcer(make_settings(store_url))
    e.journal_denial(attempt(channel="c" * 300, pbx_call_id="p" * 100, callee="9" * 300))
    assert e.replay_journal() == 1 and not e.journal.pending
    with e.sessions() as s:
        call = s.scalars(select(Call)).one()
        assert (call.reason_codes, len(call.channel), len(call.pbx_call_id)) == \
            (["POLICY_UNAVAILABLE"], 200, 64)


def test_journal_entries_the_store_cannot_take_are_set_aside(store_url, make_settings):
    """Garbage entries are skipped; a batch the store refuses outright is moved aside and
    replay goes on with later denials instead of failing on every decision for ever."""
    seed(store_url)
    e = Enforcer(make_settings(store_url))
    e.journal.add({"call_id": "no-time"})
    e.journal.add({"call_id": "f" * 32, "at": "yesterday"})
    e.journal_denial(attempt(pbx_call_id="good"))
    assert e.replay_journal() == 1  # the good one; two skipped

    e.journal.add({"call_id": "a" * 32, "at": "2026-03-02T10:00:00+08:00", "pbx": "asterisk"})
    with pytest.MonkeyPatch.context() as mp:
        from sqlalchemy.exc import DataError

        def refuse(entries):  # what PostgreSQL raises for a value it cannot take
            raise DataError("INSERT ...", {}, Exception("value too long for type character varying(32)"))

        mp.setattr(e, "_store_journal_entries", refuse)
        assert e.replay_journal() == 0
    assert not e.journal.pending
    rejected = list(e.journal.path.parent.glob(e.journal.path.name + ".rejected-*"))
    assert len(rejected) == 1 and '"a' in rejected[0].read_text(encoding="utf-8")
    e.journal_denial(attempt(pbx_call_id="after"))
    assert e.replay_journal() == 1  # later denials replay again
    with e.sessions() as s:
        assert sorted(s.scalars(select(Call.pbx_call_id))) == ["after", "good"]


def test_a_second_end_keeps_what_the_first_gave_and_the_newest_call_with_the_id_ends(
        seeded_url, make_settings):
    """Asterisk reports an end twice (Hangup, then Cdr), each with part of it; a PBX id can come
    back on a later call (the newest one is the one ending). One audit entry per report."""
    e = Enforcer(make_settings(seeded_url, frequency={"per_day": 10, "per_week": 70}))
    old = e.decide(attempt(pbx_call_id="1795480861.77", at=at("2026-03-02 09:00")))
    new = e.decide(attempt(pbx_call_id="1795480861.77"))
    answered, ended = at("2026-03-02 10:00:07"), at("2026-03-02 10:02")
    assert e.call_ended(CallEnd("asterisk", "1795480861.77", ended, answered, 113)) == new.call_id
    assert e.call_ended(CallEnd("asterisk", "1795480861.77", ended, None, None, "ANSWERED",
                                "NORMAL_CLEARING")) == new.call_id
    assert e.call_ended(CallEnd("freeswitch", "1795480861.77", ended)) is None  # another PBX's id
    with e.sessions() as s:
        call = s.get(Call, new.call_id)
        assert (call.answered_at, call.ended_at, call.billsec, call.disposition, call.hangup_cause) \
            == (answered, ended, 113, "ANSWERED", "NORMAL_CLEARING")
        assert s.get(Call, old.call_id).ended_at is None
        entries = s.scalars(select(AuditEntry).where(AuditEntry.action == "call_ended")
                            .order_by(AuditEntry.seq)).all()
        assert [x.subject for x in entries] == [new.call_id, new.call_id]
        assert entries[0].actor == "pbx:asterisk" and '"billsec":113' in entries[0].details
        assert verify_chain(s) == []
    e.engine.dispose()


def _waits(trace: str) -> int:
    """How many times the client waited for the server in a libpq trace: each run of lines it
    sent (F) followed by lines it received (B)."""
    sides = [line.split("\t", 1)[0] for line in trace.splitlines() if line[:2] in ("F\t", "B\t")]
    return sum(1 for sent, got in itertools.pairwise(sides) if (sent, got) == ("F", "B"))


def test_decision_and_call_end_wait_for_postgresql_twice_each(enforcer, tmp_path):
    """PostgreSQL (libpq's protocol trace): a decision batch waits for the server twice (the
    begin, the callees' locks, the registry version and the facts, run in that order; then
    the writes, the chain's entries linked by the server under the head's lock, the COMMIT
    and the pipeline's sync), a call's end twice too (the begin queued with the CDR's update;
    the audit entry, linked by the server, with the commit). Neither waits holding the audit
    head's lock, which every node's writers take in turn. The outcome is the same: stored,
    committed, the chain intact; and the connection the call's end borrowed goes back to the
    pool out of autocommit, as the ORM's sessions need it."""
    if enforcer.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no round trips")
    import threading

    from psycopg import pq
    from sqlalchemy import event

    def traced(work) -> int:  # type: ignore[no-untyped-def]
        """The waits of every connection checked out while ``work`` runs, until checked in."""
        back = threading.Event()
        with open(tmp_path / "trace", "w+") as out:
            def checkout(dbapi_conn, record, proxy) -> None:  # type: ignore[no-untyped-def]
                dbapi_conn.pgconn.trace(out.fileno())
                dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

            def checkin(dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
                dbapi_conn.pgconn.untrace()
                back.set()

            event.listen(enforcer.engine, "checkout", checkout)
            event.listen(enforcer.engine, "checkin", checkin)
            try:
                work()
                assert back.wait(10)  # the decision writer keeps its connection for a pause
            finally:
                event.remove(enforcer.engine, "checkout", checkout)
                event.remove(enforcer.engine, "checkin", checkin)
            out.seek(0)
            return _waits(out.read())

    def writer_idle() -> None:
        deadline = time.monotonic() + 10
        while enforcer._writer_conn is not None and time.monotonic() < deadline:
            time.sleep(0.02)

    enforcer.decide(attempt(callee="13800138001"))  # prepared statements, the registry loaded
    writer_idle()
    decided = []
    assert traced(lambda: decided.append(enforcer.decide(attempt(pbx_call_id="traced.1")))) == 2
    assert decided[0].decision.allowed
    end = at("2026-03-02 10:01")
    assert traced(lambda: enforcer.call_ended(CallEnd("asterisk", "traced.1", end))) == 2
    with enforcer.sessions() as s:
        call = s.get(Call, decided[0].call_id)
        assert call.decision == "allow" and call.ended_at == end and call.recording_id is not None
        assert verify_chain(s) == []
    assert enforcer.call_ended(CallEnd("asterisk", "no.such.call", end)) is None
    with contextlib.ExitStack() as stack:  # every idle connection of the pool, at once
        pooled = [stack.enter_context(enforcer.engine.connect())
                  for _ in range(enforcer.engine.pool.checkedin())]
        assert pooled and all(c.connection.dbapi_connection.autocommit is False for c in pooled)


def test_a_batch_that_fails_after_its_begin_leaves_no_transaction_open(enforcer, monkeypatch):
    """The writer opens its transaction itself on PostgreSQL (BEGIN queued in the pipeline):
    a batch that fails after it must not leave the connection in a transaction holding its
    callees' locks, which other nodes' decisions wait for. Fail closed, then decide again."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    import callwarden.service.enforcer as mod

    class Broken(mod.BatchFacts):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)  # the BEGIN and the callee's lock are on their way
            raise OperationalError("SELECT", {}, Exception("connection trouble"))

    enforcer.decide(attempt(callee="13800138001"))
    with monkeypatch.context() as m:
        m.setattr(mod, "BatchFacts", Broken)
        assert enforcer.decide(attempt(pbx_call_id="broken.1")).decision.codes == ("POLICY_UNAVAILABLE",)
    if enforcer.engine.dialect.name == "postgresql":
        with enforcer.engine.connect() as other:
            other.execute(text("SET lock_timeout = '1s'"))
            other.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")).all()
            assert other.execute(text(
                "SELECT pg_try_advisory_xact_lock(:cls, hashtext(current_schema() || ':' || :c))"),
                {"cls": LOCK_CLASS, "c": "13800138000"}).scalar_one()
            other.rollback()
            assert other.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'")).scalar_one() == 0
    out = enforcer.decide(attempt(pbx_call_id="after.1"))
    assert out.decision.allowed
    # one snapshot: the writer may still be replaying the failed batch's journalled denial
    with snapshot(enforcer.engine) as s:
        assert s.get(Call, out.call_id) is not None and verify_chain(s) == []
