"""How the IdP client authenticates and what it sends, against an in-process HTTP(S) server
that records every request (no Node): client assertions (decoded and verified with
PyJWT), certificates presented per connection pool, resource and audience, the CA a call
trusts, the proxy variables, and what no error text may show."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import jwt
import pytest

from tests.conftest import remember_secret, report_figure
from tests.pki import CertificateAuthority, Issued, ec_key, key_pem, rsa_key
from token_worker.config import IdpConfig
from token_worker.errors import CannotAuthenticate, ConfigError, IdpRefused, IdpUnavailable
from token_worker.idp.assertion import ASSERTION_TYPE, LIFETIME, client_assertion
from token_worker.idp.client import IdpClient
from token_worker.idp.proxy import Proxies
from token_worker.idp.resilience import ResilientIdp
from token_worker.secret import Secret
from token_worker.tokens.grant import ClientAuth, Grant
from token_worker.tokens.keys import CaBundle, ClientCertificate, PrivateKey

TOKEN = {"access_token": "tok-auth-tests", "token_type": "Bearer", "expires_in": 60}
TOKEN_PATH = "/realms/r/protocol/openid-connect/token"
RSA = rsa_key()
EC = ec_key()


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    form: list[tuple[str, str]]
    port: int
    client_subject: str | None
    """The common name of the client certificate presented, if any."""


@dataclass
class Recorder:
    answer: Callable[[Seen], tuple[int, dict[str, Any]]] = field(
        default=lambda _seen: (200, TOKEN))
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        subject = None
        if isinstance(self.connection, ssl.SSLSocket):
            peer = self.connection.getpeercert()
            if peer:
                subject = dict(rdn[0] for rdn in peer["subject"])["commonName"]
        seen = Seen(self.command, self.path, dict(self.headers.items()),
                    parse_qsl(body, keep_blank_values=True), self.client_address[1], subject)
        self.server.recorder.seen.append(seen)
        status, document = self.server.recorder.answer(seen)
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def log_message(self, *_args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    recorder: Recorder


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def serve(ca: CertificateAuthority) -> Iterator[Callable[..., tuple[str, Recorder]]]:
    """Start a recording server (``tls=True``: HTTPS with a certificate from ``ca``, asking
    for client certificates from ``ca`` but requiring none); yields (base URL, recorder)."""
    servers: list[_Server] = []

    def start(*, tls: bool = False, recorder: Recorder | None = None) -> tuple[str, Recorder]:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.recorder = recorder or Recorder()
        if tls:
            issued = ca.issue_server()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(issued.cert_file, issued.key_file)
            context.load_verify_locations(ca.cert_file)
            context.verify_mode = ssl.CERT_OPTIONAL
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
        servers.append(server)
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}", server.recorder

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def client(url: str, **settings: Any) -> IdpClient:
    return IdpClient(IdpConfig(url=url, token_path=TOKEN_PATH, **{"timeout": 2.0, **settings}),
                     proxies=Proxies({}))


def jwt_grant(key: Any = RSA, **kwargs: Any) -> Grant:
    auth = ClientAuth("private_key_jwt", private_key=PrivateKey.from_pem(key_pem(key)),
                      key_id=kwargs.pop("key_id", None))
    return Grant("jwt-client", auth, kwargs.pop("scope", "read"), **kwargs)


def mtls_grant(issued: Issued, **kwargs: Any) -> Grant:
    certificate = ClientCertificate.from_pem(issued.cert_pem, issued.key_pem)
    return Grant(issued.certificate.subject.rfc4514_string().split(",")[0][3:],
                 ClientAuth("tls_client_auth", certificate=certificate), **kwargs)


# --- the client assertion ------------------------------------------------------------------

@pytest.mark.parametrize(("key", "algorithm"), [(RSA, "RS256"), (EC, "ES256")])
def test_an_assertion_verifies_with_the_public_key(key: Any, algorithm: str) -> None:
    now = time.time()
    signed = client_assertion("orders", "https://idp.example/token",
                              PrivateKey.from_pem(key_pem(key)), key_id="k-1", now=now)
    header = jwt.get_unverified_header(signed)
    assert header == {"alg": algorithm, "typ": "JWT", "kid": "k-1"}
    claims = jwt.decode(signed, key.public_key(), algorithms=[algorithm],
                        audience="https://idp.example/token", issuer="orders",
                        options={"require": ["iss", "sub", "aud", "jti", "iat", "exp"]})
    assert claims["sub"] == claims["iss"] == "orders"
    assert claims["iat"] == int(now) and claims["exp"] - claims["iat"] == LIFETIME <= 60
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(signed, rsa_key().public_key() if algorithm == "RS256" else
                   ec_key().public_key(), algorithms=[algorithm],
                   audience="https://idp.example/token")


def test_every_assertion_has_its_own_jti_and_no_kid_unless_given() -> None:
    key = PrivateKey.from_pem(key_pem(EC))
    signed = [client_assertion("c", "aud", key) for _ in range(50)]
    assert len({jwt.decode(s, options={"verify_signature": False})["jti"] for s in signed}) == 50
    assert "kid" not in jwt.get_unverified_header(signed[0])
    started = time.perf_counter()
    rsa = PrivateKey.from_pem(key_pem(RSA))
    for _ in range(50):
        client_assertion("c", "aud", rsa)
    rs256 = (time.perf_counter() - started) / 50 * 1000
    started = time.perf_counter()
    for _ in range(50):
        client_assertion("c", "aud", key)
    es256 = (time.perf_counter() - started) / 50 * 1000
    report_figure(f"a client assertion costs {rs256:.2f} ms (RS256, 2048 bits), "
                  f"{es256:.2f} ms (ES256)")


# --- what each method sends --------------------------------------------------------------

def test_private_key_jwt_sends_an_assertion_for_the_url_as_called(serve) -> None:
    url, recorder = serve()
    token = client(url).fetch(jwt_grant(key_id="rsa-1", resources=("https://api.example",),
                                        audience="https://api.example"))
    assert token.access_token == "tok-auth-tests"
    seen = recorder.seen[-1]
    form = dict(seen.form)
    assert [name for name, _ in seen.form] == [
        "grant_type", "scope", "client_id", "client_assertion_type", "client_assertion",
        "resource", "audience"]
    assert (form["client_id"], form["client_assertion_type"]) == ("jwt-client", ASSERTION_TYPE)
    assert "client_secret" not in form and "Authorization" not in seen.headers
    claims = jwt.decode(form["client_assertion"], RSA.public_key(), algorithms=["RS256"],
                        audience=url + TOKEN_PATH)
    assert claims["iss"] == claims["sub"] == "jwt-client"
    assert jwt.get_unverified_header(form["client_assertion"])["kid"] == "rsa-1"
    # a new assertion for every call
    client(url).fetch(jwt_grant())
    assert dict(recorder.seen[-1].form)["client_assertion"] != form["client_assertion"]


def test_a_discovered_endpoint_gets_the_issuer_as_audience(serve) -> None:
    recorder = Recorder()
    url, _ = serve(recorder=recorder)
    issuer = url + "/realms/r"
    recorder.answer = lambda seen: (200, {"issuer": issuer, "token_endpoint": url + TOKEN_PATH}
                                    ) if seen.method == "GET" else (200, TOKEN)
    idp = IdpClient(IdpConfig(url="https://unused.example", issuer=issuer, timeout=2.0),
                    proxies=Proxies({}))
    idp.fetch(jwt_grant(EC))
    assertion = dict(recorder.seen[-1].form)["client_assertion"]
    assert jwt.decode(assertion, EC.public_key(), algorithms=["ES256"], audience=issuer)
    # A credential's own token endpoint is its assertion's audience, exactly as called.
    idp.fetch(jwt_grant(EC, token_url=url + "/other/token"))
    assertion = dict(recorder.seen[-1].form)["client_assertion"]
    assert jwt.decode(assertion, EC.public_key(), algorithms=["ES256"],
                      audience=url + "/other/token")
    assert recorder.seen[-1].path == "/other/token"


def test_secrets_go_in_the_form_or_a_basic_header(serve) -> None:
    url, recorder = serve()
    idp = client(url)
    idp.fetch(Grant("post-client", ClientAuth("client_secret_post", Secret("p@ss word")),
                    resources=("urn:a", "urn:b")))
    assert recorder.seen[-1].form == [
        ("grant_type", "client_credentials"), ("client_id", "post-client"),
        ("client_secret", "p@ss word"), ("resource", "urn:a"), ("resource", "urn:b")]
    idp.fetch_token("basic-client", "s3cret", "", auth_method="client_secret_basic")
    assert recorder.seen[-1].headers["Authorization"].startswith("Basic ")
    assert dict(recorder.seen[-1].form) == {"grant_type": "client_credentials"}


def test_a_method_without_its_proof_is_never_sent(serve) -> None:
    url, recorder = serve()
    config = IdpConfig(url=url, token_path=TOKEN_PATH, timeout=2.0, deadline=2.0,
                       failure_threshold=1)
    idp = ResilientIdp(IdpClient(config, proxies=Proxies({})), config)
    for method in ("private_key_jwt", "tls_client_auth"):
        with pytest.raises(CannotAuthenticate, match=f"{method} needs the credential's key"
                           ) as caught:
            idp.fetch_token("named", "", "", auth_method=method)
        assert caught.value.error_code == "internal_error"
    assert recorder.seen == []
    assert not idp.circuit_open  # the worker's fault, not the IdP's
    with pytest.raises(CannotAuthenticate, match="needs a client secret"):
        client(url).fetch_token("c", "", "")


def test_tls_client_auth_is_never_sent_over_http(serve, ca: CertificateAuthority) -> None:
    url, recorder = serve()
    with pytest.raises(CannotAuthenticate, match="needs an https token endpoint, not http://"):
        client(url).fetch(mtls_grant(ca.issue_client("mtls-service")))
    assert recorder.seen == []


# --- TLS: which CA, which certificate, which pool --------------------------------------------

def test_each_client_certificate_has_its_own_connections(serve,
                                                         ca: CertificateAuthority) -> None:
    url, recorder = serve(tls=True)
    idp = client(url, ca_file=str(ca.cert_file))
    first, second = ca.issue_client("first"), ca.issue_client("second")
    for grant in (mtls_grant(first), mtls_grant(second), mtls_grant(first),
                  mtls_grant(second), Grant("s", ClientAuth("client_secret_post",
                                                            Secret("secret-s")))):
        idp.fetch(grant)
    assert [seen.client_subject for seen in recorder.seen] == [
        "first", "second", "first", "second", None]
    ports = [seen.port for seen in recorder.seen]
    assert ports[0] == ports[2] and ports[1] == ports[3]  # kept alive, per certificate
    assert len({ports[0], ports[1], ports[4]}) == 3  # never shared between identities
    assert [dict(seen.form)["client_id"] for seen in recorder.seen[:2]] == ["first", "second"]
    assert "client_secret" not in dict(recorder.seen[0].form)


def test_http_and_https_never_share_a_manager(serve, ca: CertificateAuthority) -> None:
    """A plain-http call first, then an https one of the same client: the second is
    verified against idp.caFile, not against whatever the first one's manager had."""
    plain, _ = serve()
    secure, recorder = serve(tls=True)
    idp = client(secure, ca_file=str(ca.cert_file))
    grant = Grant("s", ClientAuth("client_secret_post", Secret("secret-s")))
    idp.fetch(Grant("s", grant.auth, token_url=plain + "/token"))
    assert idp.fetch(grant).access_token
    assert len(recorder.seen) == 1


