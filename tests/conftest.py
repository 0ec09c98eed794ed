"""Fixtures: real nats-server and IdP processes, workers and requesters, always cleaned up."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import nats as nats_py
import pytest

from tests.faulty_idp import FaultyIdp
from tests.servers import TOKEN_PATH, IdpServer, NatsServer
from token_worker import Config, TokenWorker
from token_worker.config import IdpConfig, NatsConfig
from token_worker.logs import ContextFilter, RedactSecrets, json_formatter

DEMO = ("demo-service", "demo-secret-for-tests")
BASIC = ("basic-service", "basic-secret-for-tests")
SCOPED = ("scoped-service", "scoped-secret-for-tests")
TEST_CLIENTS = [
    {"client_id": DEMO[0], "client_secret": DEMO[1],
     "token_endpoint_auth_method": "client_secret_post"},
    {"client_id": BASIC[0], "client_secret": BASIC[1],
     "token_endpoint_auth_method": "client_secret_basic"},
    {"client_id": SCOPED[0], "client_secret": SCOPED[1],
     "token_endpoint_auth_method": "client_secret_post", "scope": "read"},
]


# --- figures: measured values the tests print at the end of the run --------------------

FIGURES: list[str] = []


def report_figure(text: str) -> None:
    """Keep a measured figure for the summary at the end of the run (shown in CI too)."""
    FIGURES.append(text)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures measured by this run")
        for line in FIGURES:
            terminalreporter.write_line(line)
    if LEAKS:
        terminalreporter.section("secrets found in log lines", red=True)
        for line in LEAKS:
            terminalreporter.write_line(line, red=True)


# --- every log line of the run, scanned for secrets when the session ends ---------------

CAPTURED_LOG_LINES: list[str] = []
"""Every log line the suite produced: in-process records (formatted as the CLI formats
them) and the stderr lines of worker processes."""
KNOWN_SECRETS: set[str] = {client["client_secret"] for client in TEST_CLIENTS}
"""Client secrets, NATS passwords and access tokens the suite used or received."""


LEAKS: list[str] = []
"""What the scan at the end of the session found (shown in the summary; fails the run)."""


def remember_secret(*values: str) -> None:
    """Register values that must never appear in a log line."""
    KNOWN_SECRETS.update(value for value in values if len(value) >= 8)


def find_leaks(lines: list[str], secrets: set[str]) -> list[str]:
    """One sentence per secret found in ``lines``, naming it only by its first characters
    and length, and showing the first line it was found in with the secret masked."""
    leaks = []
    for secret in sorted(secrets):
        found = [line for line in lines if secret in line]
        if found:
            masked = found[0].replace(secret, "********")[:300]
            leaks.append(f"secret {secret[:4]!r}... ({len(secret)} characters) in "
                         f"{len(found)} log line(s); first: {masked}")
    return leaks


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Scan every log line the run produced (unit layer and real-server suite alike, in any
    order or selection) for every secret and token registered: a leak fails the run."""
    leaks = find_leaks(CAPTURED_LOG_LINES, KNOWN_SECRETS)
    if leaks:
        LEAKS.extend(leaks)
        if exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    report_figure(f"scanned {len(CAPTURED_LOG_LINES)} log lines for {len(KNOWN_SECRETS)} "
                  f"secrets and tokens: none found")


class _CaptureEveryLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            CAPTURED_LOG_LINES.append(self.format(record))
        except Exception:
            CAPTURED_LOG_LINES.append(record.getMessage())


@pytest.fixture(scope="session", autouse=True)
def capture_every_log_line() -> Iterator[None]:
    """Log at DEBUG into a handler set up as the CLI sets up its own."""
    handler = _CaptureEveryLine(logging.DEBUG)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter("Token Worker-tests", "test"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.fixture(scope="session")
def idp() -> Iterator[IdpServer]:
    server = IdpServer(clients=TEST_CLIENTS).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faulty() -> Iterator[Callable[..., FaultyIdp]]:
    """Start FaultyIdp servers; all are shut down after the test."""
    servers: list[FaultyIdp] = []

    def make(**kwargs: Any) -> FaultyIdp:
        server = FaultyIdp(**kwargs)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def make_config(nats_url: str, idp_url: str = "http://127.0.0.1:9", **overrides: Any) -> Config:
    """A config for tests: fast reconnects and pings; overrides by Config field name, or
    ``nats=dict(...)`` / ``idp=dict(...)`` for the nested parts."""
    nats_overrides = overrides.pop("nats", {})
    idp_overrides = overrides.pop("idp", {})
    nats = NatsConfig(urls=tuple(nats_url.split(",")), reconnect_wait=0.2, max_reconnect=-1,
                      connect_timeout=1.0, ping_interval=1.0, max_pings_out=2)
    idp = IdpConfig(url=idp_url, token_path=TOKEN_PATH, timeout=2.0)
    return Config(name_suffix=overrides.pop("name_suffix", "test"),
                  nats=replace(nats, **nats_overrides), idp=replace(idp, **idp_overrides),
                  **overrides)


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


class Requester:
    """A requester built on nats-py, an independent client: it proves the wire contract
    the way third-party requesters see it. Synchronous, for tests."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._nc = self.run(nats_py.connect(url, allow_reconnect=False))

    @property
    def nc(self) -> Any:
        """The nats-py connection, for a test that drives nats-py itself (with :meth:`run`)."""
        return self._nc

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on this requester's event loop and return its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def request_raw(self, payload: bytes, *, subject: str = "token.request",
                    timeout: float = 5.0) -> bytes:
        message = self.run(self._nc.request(subject, payload, timeout=timeout), timeout + 5)
        return bytes(message.data)

    def request(self, body: Any, **kwargs: Any) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if isinstance(body, dict) and isinstance(body.get("client_secret"), str):
            remember_secret(body["client_secret"])
        reply = json.loads(self.request_raw(raw, **kwargs))
        assert isinstance(reply, dict)
        if isinstance(reply.get("access_token"), str):
            remember_secret(reply["access_token"])
        return reply

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.run(self._nc.publish(subject, payload, reply=reply))
        self.run(self._nc.flush())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self.run(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


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


def token_request(client: tuple[str, str], request_id: str = "r-1", **extra: Any) -> dict[str, Any]:
    return {"request_id": request_id, "client_id": client[0], "client_secret": client[1],
            "timestamp": "2026-11-29T12:00:00Z", **extra}
