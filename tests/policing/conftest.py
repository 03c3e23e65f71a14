"""Fixtures for the detector's tests: a seeded store and detectors whose engines get disposed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from callwarden.policing.runner import Detector
from callwarden.store.db import make_engine
from tests.conftest import seed
from tests.policing.helpers import registry_doc

TENANTS = ("care", "spam", "edge")


@pytest.fixture
def world(store_url) -> str:
    """A store with three tenants, each with a filed number, a verified trunk and proofs."""
    seed(store_url, registry_doc(*TENANTS))
    return store_url


@pytest.fixture
def police(world, make_settings) -> Iterator[Callable[..., Detector]]:
    """``police(**policing_overrides)``: a Detector over ``world``."""
    made: list[Detector] = []

    def build(notifier: Any = None, **policing: Any) -> Detector:
        settings = make_settings(world, policing=policing) if policing else make_settings(world)
        d = Detector(settings, engine=make_engine(world), notifier=notifier, run_by="test")
        made.append(d)
        return d

    yield build
    for d in made:
        d.close()
        d.engine.dispose()
