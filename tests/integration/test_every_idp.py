"""The worker's IdP side against the real dev IdP (oidc-provider) in its optional modes:
private_key_jwt and tls_client_auth credentials read from a credentials directory, verified
by the IdP itself; resource indicators; a second IdP named by a credential's token_url; an
HTTPS IdP on a private CA; the calls through a CONNECT proxy; IPv6 for the IdP and for
NATS; at the IdpClient level, and through a worker (named and inline requests, their cache
keys, a second IdP), plus a worker on ``nats://[::1]:PORT``.

Every private key, certificate key, assertion and proxy password used here is registered
with the suite's secret scan: none may reach a log line."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import urllib3

from tests import ROOT
from tests.conftest import CAPTURED_LOG_LINES, remember_secret, report_figure
from tests.integration.connect_proxy import ConnectProxy
from tests.integration.helpers import DEMO, TEST_CLIENTS, WorkerProcess, make_config
from tests.integration.idp_modes import ModalIdp
from tests.integration.ipv6 import (
    NatsServerV6,
    ipv6_loopback_available,
    private_hosts_supported,
    with_private_hosts,
)
from tests.integration.processes import IdpServer
from tests.kubelet_volume import KubeletVolume
from tests.pki import CertificateAuthority, ec_key, key_pem, public_jwk, rsa_key
from token_worker import TokenClient
from token_worker.config import IdpConfig, load_config
from token_worker.errors import (
    CannotAuthenticate,
    IdpRefused,
    IdpUnavailable,
    TokenRequestFailed,
)
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import ResilientIdp
from token_worker.secret import Secret
from token_worker.serve.credential_folder import Credential
from token_worker.serve.credentials import CredentialStore
from token_worker.tokens.grant import ClientAuth, Grant
from token_worker.tokens.keys import ClientCertificate, PrivateKey

RESOURCE = "https://api.example"
OTHER_RESOURCE = "https://other.example"
SECRET_CLIENT = {"client_id": "secret-service", "client_secret": "secret-for-every-idp-tests",
                 "token_endpoint_auth_method": "client_secret_post"}
remember_secret(SECRET_CLIENT["client_secret"])
needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1)")


class Keys:
    """The keys and certificates of this module, every private part registered with the
    secret scan."""

    def __init__(self, directory: Path) -> None:
        self.rsa, self.ec, self.unknown = rsa_key(), ec_key(), rsa_key()
        self.ca = CertificateAuthority.create(directory / "ca")
        self.server = self.ca.issue_server()
        self.client = self.ca.issue_client("mtls-service")
        self.stranger = self.ca.issue_client("someone-else")
        for key in (self.rsa, self.ec, self.unknown, self.client.key, self.stranger.key,
                    self.server.key, self.ca.issued.key):
            pem = key_pem(key).decode()
            remember_secret(pem, *[line for line in pem.splitlines() if "-----" not in line])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("every-idp"))


def clients(keys: Keys) -> list[dict[str, Any]]:
    return [
        SECRET_CLIENT,
        {"client_id": "jwt-rsa", "token_endpoint_auth_method": "private_key_jwt",
         "jwks": {"keys": [public_jwk(keys.rsa, kid="rsa-1")]}},
        {"client_id": "jwt-ec", "token_endpoint_auth_method": "private_key_jwt",
         "jwks": {"keys": [public_jwk(keys.ec, kid="ec-1")]}},
        {"client_id": "mtls-service", "token_endpoint_auth_method": "tls_client_auth",
         "tls_client_auth_subject_dn": keys.client.subject_dn},
    ]


@pytest.fixture(scope="module")
def idp(keys: Keys) -> Iterator[ModalIdp]:
    """HTTPS on the private CA, tls_client_auth, two resources, assertions at most 60 s."""
    with ModalIdp(clients=clients(keys), tls=keys.server, ca_file=keys.ca.cert_file,
                  client_ca=keys.ca.cert_file, resources=f"{RESOURCE},{OTHER_RESOURCE}",
                  assertion_max_age=60) as server:
        yield server


@pytest.fixture(scope="module")
def second_idp(keys: Keys) -> Iterator[ModalIdp]:
    """Another IdP (plain http, another realm): what a credential's token_url names."""
    with ModalIdp(clients=clients(keys)[:3], realm="second", assertion_max_age=60) as server:
        yield server


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def client_for(server: ModalIdp, keys: Keys, **settings: Any) -> IdpClient:
    """An IdpClient for ``server`` trusting the private CA (``ca_file=None``: not)."""
    ca_file = settings.pop("ca_file", str(keys.ca.cert_file))
    return IdpClient(IdpConfig(url=server.url, token_path=server.token_path, timeout=5.0,
                               ca_file=ca_file, **settings))


