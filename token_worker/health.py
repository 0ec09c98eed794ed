"""The optional HTTP listener Kubernetes and Prometheus talk to.

- ``/healthz``: the process and its threads are alive (liveness). A NATS outage does not
  fail it: restarting would not bring NATS back, and the worker exits by itself when its
  reconnect policy gives up.
- ``/readyz``: connected, subscribed and not draining (readiness). It fails while
  reconnecting or draining, so the pod is taken out of rotation and a rollout waits.
- ``/metrics``: Prometheus text format, from the worker's own registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from token_worker import wire

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""Returns (healthy, reason)."""


class HealthServer:
    """Serves the three endpoints on ``host:port`` from a daemon thread."""

    def __init__(self, host: str, port: int, *, alive: Check, ready: Check,
                 registry: CollectorRegistry) -> None:
        handler = _handler_class(alive, ready, registry)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.2,),
                                        name="health-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("health endpoints listening", extra={"port": self.port})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_class(alive: Check, ready: Check, registry: CollectorRegistry
                   ) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
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
