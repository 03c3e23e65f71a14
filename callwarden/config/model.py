"""The configuration file's schema: every key, its default and the rule it must obey.

Validation happens once, at load; the rest of the program reads plain, already-checked values.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

#: The regulation's floor (MIIT 2020-81 §4(2)): nothing is kept for less than this.
MIN_RETENTION_DAYS = 30

_SPAN = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class TimeSpan(BaseModel):
    """A local-time span, start inclusive and end exclusive (``"08:00-21:00"``)."""

    model_config = ConfigDict(frozen=True)
    start: dt.time
    end: dt.time

    def contains(self, t: dt.time) -> bool:
        return self.start <= t < self.end

    def __str__(self) -> str:
        end = "24:00" if self.end == dt.time.max else f"{self.end:%H:%M}"
        return f"{self.start:%H:%M}-{end}"


def parse_span(value: object) -> TimeSpan:
    if isinstance(value, TimeSpan):
        return value
    m = _SPAN.match(str(value).strip())
    if not m:
        raise ValueError("must look like HH:MM-HH:MM (for example 08:00-21:00)")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    day_end = h2 == 24 and m2 == 0  # "..-24:00" runs to the end of the day
    if not (0 <= h1 < 24 and (0 <= h2 < 24 or day_end) and m1 < 60 and m2 < 60):
        raise ValueError("hours must be 00-23 (or 24:00 as an end) and minutes 00-59")
    start, end = dt.time(h1, m1), dt.time.max if day_end else dt.time(h2, m2)
    if start >= end:
        raise ValueError("the start must be before the end (spans across midnight are not allowed)")
    return TimeSpan(start=start, end=end)


Span = Annotated[TimeSpan, Field(json_schema_extra={"format": "HH:MM-HH:MM"})]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreConfig(_Section):
    url: str = "sqlite:///callwarden.db"
    pool_size: int = Field(default=10, ge=1, le=200)
    # denials taken while the store was unreachable wait here until it is back
    # (default: <recording.dir>/outage-journal.jsonl)
    journal: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return v


class CallingHours(_Section):
    window: TimeSpan = Field(default_factory=lambda: parse_span("08:00-21:00"))
    blocked: list[TimeSpan] = Field(default_factory=list)
    holidays: list[dt.date] = Field(default_factory=list)

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v: object) -> TimeSpan:
        return parse_span(v)

    @field_validator("blocked", mode="before")
    @classmethod
    def _blocked(cls, v: object) -> list[TimeSpan]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("must be a list of HH:MM-HH:MM spans")
        return [parse_span(item) for item in v]


class Frequency(_Section):
    per_day: int = Field(default=2, ge=1, le=1000)
    per_week: int = Field(default=5, ge=1, le=7000)

    @model_validator(mode="after")
    def _week_covers_day(self) -> Frequency:
        if self.per_week < self.per_day:
            raise ValueError("per_week must be at least per_day")
        return self


class Retention(_Section):
    recordings_days: int = 180
    cdr_days: int = 180
    consent_days: int = 180

    @field_validator("recordings_days", "cdr_days", "consent_days")
    @classmethod
    def _floor(cls, v: int) -> int:
        if v < MIN_RETENTION_DAYS:
            raise ValueError(
                f"must be at least {MIN_RETENTION_DAYS} days: MIIT 2020-81 §4(2) requires "
                "recordings, call records and consent evidence to be kept for 30 days or more"
            )
        return v


class StorageConfig(_Section):
    kind: Literal["local", "s3"] = "local"
    root: str | None = None  # local: defaults to <recording.dir>/store
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    object_lock: bool = True

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("kind s3 needs a bucket")
        return self


class EncryptionConfig(_Section):
    key_file: str | None = None
    key_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EncryptionConfig:
        if bool(self.key_file) == bool(self.key_env):
            raise ValueError("give exactly one of key_file or key_env")
        return self


class RecordingConfig(_Section):
    dir: str = "recordings"
    format: Literal["wav"] = "wav"
    record_inbound: bool = False
    storage: StorageConfig = Field(default_factory=StorageConfig)
    encryption: EncryptionConfig | None = None  # encrypts new recordings (and reads them back)
    keyring: list[EncryptionConfig] = Field(default_factory=list)  # older keys, read-only
    settle_s: float = Field(default=1.0, ge=0, le=60)  # spool file unchanged this long = closed
    finalize_wait_s: float = Field(default=5.0, ge=0, le=600)  # wait for a late spool file


class PolicyConfig(_Section):
    """Knobs of the decision rules that the contract leaves to the operator."""

    require_trunk: bool = False
    default_purpose: str = "callback"


class Endpoint(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=1, le=65535)


class AgiConfig(Endpoint):
    port: int = Field(default=4573, ge=1, le=65535)
    session_timeout_s: float = Field(default=10.0, gt=0, le=300)


class AmiConfig(Endpoint):
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = "callwarden"
    secret: str = "change-me"
    cdr_csv: str | None = None  # Asterisk's Master.csv, read to reconcile missed hangups


class AsteriskConfig(_Section):
    agi: AgiConfig = Field(default_factory=AgiConfig)
    ami: AmiConfig | None = Field(default_factory=AmiConfig)
    recording_dir: str | None = None  # where MixMonitor writes, as Asterisk sees the path


class EslOutboundConfig(Endpoint):
    port: int = Field(default=8084, ge=1, le=65535)
    session_timeout_s: float = Field(default=10.0, gt=0, le=300)


class EslInboundConfig(Endpoint):
    port: int = Field(default=8021, ge=1, le=65535)
    password: str = "ClueCon"


#: ``calls.node`` holds at most this many characters (callwarden.esl.channel.NODE_MAX_LEN).
SWITCHNAME_MAX_LEN = 64


class FreeswitchConfig(_Section):
    esl_outbound: EslOutboundConfig = Field(default_factory=EslOutboundConfig)
    esl_inbound: EslInboundConfig | None = Field(default_factory=EslInboundConfig)
    recording_dir: str | None = None
    # The switchname this node's FreeSWITCH must report (FreeSWITCH-Switchname), when several
    # FreeSWITCH nodes share one store. Checked against the listener's events, never trusted
    # alone: reconciliation always uses the name the switch itself reports (docs/freeswitch.md).
    switchname: str | None = None

    @field_validator("switchname", mode="before")
    @classmethod
    def _switchname(cls, v: object) -> object:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("must be a string (quote it in YAML: switchname: \"01\")")
        name = v.strip()
        if not name:
            raise ValueError("must not be empty (leave the key out to learn it from FreeSWITCH)")
        if not name.isprintable():
            raise ValueError("must not contain control characters")
        if len(name) > SWITCHNAME_MAX_LEN:
            raise ValueError(f"must be at most {SWITCHNAME_MAX_LEN} characters")
        return name


class LoggingConfig(_Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsConfig(Endpoint):
    """Where ``callwarden serve`` answers ``/metrics`` (Prometheus) and ``/healthz``."""

    port: int = Field(default=9464, ge=1, le=65535)


class WebConfig(Endpoint):
    """The web console (``callwarden web``; also inside ``callwarden serve`` when present)."""

    port: int = Field(default=8080, ge=1, le=65535)
    # signs the session cookies; created (random, mode 0600) on first start if missing
    session_secret_file: str = "web-session.key"
    # Origin headers a POST may carry besides the console's own (e.g. behind a reverse proxy)
    allowed_origins: list[str] = Field(default_factory=list)
    https_only: bool = False  # Secure cookies: set it when the console is served over HTTPS
    idle_timeout_minutes: int = Field(default=30, ge=1, le=24 * 60)
    login_attempts: int = Field(default=5, ge=1, le=1000)  # failed logins per IP+user per window
    login_window_s: int = Field(default=300, ge=1, le=86_400)
    language: Literal["zh", "en"] = "zh"
    page_size: int = Field(default=50, ge=5, le=1000)

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if not re.match(r"^https?://[^/\s]+$", o):
                raise ValueError(f"{o!r}: an origin is scheme://host[:port] with no path")
        return v


# -- policing (seat-rental detector, MIIT 2020-81 §5(1)) -------------------------------------

#: Every figure the policing detector scores, with its default ramp: the figure earns nothing at
#: ``start``, its whole ``weight`` at ``full`` (either direction: answer_rate falls), and counts
#: only once its sample reaches ``min_sample``. Documented in docs/policing.md.
FEATURE_DEFAULTS: dict[str, dict[str, float]] = {
    "attempt_rate": {"weight": 5, "start": 300, "full": 3000, "min_sample": 0},
    "new_callee_share": {"weight": 10, "start": 0.4, "full": 0.9, "min_sample": 20},
    "answer_rate": {"weight": 10, "start": 0.45, "full": 0.15, "min_sample": 20},
    "short_call_share": {"weight": 10, "start": 0.3, "full": 0.8, "min_sample": 10},
    "sequential_share": {"weight": 15, "start": 0.05, "full": 0.4, "min_sample": 20},
    "refused_attempts": {"weight": 10, "start": 0, "full": 5, "min_sample": 0},
    "no_consent_share": {"weight": 15, "start": 0.05, "full": 0.4, "min_sample": 20},
    "campaign_denial_share": {"weight": 5, "start": 0.02, "full": 0.2, "min_sample": 20},
    "window_edge_share": {"weight": 5, "start": 0.2, "full": 0.6, "min_sample": 20},
    "complaints": {"weight": 15, "start": 0, "full": 3, "min_sample": 0},
}
#: Figures that are shares (0..1): their ramps must stay inside 0..1.
SHARE_FEATURES = frozenset(n for n in FEATURE_DEFAULTS if n.endswith(("_share", "_rate")) and n != "attempt_rate")


class FeatureSpec(_Section):
    """One figure's ramp: 0 points at ``start``, ``weight`` points at ``full``, linear between."""

    weight: float = Field(ge=0, le=1000)
    start: float = Field(ge=0)
    full: float = Field(ge=0)
    min_sample: int = Field(default=0, ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _ramp(self) -> FeatureSpec:
        if self.start == self.full:
            raise ValueError("start and full must differ (the ramp runs from start to full)")
        return self


def _feature_field(name: str) -> FeatureSpec:
    return Field(default_factory=lambda: FeatureSpec(**FEATURE_DEFAULTS[name]))


class PolicingFeatures(_Section):
    """Weights and ramps; a partial entry (``answer_rate: {weight: 20}``) keeps the other defaults."""

    attempt_rate: FeatureSpec = _feature_field("attempt_rate")
    new_callee_share: FeatureSpec = _feature_field("new_callee_share")
    answer_rate: FeatureSpec = _feature_field("answer_rate")
    short_call_share: FeatureSpec = _feature_field("short_call_share")
    sequential_share: FeatureSpec = _feature_field("sequential_share")
    refused_attempts: FeatureSpec = _feature_field("refused_attempts")
    no_consent_share: FeatureSpec = _feature_field("no_consent_share")
    campaign_denial_share: FeatureSpec = _feature_field("campaign_denial_share")
    window_edge_share: FeatureSpec = _feature_field("window_edge_share")
    complaints: FeatureSpec = _feature_field("complaints")

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        merged: dict[str, object] = {}
        for key, value in data.items():
            if key in FEATURE_DEFAULTS and isinstance(value, dict):
                merged[key] = {**FEATURE_DEFAULTS[key], **value}
            else:
                merged[key] = value  # unknown keys and bad types are reported by the schema
        return merged

    @field_validator(*sorted(SHARE_FEATURES))
    @classmethod
    def _share_in_range(cls, spec: FeatureSpec) -> FeatureSpec:
        if spec.start > 1 or spec.full > 1:
            raise ValueError("start and full are shares and must be between 0 and 1")
        return spec

    def items(self) -> list[tuple[str, FeatureSpec]]:
        return [(name, getattr(self, name)) for name in FEATURE_DEFAULTS]

    @property
    def total_weight(self) -> float:
        return sum(spec.weight for _, spec in self.items())


class SequenceConfig(_Section):
    """Generated number lists: ``min_run`` callees or more, each within ``max_gap`` of the last."""

    max_gap: int = Field(default=10, ge=1, le=10_000)
    min_run: int = Field(default=5, ge=3, le=10_000)


class RefilingConfig(_Section):
    """§2(2): filing changes are re-filed within ``working_days`` working days.

    Weekends and ``calling_hours.holidays`` are not working days; ``holidays`` adds more,
    ``workdays`` lists weekend days that are worked (调休 make-up days).
    """

    working_days: int = Field(default=10, ge=1, le=100)
    holidays: list[dt.date] = Field(default_factory=list)
    workdays: list[dt.date] = Field(default_factory=list)


class WebhookConfig(_Section):
    url: str
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    retries: int = Field(default=3, ge=0, le=20)
    backoff_s: float = Field(default=1.0, ge=0, le=300)
    secret: str | None = None  # HMAC-SHA256 of the body in X-Callwarden-Signature

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http:// or https:// URL")
        return v


class PolicingConfig(_Section):
    """The seat-rental detector: windows, weights, thresholds, schedule, notifications."""

    enabled: bool = True  # run periodically inside `callwarden serve`
    interval_s: int = Field(default=60, ge=5, le=86_400)
    window_minutes: int = Field(default=60, ge=5, le=7 * 24 * 60)
    edge_window_hours: int = Field(default=24, ge=1, le=7 * 24)
    edge_minutes: int = Field(default=30, ge=1, le=240)
    relationship_days: int = Field(default=30, ge=1, le=366)
    complaints_days: int = Field(default=30, ge=1, le=366)
    short_call_s: int = Field(default=15, ge=1, le=3600)
    warn_score: float = Field(default=30, gt=0)
    suspend_score: float = Field(default=50, gt=0)
    work_mem_mb: int = Field(default=128, ge=0, le=8192)  # PostgreSQL work_mem for a pass; 0: server's
    features: PolicingFeatures = Field(default_factory=PolicingFeatures)
    sequence: SequenceConfig = Field(default_factory=SequenceConfig)
    refiling: RefilingConfig = Field(default_factory=RefilingConfig)
    webhook: WebhookConfig | None = None

    @model_validator(mode="after")
    def _thresholds(self) -> PolicingConfig:
        if self.suspend_score <= self.warn_score:
            raise ValueError("suspend_score must be above warn_score")
        total = self.features.total_weight
        if self.warn_score > total:
            raise ValueError(f"warn_score {self.warn_score:g} can never be reached: "
                             f"the feature weights add up to {total:g}")
        return self


class AuditConfig(_Section):
    # The installation key the audit log's numbers are keyed with (HMAC-SHA256). Outside the
    # database on purpose. Default: beside a SQLite store (<store file>.audit.key), else
    # audit.key beside the config file (see callwarden.audit.pseudonym.key_path).
    key_file: str | None = None


class Settings(_Section):
    """The whole configuration file."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    timezone: str = "Asia/Shanghai"
    mode: Literal["enforce", "observe"] = "enforce"
    calling_hours: CallingHours = Field(default_factory=CallingHours)
    frequency: Frequency = Field(default_factory=Frequency)
    callback_window_hours: int = Field(default=72, ge=1, le=24 * 90)
    decision_timeout_ms: int = Field(default=500, ge=10, le=60_000)
    retention: Retention = Field(default_factory=Retention)
    recording: RecordingConfig = Field(default_factory=RecordingConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig | None = Field(default_factory=MetricsConfig)  # null: no endpoint
    asterisk: AsteriskConfig | None = None
    freeswitch: FreeswitchConfig | None = None
    policing: PolicingConfig = Field(default_factory=PolicingConfig)
    web: WebConfig | None = None  # the web console; absent: `callwarden web` uses the defaults
    audit: AuditConfig = Field(default_factory=AuditConfig)
    #: The directory of the config file this came from (set by ``load_settings``); relative
    #: defaults such as the audit key's are found there.
    _config_dir: Path | None = PrivateAttr(default=None)

    @property
    def config_dir(self) -> Path | None:
        return self._config_dir

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not an IANA time zone name (for example Asia/Shanghai)") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
