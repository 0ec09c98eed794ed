"""The IdP client: a real oidc-provider for the good and refused cases, a local HTTP server
for what a real IdP cannot do on demand (5xx, 429, hangs, garbage)."""

from __future__ import annotations

import json
import ssl

import pytest

from tests.faulty_idp import Scripted
from tests.integration.helpers import BASIC, DEMO, tls_certificates
from tests.integration.processes import TOKEN_PATH
from token_worker.config import IdpConfig
from token_worker.errors import IdpRefused, IdpUnavailable
from token_worker.idp.client import IdpClient


def client_for(url: str, **overrides) -> IdpClient:
    return IdpClient(IdpConfig(url=url, token_path=TOKEN_PATH, **{"timeout": 2.0, **overrides}))


def test_real_idp_issues_a_token_with_post_and_basic_auth(idp):
    token = client_for(idp.url).fetch_token(*DEMO, "openid")
    assert token.token_type == "Bearer"
    assert token.expires_in == 300
    assert token.scope == "openid"
    assert token.access_token not in repr(token)
    basic = client_for(idp.url, auth_method="client_secret_basic").fetch_token(*BASIC, "")
    assert basic.access_token


def test_real_idp_refusal_keeps_its_oauth2_code_and_description(idp):
    with pytest.raises(IdpRefused) as caught:
        client_for(idp.url).fetch_token(DEMO[0], "nope", "")
    assert caught.value.error_code == "invalid_client"
    assert caught.value.status == 401
    assert caught.value.description


@pytest.fixture
def https_faulty(faulty, tmp_path, monkeypatch):
    """A FaultyIdp behind TLS, with a certificate for 127.0.0.1 the client trusts."""
    certificates = tls_certificates(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates / "server.pem", certificates / "server.key")

    def make(**kwargs):
        server = faulty(**kwargs)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        return server

    return make


@pytest.mark.parametrize(("endpoint", "refused"), [
    ("http://127.0.0.1:{port}/token", True),
    ("https://127.0.0.1:{port}/token", False),
])
def test_an_https_issuer_cannot_downgrade_the_token_endpoint_to_http(endpoint, refused,
                                                                     https_faulty, caplog):
    server = https_faulty(body=b"")
    port = server.server_address[1]
    server.script = [Scripted(body=json.dumps(
        {"token_endpoint": endpoint.format(port=port)}).encode()),
        Scripted(body=b'{"access_token": "t"}')]
    issuer = f"https://127.0.0.1:{port}"
    client = IdpClient(IdpConfig(url="https://unused.example", issuer=issuer, timeout=2.0))
    if not refused:
        assert client.fetch_token("c", "s", "").access_token == "t"
        return
    with pytest.raises(IdpUnavailable, match="token_endpoint is http under an https issuer"):
        client.fetch_token("c", "s", "")
    assert server.calls == 1  # the discovery document only: the secret never went out
    [line] = [r for r in caplog.records if r.getMessage().startswith("discovered token endpoint "
                                                                     "refused")]
    assert line.token_url == f"http://127.0.0.1:{port}"