def test_the_ca_a_call_trusts(serve, ca: CertificateAuthority, tmp_path: Path) -> None:
    url, _ = serve(tls=True)
    grant = Grant("s", ClientAuth("client_secret_post", Secret("secret-s")))
    with pytest.raises(IdpUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        client(url).fetch(grant)  # the system's CAs do not know the private one
    assert client(url, ca_file=str(ca.cert_file)).fetch(grant).access_token
    other = CertificateAuthority.create(tmp_path / "other", "another CA")
    with pytest.raises(IdpUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        client(url, ca_file=str(other.cert_file)).fetch(grant)
    # A credential's own CA bundle wins over idp.caFile, for its calls only.
    own = Grant("s", grant.auth, ca=CaBundle.from_pem(ca.issued.cert_pem))
    assert client(url, ca_file=str(other.cert_file)).fetch(own).access_token
    wrong = Grant("s", grant.auth, ca=CaBundle.from_pem(other.issued.cert_pem))
    with pytest.raises(IdpUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        client(url, ca_file=str(ca.cert_file)).fetch(wrong)


def test_the_host_name_is_checked_too(serve, ca: CertificateAuthority) -> None:
    url, _ = serve(tls=True)  # its certificate names localhost, 127.0.0.1 and ::1
    grant = Grant("s", ClientAuth("client_secret_post", Secret("secret-s")))
    other_name = ca.issue_server("elsewhere", dns=("elsewhere.example",), ips=())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(other_name.cert_file, other_name.key_file)
    server = _Server(("127.0.0.1", 0), _Handler)
    server.recorder = Recorder()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    try:
        with pytest.raises(IdpUnavailable, match=r"CERTIFICATE_VERIFY_FAILED.*mismatch"):
            client(f"https://127.0.0.1:{server.server_address[1]}",
                   ca_file=str(ca.cert_file)).fetch(grant)
    finally:
        server.shutdown()
        server.server_close()
    assert client(url, ca_file=str(ca.cert_file)).fetch(grant).access_token


# --- nothing secret in what an error says -----------------------------------------------------

def test_an_echoed_assertion_or_key_never_reaches_an_error(serve) -> None:
    """An IdP that quotes the whole request in its refusal: the assertion is scrubbed from
    the description and the body excerpt, as a secret is."""
    recorder = Recorder(answer=lambda seen: (400, {
        "error": "invalid_client",
        "error_description": "bad: " + "&".join(f"{k}={v}" for k, v in seen.form)}))
    url, _ = serve(recorder=recorder)
    key_text = key_pem(RSA).decode()
    with pytest.raises(IdpRefused) as caught:
        client(url).fetch(jwt_grant())
    assertion = dict(recorder.seen[-1].form)["client_assertion"]
    remember_secret(assertion, key_text)
    error = caught.value
    for text in (str(error), error.description, error.body, error.reason):
        assert assertion not in text
        assert assertion.split(".")[2] not in text  # not even the signature
    assert "********" in error.description


# --- the proxy variables ------------------------------------------------------------------------

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                   "all_proxy", "NO_PROXY", "no_proxy", "REQUEST_METHOD")


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Proxies]:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def read(**variables: str) -> Proxies:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
        return Proxies.from_environment()

    return read


def test_proxy_variables_upper_and_lower_case(proxy_env) -> None:
    proxies = proxy_env(HTTPS_PROXY="http://upper:3128", http_proxy="proxy.internal:8080")
    assert proxies.route("https://idp.example/token").url == "http://upper:3128"
    assert proxies.route("http://idp.example/token").url == "http://proxy.internal:8080"
    both = proxy_env(https_proxy="http://lower:3128")  # lower case wins, as curl reads it
    assert both.route("https://idp.example/token").url == "http://lower:3128"


def test_all_proxy_and_no_proxy(proxy_env) -> None:
    proxies = proxy_env(ALL_PROXY="http://all:1080",
                        NO_PROXY="idp.internal, .corp.example,127.0.0.1,::1,[fd00::1],"
                                 "svc.example:8443")
    assert proxies.route("https://idp.example/t").url == "http://all:1080"
    for url in ("https://idp.internal/t", "https://a.b.corp.example/t",
                "https://corp.example/t", "http://127.0.0.1:9400/t", "http://[::1]:9400/t",
                "https://[fd00::1]/t", "https://svc.example:8443/t"):
        assert proxies.route(url) is None, url
    assert proxies.route("https://svc.example/t") is not None
    assert proxies.route("https://xidp.internal/t") is not None
    assert proxy_env(no_proxy="*").route("https://idp.example/t") is None


def test_proxy_credentials_are_taken_out_of_the_url(proxy_env) -> None:
    remember_secret("p@ss:w0rd/x")
    proxies = proxy_env(HTTPS_PROXY="http://proxy-user:p%40ss%3Aw0rd%2Fx@[::1]:3128/")
    route = proxies.route("https://idp.example/token")
    assert route is not None
    assert route.url == "http://[::1]:3128"
    assert route.headers == {"proxy-authorization": "Basic cHJveHktdXNlcjpwQHNzOncwcmQveA=="}
    assert route.shown == "http://[::1]:3128 (with credentials)"
    assert "p@ss:w0rd/x" in route.hidden
    for text in (repr(proxies), repr(route), route.shown):
        assert "w0rd" not in text and "cHJveHkt" not in text


def test_a_bad_proxy_variable_stops_the_start(proxy_env, monkeypatch) -> None:
    proxy_env()
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:secret-pw@proxy:1080")
    with pytest.raises(ConfigError) as caught:
        IdpClient(IdpConfig(url="https://idp.example"))
    assert str(caught.value) == (
        "invalid config HTTPS_PROXY (from env HTTPS_PROXY or https_proxy): must be an "
        "http:// or https:// proxy URL with a host (got scheme 'socks5')")
    monkeypatch.setenv("HTTPS_PROXY", "http://u:secret-pw@proxy:port")
    with pytest.raises(ConfigError, match="not a valid proxy URL") as caught:
        IdpClient(IdpConfig(url="https://idp.example"))
    assert "secret-pw" not in str(caught.value)
