"""The IdP client against a local HTTP server that fails on demand (5xx, 429, hangs,
garbage, trickles): what a real IdP cannot do when a test wants it. No process is started
(the real oidc-provider's cases are tests/integration/test_idp.py)."""

from __future__ import annotations

import json
import time

import pytest

from tests import free_port
from tests.conftest import report_figure
from tests.faulty_idp import FaultHandler, Scripted
from token_worker.config import IdpConfig
from token_worker.errors import IdpBadResponse, IdpRefused, IdpTimeout, IdpUnavailable
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import ResilientIdp


def client_for(url: str, **overrides) -> IdpClient:
    return IdpClient(IdpConfig(url=url, **{"timeout": 2.0, **overrides}))


def test_connections_are_pooled(faulty):
    server = faulty(body=b'{"access_token": "t", "expires_in": 60}')
    client = client_for(server.url)
    for _ in range(20):
        client.fetch_token("c", "s", "")
    assert len(server.client_ports) == 20
    assert len(set(server.client_ports)) == 1  # one kept-alive connection, not twenty


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code"),
    [
        (500, b"oops", {}, IdpUnavailable, "idp_unavailable"),
        (503, b'{"error": "temporarily_unavailable"}', {}, IdpUnavailable, "idp_unavailable"),
        (429, b"", {"Retry-After": "3"}, IdpUnavailable, "idp_unavailable"),
        (200, b"<html>surprise</html>", {}, IdpBadResponse, "idp_bad_response"),
        (200, b'{"token_type": "Bearer"}', {}, IdpBadResponse, "idp_bad_response"),
        (200, b'{"access_token": "t", "expires_in": -5}', {}, IdpBadResponse,
         "idp_bad_response"),
        (302, b"", {"Location": "https://elsewhere.example/token"}, IdpBadResponse,
         "idp_bad_response"),
        (400, b'{"error": "invalid_scope", "error_description": "nope"}', {}, IdpRefused,
         "invalid_scope"),
        (401, b"", {}, IdpRefused, "invalid_client"),
    ],
)
def test_faults_become_typed_errors(status, body, headers, error, code, faulty):
    server = faulty(status=status, body=body, headers=headers)
    with pytest.raises(error) as caught:
        client_for(server.url).fetch_token("c", "s", "")
    assert caught.value.error_code == code


def test_a_trickled_token_is_cut_at_the_deadline(faulty):
    """A trickled answer: timeout 2, deadline 4, one byte per 100 ms (was: 7.1 s, accepted)."""
    trickle = Scripted(body=b'{"access_token": "trickled", "expires_in": 60}', trickle=0.1)
    server = faulty(script=[trickle])
    config = IdpConfig(url=server.url, timeout=2.0, deadline=4.0)
    idp = ResilientIdp(IdpClient(config), config)
    started = time.monotonic()
    with pytest.raises(IdpTimeout, match="within the 4 s deadline"):
        idp.fetch_token("c", "s", "")  # the whole body takes 4.7 s: never accepted
    elapsed = time.monotonic() - started
    report_figure(f"trickled token (1 byte / 100 ms), timeout 2 s, deadline 4 s: cut after "
                  f"{elapsed:.2f} s, {server.calls} attempts")
    assert server.calls == 2  # two attempts of up to 2 s fit the 4 s deadline, no third


def test_a_hanging_idp_is_a_timeout(faulty):
    server = faulty(body=b"{}", delay=10)
    with pytest.raises(IdpTimeout, match=r"within 0\.3 s"):
        client_for(server.url, timeout=0.3).fetch_token("c", "s", "")


def test_an_unreachable_idp_is_unavailable_not_refused():
    with pytest.raises(IdpUnavailable, match="unreachable"):
        client_for(f"http://127.0.0.1:{free_port()}").fetch_token("c", "s", "")


def test_the_secret_is_sent_only_in_the_body_or_header(faulty):
    captured: dict[str, str] = {}

    class Capture(FaultHandler):
        def do_POST(self) -> None:
            captured["body"] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            captured["path"] = self.path
            captured["auth"] = self.headers.get("Authorization", "")
            body = json.dumps({"access_token": "t", "expires_in": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = faulty()
    server.RequestHandlerClass = Capture
    client_for(server.url).fetch_token("my-client", "my-secret", "read")
    assert "client_secret=my-secret" in captured["body"]
    assert "grant_type=client_credentials" in captured["body"]
    assert "my-secret" not in captured["path"]
    client_for(server.url, auth_method="client_secret_basic").fetch_token("my-client",
                                                                          "my-secret", "")
    assert captured["auth"].startswith("Basic ")
    assert "my-secret" not in captured["body"]
