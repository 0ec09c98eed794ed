"""Fixtures of the real-server suite: nats-server and IdP processes, workers and
requesters, always cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.faulty_idp import faulty  # noqa: F401 - a fixture of both layers
from tests.integration.helpers import (
    SHIPPED_AUTHORIZATION,
    SHIPPED_ENV,
    TEST_CLIENTS,
    Requester,
)
from tests.integration.processes import IdpServer, NatsServer
from tests.otel import spans  # noqa: F401 - a fixture of both layers
from token_worker import Config, TokenWorker


@pytest.fixture(scope="session")
def idp() -> Iterator[IdpServer]:
    server = IdpServer(clients=TEST_CLIENTS).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def shipped_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsServer]:
    """A nats-server with the shipped authorization (deploy/nats/authorization.conf), its
    passwords in the environment it reads them from."""
    for key, value in SHIPPED_ENV.items():
        monkeypatch.setenv(key, value)
    server = NatsServer(SHIPPED_AUTHORIZATION.read_text()).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def start_worker() -> Iterator[Callable[..., TokenWorker]]:
    """Start TokenWorkers in the background; every one is stopped after the test."""
    workers: list[TokenWorker] = []

    def start(config: Config, handler: Callable[[bytes], bytes] | None = None) -> TokenWorker:
        worker = TokenWorker(config, handler)
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5)


@pytest.fixture
def requester_factory() -> Iterator[Callable[[str], Requester]]:
    made: list[Requester] = []

    def make(url: str) -> Requester:
        requester = Requester(url)
        made.append(requester)
        return requester

    yield make
    for requester in made:
        requester.close()
