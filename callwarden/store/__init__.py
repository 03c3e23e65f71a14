"""Persistence: models, engines, the audit chain, registry import/export and fact loading."""
