"""``callwarden doctor``: check a live installation, one PASS/FAIL line per check.

Every check runs against what the config names (the store, the recording area, the PBXes'
manager interfaces, the ports ``serve`` will listen on) and says what to fix when it fails.
Checks that need a valid config are skipped when the config is not; checks of a PBX section
the config does not have are skipped. Doctor changes nothing but one probe file it writes and
deletes in the recording directory (or, if that does not exist yet, in its nearest parent).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Engine, make_url, text

from callwarden.audit.pseudonym import AuditKeyError, open_store_key
from callwarden.config import ConfigError, Settings, load_settings
from callwarden.config.load import resolve_path
from callwarden.ops import probes
from callwarden.ops.service import probe_engine
from callwarden.store.migrate import current_revision, head_revision
from callwarden.store.statistics import calls_statistics

Status = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail}


MIN_FREE_MB = 1024
MAX_CLOCK_SKEW_S = 30.0
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Options:
    min_free_mb: int = MIN_FREE_MB  # recording area: free space below this fails
    max_clock_skew_s: float = MAX_CLOCK_SKEW_S  # this host's clock vs the database's
    timeout_s: float = PROBE_TIMEOUT_S  # each network probe


def wall_clock() -> dt.datetime:
    """This host's clock (a function, so tests can put it off)."""
    return dt.datetime.now(dt.UTC)


