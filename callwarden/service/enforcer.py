"""The one entry point the PBX adapters call: decide, record what happened, fail closed.

Data flows one way: an adapter builds a plain ``CallAttempt`` (or event), the enforcer loads the
facts, asks the pure decision core, and writes the outcome (CDR + audit entry) before it
answers. Adapters never see SQL; the policy core never sees a PBX. Outbound decisions go through
:meth:`Enforcer.submit` to the decision writer (``service.group_commit``: one thread stores all
the decisions waiting at a moment in one transaction); the other methods are synchronous and
thread-safe (one session per call), run from the adapters' thread pools.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import Pool

from callwarden.audit.pseudonym import open_store_key
from callwarden.config import Settings
from callwarden.log import get_logger
from callwarden.numbers import Number, mask, mask_raw, try_normalize
from callwarden.policy import CallAttempt, Decision, Rules, decide, denial
from callwarden.policy.reasons import ordered
from callwarden.recorder import FinalizedRecording
from callwarden.recorder.naming import recording_relpath, spool_file
from callwarden.service.checkpoint import BackgroundCheckpoints
from callwarden.service.group_commit import Correction, GroupCommit, Pending
from callwarden.service.journal import OutageJournal
from callwarden.service.recordings import RecordingService, returned_at_call_end
from callwarden.store import audit, hot
from callwarden.store.callee_locks import lock_callees
from callwarden.store.db import StoreUnavailable, make_engine, make_sessionmaker, unit_of_work
from callwarden.store.facts import GLOBAL, BatchFacts
from callwarden.store.fit import fit, widths
from callwarden.store.hot import HotStatements
from callwarden.store.models import Call, Recording, Refusal, utcnow
from callwarden.store.snapshot import VERSION, SnapshotCache
from callwarden.store.statistics import calls_statistics

if TYPE_CHECKING:
    from callwarden.metrics import EnforcerObserver

log = get_logger("callwarden.decision")

#: Most journalled denials stored per replay between decision batches (one short transaction).
REPLAY_CHUNK = 200
# The writer's statements run on the driver's cursor (store.hot: no per-execution overhead).
_INSERT_CALL = HotStatements(insert(Call))
_INSERT_RECORDINGS = HotStatements(insert(Recording))
# One statement links every new recording of the batch to its call (round trips are what a
# PostgreSQL batch pays for, more than rows).
_LINK_RECORDINGS = HotStatements(
    update(Call).where(Call.call_id.in_(bindparam("cids", expanding=True)))
    .values(recording_id=select(Recording.id)
            .where(Recording.call_id == Call.call_id).scalar_subquery()))
# A decision the adapter gave up on, made a deny (see Enforcer.abandon).
_ABANDON_CALL = HotStatements(
    update(Call).where(Call.call_id == bindparam("cid"))
    .values(decision="deny", reasons=bindparam("new_reasons")))
_ABANDON_RECORDINGS = HotStatements(
    update(Recording).where(Recording.call_id.in_(bindparam("cids", expanding=True)),
                            Recording.status == "recording")
    .values(status="failed", error="decision abandoned: the call was denied"))
# A call's end, in one statement: the newest call with that PBX id gets the end's values, an
# end that lacks one keeps what an earlier end (Hangup, then Cdr) gave. It returns the call's
# recording row as well (recordings.returned_at_call_end).
_END_CALL = HotStatements(
    update(Call).where(Call.call_id == select(Call.call_id).where(
        Call.pbx == bindparam("e_pbx"), Call.pbx_call_id == bindparam("e_pbx_call_id"))
        .order_by(Call.attempted_at.desc()).limit(1).scalar_subquery())
    .values(ended_at=bindparam("e_ended_at"),
            answered_at=func.coalesce(bindparam("e_answered_at", type_=Call.answered_at.type),
                                      Call.answered_at),
            billsec=func.coalesce(bindparam("e_billsec", type_=Call.billsec.type), Call.billsec),
            disposition=func.coalesce(bindparam("e_disposition", type_=Call.disposition.type),
                                      Call.disposition),
            hangup_cause=func.coalesce(bindparam("e_hangup_cause", type_=Call.hangup_cause.type),
                                       Call.hangup_cause))
    .returning(*returned_at_call_end()))
#: Batches a correction may fail with before it is given up (logged: decision_abandon_failed).
CORRECTION_TRIES = 3


def _correct(conn: Connection, corrections: Sequence[Correction]) -> None:
    """Turn the corrected calls into denies and their recordings (never started) into failed
    ones."""
    _ABANDON_CALL.executemany(conn, [{"cid": c.call_id, "new_reasons": ",".join(c.codes)}
                                     for c in corrections])
    _ABANDON_RECORDINGS.execute(conn, {"cids": [c.call_id for c in corrections]})


def _fail_recording(session: Session, recording_id: int, error: str) -> None:
    """Mark a recording that never started as failed, in one conditional statement: only while
    it is still ``recording``. A call's end may be storing the file at the same moment (the
    PBX did record after all); read-then-write would overwrite a ``finalizing`` or ``stored``
    row with ``failed``, and the auditor would find a failed recording whose file exists."""
    session.execute(update(Recording).where(Recording.id == recording_id,
                                            Recording.status == "recording")
                    .values(status="failed", error=error))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an adapter needs to act on a decision."""

    call_id: str
    decision: Decision
    let_through: bool  # allowed, or denied in observe mode
    recording_relpath: str | None = None  # where to record, relative to the recording dir

    @property
    def reasons_csv(self) -> str:
        return ",".join(self.decision.codes)


