"""The configuration file's schema: every key, its default and the rule it must obey.

Validation happens once, at load; the rest of the program reads plain, already-checked values.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    encryption: EncryptionConfig | None = None


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


class FreeswitchConfig(_Section):
    esl_outbound: EslOutboundConfig = Field(default_factory=EslOutboundConfig)
    esl_inbound: EslInboundConfig | None = Field(default_factory=EslInboundConfig)
    recording_dir: str | None = None


class LoggingConfig(_Section):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


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
    asterisk: AsteriskConfig | None = None
    freeswitch: FreeswitchConfig | None = None

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