@dataclass
class Doctor:
    config_path: str | None
    options: Options = field(default_factory=Options)

    def run(self) -> list[Result]:
        return list(self.checks())

    def checks(self) -> Iterator[Result]:
        source = str(resolve_path(self.config_path))
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            yield Result("config", "FAIL", f"{source}: " + "; ".join(exc.problems))
            for name in ("store", "store schema", "audit key", "store statistics",
                         "recording area", "clock"):
                yield Result(name, "SKIP", "needs a valid config")
            return
        yield Result("config", "PASS", f"{source} is valid (mode {settings.mode}, "
                                       f"timezone {settings.timezone})")
        try:
            engine = probe_engine(settings, int(self.options.timeout_s * 1000))
        except ValueError as exc:
            yield Result("store", "FAIL", str(exc))
            return
        try:
            reachable = self._store(settings, engine)
            yield reachable
            schema = self._schema(engine) if reachable.status == "PASS" else Result(
                "store schema", "SKIP", "the store is not reachable")
            yield schema
            yield self._audit_key(settings, engine) if schema.status == "PASS" else Result(
                "audit key", "SKIP", "needs the store at the newest schema")
            yield self._statistics(engine) if schema.status == "PASS" else Result(
                "store statistics", "SKIP", "needs the store at the newest schema")
            yield from self._recording(settings)
            yield from self._pbx_links(settings)
            yield from self._ports(settings)
            yield self._clock(settings, engine if reachable.status == "PASS" else None)
        finally:
            engine.dispose()

    # -- store -----------------------------------------------------------------------------

    def _store(self, settings: Settings, engine: Engine) -> Result:
        shown = make_url(settings.store.url).render_as_string(hide_password=True)
        if engine.dialect.name == "sqlite":
            db = make_url(settings.store.url).database
            if db and db != ":memory:" and not Path(db).exists():
                return Result("store", "FAIL", f"{shown}: the database file does not exist "
                                               "(run `callwarden db upgrade`)")
        started = time.monotonic()
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:200]
            return Result("store", "FAIL", f"{shown}: not reachable: {type(exc).__name__}: {first}")
        return Result("store", "PASS", f"{shown} answers "
                                       f"({(time.monotonic() - started) * 1000:.0f} ms)")

    def _schema(self, engine: Engine) -> Result:
        try:
            current, head = current_revision(engine), head_revision()
        except Exception as exc:
            return Result("store schema", "FAIL", f"cannot read the schema revision: "
                                                  f"{type(exc).__name__}")
        if current != head:
            return Result("store schema", "FAIL", f"at {current or 'nothing'}, newest is {head}: "
                                                  "run `callwarden db upgrade`")
        return Result("store schema", "PASS", f"at the newest revision ({head})")

    def _audit_key(self, settings: Settings, engine: Engine) -> Result:
        try:
            key = open_store_key(settings, engine)
        except AuditKeyError as exc:
            return Result("audit key", "FAIL", str(exc))
        except Exception as exc:
            return Result("audit key", "FAIL", f"cannot check it: {type(exc).__name__}")
        return Result("audit key", "PASS", f"{key.path} matches the store "
                                           f"(fingerprint {key.fingerprint[:12]}...)")

    def _statistics(self, engine: Engine) -> Result:
        """PostgreSQL: the decisions' lookups are planned with statistics (store.statistics)."""
        if engine.dialect.name != "postgresql":
            return Result("store statistics", "SKIP", "PostgreSQL only (SQLite keeps none)")
        try:
            stats = calls_statistics(engine)
        except Exception as exc:
            return Result("store statistics", "FAIL", f"cannot read them: {type(exc).__name__}")
        if stats is None:
            return Result("store statistics", "FAIL", "no calls table in the store's schema")
        problem = stats.problem()
        if problem:
            return Result("store statistics", "FAIL", problem)
        when = (f"analyzed {stats.analyzed_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
                if stats.analyzed_at else "not analyzed yet (few rows)")
        return Result("store statistics", "PASS", f"calls: {stats.rows:,} rows, {when}, "
                                                  f"autovacuum {'on' if stats.autovacuum else 'off'}")

    # -- recordings ------------------------------------------------------------------------

    def _recording(self, settings: Settings) -> Iterator[Result]:
        rec = settings.recording
        yield self._writable_dir("recording area", Path(rec.dir))
        storage = rec.storage
        if storage.kind == "local":
            root = Path(storage.root) if storage.root else None
            if root is not None and not _inside(root, Path(rec.dir)):
                yield self._writable_dir("recording store", root)
            return
        yield self._s3(settings)

    def _writable_dir(self, name: str, path: Path) -> Result:
        """Writes (and deletes) a probe file; a directory that does not exist yet is not
        created: its nearest existing parent must be writable instead."""
        shown = str(path.resolve())
        target, note = path, ""
        if not path.exists():
            target = next((p for p in path.resolve().parents if p.exists()), Path("/"))
            note = f" (does not exist yet; will be created in {target})"
        if not target.is_dir():
            return Result(name, "FAIL", f"{shown}: {target} is not a directory")
        try:
            probe = target / f".callwarden-doctor-{uuid.uuid4().hex}"
            with open(probe, "wb") as f:
                f.write(b"callwarden doctor write probe\n")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as exc:
            return Result(name, "FAIL", f"{shown}{note} is not writable: {exc.strerror or exc} "
                                        "(the user running callwarden must own it)")
        free_mb = shutil.disk_usage(target).free // (1024 * 1024)
        if free_mb < self.options.min_free_mb:
            return Result(name, "FAIL", f"{shown}: only {free_mb} MB free, below the "
                                        f"{self.options.min_free_mb} MB threshold (--min-free-mb)")
        return Result(name, "PASS", f"{shown} is writable{note}, {free_mb} MB free")

    def _s3(self, settings: Settings) -> Result:
        from callwarden.recorder.storage.base import StorageError
        from callwarden.recorder.storage.s3 import S3Storage

        cfg = settings.recording.storage
        where = f"s3://{cfg.bucket}" + (f" at {cfg.endpoint_url}" if cfg.endpoint_url else "")
        try:
            store = S3Storage(cfg.bucket or "", prefix=cfg.prefix, endpoint_url=cfg.endpoint_url,
                              region=cfg.region, object_lock=cfg.object_lock)
        except (StorageError, ValueError) as exc:
            return Result("recording store", "FAIL", f"{where}: {exc}")
        except Exception as exc:  # botocore: no credentials, bad endpoint ...
            return Result("recording store", "FAIL", f"{where}: {type(exc).__name__}: "
                                                     f"{str(exc)[:200]}")
        if cfg.object_lock and not store.object_lock:
            return Result("recording store", "FAIL",
                          f"{where}: the bucket has no object lock, so recordings could be "
                          "deleted before their retention ends (create the bucket with object "
                          "lock, or set recording.storage.object_lock: false knowingly)")
        lock = "object lock on (COMPLIANCE retention per recording)" if store.object_lock else \
            "object lock not required by the config"
        return Result("recording store", "PASS", f"{where} reachable, {lock}")

    # -- PBX links -------------------------------------------------------------------------

    def _pbx_links(self, settings: Settings) -> Iterator[Result]:
        ami = settings.asterisk.ami if settings.asterisk else None
        if ami is None:
            yield Result("asterisk AMI", "SKIP", "not configured")
        else:
            yield _probe("asterisk AMI", lambda: probes.ami_login(
                ami.host, ami.port, ami.username, ami.secret, self.options.timeout_s))
        esl = settings.freeswitch.esl_inbound if settings.freeswitch else None
        if esl is None:
            yield Result("freeswitch ESL", "SKIP", "not configured")
        else:
            yield _probe("freeswitch ESL", lambda: probes.esl_auth(
                esl.host, esl.port, esl.password, self.options.timeout_s))

    def _ports(self, settings: Settings) -> Iterator[Result]:
        listeners: list[tuple[str, str, int]] = []
        if settings.asterisk:
            listeners.append(("FastAGI port", settings.asterisk.agi.host, settings.asterisk.agi.port))
        if settings.freeswitch:
            out = settings.freeswitch.esl_outbound
            listeners.append(("ESL outbound port", out.host, out.port))
        if settings.metrics:
            listeners.append(("metrics port", settings.metrics.host, settings.metrics.port))
        if settings.web:
            listeners.append(("web console port", settings.web.host, settings.web.port))
        for name, host, port in listeners:
            ok, detail = probes.port_status(host, port, self.options.timeout_s)
            yield Result(name, "PASS" if ok else "FAIL", detail)

    # -- clock -----------------------------------------------------------------------------

    def _clock(self, settings: Settings, engine: Engine | None) -> Result:
        try:
            zone = ZoneInfo(settings.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            return Result("clock", "FAIL", f"time zone {settings.timezone!r} does not load: "
                                           "install the tzdata package")
        now = wall_clock()
        local = now.astimezone(zone)
        if now.year < 2024:
            return Result("clock", "FAIL", f"this host's clock says {now:%Y-%m-%d}: it is not set "
                                           "(calling hours and per-day limits depend on it)")
        shown = f"{local:%Y-%m-%d %H:%M:%S} {settings.timezone} (UTC{local:%z})"
        if engine is None:
            return Result("clock", "PASS", f"{shown}; database clock not compared (store not "
                                           "reachable)")
        try:
            db_now = _database_now(engine)
        except Exception as exc:
            return Result("clock", "FAIL", f"cannot read the database's clock: {type(exc).__name__}")
        skew = (now - db_now).total_seconds()
        if abs(skew) > self.options.max_clock_skew_s:
            return Result("clock", "FAIL", f"this host's clock is {skew:+.1f} s off the "
                                           f"database's (limit {self.options.max_clock_skew_s:g} s): "
                                           "run NTP (chrony/systemd-timesyncd) on both")
        return Result("clock", "PASS", f"{shown}, {skew:+.1f} s from the database's clock")


def _probe(name: str, run: Callable[[], probes.ProbeResult]) -> Result:
    try:
        return Result(name, "PASS", run().detail)
    except probes.ProbeError as exc:
        return Result(name, "FAIL", str(exc))
    except OSError as exc:
        return Result(name, "FAIL", f"{type(exc).__name__}: {exc.strerror or exc}")


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or below it (then checking ``b`` covered it)."""
    try:
        return a.resolve() == b.resolve() or a.resolve().is_relative_to(b.resolve())
    except OSError:
        return False


def _database_now(engine: Engine) -> dt.datetime:
    """The database server's clock, as an aware UTC datetime."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            value = conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar()
            return dt.datetime.fromisoformat(str(value)).replace(tzinfo=dt.UTC)
        value = conn.execute(text("SELECT now()")).scalar()
    if not isinstance(value, dt.datetime):
        raise ValueError("the database did not return a timestamp")
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