@dataclass(frozen=True, slots=True)
class DecisionResult:
    """What an adapter's outbound flow acts on. ``outcome`` is None when no decision came in
    time (``decision`` is then the POLICY_UNAVAILABLE deny and nothing was stored)."""

    outcome: Outcome | None
    decision: Decision
    latency_ms: float

    @property
    def let_through(self) -> bool:
        return self.outcome.let_through if self.outcome is not None else False

    @property
    def call_id(self) -> str | None:
        return self.outcome.call_id if self.outcome is not None else None


@dataclass(frozen=True, slots=True)
class InboundCall:
    tenant: str | None
    caller: str | None  # the outside party
    callee: str | None  # the access number dialled
    at: dt.datetime
    pbx: str
    pbx_call_id: str | None = None
    channel: str | None = None
    node: str | None = None  # the PBX node that took the call (FreeSWITCH switchname)


@dataclass(frozen=True, slots=True)
class CallEnd:
    """A PBX's report that a call is over (AMI Cdr/Hangup, ESL CHANNEL_HANGUP_COMPLETE)."""

    pbx: str
    pbx_call_id: str
    ended_at: dt.datetime
    answered_at: dt.datetime | None = None
    billsec: int | None = None
    disposition: str | None = None  # ANSWERED, NO ANSWER, BUSY, FAILED ...
    hangup_cause: str | None = None


def _journal_entry(a: CallAttempt, call_id: str, route: str) -> dict:
    """What is kept locally of a call denied while the store was down."""
    return {"call_id": call_id, "route": route, "tenant": a.tenant, "caller": a.caller,
            "callee": a.callee, "hidden": a.hidden, "trunk": a.trunk, "campaign": a.campaign,
            "purpose": a.purpose, "pbx": a.pbx, "pbx_call_id": a.pbx_call_id,
            "channel": a.channel, "node": a.node, "at": a.at.isoformat()}


def _digits(number: Number | None, raw: str | None) -> str | None:
    return number.digits if number else (raw or None)


def _journal_time(entry: dict) -> dt.datetime | None:
    """The entry's time when the entry is one we wrote (a call id and an aware ISO time)."""
    call_id, at = entry.get("call_id"), entry.get("at")
    if not (isinstance(call_id, str) and 0 < len(call_id) <= 32 and isinstance(at, str)):
        return None
    try:
        t = dt.datetime.fromisoformat(at)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


_CALL_WIDTHS = widths(Call.__table__)  # type: ignore[arg-type]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _pbx_id(pbx_call_id: str) -> str:
    """The PBX call id as stored (cut to its column), for lookups."""
    return pbx_call_id[:_CALL_WIDTHS["pbx_call_id"]]


