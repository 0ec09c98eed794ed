"""Fixtures of the unit layer: no server, no nats-py, no Node; time moved by hand."""

from __future__ import annotations

import pytest

from tests.fakes import Clock, MemoryKeyValue
from tests.faulty_idp import faulty  # noqa: F401 - a fixture of both layers
from tests.otel import spans  # noqa: F401 - a fixture of both layers


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kv(clock: Clock) -> MemoryKeyValue:
    return MemoryKeyValue(clock=clock.monotonic, wall=clock.time)