def credentials(tmp_path: Path, files: dict[str, str | bytes]) -> CredentialStore:
    """A kubelet-style credentials directory holding ``files`` (``<name>/<file>``)."""
    volume = KubeletVolume(tmp_path / "credentials")
    volume.write({path: value.decode() if isinstance(value, bytes) else value
                  for path, value in files.items()})
    return CredentialStore(volume.root, start=False)


def named(store: CredentialStore, name: str) -> Credential:
    credential = store.get(name)
    assert credential is not None, store.problems()
    return credential


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# --- private_key_jwt -----------------------------------------------------------------------

def test_private_key_jwt_credentials_get_tokens_the_idp_verified(idp: ModalIdp, keys: Keys,
                                                                 tmp_path: Path) -> None:
    store = credentials(tmp_path, {
        "rsa/client_id": "jwt-rsa", "rsa/auth_method": "private_key_jwt",
        "rsa/private_key": key_pem(keys.rsa), "rsa/key_id": "rsa-1",
        "ec/client_id": "jwt-ec", "ec/auth_method": "private_key_jwt",
        "ec/private_key": key_pem(keys.ec)})
    idp.reset()
    client = client_for(idp, keys)
    timings = []
    for name, algorithm in (("rsa", "RS256"), ("ec", "ES256")):
        started = time.perf_counter()
        token = client.fetch(named(store, name).grant("", "client_secret_post"))
        timings.append(f"{algorithm} {(time.perf_counter() - started) * 1000:.1f} ms")
        assert token.token_type == "Bearer" and token.access_token
        remember_secret(token.access_token)
        last = idp.stats()["last_token_request"]
        assert (last["status"], last["auth_method"], last["presented"]) == (
            200, "private_key_jwt", "client_assertion")
        header, claims = last["assertion"]["header"], last["assertion"]["claims"]
        assert header["alg"] == algorithm
        assert header.get("kid") == ("rsa-1" if name == "rsa" else None)
        assert claims["iss"] == claims["sub"] == last["client_id"]
        assert claims["aud"] == idp.token_url  # exactly as called
        assert 0 < claims["exp"] - claims["iat"] <= 60
    stats = idp.stats()
    assert stats["token_calls_by_auth_method"] == {"private_key_jwt": 2}
    report_figure("private_key_jwt token from oidc-provider over HTTPS (first call, TLS "
                  "handshake included): " + ", ".join(timings))


def test_a_key_the_idp_does_not_know_is_invalid_client(idp: ModalIdp, keys: Keys,
                                                       tmp_path: Path) -> None:
    """The same client id with another key (and the right key id): refused by the IdP,
    and neither the key nor the assertion shows in the error."""
    store = credentials(tmp_path, {
        "stolen/client_id": "jwt-rsa", "stolen/auth_method": "private_key_jwt",
        "stolen/private_key": key_pem(keys.unknown), "stolen/key_id": "rsa-1"})
    idp.reset()
    with pytest.raises(IdpRefused) as caught:
        client_for(idp, keys).fetch(named(store, "stolen").grant(""))
    assert (caught.value.error_code, caught.value.status) == ("invalid_client", 401)
    last = idp.stats()["last_token_request"]
    assert last["error_detail"] == "signature verification failed"
    assert last["assertion"]["header"]["kid"] == "rsa-1"
    text = f"{caught.value} {caught.value.body} {caught.value.description}"
    assert "BEGIN" not in text and "eyJ" not in text


