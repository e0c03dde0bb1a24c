"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rangekv.common.telemetry import Telemetry


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """A node's telemetry (Prometheus registry, meters), shut down after the test."""
    t = Telemetry("test", node_id=1)
    yield t
    t.shutdown()
