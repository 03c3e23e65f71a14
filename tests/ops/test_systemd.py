"""config/systemd/: the units parse, run commands the CLI really has, carry the hardening
and logging settings, and pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from callwarden.cli.main import cli

UNITS = Path(__file__).resolve().parents[2] / "config" / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
TIMERS = sorted(UNITS.glob("*.timer"))


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's syntax: [Section], Key=value, repeated keys accumulate, # and ; comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: bad section header"
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"{path.name}:{number}: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, (section, key, values)
    return values[0]


def resolve_cli(argv: list[str]) -> click.Command:
    """The click command ``callwarden ARGV`` runs, with its options parsed (an unknown command
    or option raises)."""
    ctx = click.Context(cli, info_name="callwarden")
    group: click.Group = cli
    args = list(argv)
    while True:
        assert args, "a command group needs a subcommand"
        name, *args = args
        sub = group.get_command(ctx, name)
        assert sub is not None, f"callwarden has no command {name!r}"
        if isinstance(sub, click.Group):
            ctx, group = click.Context(sub, info_name=name, parent=ctx), sub
            continue
        sub.make_context(name, args, parent=ctx)  # parses the options: UsageError if wrong
        return sub


def test_the_expected_units_ship() -> None:
    assert {p.name for p in SERVICES} == {"callwarden.service", "callwarden-purge.service",
                                           "callwarden-police.service"}
    assert {p.name for p in TIMERS} == {"callwarden-purge.timer", "callwarden-police.timer"}


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_exec_start_is_a_real_callwarden_command(path: Path) -> None:
    unit = parse_unit(path)
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert Path(argv[0]).name == "callwarden" and Path(argv[0]).is_absolute()
    command = resolve_cli(argv[1:])
    assert command.name == argv[1]


def test_resolve_cli_refuses_what_does_not_exist() -> None:
    with pytest.raises(AssertionError, match="no command"):
        resolve_cli(["serv"])
    with pytest.raises(click.UsageError):
        resolve_cli(["police", "--one"])


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_services_are_hardened_and_log_to_the_journal(path: Path) -> None:
    svc = parse_unit(path)["Service"]
    assert one({"Service": svc}, "Service", "User") == "callwarden"
    assert svc["EnvironmentFile"] == ["/etc/callwarden/callwarden.env"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
                       "CapabilityBoundingSet": "", "StandardOutput": "journal",
                       "StandardError": "journal", "SystemCallArchitectures": "native"}.items():
        assert svc.get(key) == [value], (path.name, key, svc.get(key))
    families = set(svc["RestrictAddressFamilies"][0].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}  # AF_UNIX: the FreeSWITCH report socket
    assert svc["StateDirectory"] == ["callwarden"]


def test_the_main_service_restarts_on_failure_and_stops_gracefully() -> None:
    unit = parse_unit(UNITS / "callwarden.service")
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "Type") == "simple"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    for name in ("callwarden-purge.service", "callwarden-police.service"):
        assert one(parse_unit(UNITS / name), "Service", "Type") == "oneshot"


def test_batch_jobs_yield_the_cpus_to_the_enforcing_service() -> None:
    """Purge and detector passes run beside `serve`, whose decisions have a deadline."""
    assert "Nice" not in parse_unit(UNITS / "callwarden.service")["Service"]
    for name in ("callwarden-purge.service", "callwarden-police.service"):
        assert int(one(parse_unit(UNITS / name), "Service", "Nice")) >= 10, name


@pytest.mark.parametrize("path", TIMERS, ids=lambda p: p.name)
def test_timers_start_their_service(path: Path) -> None:
    unit = parse_unit(path)
    target = unit["Timer"].get("Unit", [path.with_suffix(".service").name])[0]
    assert (UNITS / target).is_file()
    assert re.fullmatch(r"[\d*:/ -]+", one(unit, "Timer", "OnCalendar"))
    assert one(unit, "Install", "WantedBy") == "timers.target"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).with_name("callwarden")
    assert exe.exists(), "the callwarden console script of this environment"
    for path in SERVICES + TIMERS:
        text = path.read_text(encoding="utf-8").replace("/opt/callwarden/bin/callwarden", str(exe))
        (tmp_path / path.name).write_text(text, encoding="utf-8")
    proc = subprocess.run([analyze, "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 0 and not problems, problems