def test_the_discovered_issuer_is_the_audience(idp: ModalIdp, keys: Keys) -> None:
    client = IdpClient(IdpConfig(url="https://unused.example", issuer=idp.issuer, timeout=5.0,
                                 ca_file=str(keys.ca.cert_file)))
    grant = Grant("jwt-ec", ClientAuth("private_key_jwt", private_key=_key(keys.ec)))
    assert client.fetch(grant).access_token
    last = idp.stats()["last_token_request"]
    assert last["status"] == 200 and last["assertion"]["claims"]["aud"] == idp.issuer


def _key(key: Any) -> PrivateKey:
    return PrivateKey.from_pem(key_pem(key))


# --- tls_client_auth -------------------------------------------------------------------------

def test_a_tls_client_auth_credential_gets_a_token(idp: ModalIdp, keys: Keys,
                                                   tmp_path: Path) -> None:
    store = credentials(tmp_path, {
        "mtls/client_id": "mtls-service", "mtls/auth_method": "tls_client_auth",
        "mtls/tls.crt": keys.client.cert_pem, "mtls/tls.key": keys.client.key_pem,
        "mtls/ca.crt": keys.ca.issued.cert_pem,
        "other/client_id": "mtls-service", "other/auth_method": "tls_client_auth",
        "other/tls.crt": keys.stranger.cert_pem, "other/tls.key": keys.stranger.key_pem,
        "other/ca.crt": keys.ca.issued.cert_pem})
    idp.reset()
    client = client_for(idp, keys, ca_file=None)  # the credential's ca.crt is its trust
    token = client.fetch(named(store, "mtls").grant("", "client_secret_post"))
    remember_secret(token.access_token)
    last = idp.stats()["last_token_request"]
    assert (last["status"], last["auth_method"], last["presented"]) == (
        200, "tls_client_auth", "none")
    assert last["client_cert"] is True and last["client_cert_authorized"] is True
    assert last["client_cert_subject"] == keys.client.subject_dn
    # Another certificate for the same client id: refused, never the first one's pool.
    with pytest.raises(IdpRefused, match="invalid_client"):
        client.fetch(named(store, "other").grant(""))
    assert idp.stats()["last_token_request"]["error_detail"] == (
        "certificate subject value does not match the registered one")
    # A plain-http endpoint never sees the certificate.
    with pytest.raises(CannotAuthenticate, match="https"):
        client.fetch(Grant("mtls-service", named(store, "mtls").proof,
                           token_url="http://127.0.0.1:9/token"))


# --- resources, audience, a second IdP -------------------------------------------------------

