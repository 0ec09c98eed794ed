"""Fixtures of the unit layer: no server, no nats-py, no Node; time moved by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import Clock, MemoryKeyValue
from tests.faulty_idp import faulty  # noqa: F401 - a fixture of both layers
from tests.kubelet_volume import KubeletVolume
from tests.otel import spans  # noqa: F401 - a fixture of both layers
from token_worker.serve.credentials import CredentialStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def kv(clock: Clock) -> MemoryKeyValue:
    return MemoryKeyValue(clock=clock.monotonic, wall=clock.time)


@pytest.fixture
def volume(tmp_path: Path) -> KubeletVolume:
    """A kubelet-style Secret volume for a credentials directory."""
    return KubeletVolume(tmp_path / "credentials")


@pytest.fixture
def stores() -> Iterator[list[CredentialStore]]:
    """Credential stores a test opens, closed after it."""
    made: list[CredentialStore] = []
    yield made
    for store in made:
        store.close()
