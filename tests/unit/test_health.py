"""The health listener on 127.0.0.1, without a worker: idle or silent connections cannot
pin its threads, and the probes still get their answers."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import report_figure
from tests.helpers import wait_until
from token_worker.serve.health import HealthServer

MAX_CONNECTIONS = 32
"""The documented bound (docs/operations.md, health probes), not the product's constant."""


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


@pytest.mark.parametrize("idle", [7, 8, 50])
def test_a_probe_gets_in_however_many_connections_are_idle(idle):
    """The idle connections would hold their threads for the 60 s read timeout: the probe
    (whose own timeout is 2 s) is answered because the oldest idle ones were closed to make
    room, as many as the bound required, not because one timed out."""
    with health_server(read_timeout=60, max_connections=8) as server, \
            idle_connections(server.port, idle) as sockets:
        wait_until(lambda: closed_by_server(sockets) >= idle - 8, timeout=10,
                   what="the oldest idle connections to make room")
        assert readyz(server.port) == 200
        made_room = max(0, idle + 1 - 8)  # the probe made room too, when the bound was full
        wait_until(lambda: closed_by_server(sockets) >= made_room, what="room for the probe")
        assert closed_by_server(sockets) == made_room


def test_a_silent_connection_is_closed_after_the_read_timeout():
    """Beside a listener with a 60 s read timeout, whose silent connections stay open, the
    one with 0.3 s closes its own: the read timeout closes them, nothing else does."""
    with health_server(read_timeout=0.3) as short, health_server(read_timeout=60) as long, \
            idle_connections(short.port, 5) as timed_out, \
            idle_connections(long.port, 5) as kept:
        wait_until(lambda: closed_by_server(timed_out) == len(timed_out), timeout=10,
                   what="silent connections to time out")
        assert readyz(long.port) == 200  # a round trip through the long one's accept loop
        assert closed_by_server(kept) == 0


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
