"""The health listener on 127.0.0.1, without a worker: idle or silent connections cannot
pin its threads, and the probes still get their answers."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import report_figure
from tests.helpers import wait_until
from token_worker.serve.health import MAX_CONNECTIONS, HealthServer


@contextlib.contextmanager
def health_server(**bounds: float) -> Iterator[HealthServer]:
    server = HealthServer("127.0.0.1", 0, alive=lambda: (True, ""),
                          ready=lambda: (True, "subscribed"), registry=CollectorRegistry(),
                          **bounds)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


def readyz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
        return int(answer.status)


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that start a request and never finish it."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), 2)
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # headers never end
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server closed (readable: it never answers them)."""
    readable, _, _ = select.select(sockets, [], [], 0)
    return len(readable)


def test_idle_connections_do_not_grow_threads_past_the_bound():
    """The finding: 800 idle connections held 803 threads."""
    before = threading.active_count()
    with health_server() as server, idle_connections(server.port, 200) as sockets:
        wait_until(lambda: closed_by_server(sockets) >= 200 - MAX_CONNECTIONS,
                   timeout=10, what="the oldest connections to be closed")
        wait_until(lambda: threading.active_count() - before <= MAX_CONNECTIONS + 1,
                   timeout=5, what="closed connections' threads to end")
        threads = threading.active_count() - before
        report_figure(f"200 idle health connections: +{threads} threads "
                      f"(bound {MAX_CONNECTIONS})")
        assert closed_by_server(sockets[-MAX_CONNECTIONS:]) == 0  # the newest are served
        assert readyz(server.port) == 200


def test_a_probe_is_answered_at_once_however_many_connections_are_idle():
    with health_server(read_timeout=30, max_connections=8) as server:
        for idle in (7, 8, 50):
            with idle_connections(server.port, idle):
                started = time.monotonic()
                assert readyz(server.port) == 200
                assert time.monotonic() - started < 0.5, idle


def test_a_silent_connection_is_closed_after_the_read_timeout():
    with health_server(read_timeout=0.3) as server, idle_connections(server.port, 5) as sockets:
        started = time.monotonic()
        wait_until(lambda: closed_by_server(sockets) == len(sockets), timeout=5,
                   what="silent connections to time out")
        assert 0.25 < time.monotonic() - started < 3


@pytest.mark.parametrize("max_connections", [1, 4])
def test_threads_return_to_the_baseline_when_connections_close(max_connections):
    with health_server(read_timeout=30, max_connections=max_connections) as server:
        before = threading.active_count()
        with idle_connections(server.port, 10):
            wait_until(lambda: threading.active_count() - before == max_connections,
                       timeout=5, what="the bound to fill")
        wait_until(lambda: threading.active_count() == before, timeout=5,
                   what="handler threads to end")
        assert readyz(server.port) == 200