class Enforcer:
    """Decisions and call records over one store."""

    #: Told of every decision (``callwarden.metrics.Metrics``); must be fast and never raise.
    observer: EnforcerObserver | None = None

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.rules = Rules.from_settings(settings)
        self.checkpoints: BackgroundCheckpoints | None = None
        if engine is None:
            engine = make_engine(settings.store.url, decision_timeout_ms=settings.decision_timeout_ms,
                                 pool_size=settings.store.pool_size)
            # SQLite: the WAL checkpoint runs in a thread of its own, not in a decision's commit.
            self.checkpoints = BackgroundCheckpoints.install(engine)
        self.engine = engine
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.audit_key = open_store_key(settings, self.engine, store_may_be_down=True)
        self.timeout_s = settings.decision_timeout_ms / 1000
        self.recording_dir = Path(settings.recording.dir)
        self.recordings = RecordingService(settings, self.sessions)  # storage/key built once
        self.journal = OutageJournal(settings.store.journal
                                     or self.recording_dir / "outage-journal.jsonl")
        self.registry = SnapshotCache()
        self._writer_conn: Connection | None = None  # the writer thread's, kept between batches
        self._writer_pool: Pool | None = None  # the pool it came from
        self.writer = GroupCommit(self._store_batch, release=self._release_writer_connection)

    # -- outbound ---------------------------------------------------------------------------

    def check(self, attempt: CallAttempt) -> Decision:
        """The decision the attempt would get; stores nothing."""
        with self.sessions() as session:
            conn = session.connection()
            facts = BatchFacts(conn, [attempt], self.rules)
            return decide(attempt, facts.facts(attempt, self.registry.current(conn)), self.rules)

    def warm_up(self, pbx: str, at: dt.datetime) -> None:
        """Open a store connection, load the registry and run the decision's reads once (a dry
        :meth:`check`, nothing stored) before the first call: otherwise that call pays for
        connecting and for the first compile, which on a busy host or a remote PostgreSQL can
        exceed ``decision_timeout_ms`` and deny it POLICY_UNAVAILABLE. Raises what the store
        raises. Warns (``store_statistics_missing``) when PostgreSQL has no usable statistics of
        the calls table (store.statistics: decisions then slow down as calls accumulate)."""
        self.check(CallAttempt(tenant=None, caller=None, callee=None, at=at, pbx=pbx))
        try:
            stats = calls_statistics(self.engine)
        except SQLAlchemyError as exc:  # only a warning's worth: the decisions work anyway
            log.warning("store_statistics_unreadable", error=type(exc).__name__)
            return
        if stats is not None and (problem := stats.problem()):
            log.warning("store_statistics_missing", detail=problem)

    def decide(self, attempt: CallAttempt, route: str = "outbound") -> Outcome:
        """Decide and make the decision durable before answering; deny if the store fails."""
        return self.decide_since(attempt, time.monotonic(), route)

    def decide_since(self, attempt: CallAttempt, started: float, route: str = "outbound") -> Outcome:
        """:meth:`decide`, with the deadline counted from ``started`` (``time.monotonic()`` when
        the adapter received the call) rather than from now: a decision that waited in a queue
        cannot commit after the adapter gave up. Blocks until the decision is stored."""
        return self.submit(attempt, started, route).result()

    def submit(self, attempt: CallAttempt, started: float,
               route: str = "outbound") -> concurrent.futures.Future[Outcome]:
        """Queue the attempt for the decision writer (group commit); the future's result is
        the :class:`Outcome`, set once the decision is stored (or the POLICY_UNAVAILABLE deny
        when it could not be). Cancelling the future before the writer takes the attempt
        withdraws it (nothing is decided or stored)."""
        return self.writer.submit(Pending(attempt, started, started + self.timeout_s, route,
                                          uuid.uuid4().hex))

    def _store_batch(self, batch: list[Pending], corrections: Sequence[Correction] = ()) -> None:
        """The writer thread's work for one batch: decide, store, answer each attempt; make
        the queued corrections in the same transaction."""
        now = time.monotonic()
        late = [p for p in batch if now > p.deadline]
        batch = [p for p in batch if now <= p.deadline]
        failed: list[tuple[Pending, BaseException]] = []
        answers: list[tuple[Pending, Outcome]] = []
        corrected: Sequence[Correction] = ()
        try:
            decided = self._decide_durably(batch, corrections) if batch or corrections else []
        except (SQLAlchemyError, StoreUnavailable) as exc:
            failed = [(p, exc) for p in batch]
            self._correction_failed(corrections, exc)
        else:
            corrected = corrections
            for p, outcome in decided:
                if outcome is None:
                    late.append(p)
                else:
                    answers.append((p, outcome))
        missed = StoreUnavailable("decision deadline passed before commit")
        failed += [(p, missed) for p in late]
        # The denials nothing was stored for are kept first (one write and fsync for all).
        self.journal.add_many([_journal_entry(p.attempt, p.call_id, p.route) for p, _ in failed])
        for p, exc in failed:
            self._answer(p, None, exc)
        for p, outcome in answers:
            self._answer(p, outcome)
        for c in corrected:
            log.warning("decision_abandoned", call_id=c.call_id)
        if answers and self.checkpoints is not None:
            self.checkpoints.after_commit()
        # Then the denials kept while the store could not take them, a piece at a time and only
        # while no decision waits: replaying must never be what makes a call miss its deadline.
        while answers and self.journal.pending and not self.writer.waiting:
            if self.replay_journal(limit=REPLAY_CHUNK) <= 0:  # failed (logged), or nothing new
                break

    def _answer(self, p: Pending, outcome: Outcome | None, exc: BaseException | None = None) -> None:
        """Tell the observer, wake the caller, log the decision (one event per call). An
        attempt without an outcome is answered POLICY_UNAVAILABLE (the caller journals it)."""
        attempt, route = p.attempt, p.route
        if outcome is None:
            outcome = Outcome(p.call_id, denial("POLICY_UNAVAILABLE"), let_through=False)
            log.error("store_unavailable", route=route, call_id=p.call_id, tenant=attempt.tenant,
                      error=type(exc).__name__,
                      detail=(str(exc).splitlines() or [""])[0][:200],
                      action="outbound call denied (fail closed)")
        answered = time.monotonic()
        latency_s = answered - p.started
        if self.observer is not None:
            self.observer.decided(route, attempt.pbx, outcome, latency_s)
        p.future.set_result(outcome)  # the caller first: the log line is not on its path
        d = outcome.decision
        # latency_ms is the sum of the three after it: the adapter's part before the hand-over
        # (on FreeSWITCH the call's first exchange), the wait for the writer, the store's part
        log.info("decision", route=route, call_id=p.call_id, pbx=attempt.pbx,
                 pbx_call_id=attempt.pbx_call_id, tenant=attempt.tenant,
                 caller=mask_raw(attempt.caller), callee=mask_raw(attempt.callee),
                 decision=d.decision, reasons=list(d.codes), let_through=outcome.let_through,
                 mode=self.settings.mode, latency_ms=_ms(latency_s),
                 handover_ms=_ms(p.submitted - p.started), queued_ms=_ms(p.taken - p.submitted),
                 store_ms=_ms(answered - p.taken))

    def journal_denial(self, attempt: CallAttempt, route: str = "outbound") -> None:
        """Keep a denial the adapter gave on its own (no decision in time, never started)."""
        self.journal.add(_journal_entry(attempt, uuid.uuid4().hex, route))

    def replay_journal(self, limit: int | None = None) -> int:
        """Store the denials taken while the store was down (skipping ones already stored);
        ``limit``: at most that many this time (the rest on later calls).

        A batch the store refuses outright (not an outage: a constraint or a value it cannot
        take) would fail the same way on every later decision, so it is set aside in a file
        of its own for an administrator, and the journal goes on."""
        try:
            n = self.journal.drain(self._store_journal_entries, limit)
        except (DataError, IntegrityError) as exc:
            kept = self.journal.set_aside()
            log.error("journal_rejected", error=type(exc).__name__, kept_in=str(kept),
                      detail=(str(exc.orig).splitlines() or [""])[0][:200],
                      action="set aside for an administrator; replay goes on")
            return 0
        except (SQLAlchemyError, OSError, StoreUnavailable) as exc:
            log.warning("journal_replay_failed", error=type(exc).__name__)
            return 0
        if n:
            log.info("journal_replayed", denials=n)
        return n

    def _store_journal_entries(self, entries: list[dict]) -> int:
        stored = 0
        with unit_of_work(self.sessions) as session:
            ids = [e["call_id"] for e in entries if isinstance(e.get("call_id"), str)]
            have = set(session.scalars(select(Call.call_id).where(Call.call_id.in_(ids)))) if ids else set()
            for e in entries:
                at = _journal_time(e)
                if at is None:  # hand-edited or foreign: nothing trustworthy to store
                    log.error("journal_entry_skipped", reason="no call id or no valid time")
                    continue
                if e["call_id"] in have:
                    continue
                have.add(e["call_id"])
                caller, callee = try_normalize(e.get("caller")), try_normalize(e.get("callee"))
                session.add(Call(**fit(_CALL_WIDTHS, dict(
                    call_id=e["call_id"], tenant_id=e.get("tenant"), direction="outbound",
                    pbx=e.get("pbx") or "cli", pbx_call_id=e.get("pbx_call_id"),
                    node=e.get("node"), channel=e.get("channel"),
                    caller=_digits(caller, e.get("caller")),
                    callee=_digits(callee, e.get("callee")), party=callee.digits if callee else None,
                    caller_hidden=bool(e.get("hidden")), trunk=e.get("trunk"),
                    campaign=e.get("campaign"), purpose=e.get("purpose"),
                    attempted_at=at, decision="deny", reasons="POLICY_UNAVAILABLE", enforced=True))))
                audit.append_at_commit(session, "pbx:" + (e.get("pbx") or "cli"), "decision_replayed",
                             e["call_id"], {**e, "decision": "deny", "reasons": ["POLICY_UNAVAILABLE"]})
                stored += 1
        return stored

    def _decide_durably(self, batch: list[Pending],
                        corrections: Sequence[Correction] = ()) -> list[tuple[Pending, Outcome | None]]:
        """Decide every attempt of the batch and store them in one transaction, with the
        corrections of earlier decisions (:meth:`abandon`).

        The batch's callees are locked first (``store.callee_locks``): a batch of another
        node to one of them waits, so the call history each counts is complete (frequency
        limits stay exact across nodes; in-batch calls are counted by ``BatchFacts``). The
        audit head is locked only to link the entries, after the calls are written, by the
        server on PostgreSQL: nodes take turns for that last step, not for their deciding.
        An attempt whose deadline passes before the writes comes back with None (nothing
        stored for it)."""
        observe = self.settings.mode == "observe"
        results: list[tuple[Pending, Outcome | None]] = []
        # Core only, no ORM session on the hot path. On PostgreSQL one pipeline (hot.pipeline)
        # and two round trips: the begin, the callees' locks, the registry version and the
        # facts (the server runs them in order: the facts are read under the locks); then the
        # writes, the chain's entries (linked on the server) and the commit.
        with self._batch_transaction() as conn, contextlib.ExitStack() as piped:
            piped.enter_context(hot.pipeline(conn))
            hot.begin(conn)
            attempts = [p.attempt for p in batch]
            version = lock_callees(conn, (n.digits for a in attempts
                                          if (n := a.callee_number) is not None), VERSION)
            facts = BatchFacts(conn, attempts, self.rules)
            at_version = version()
            registry = self.registry.cached(at_version)
            if registry is None:  # the registry moved: SQLAlchemy's reads need the pipeline closed
                piped.close()
                registry = self.registry.at_version(conn, at_version)
                piped.enter_context(hot.pipeline(conn))
            decided = []
            for p in batch:
                d = decide(p.attempt, facts.facts(p.attempt, registry), self.rules)
                if d.allowed:
                    facts.allowed(p.attempt)
                decided.append((p, d))
            now = time.monotonic()
            calls, recordings = [], []
            entries = [audit.NewEntry("pbx:" + c.pbx, "decision_abandoned", c.call_id,
                                      {"reasons": list(c.codes)}) for c in corrections]
            for p, d in decided:
                if now > p.deadline:  # the adapter has given up: this must not land as an allow
                    results.append((p, None))
                    continue
                a = p.attempt
                let_through = d.allowed or observe
                relpath = (recording_relpath(a.tenant or "_unknown", p.call_id, a.at)
                           if let_through else None)
                row = self._call_row(p, d, observe, now)
                calls.append(row)
                if relpath is not None:
                    recordings.append({
                        "call_id": p.call_id, "tenant_id": row["tenant_id"], "status": "recording",
                        "spool_path": spool_file(self.recording_dir, relpath),
                        "started_at": a.at, "encrypted": False, "legal_hold": False,
                    })
                entries.append(audit.NewEntry("pbx:" + a.pbx, "decision", p.call_id, {
                    "tenant": a.tenant, "caller": row["caller"], "callee": row["callee"],
                    "hidden": a.hidden, "trunk": a.trunk, "campaign": a.campaign,
                    "purpose": d.purpose, "decision": d.decision, "reasons": list(d.codes),
                    "consent_id": d.consent_id, "consent_basis": d.consent_basis,
                    "mode": self.settings.mode, "pbx_call_id": a.pbx_call_id,
                }))
                results.append((p, Outcome(p.call_id, d, let_through, relpath)))
            if calls:
                _INSERT_CALL.executemany(conn, calls)
            if recordings:
                _INSERT_RECORDINGS.executemany(conn, recordings)
                _LINK_RECORDINGS.execute(conn, {"cids": [r["call_id"] for r in recordings]})
            # Corrections update calls of earlier batches: before the head, the order every
            # writer keeps (rows, then the head at the end); the other order could deadlock.
            if corrections:
                _correct(conn, corrections)
            # The entries' costly part first; then the head is locked to link them (on
            # PostgreSQL by the server, in the round trip of the writes and the commit).
            audit.append_ready(conn, audit.prepare(conn, entries))
            hot.commit(conn)
        return results

    def _correction_failed(self, corrections: Sequence[Correction], exc: BaseException) -> None:
        """A failed batch took these corrections with it: queue them again, a few times."""
        for c in corrections:
            if c.tries + 1 < CORRECTION_TRIES:
                self.writer.correct(Correction(c.call_id, c.pbx, c.codes, c.tries + 1))
            else:
                log.error("decision_abandon_failed", call_id=c.call_id, error=type(exc).__name__)

    @contextlib.contextmanager
    def _batch_transaction(self) -> Iterator[Connection]:
        """The writer's transaction, on a connection the writer keeps from one batch to the
        next while calls keep coming (checking one out of the pool and back cost a third of a
        one-call batch). Any failure drops it, and so does a pause in the calls (the writer
        then returns it to the pool)."""
        conn = self._writer_conn
        if conn is None or conn.closed or conn.invalidated:
            self._writer_pool = self.engine.pool
            conn = self._writer_conn = self.engine.connect()
            hot.explicit_transactions(conn)  # its BEGIN goes in the pipeline (hot.begin)
        try:
            with conn.begin():
                yield conn
        except BaseException:
            self._release_writer_connection()
            raise

    def _release_writer_connection(self) -> None:
        """Back to the pool; closed outright if the engine was disposed meanwhile (a disposed
        pool would keep it open until garbage-collected)."""
        conn, self._writer_conn = self._writer_conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):  # already broken: nothing left to release
            if self.engine.pool is not self._writer_pool:
                conn.invalidate()
            conn.close()

    def _call_row(self, p: Pending, d: Decision, observe: bool, now: float) -> dict:
        a = p.attempt
        caller, callee = a.caller_number, a.callee_number
        return fit(_CALL_WIDTHS, {
            "call_id": p.call_id, "tenant_id": a.tenant, "direction": "outbound",
            "pbx": a.pbx, "pbx_call_id": a.pbx_call_id, "node": a.node, "channel": a.channel,
            "caller": _digits(caller, a.caller), "callee": _digits(callee, a.callee),
            "party": callee.digits if callee else None, "caller_hidden": a.hidden,
            "trunk": a.trunk, "campaign": a.campaign, "purpose": d.purpose,
            "attempted_at": a.at, "decision": d.decision, "reasons": ",".join(d.codes),
            "enforced": not observe, "consent_id": d.consent_id, "consent_basis": d.consent_basis,
            "recording_id": None, "latency_ms": round((now - p.started) * 1000, 3),
        })

    def recording_failed(self, call_id: str, error: str) -> Outcome:
        """The PBX could not start the recording: the call becomes a RECORDING_UNAVAILABLE deny."""
        with unit_of_work(self.sessions) as session:
            call = session.get(Call, call_id, with_for_update=True)  # reasons: read, then written
            if call is None:
                raise KeyError("unknown call id")
            codes = tuple(call.reason_codes) + ("RECORDING_UNAVAILABLE",)
            call.decision, call.reasons = "deny", ",".join(r.code for r in ordered(codes))
            if call.recording_id is not None:
                _fail_recording(session, call.recording_id, error[:500])
            audit.append_at_commit(session, "pbx:" + call.pbx, "recording_failed", call_id,
                         {"error": error[:500], "reasons": call.reason_codes})
            observe = not call.enforced
        log.warning("recording_failed", call_id=call_id, error=error[:200],
                    let_through=observe)
        return Outcome(call_id, denial(*codes), let_through=observe)

    # -- inbound and opt-out ---------------------------------------------------------------

    def log_inbound(self, call: InboundCall) -> str:
        """Record an inbound call; it opens the callback window for the caller."""
        call_id = uuid.uuid4().hex
        caller, callee = try_normalize(call.caller), try_normalize(call.callee)
        with unit_of_work(self.sessions) as session:
            session.add(Call(**fit(_CALL_WIDTHS, dict(
                call_id=call_id, tenant_id=call.tenant, direction="inbound", pbx=call.pbx,
                pbx_call_id=call.pbx_call_id, node=call.node, channel=call.channel,
                caller=_digits(caller, call.caller), callee=_digits(callee, call.callee),
                party=caller.digits if caller else None, caller_hidden=caller is None,
                attempted_at=call.at, decision="allow", reasons="",
            ))))
            audit.append_at_commit(session, "pbx:" + call.pbx, "inbound", call_id,
                         {"tenant": call.tenant, "caller": _digits(caller, call.caller),
                          "callee": _digits(callee, call.callee)})
        log.info("inbound", call_id=call_id, tenant=call.tenant, caller=mask_raw(call.caller),
                 callee=mask_raw(call.callee), callback_window_h=self.settings.callback_window_hours)
        return call_id

    def opt_out(self, tenant: str | None, callee: str | None, source: str, actor: str) -> bool:
        """The callee asked not to be called again: add a refusal (tenant, or global for ``*``)."""
        number = try_normalize(callee)
        if number is None or not tenant:
            log.warning("optout_ignored", tenant=tenant, reason="no tenant or unusable number")
            return False
        with unit_of_work(self.sessions) as session:
            exists = session.scalar(select(Refusal.id).where(
                Refusal.tenant_id == tenant, Refusal.callee == number.digits))
            if exists is None:
                session.add(Refusal(tenant_id=tenant, callee=number.digits, source=source))
            audit.append_at_commit(session, actor, "refusal_added", number.digits,
                         {"tenant": tenant, "source": source, "already_listed": exists is not None})
        log.info("optout", tenant=tenant, callee=number.masked(), source=source,
                 scope="global" if tenant == GLOBAL else "tenant")
        return True

    # -- after the decision ----------------------------------------------------------------

    def find_call(self, pbx: str, pbx_call_id: str) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(Call.call_id).where(
                Call.pbx == pbx, Call.pbx_call_id == _pbx_id(pbx_call_id)).order_by(Call.attempted_at.desc()).limit(1))

    def call_ended(self, end: CallEnd) -> str | None:
        """Complete the CDR of the call the PBX reports as over; returns its call id.

        Every call pays this once, as it pays a decision: so it runs on the hot statements in
        two round trips on PostgreSQL (the begin queued with the update; the entry with the
        commit and the pipeline's sync), not through the ORM (~5 ms of CPU a call on
        PostgreSQL, more than the decision). The update also returns what the recording's
        first storing attempt needs, so that attempt reads nothing itself. The call's row is
        locked before the head, as every writer does (the head last, by the server on
        PostgreSQL: held for no round trip; the other order could deadlock with the decision
        writer's corrections)."""
        ends = fit(_CALL_WIDTHS, {"disposition": end.disposition, "hangup_cause": end.hangup_cause})
        with self.engine.connect() as conn:
            # the BEGIN goes with the update (psycopg's own waits for the server); the pool
            # gives the connection back its isolation level when it is checked in
            hot.explicit_transactions(conn)
            with conn.begin(), hot.pipeline(conn):
                hot.begin(conn)
                rows = _END_CALL.execute(conn, {
                    "e_pbx": end.pbx, "e_pbx_call_id": _pbx_id(end.pbx_call_id),
                    "e_ended_at": end.ended_at, "e_answered_at": end.answered_at,
                    "e_billsec": end.billsec, "e_disposition": ends["disposition"] or None,
                    "e_hangup_cause": ends["hangup_cause"] or None})
                if not rows:
                    return None
                [returned] = rows
                recording_id, call_id = returned[0], returned[1]
                audit.append_ready(conn, audit.prepare(conn, [audit.NewEntry(
                    "pbx:" + end.pbx, "call_ended", call_id, {
                        "answered_at": end.answered_at, "ended_at": end.ended_at,
                        "billsec": end.billsec, "disposition": end.disposition,
                        "hangup_cause": end.hangup_cause})]))
                hot.commit(conn)
        log.info("call_ended", call_id=call_id, pbx=end.pbx, billsec=end.billsec,
                 disposition=end.disposition, hangup_cause=end.hangup_cause)
        if recording_id is not None:  # after the commit: the CDR stands whatever the file does
            self.recordings.after_call_ended(call_id, returned)
        return call_id

    def caller_id_changed(self, pbx: str, pbx_call_id: str, new_caller: str | None) -> str | None:
        """A caller ID changed mid-call. Returns the call id when the call must be torn down."""
        number = try_normalize(new_caller)
        with unit_of_work(self.sessions) as session:
            call = session.scalars(select(Call).where(
                Call.pbx == pbx, Call.pbx_call_id == _pbx_id(pbx_call_id), Call.direction == "outbound",
            ).order_by(Call.attempted_at.desc()).limit(1).with_for_update()).first()
            if call is None or call.decision != "allow" or call.ended_at is not None:
                return None
            if number is not None and number.digits == call.caller:
                return None
            codes = tuple(call.reason_codes) + ("CID_ALTERED",)
            call.decision, call.reasons = "deny", ",".join(r.code for r in ordered(codes))
            audit.append_at_commit(session, "pbx:" + pbx, "cid_altered", call.call_id, {
                "decided_caller": call.caller, "new_caller": number.digits if number else new_caller})
            call_id, tear_down = call.call_id, call.enforced
        log.warning("cid_altered", call_id=call_id, pbx=pbx,
                    new_caller=mask(number.digits) if number else "(hidden)", tear_down=tear_down)
        return call_id if tear_down else None

    def open_calls(self, pbx: str, since: dt.datetime | None = None,
                   node: str | None = None) -> list[tuple[str, str]]:
        """(call id, PBX call id) of calls let through and not yet ended: for reconciliation.

        ``node`` scopes it to one PBX node of several sharing the store: that node's calls and
        those of unknown node (rows from before the node was recorded); other nodes' calls are
        theirs to reconcile. None: every node's calls."""
        with self.sessions() as session:
            q = select(Call.call_id, Call.pbx_call_id).where(
                Call.pbx == pbx, Call.ended_at.is_(None), Call.pbx_call_id.is_not(None),
                Call.recording_id.is_not(None) | (Call.direction == "inbound"))
            if since is not None:
                q = q.where(Call.attempted_at >= since)
            if node is not None:
                q = q.where((Call.node == node) | Call.node.is_(None))
            return [(a, b) for a, b in session.execute(q)]

    def now(self) -> dt.datetime:
        return utcnow()

    # -- added for the asyncio adapters (Asterisk FastAGI + AMI, issue 3) --------------------

    def abandon(self, outcome: Outcome, pbx: str) -> None:
        """The adapter stopped waiting for this stored decision and told the PBX
        POLICY_UNAVAILABLE: queue the record's correction (as :meth:`decision_abandoned`
        does it) for the decision writer's next transaction. Returns at once; safe from any
        thread, the writer's own included."""
        codes = tuple(r.code for r in ordered((*outcome.decision.codes, "POLICY_UNAVAILABLE")))
        self.writer.correct(Correction(outcome.call_id, pbx, codes))

    def decision_abandoned(self, call_id: str) -> None:
        """The adapter stopped waiting and denied the call (POLICY_UNAVAILABLE), yet this
        decision committed (its commit outlasted the deadline): make the CDR say what the PBX
        was told, so no stored allow stands for a call that was hung up."""
        with unit_of_work(self.sessions) as session:
            call = session.get(Call, call_id, with_for_update=True)  # reasons: read, then written
            if call is None:
                return
            codes = tuple(call.reason_codes) + ("POLICY_UNAVAILABLE",)
            call.decision, call.reasons = "deny", ",".join(r.code for r in ordered(codes))
            if call.recording_id is not None:
                _fail_recording(session, call.recording_id, "decision abandoned: the call was denied")
            audit.append_at_commit(session, "pbx:" + call.pbx, "decision_abandoned", call_id,
                         {"reasons": call.reason_codes})
        log.warning("decision_abandoned", call_id=call_id)

    def start_recording(self, call_id: str) -> str:
        """Give a logged call a recording (inbound calls with ``recording.record_inbound``);
        returns the relative path the PBX records to (see ``recorder.naming.spool_path``).
        Calling it again returns the same path."""
        with unit_of_work(self.sessions) as session:
            call = session.get(Call, call_id)
            if call is None:
                raise KeyError("unknown call id")
            relpath = recording_relpath(call.tenant_id or "_unknown", call_id, call.attempted_at)
            if call.recording_id is None:
                rec = Recording(call_id=call_id, tenant_id=call.tenant_id, status="recording",
                                spool_path=spool_file(self.recording_dir, relpath),
                                started_at=call.attempted_at)
                session.add(rec)
                session.flush()
                call.recording_id = rec.id
                audit.append_at_commit(session, "pbx:" + call.pbx, "recording_started", call_id,
                             {"direction": call.direction})
        return relpath

    def recording_not_started(self, call_id: str, error: str) -> None:
        """An optional recording (inbound) could not start: mark it failed and audit it. Unlike
        :meth:`recording_failed`, the call's decision stands (inbound calls are not blocked)."""
        with unit_of_work(self.sessions) as session:
            call = session.get(Call, call_id)
            if call is None or call.recording_id is None:
                return
            _fail_recording(session, call.recording_id, error[:500])
            audit.append_at_commit(session, "pbx:" + call.pbx, "recording_failed", call_id,
                         {"error": error[:500], "direction": call.direction})
        log.warning("recording_not_started", call_id=call_id, error=error[:200])

    def finalize_recording(self, call_id: str) -> FinalizedRecording | None:
        """Move an ended call's recording from the spool into storage (size, sha256, duration;
        kept until the call's end + ``retention.recordings_days``), waiting briefly for a PBX
        still flushing the file. A missing or empty file marks the recording failed and flags
        the CDR (``calls.recording_problem``). Idempotent: see ``service.recordings``."""
        result = self.recordings.finalize(call_id)
        return result.recording if result.outcome == "stored" else None