def test_a_resource_gives_a_jwt_for_it(idp: ModalIdp, keys: Keys, tmp_path: Path) -> None:
    store = credentials(tmp_path, {
        "api/client_id": "jwt-ec", "api/auth_method": "private_key_jwt",
        "api/private_key": key_pem(keys.ec), "api/resource": RESOURCE + "\n",
        "secret/client_id": SECRET_CLIENT["client_id"],
        "secret/client_secret": SECRET_CLIENT["client_secret"],
        "secret/resource": OTHER_RESOURCE, "secret/audience": "https://audience.example"})
    client = client_for(idp, keys)
    token = client.fetch(named(store, "api").grant("read"))
    remember_secret(token.access_token)
    http = urllib3.PoolManager(ca_certs=str(keys.ca.cert_file))
    jwks = json.loads(http.request("GET", idp.issuer + "/jwks").data)
    header = jwt.get_unverified_header(token.access_token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(token.access_token, jwt.PyJWK(key).key, algorithms=["RS256"],
                        audience=RESOURCE, issuer=idp.issuer)
    assert claims["aud"] == RESOURCE and claims["client_id"] == "jwt-ec"
    assert token.scope == "read"
    other = client.fetch(named(store, "secret").grant(""))
    assert claims_of(other.access_token)["aud"] == OTHER_RESOURCE
    last = idp.stats()["last_token_request"]
    assert (last["resource"], last["audience"]) == ([OTHER_RESOURCE], "https://audience.example")
    # Two resources are two grants (two cache entries); the same one twice is one.
    one = named(store, "api").grant("read")
    assert one.digest() == Grant(one.client_id, one.auth, "read",
                                 resources=(RESOURCE, RESOURCE)).digest()
    assert one.digest() != Grant(one.client_id, one.auth, "read",
                                 resources=(OTHER_RESOURCE,)).digest()


def test_a_token_url_names_another_idp(idp: ModalIdp, second_idp: ModalIdp, keys: Keys,
                                       tmp_path: Path) -> None:
    store = credentials(tmp_path, {
        "elsewhere/client_id": "jwt-rsa", "elsewhere/auth_method": "private_key_jwt",
        "elsewhere/private_key": key_pem(keys.rsa), "elsewhere/key_id": "rsa-1",
        "elsewhere/token_url": second_idp.token_url,
        "here/client_id": "jwt-rsa", "here/auth_method": "private_key_jwt",
        "here/private_key": key_pem(keys.rsa), "here/key_id": "rsa-1"})
    idp.reset()
    second_idp.reset()
    client = client_for(idp, keys)
    elsewhere, here = named(store, "elsewhere"), named(store, "here")
    assert client.endpoint(elsewhere.grant("")) == second_idp.token_url
    assert client.fetch(elsewhere.grant("")).access_token
    assert client.fetch(here.grant("")).access_token
    assert second_idp.stats()["token_calls"] == idp.stats()["token_calls"] == 1
    aud = second_idp.stats()["last_token_request"]["assertion"]["claims"]["aud"]
    assert aud == second_idp.token_url and "/realms/second/" in aud


# --- a private CA, and the proxy -----------------------------------------------------------------

def test_an_https_idp_on_a_private_ca_needs_idp_ca_file(idp: ModalIdp, keys: Keys,
                                                        no_proxy_env) -> None:
    env = {"IDP_URL": idp.url, "IDP_TOKEN_PATH": idp.token_path,
           "IDP_CA_FILE": str(keys.ca.cert_file), "IDP_DEADLINE": "3", "IDP_TIMEOUT": "2"}
    with_ca = load_config([], env).idp
    assert with_ca.ca_file == str(keys.ca.cert_file)
    token = ResilientIdp(IdpClient(with_ca), with_ca).fetch_token(
        SECRET_CLIENT["client_id"], SECRET_CLIENT["client_secret"], "")
    remember_secret(token.access_token)
    without = load_config([], {k: v for k, v in env.items() if k != "IDP_CA_FILE"}).idp
    idp.reset()
    with pytest.raises(IdpUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        ResilientIdp(IdpClient(without), without).fetch_token(
            SECRET_CLIENT["client_id"], SECRET_CLIENT["client_secret"], "")
    assert idp.stats()["token_calls"] == 0  # nothing reached the IdP unverified


def test_idp_calls_go_through_the_proxy_unless_no_proxy_names_the_host(
        idp: ModalIdp, second_idp: ModalIdp, keys: Keys, no_proxy_env,
        tmp_path: Path) -> None:
    password = "proxy-p@ss:w0rd-every-idp"
    basic = base64.b64encode(f"proxy-user:{password}".encode()).decode()
    remember_secret(password, basic)
    store = credentials(tmp_path, {
        "jwt/client_id": "jwt-ec", "jwt/auth_method": "private_key_jwt",
        "jwt/private_key": key_pem(keys.ec),
        "mtls/client_id": "mtls-service", "mtls/auth_method": "tls_client_auth",
        "mtls/tls.crt": keys.client.cert_pem, "mtls/tls.key": keys.client.key_pem})
    idp.reset()  # (the helper's own requests read the proxy variables too: before them)
    with ConnectProxy(username="proxy-user", password=password) as proxy:
        no_proxy_env.setenv("https_proxy", proxy.url_with_credentials)
        no_proxy_env.setenv("HTTP_PROXY", proxy.url_with_credentials)
        client = client_for(idp, keys)
        for name in ("jwt", "jwt", "mtls"):
            assert client.fetch(named(store, name).grant("")).access_token
        assert client.fetch(Grant(SECRET_CLIENT["client_id"], ClientAuth(
            "client_secret_post", Secret(SECRET_CLIENT["client_secret"])),
            token_url=second_idp.token_url)).access_token
        # https: one tunnel per TLS identity (the assertion calls share one, the
        # certificate has its own), kept alive; http: forwarded, per request.
        assert proxy.calls_to("127.0.0.1", idp.port) == 2, proxy.requests
        assert proxy.tunnels == 2 and proxy.forwarded == 1 and proxy.refused_auth == 0
        no_proxy_env.setenv("no_proxy", "*")  # the helper's stats call goes direct
        assert idp.stats()["token_calls"] == 3
        assert idp.stats()["last_token_request"]["client_cert_authorized"] is True
        lines = [line for line in CAPTURED_LOG_LINES if "go through a proxy" in line]
        assert lines and "with credentials" in lines[-1] and "w0rd" not in lines[-1]
        # NO_PROXY naming the host: straight to the IdP.
        no_proxy_env.delenv("no_proxy")
        no_proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
        direct = client_for(idp, keys)
        before = proxy.tunnels + proxy.forwarded
        assert direct.fetch(named(store, "jwt").grant("")).access_token
        assert proxy.tunnels + proxy.forwarded == before
        assert not [line for line in proxy.log if password in line or basic in line]


def test_a_proxy_refusing_the_credentials_is_an_error_without_them(
        idp: ModalIdp, keys: Keys, no_proxy_env) -> None:
    with ConnectProxy(username="proxy-user", password="the-right-one") as proxy:
        wrong = proxy.url_with_credentials.replace("the-right-one", "wrong-proxy-password")
        remember_secret("wrong-proxy-password")
        no_proxy_env.setenv("HTTPS_PROXY", wrong)
        with pytest.raises(IdpUnavailable) as caught:
            client_for(idp, keys).fetch(Grant(SECRET_CLIENT["client_id"], ClientAuth(
                "client_secret_post", Secret(SECRET_CLIENT["client_secret"]))))
        assert "407" in str(caught.value) or "Proxy" in str(caught.value)
        assert "wrong-proxy-password" not in str(caught.value)
        assert proxy.refused_auth == 1


# --- IPv6 ------------------------------------------------------------------------------------

@needs_ipv6
def test_an_idp_on_ipv6_loopback(keys: Keys) -> None:
    with ModalIdp(clients=clients(keys), host="::1", tls=keys.server,
                  ca_file=keys.ca.cert_file, client_ca=keys.ca.cert_file) as v6:
        assert v6.url.startswith("https://[::1]:")
        client = client_for(v6, keys)
        grant = Grant("jwt-rsa", ClientAuth("private_key_jwt", private_key=_key(keys.rsa),
                                            key_id="rsa-1"))
        assert client.fetch(grant).access_token
        assert v6.stats()["last_token_request"]["assertion"]["claims"]["aud"] == v6.token_url
        assert client.fetch(Grant("mtls-service", ClientAuth(
            "tls_client_auth", certificate=named_certificate(keys)))).access_token
        with pytest.raises(IdpRefused) as caught:
            client.fetch(Grant("jwt-rsa", ClientAuth("private_key_jwt",
                                                     private_key=_key(keys.unknown))))
        assert (caught.value.error_code, caught.value.status) == ("invalid_client", 401)


def named_certificate(keys: Keys) -> ClientCertificate:
    return ClientCertificate.from_pem(keys.client.cert_pem, keys.client.key_pem)


@pytest.fixture(scope="module")
def plain_idp() -> Iterator[IdpServer]:
    server = IdpServer(clients=TEST_CLIENTS).start()
    try:
        yield server
    finally:
        server.stop()


@needs_ipv6
def test_a_worker_on_nats_ipv6_loopback_serves(plain_idp: IdpServer, start_worker) -> None:
    with NatsServerV6() as nats:
        worker = start_worker(make_config(nats.url, plain_idp.url))
        assert worker.is_ready
        with TokenClient(nats.url) as requester:
            token = requester.get_token(*DEMO)
        assert token.token_type == "Bearer"
        remember_secret(token.access_token)


@needs_ipv6
@pytest.mark.skipif(not private_hosts_supported(), reason="needs unshare -m (root)")
def test_bin_token_worker_reaches_a_name_that_resolves_only_to_ipv6(
        plain_idp: IdpServer, tmp_path: Path) -> None:
    """bin/token-worker with ``NATS_URL=nats://nats6.test:PORT`` in a process whose hosts
    file maps that name to ::1 only (and no DNS): it connects and serves."""
    with NatsServerV6() as nats:
        command = with_private_hosts([sys.executable, str(ROOT / "bin" / "token-worker")],
                                     {"nats6.test": "::1"}, tmp_path)
        env = {"NATS_URL": f"nats://nats6.test:{nats.port}", "IDP_URL": plain_idp.url,
               "RECONNECT_WAIT": "0.2", "MAX_RECONNECT": "5", "LOG_LEVEL": "info",
               "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "WORKER_NAME_SUFFIX": "v6"}
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        lines: list[str] = []

        def collect() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                lines.append(line.rstrip("\n"))
                CAPTURED_LOG_LINES.append(line.rstrip("\n"))

        reader = threading.Thread(target=collect, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 20
            while not any('"serving"' in line for line in lines):
                assert process.poll() is None, lines
                assert time.monotonic() < deadline, lines
                time.sleep(0.05)
            connected = next(json.loads(line) for line in lines if '"nats connected"' in line)
            assert connected["server"] == f"nats://nats6.test:{nats.port}"
            with TokenClient(nats.url) as requester:
                token = requester.get_token(*DEMO)
            remember_secret(token.access_token)
            assert token.token_type == "Bearer"
        finally:
            process.terminate()
            assert process.wait(15) == 0
            reader.join(5)


@pytest.mark.parametrize(("value", "problem"), [
    ("/no/such/ca.pem", "cannot read the CA file '/no/such/ca.pem': No such file or directory"),
    ("/etc/hostname", "'/etc/hostname' holds no PEM certificate TLS can load"),
])
def test_a_bad_ca_file_stops_the_start_naming_the_setting(value: str, problem: str) -> None:
    worker = WorkerProcess(env={"IDP_CA_FILE": value, "NATS_URL": "nats://127.0.0.1:9"})
    assert worker.finish() == 2
    assert worker.lines == [f"token-worker: invalid config idp.caFile (from env IDP_CA_FILE): "
                            f"{problem}"]


def test_a_bad_proxy_variable_stops_the_start(no_proxy_env) -> None:
    remember_secret("proxy-secret-never-shown")
    worker = WorkerProcess(env={"HTTPS_PROXY": "socks5://u:proxy-secret-never-shown@p:1080",
                                "NATS_URL": "nats://127.0.0.1:9"})
    assert worker.finish() == 2
    assert worker.lines[-1] == (
        "token-worker: invalid config HTTPS_PROXY (from env HTTPS_PROXY or https_proxy): "
        "must be an http:// or https:// proxy URL with a host (got scheme 'socks5')")
    assert "proxy-secret-never-shown" not in "\n".join(worker.lines)


# --- through a worker: named and inline requests, the cache keys, a second endpoint -------

def worker_config(nats_url: str, server: ModalIdp, keys: Keys, directory: Path | None,
                  **settings: Any) -> Any:
    from token_worker.config import CredentialsConfig

    config = make_config(nats_url, server.url,
                         idp={"token_path": server.token_path, "timeout": 5.0,
                              "ca_file": str(keys.ca.cert_file)}, **settings)
    if directory is None:
        return config
    return dataclasses.replace(config, credentials=CredentialsConfig(directory=str(directory)))


def volume_of(tmp_path: Path, files: dict[str, str | bytes]) -> Path:
    volume = KubeletVolume(tmp_path / "credentials")
    volume.write({path: value.decode() if isinstance(value, bytes) else value
                  for path, value in files.items()})
    return volume.root


def test_a_worker_serves_key_and_certificate_credentials_and_never_mixes_their_tokens(
        idp: ModalIdp, keys: Keys, tmp_path: Path, nats_server: Any, start_worker: Any,
        no_proxy_env: pytest.MonkeyPatch) -> None:
    """private_key_jwt and tls_client_auth credentials asked by name over NATS; then a
    credential for the same client id with a key the IdP does not know: invalid_client,
    never the first credential's cached token (another key is another cache key)."""
    directory = volume_of(tmp_path, {
        "rsa/client_id": "jwt-rsa", "rsa/auth_method": "private_key_jwt",
        "rsa/private_key": key_pem(keys.rsa), "rsa/key_id": "rsa-1",
        "stolen/client_id": "jwt-rsa", "stolen/auth_method": "private_key_jwt",
        "stolen/private_key": key_pem(keys.unknown), "stolen/key_id": "rsa-1",
        "mtls/client_id": "mtls-service", "mtls/auth_method": "tls_client_auth",
        "mtls/tls.crt": keys.client.cert_pem, "mtls/tls.key": keys.client.key_pem})
    start_worker(worker_config(nats_server.url, idp, keys, directory))
    idp.reset()
    with TokenClient(nats_server.url, cache=False) as client:
        rsa = client.get_token(credential="rsa", scope="")
        assert idp.stats()["last_token_request"]["auth_method"] == "private_key_jwt"
        mtls = client.get_token(credential="mtls", scope="")
        assert idp.stats()["last_token_request"]["auth_method"] == "tls_client_auth"
        again = client.get_token(credential="rsa", scope="")  # the worker's cache
        with pytest.raises(TokenRequestFailed) as stolen:
            client.get_token(credential="stolen", scope="")
    for token in (rsa, mtls):
        remember_secret(token.access_token)
    assert again.access_token == rsa.access_token
    assert stolen.value.error_code == "invalid_client"
    assert idp.stats()["token_calls"] == 3  # rsa, mtls, stolen: the repeat was cached


def test_resources_are_sent_named_and_inline_and_key_the_cache(
        idp: ModalIdp, keys: Keys, tmp_path: Path, nats_server: Any, start_worker: Any,
        no_proxy_env: pytest.MonkeyPatch) -> None:
    directory = volume_of(tmp_path, {
        "api/client_id": SECRET_CLIENT["client_id"],
        "api/client_secret": SECRET_CLIENT["client_secret"], "api/resource": RESOURCE + "\n"})
    start_worker(worker_config(nats_server.url, idp, keys, directory))
    idp.reset()
    with TokenClient(nats_server.url, cache=False) as client:
        named_token = client.get_token(credential="api", scope="")
        inline = {"client_id": SECRET_CLIENT["client_id"],
                  "client_secret": SECRET_CLIENT["client_secret"], "scope": ""}
        first = client.request({**inline, "resource": RESOURCE})
        repeat = client.request({**inline, "resource": [RESOURCE, RESOURCE]})
        other = client.request({**inline, "resource": OTHER_RESOURCE})
        refused = client.request({**inline, "resource": "not a uri"})
    for token in (named_token.access_token, first["access_token"], other["access_token"]):
        remember_secret(token)
    assert claims_of(named_token.access_token)["aud"] == RESOURCE
    assert claims_of(first["access_token"])["aud"] == RESOURCE
    assert claims_of(other["access_token"])["aud"] == OTHER_RESOURCE
    # The same client, secret, scope and resource is the same token, named or inline; the
    # same resource twice is one resource; another resource is another cache entry.
    assert (first["token_source"], repeat["token_source"]) == ("cache", "cache")
    assert other["token_source"] == "idp"
    assert refused["error_code"] == "invalid_request" and "URI" in refused["error"]
    assert idp.stats()["token_calls"] == 2


def test_a_credential_with_a_token_url_is_served_by_its_own_idp(
        idp: ModalIdp, second_idp: ModalIdp, keys: Keys, tmp_path: Path, nats_server: Any,
        start_worker: Any, no_proxy_env: pytest.MonkeyPatch) -> None:
    directory = volume_of(tmp_path, {
        "elsewhere/client_id": "jwt-ec", "elsewhere/auth_method": "private_key_jwt",
        "elsewhere/private_key": key_pem(keys.ec), "elsewhere/token_url": second_idp.token_url})
    start_worker(worker_config(nats_server.url, idp, keys, directory))
    idp.reset()
    second_idp.reset()
    with TokenClient(nats_server.url, cache=False) as client:
        there = client.get_token(credential="elsewhere", scope="")
        here = client.get_token(SECRET_CLIENT["client_id"], SECRET_CLIENT["client_secret"],
                                scope="")
    remember_secret(there.access_token, here.access_token)
    assert second_idp.stats()["token_calls"] == 1
    assert second_idp.stats()["last_token_request"]["assertion"]["claims"]["aud"] == (
        second_idp.token_url)
    assert idp.stats()["token_calls"] == 1  # the inline request used idp.url
