"""The optional HTTP listener Kubernetes and Prometheus talk to.

- ``/healthz``: the process and its threads are alive (liveness). A NATS outage does not
  fail it: restarting would not bring NATS back, and the worker exits by itself when its
  reconnect policy gives up.
- ``/readyz``: connected, subscribed and not draining (readiness). It fails while
  reconnecting or draining, so the pod is taken out of rotation and a rollout waits.
- ``/metrics``: Prometheus text format, from the worker's own registry.

Each connection holds a thread, so the listener bounds them: a connection silent for
:data:`READ_TIMEOUT` seconds is closed, and at most :data:`MAX_CONNECTIONS` are served at
once. A connection beyond that makes room by closing the oldest one: probes and scrapes
send their request at once and are answered in milliseconds, so the oldest is an idle or
trickling one, and a pile of idle sockets neither pins threads nor keeps a probe out.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from token_worker import wire
from token_worker.logs import RateLimitedLog

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
"""Seconds a health connection may stay silent (reading the request) before it is closed."""
MAX_CONNECTIONS = 32
"""Health connections served at once (a thread each); a new one closes the oldest."""
EVICTION_WAIT = 1.0
"""Seconds a new connection waits for the closed oldest one's thread to end (it ends at
once: its socket is shut down), before it is closed itself."""

Check = Callable[[], tuple[bool, str]]
"""Returns (healthy, reason)."""


class HealthServer:
    """Serves the three endpoints on ``host:port`` from a daemon thread."""

    def __init__(self, host: str, port: int, *, alive: Check, ready: Check,
                 registry: CollectorRegistry, read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        handler = _handler_class(alive, ready, registry, read_timeout)
        self._server = _BoundedServer((host, port), handler, max_connections)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                        name="health-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("health endpoints listening", extra={"port": self.port})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; a new connection
    beyond them shuts the oldest one down and takes its place."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops SYNs (1 s retransmits) in a burst

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: dict[socket.socket, None] = {}
        """The connections being served, oldest first."""
        self._lock = threading.Lock()
        self._evicted = RateLimitedLog(
            log, logging.WARNING, "health connection closed to make room: too many open",
            interval=10.0)
        self._max_connections = max_connections

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._close_oldest()
            if not self._slots.acquire(timeout=EVICTION_WAIT):
                self.shutdown_request(request)
                return
        with self._lock:
            self._open[request] = None
        try:
            super().process_request(request, client_address)  # starts the thread
        except BaseException:
            self._forget(request)
            raise

    def process_request_thread(self, request: socket.socket | tuple[bytes, socket.socket],
                               client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        self._slots.release()

    def _close_oldest(self) -> None:
        """Shut the oldest connection down: its thread's read returns at once and it ends,
        releasing its slot (the socket is closed by that thread, as always)."""
        with self._lock:
            oldest = next(iter(self._open), None)
            if oldest is None:
                return
            del self._open[oldest]  # the next one to make room picks the next oldest
        self._evicted({"max_connections": self._max_connections})
        with contextlib.suppress(OSError):  # it may have ended meanwhile
            oldest.shutdown(socket.SHUT_RDWR)


def _handler_class(alive: Check, ready: Check, registry: CollectorRegistry,
                   read_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = read_timeout  # a silent connection is closed, its thread freed
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, reason = (alive if path == "/healthz" else ready)()
                body = wire.encode({"status": "ok" if ok else "unavailable",
                                    "reason": reason})
                self._send(200 if ok else 503, body, "application/json")
            else:
                self._send(404, b'{"status": "not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass  # probes every few seconds would drown the logs

    return Handler
