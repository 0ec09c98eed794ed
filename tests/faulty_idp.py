"""A local HTTP server that plays a failing IdP: 5xx, 429, hangs and garbage on demand,
which a real IdP cannot produce when a test wants it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, bytes, dict[str, str]]


class FaultyIdp(ThreadingHTTPServer):
    """Answers POSTs with ``status`` and ``body`` after ``delay`` seconds, or, with
    ``script``, with each scripted answer in turn (then the last one again). Records the
    client ports it saw, to prove connection reuse and to count calls."""

    daemon_threads = True

    def __init__(self, status: int = 200, body: bytes = b"", delay: float = 0.0,
                 headers: dict[str, str] | None = None, script: list[Answer] | None = None
                 ) -> None:
        self.script = script or [(status, body, headers or {})]
        self.delay = delay
        self.client_ports: list[int] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), FaultHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def calls(self) -> int:
        return len(self.client_ports)

    def next_answer(self, port: int) -> Answer:
        with self._lock:
            self.client_ports.append(port)
            index = min(len(self.client_ports), len(self.script)) - 1
            return self.script[index]


class FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultyIdp

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, body, headers = self.server.next_answer(self.client_address[1])
        if self.server.delay:
            self.server.release.wait(self.server.delay)
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting, as a hanging IdP's clients do

    do_GET = do_POST

    def log_message(self, *_args: object) -> None:
        pass
