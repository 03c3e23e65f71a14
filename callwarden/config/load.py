"""Read the YAML configuration file and turn every problem into one readable error."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from callwarden.config.model import Settings

ENV_VAR = "CALLWARDEN_CONFIG"
DEFAULT_PATH = Path("config/callwarden.example.yaml")


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists ``key: value: rule`` lines."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"invalid configuration in {source}:\n  " + "\n  ".join(problems))


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    """The file to read: the argument, else $CALLWARDEN_CONFIG, else the example in a checkout."""
    if path:
        return Path(path)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_PATH


def _value_at(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _format(err: dict[str, Any], data: Any) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (check the spelling against the config reference)"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    value = _value_at(data, loc)
    shown = "" if value is None else f" {value!r}:"
    return f"{key}:{shown} {msg}"


def parse_settings(data: Any, source: str = "<config>") -> Settings:
    """Validate an already-parsed mapping."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys to values"])
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_format(e, data) for e in exc.errors()]) from None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load and validate the configuration file (see ``resolve_path``)."""
    file = resolve_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(file), [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    settings = parse_settings(data, str(file))
    settings._config_dir = file.resolve().parent
    return settings
