"""Configuration: schema (``model``) and loading (``load``)."""

from callwarden.config.load import ConfigError, load_settings, parse_settings, resolve_path
from callwarden.config.model import MIN_RETENTION_DAYS, Settings, TimeSpan, parse_span

__all__ = [
    "MIN_RETENTION_DAYS",
    "ConfigError",
    "Settings",
    "TimeSpan",
    "load_settings",
    "parse_settings",
    "parse_span",
    "resolve_path",
]
