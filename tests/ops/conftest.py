"""Fixtures of the operations tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ops.helpers import AmiThread


@pytest.fixture
def ami() -> Iterator[AmiThread]:
    """The simulated Asterisk manager interface, in a thread of its own."""
    server = AmiThread()
    yield server
    server.close()
