"""IPv6 without a real server: NATS URLs and IdP origins keep their brackets, the NATS
handshake reaches a host whatever family its addresses are, trying each in turn (a
one-thread fake NATS server on ::1 answers it), and the IdP client reaches an IdP on ::1
by address or by a name that resolves only there."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests import free_port
from token_worker.config import IdpConfig, NatsConfig, load_config, parse_nats_urls
from token_worker.errors import ConfigError
from token_worker.idp.answers import origin
from token_worker.idp.client import IdpClient
from token_worker.idp.proxy import Proxies
from token_worker.nats.dial import dial


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1)")


@pytest.mark.parametrize(("raw", "expected"), [
    ("nats://[::1]:4222", ("nats://[::1]:4222",)),
    ("[::1]", ("nats://[::1]:4222",)),
    ("tls://[fd00::5]:4443,nats://[::1]", ("tls://[fd00::5]:4443", "nats://[::1]:4222")),
    ("nats://[2001:DB8::1]:7", ("nats://[2001:db8::1]:7",)),
])
def test_ipv6_nats_urls_keep_their_brackets(raw: str, expected: tuple[str, ...]) -> None:
    assert parse_nats_urls(raw) == expected
    assert parse_nats_urls(expected) == expected  # a parsed value parses to itself


def test_a_bad_ipv6_nats_url_is_named_with_its_brackets() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config([], {"NATS_URL": "nats://[::1]:notaport"})
    assert "nats://[::1]:notaport" in str(caught.value)
    assert load_config([], {"NATS_URL": "nats://[::1]:4222"}).nats.urls == (
        "nats://[::1]:4222",)


@pytest.mark.parametrize(("url", "expected"), [
    ("http://[::1]:9400/realms/x/token", "http://[::1]:9400"),
    ("https://[fd00::1]/token", "https://[fd00::1]"),
    ("http://127.0.0.1:9400/x", "http://127.0.0.1:9400"),
    ("https://idp.example/x", "https://idp.example"),
])
def test_idp_origins_keep_ipv6_brackets(url: str, expected: str) -> None:
    assert origin(url) == expected


# --- the handshake on IPv6 --------------------------------------------------------------

class FakeNats:
    """Accepts one client on ``family``'s loopback: INFO, then PONG to its first PING."""

    def __init__(self, family: socket.AddressFamily) -> None:
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.listener.listen(4)
        self.port = int(self.listener.getsockname()[1])
        self.peers: list[Any] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            client, peer = self.listener.accept()
            self.peers.append(peer)
            with client:
                client.sendall(b'INFO {"server_id": "fake6", "max_payload": 1048576}\r\n')
                client.settimeout(5)
                seen = b""
                while b"PING" not in seen:
                    chunk = client.recv(4096)
                    if not chunk:
                        return
                    seen += chunk
                client.sendall(b"PONG\r\n")
                client.recv(4096)  # until the dialer closes

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def fake_v6() -> Iterator[FakeNats]:
    server = FakeNats(socket.AF_INET6)
    yield server
    server.close()


def config(url: str) -> NatsConfig:
    return NatsConfig(urls=(url,), connect_timeout=2.0)


def _dial(url: str) -> tuple[str, socket.AddressFamily, dict[str, Any]]:
    shown: list[socket.socket] = []
    dialed = dial(url, config(url), lambda _info: {"verbose": False}, shown.append)
    try:
        return dialed.url, dialed.sock.family, dialed.info
    finally:
        dialed.sock.close()


@needs_ipv6
def test_the_handshake_reaches_an_ipv6_literal(fake_v6: FakeNats) -> None:
    url = parse_nats_urls(f"[::1]:{fake_v6.port}")[0]
    dialed_url, family, info = _dial(url)
    assert (dialed_url, family) == (f"nats://[::1]:{fake_v6.port}", socket.AF_INET6)
    assert info["server_id"] == "fake6"


@needs_ipv6
def test_every_address_of_a_name_is_tried_in_order(fake_v6: FakeNats,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose first address refuses (IPv4, nobody listening) and whose second is
    ::1: the handshake moves on to the second, with a socket of its family."""
    closed = free_port()
    real = socket.getaddrinfo
    asked: list[tuple[object, ...]] = []

    def resolve(host: str, port: object, *args: Any, **kwargs: Any) -> Any:
        if host != "nats6.test":
            return real(host, port, *args, **kwargs)
        asked.append((host, port, *args))
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", fake_v6.port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    _url, family, _info = _dial(f"nats://nats6.test:{fake_v6.port}")
    assert family == socket.AF_INET6
    assert asked == [("nats6.test", fake_v6.port, socket.AF_UNSPEC, socket.SOCK_STREAM)]


def test_the_last_refusal_is_raised_when_no_address_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_port()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *_a, **_k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed))])
    with pytest.raises(ConnectionRefusedError):
        _dial(f"nats://twice.test:{closed}")


# --- the IdP on IPv6 -----------------------------------------------------------------------

class _TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"access_token": "v6-token", "token_type": "Bearer", "expires_in": 60}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


@needs_ipv6
def test_an_idp_named_by_a_name_that_resolves_only_to_ipv6(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = _V6Server(("::1", 0), _TokenHandler)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    port = server.server_address[1]
    real = socket.getaddrinfo

    def resolve(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "idp6.test":
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    try:
        for url in (f"http://idp6.test:{port}", f"http://[::1]:{port}"):
            client = IdpClient(IdpConfig(url=url, token_path="/token", timeout=2.0),
                               proxies=Proxies({}))
            assert client.fetch_token("c", "secret-v6", "").access_token == "v6-token"
            client.close()
    finally:
        server.shutdown()
        server.server_close()
