"""Timing knobs of the AMI side, in one place (tests shorten them; operators rarely need to)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AmiTuning:
    connect_timeout_s: float = 5.0  # TCP connect + Login
    action_timeout_s: float = 5.0  # every other action (Ping, Hangup, CoreShowChannels)
    ping_interval_s: float = 10.0  # keepalive; an unanswered Ping drops the connection
    backoff_initial_s: float = 0.5  # first reconnect delay, doubled up to backoff_max_s
    backoff_max_s: float = 30.0
    cdr_wait_s: float = 2.0  # after Hangup, how long to wait for the channel's Cdr events
    cdr_settle_s: float = 0.3  # after a Cdr event, how long to wait for its sibling records
    # Pause before finalizing a recording; the finalizer itself waits for the spool file to
    # stop changing (recording.settle_s), so none is needed by default.
    recording_settle_s: float = 0.0
    store_timeout_s: float = 10.0  # CDR completion, caller-ID checks, reconciliation reads
    store_retries: int = 3  # attempts at completing a CDR before leaving it to reconciliation
    hangup_attempts: int = 3  # AMI Hangup tries when tearing a call down
    reconcile_interval_s: float = 300.0  # periodic reconciliation while connected
    csv_tail_bytes: int = 32 * 1024 * 1024  # how much of Master.csv reconciliation reads
