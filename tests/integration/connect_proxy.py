"""An HTTP proxy for tests, standard library only: CONNECT tunnels (what clients use for
https:// URLs) and absolute-URI forwarding (plain http:// URLs), on loopback, one thread
per client connection.

It counts what went through it per target (``host:port`` as the client named it), can
require ``Proxy-Authorization: Basic`` credentials, and only ever connects to loopback
targets (127.0.0.0/8, ::1, localhost): anything else gets 403 and is counted as refused.

    with ConnectProxy(username="proxy-user", password="proxy-pass") as proxy:
        proxy.url                     # http://127.0.0.1:<port> (no credentials)
        proxy.url_with_credentials    # http://proxy-user:proxy-pass@127.0.0.1:<port>
        ...
        proxy.calls_to("127.0.0.1")   # CONNECTs plus forwarded requests to that host
        proxy.tunnels, proxy.forwarded, proxy.refused_auth

Its own log (``proxy.log``) never holds a Proxy-Authorization value, only whether one came
and whether it matched, so a test can scan it alongside the worker's lines.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import socket
import socketserver
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
              "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` -> (host without brackets, port)."""
    parsed = urllib.parse.urlsplit("//" + authority.rsplit("@", 1)[-1])
    return parsed.hostname or "", parsed.port or default_port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: ConnectProxy

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the address up in DNS (getfqdn): not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30

    # --- bookkeeping ----------------------------------------------------------------

    @property
    def proxy(self) -> ConnectProxy:
        return self.server.owner

    def log_message(self, format: str, *args: Any) -> None:
        # The request line never holds credentials (they travel in a header).
        self.proxy._log(f"{self.client_address[0]} {format % args}")

    def _authorized(self) -> bool:
        expected = self.proxy._expected_authorization
        given = self.headers.get("Proxy-Authorization")
        if given is not None:
            self.proxy._count("authorization_headers")
        if expected is None:
            return True
        if given == expected:
            return True
        self.proxy._count("refused_auth")
        self.proxy._log(f"407 for {self.command} {self.path}: Proxy-Authorization "
                        f"{'absent' if given is None else 'wrong'}")
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="tests"')
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _refuse(self, code: int, why: str) -> None:
        self.proxy._log(f"{code} for {self.command} {self.path}: {why}")
        body = why.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    # --- CONNECT: a tunnel ------------------------------------------------------------

    def do_CONNECT(self) -> None:
        if not self._authorized():
            return
        host, port = split_host_port(self.path, 443)
        target = join_host_port(host, port)
        if not is_loopback(host):
            self.proxy._count("refused_target")
            self._refuse(403, f"only loopback targets, not {host}")
            return
        try:
            upstream = socket.create_connection((host, port), timeout=10)
        except OSError as error:
            self._refuse(502, f"cannot reach {target}: {error}")
            return
        self.proxy._record("tunnels", target)
        self.send_response(200, "Connection Established")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        with upstream:
            upstream.settimeout(None)
            self.connection.settimeout(None)
            self.proxy._track(upstream, self.connection)
            back = threading.Thread(target=self._pump_to_client, args=(upstream,), daemon=True)
            back.start()
            try:
                while chunk := self.rfile.read1(65536):
                    upstream.sendall(chunk)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)
            back.join(30)
            self.proxy._untrack(upstream, self.connection)

    def _pump_to_client(self, upstream: socket.socket) -> None:
        try:
            while chunk := upstream.recv(65536):
                self.connection.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    # --- absolute-URI forwarding (plain http) ---------------------------------------------

    def _forward(self) -> None:
        if not self._authorized():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or not url.netloc:
            self._refuse(400 if not url.scheme else 501,
                         "this proxy forwards absolute http:// URLs; use CONNECT for https")
            return
        host, port = url.hostname or "", url.port or 80
        if not is_loopback(host):
            self.proxy._count("refused_target")
            self._refuse(403, f"only loopback targets, not {host}")
            return
        body = self._read_body()
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        target = join_host_port(host, port)
        path_shown = urllib.parse.urlunsplit(("http", target, url.path, url.query, ""))
        self.proxy._record("forwarded", target, f"{self.command} {path_shown}")
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request(self.command, path, body=body, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
        except OSError as error:
            self._refuse(502, f"cannot reach {target}: {error}")
            return
        finally:
            connection.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length else None

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _forward


class ConnectProxy:
    """The proxy server; ``start()``/``stop()`` or a ``with`` block."""

    handler: ClassVar[type[BaseHTTPRequestHandler]] = _Handler

    def __init__(self, *, username: str | None = None, password: str | None = None,
                 host: str = "127.0.0.1") -> None:
        self.host = host
        self.username = username
        self.password = password
        self._expected_authorization: str | None = None
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._expected_authorization = f"Basic {token}"
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self.targets: Counter[str] = Counter()
        """CONNECTs and forwarded requests per target ``host:port``, as the client named it."""
        self.counts: Counter[str] = Counter()
        """``tunnels``, ``forwarded``, ``refused_auth``, ``refused_target``,
        ``authorization_headers`` (requests that carried Proxy-Authorization)."""
        self.requests: list[tuple[str, str]] = []
        """(kind, detail) per tunnel or forwarded request, in order: ("tunnels",
        "127.0.0.1:443") or ("forwarded", "POST http://127.0.0.1:80/path")."""
        self.log: list[str] = []
        """The proxy's own log lines (never a credential)."""

    # --- life ---------------------------------------------------------------------------

    def start(self) -> ConnectProxy:
        server_class = type("_Server", (_Server,), {
            "address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET})
        server = server_class((self.host, 0), self.handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="connect-proxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread:
            self._thread.join(10)
        self._server = None

    def __enter__(self) -> ConnectProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- where it is ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the proxy URL without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        """The proxy URL with ``user:password@`` (percent-encoded) when it has credentials:
        what HTTPS_PROXY would hold."""
        if self.username is None:
            return self.url
        user = urllib.parse.quote(self.username, safe="")
        password = urllib.parse.quote(self.password or "", safe="")
        return self.url.replace("http://", f"http://{user}:{password}@", 1)

    # --- what went through it ------------------------------------------------------------

    @property
    def tunnels(self) -> int:
        return self.counts["tunnels"]

    @property
    def forwarded(self) -> int:
        return self.counts["forwarded"]

    @property
    def refused_auth(self) -> int:
        return self.counts["refused_auth"]

    def calls_to(self, host: str, port: int | None = None) -> int:
        """Tunnels plus forwarded requests whose target was ``host`` (and ``port``)."""
        host = host.strip("[]")
        total = 0
        for target, count in self.targets.items():
            target_host, target_port = split_host_port(target, -1)
            if target_host == host and (port is None or target_port == port):
                total += count
        return total

    def reset(self) -> None:
        with self._lock:
            self.targets.clear()
            self.counts.clear()
            self.requests.clear()
            self.log.clear()

    # --- for the handler -------------------------------------------------------------------

    def _record(self, kind: str, target: str, detail: str | None = None) -> None:
        with self._lock:
            self.counts[kind] += 1
            self.targets[target] += 1
            self.requests.append((kind, detail or target))

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def _log(self, line: str) -> None:
        with self._lock:
            self.log.append(line)

    def _track(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._open.update(sockets)

    def _untrack(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(sockets)
