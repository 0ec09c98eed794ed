"""Fixtures shared by the unit tests of the shared tier and the broker: a JetStream KV
bucket in memory on a pair of clocks moved by hand."""

from __future__ import annotations

import pytest

from tests.fakes import MemoryKeyValue
from tests.helpers import TwoClocks


@pytest.fixture
def clock() -> TwoClocks:
    return TwoClocks()


@pytest.fixture
def kv(clock: TwoClocks) -> MemoryKeyValue:
    return MemoryKeyValue(clock=clock.monotonic)
