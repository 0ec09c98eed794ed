"""The test infrastructure for keys, certificates, resources, private CAs, proxies and IPv6,
proven with plain Python clients (urllib3, PyJWT, sockets, nats-py) against the real dev
IdP (oidc-provider) and nats-server: what the worker's tests for those features will
build on. tests/idp_features.md tells the recipes these tests check.

PyJWT signs the client assertions here; where it is not installed those tests skip."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from urllib3.util import make_headers

from tests.integration.connect_proxy import ConnectProxy, is_loopback
from tests.integration.idp_modes import ModalIdp
from tests.integration.ipv6 import (
    NatsServerV6,
    connect_any,
    ipv6_loopback_available,
    private_hosts_supported,
    with_private_hosts,
)
from tests.pki import CertificateAuthority, Issued, ec_key, key_pem, public_jwk, rsa_key

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SECRET_CLIENT = {"client_id": "demo-service", "client_secret": "demo-secret-for-idp-features",
                 "token_endpoint_auth_method": "client_secret_post"}
SECRET_FORM = {"grant_type": "client_credentials", "client_id": SECRET_CLIENT["client_id"],
               "client_secret": SECRET_CLIENT["client_secret"]}
RESOURCE = "https://api.example"
OTHER_RESOURCE = "https://other.example"

needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1)")


# --- the PKI, the keys and the IdPs, once for the module ---------------------------------

class Pki:
    def __init__(self, directory: Path) -> None:
        self.ca = CertificateAuthority.create(directory / "ca")
        self.server = self.ca.issue_server()
        self.client = self.ca.issue_client(
            "mtls-service", dns=("mtls.svc.example",),
            uris=("spiffe://example.org/ns/tw/sa/worker",), emails=("worker@example.org",))
        self.stranger = self.ca.issue_client("someone-else")
        self.rogue_ca = CertificateAuthority.create(directory / "rogue", "a CA nobody trusts")
        self.rogue = self.rogue_ca.issue_client("mtls-service")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa_key(), "ec": ec_key(), "unknown": rsa_key()}


def feature_clients(pki: Pki, keys: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        SECRET_CLIENT,
        {"client_id": "jwt-rsa", "token_endpoint_auth_method": "private_key_jwt",
         "jwks": {"keys": [public_jwk(keys["rsa"], kid="rsa-1")]}},
        {"client_id": "jwt-ec", "token_endpoint_auth_method": "private_key_jwt",
         "jwks": {"keys": [public_jwk(keys["ec"], kid="ec-1")]}},
        {"client_id": "mtls-service", "token_endpoint_auth_method": "tls_client_auth",
         "tls_client_auth_subject_dn": pki.client.subject_dn},
        {"client_id": "mtls-dns", "token_endpoint_auth_method": "tls_client_auth",
         "tls_client_auth_san_dns": "mtls.svc.example"},
        {"client_id": "mtls-uri", "token_endpoint_auth_method": "tls_client_auth",
         "tls_client_auth_san_uri": "spiffe://example.org/ns/tw/sa/worker"},
        {"client_id": "mtls-email", "token_endpoint_auth_method": "tls_client_auth",
         "tls_client_auth_san_email": "worker@example.org"},
    ]


@pytest.fixture(scope="module")
def idp(pki: Pki, keys: dict[str, Any]) -> Iterator[ModalIdp]:
    """HTTPS (private CA), tls_client_auth, two resources: the IdP of most tests here."""
    with ModalIdp(clients=feature_clients(pki, keys), tls=pki.server, ca_file=pki.ca.cert_file,
                  client_ca=pki.ca.cert_file, resources=f"{RESOURCE},{OTHER_RESOURCE}") as server:
        yield server


@pytest.fixture(scope="module")
def plain_idp(pki: Pki, keys: dict[str, Any]) -> Iterator[ModalIdp]:
    """Plain http, no resources (oidc-provider's default), assertions at most 60 s ahead."""
    with ModalIdp(clients=feature_clients(pki, keys)[:3], assertion_max_age=60) as server:
        yield server


@pytest.fixture
def jwt() -> Any:
    return pytest.importorskip("jwt", reason="PyJWT signs the client assertions")


def pool(pki: Pki, client: Issued | None = None, **kwargs: Any) -> urllib3.PoolManager:
    """A client trusting only the private CA, presenting ``client``'s certificate if given."""
    if client is not None:
        kwargs.update(cert_file=str(client.cert_file), key_file=str(client.key_file))
    return urllib3.PoolManager(ca_certs=str(pki.ca.cert_file), retries=False, **kwargs)


def post(http: urllib3.PoolManager, url: str, form: dict[str, str] | list[tuple[str, str]]
         ) -> tuple[int, dict[str, Any]]:
    answer = http.request("POST", url, fields=form, encode_multipart=False)
    return answer.status, json.loads(answer.data)


def assertion(jwt: Any, client_id: str, key: Any, algorithm: str, audience: Any, *,
              lifetime: int = 60, jti: str | None = None, kid: str | None = None) -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience,
              "jti": jti or str(uuid.uuid4()), "iat": now, "exp": now + lifetime}
    return str(jwt.encode(claims, key_pem(key), algorithm=algorithm,
                          headers={"kid": kid} if kid else None))


def assertion_form(client_id: str, signed: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client_id,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}


def unverified_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# --- private_key_jwt ----------------------------------------------------------------------

def test_private_key_jwt_rs256_and_es256(idp: ModalIdp, pki: Pki, keys: dict[str, Any],
                                          jwt: Any) -> None:
    http = pool(pki)
    idp.reset()
    for client_id, key, algorithm, kid in (("jwt-rsa", keys["rsa"], "RS256", "rsa-1"),
                                           ("jwt-rsa", keys["rsa"], "PS256", None),
                                           ("jwt-ec", keys["ec"], "ES256", "ec-1")):
        signed = assertion(jwt, client_id, key, algorithm, idp.token_url, kid=kid)
        status, body = post(http, idp.token_url, assertion_form(client_id, signed))
        assert status == 200, body
        assert body["token_type"] == "Bearer"
    stats = idp.stats()
    assert stats["token_calls"] == 3
    assert stats["token_calls_by_auth_method"] == {"private_key_jwt": 3}
    last = stats["last_token_request"]
    assert last["auth_method"] == "private_key_jwt"
    assert last["presented"] == "client_assertion"
    assert last["assertion"]["header"]["alg"] == "ES256"
    assert last["assertion"]["claims"]["iss"] == last["assertion"]["claims"]["sub"] == "jwt-ec"
    assert last["assertion"]["claims"]["exp"] - last["assertion"]["claims"]["iat"] == 60
    assert "signature" not in json.dumps(last)


def test_assertion_audience_is_the_issuer_or_the_token_url_as_reached(
        idp: ModalIdp, pki: Pki, keys: dict[str, Any], jwt: Any) -> None:
    http = pool(pki)
    accepted = [idp.token_url, idp.issuer, [idp.token_url, "https://someone.else"]]
    for audience in accepted:
        signed = assertion(jwt, "jwt-rsa", keys["rsa"], "RS256", audience)
        status, body = post(http, idp.token_url, assertion_form("jwt-rsa", signed))
        assert status == 200, (audience, body)
    refused = [idp.url, idp.issuer + "/", idp.token_url + "/introspect",
               idp.token_url.replace("127.0.0.1", "localhost")]
    for audience in refused:
        signed = assertion(jwt, "jwt-rsa", keys["rsa"], "RS256", audience)
        status, body = post(http, idp.token_url, assertion_form("jwt-rsa", signed))
        assert (status, body["error"]) == (401, "invalid_client"), audience
        assert "aud" in idp.stats()["last_token_request"]["error_detail"]
    # The token URL is taken as the client reached it (scheme, Host header, port): asked
    # at https://localhost:<port>/..., the localhost spelling is the accepted one.
    via_localhost = idp.token_url.replace("127.0.0.1", "localhost")
    signed = assertion(jwt, "jwt-rsa", keys["rsa"], "RS256", via_localhost)
    assert post(http, via_localhost, assertion_form("jwt-rsa", signed))[0] == 200


def test_assertion_jti_is_single_use_per_client(idp: ModalIdp, pki: Pki,
                                                keys: dict[str, Any], jwt: Any) -> None:
    http = pool(pki)
    jti = str(uuid.uuid4())
    first = assertion(jwt, "jwt-rsa", keys["rsa"], "RS256", idp.token_url, jti=jti)
    assert post(http, idp.token_url, assertion_form("jwt-rsa", first))[0] == 200
    status, body = post(http, idp.token_url, assertion_form("jwt-rsa", first))
    assert (status, body["error"]) == (401, "invalid_client")
    assert idp.stats()["last_token_request"]["error_detail"] == (
        "client assertion tokens must only be used once")
    # A new assertion reusing the jti is refused too; another client may use it.
    again = assertion(jwt, "jwt-rsa", keys["rsa"], "RS256", idp.token_url, jti=jti)
    assert post(http, idp.token_url, assertion_form("jwt-rsa", again))[0] == 401
    other = assertion(jwt, "jwt-ec", keys["ec"], "ES256", idp.token_url, jti=jti)
    assert post(http, idp.token_url, assertion_form("jwt-ec", other))[0] == 200


def test_assertion_expiry_and_lifetime(idp: ModalIdp, plain_idp: ModalIdp, pki: Pki,
                                       keys: dict[str, Any], jwt: Any) -> None:
    http = pool(pki)

    def ask(server: ModalIdp, lifetime: int) -> int:
        signed = assertion(jwt, "jwt-rsa", keys["rsa"], "RS256", server.token_url,
                           lifetime=lifetime)
        return post(http, server.token_url, assertion_form("jwt-rsa", signed))[0]

    # oidc-provider alone: no upper bound on exp, 15 s of clock tolerance past it.
    assert ask(idp, 365 * 86400) == 200
    assert ask(idp, -5) == 200
    assert ask(idp, -30) == 401
    # IDP_ASSERTION_MAX_AGE=60: exp more than 60 s ahead is refused.
    assert ask(plain_idp, 60) == 200
    assert ask(plain_idp, 120) == 401
    assert "at most 60 s ahead" in plain_idp.stats()["last_token_request"]["error_detail"]


def test_assertion_from_an_unknown_key_is_invalid_client(idp: ModalIdp, pki: Pki,
                                                         keys: dict[str, Any], jwt: Any) -> None:
    http = pool(pki)
    for key, algorithm in ((keys["unknown"], "RS256"), (keys["ec"], "ES256")):
        signed = assertion(jwt, "jwt-rsa", key, algorithm, idp.token_url)
        status, body = post(http, idp.token_url, assertion_form("jwt-rsa", signed))
        assert (status, body["error"]) == (401, "invalid_client")
    # The right key under a kid the client's jwks does not have: no key to verify with.
    signed = assertion(jwt, "jwt-rsa", keys["rsa"], "RS256", idp.token_url, kid="rsa-2")
    status, body = post(http, idp.token_url, assertion_form("jwt-rsa", signed))
    assert (status, body["error"]) == (401, "invalid_client")
    # A secret is no way in for a private_key_jwt client either.
    status, body = post(http, idp.token_url, {"grant_type": "client_credentials",
                                              "client_id": "jwt-rsa", "client_secret": "x" * 20})
    assert (status, body["error"]) == (401, "invalid_client")


# --- tls_client_auth and the private CA -------------------------------------------------------

@pytest.mark.parametrize("client_id", ["mtls-service", "mtls-dns", "mtls-uri", "mtls-email"])
def test_tls_client_auth_by_subject_or_san(idp: ModalIdp, pki: Pki, client_id: str) -> None:
    status, body = post(pool(pki, pki.client), idp.token_url,
                        {"grant_type": "client_credentials", "client_id": client_id})
    assert status == 200, body
    last = idp.stats()["last_token_request"]
    assert last["auth_method"] == "tls_client_auth"
    assert last["presented"] == "none"
    assert last["client_cert"] is True
    assert last["client_cert_authorized"] is True
    assert last["client_cert_subject"] == pki.client.subject_dn


def test_tls_client_auth_refusals(idp: ModalIdp, pki: Pki) -> None:
    form = {"grant_type": "client_credentials", "client_id": "mtls-service"}
    cases = {
        "client certificate was not provided": pool(pki),
        "client certificate was not verified": pool(pki, pki.rogue),
        "certificate subject value does not match the registered one": pool(pki, pki.stranger),
    }
    for detail, http in cases.items():
        status, body = post(http, idp.token_url, form)
        assert (status, body["error"]) == (401, "invalid_client"), detail
        assert idp.stats()["last_token_request"]["error_detail"] == detail


def test_client_certificates_are_asked_for_not_required(idp: ModalIdp, pki: Pki) -> None:
    idp.reset()
    # A secret client presenting a certificate, and one presenting none: both served.
    assert post(pool(pki, pki.client), idp.token_url, SECRET_FORM)[0] == 200
    assert post(pool(pki), idp.token_url, SECRET_FORM)[0] == 200
    stats = idp.stats()
    assert stats["token_calls_by_auth_method"] == {"client_secret_post": 2}
    assert stats["client_cert_token_calls"] == 1
    assert [r["client_cert"] for r in stats["token_requests"]] == [True, False]


def test_https_idp_on_a_private_ca_needs_that_ca(idp: ModalIdp, pki: Pki) -> None:
    assert idp.url.startswith("https://") and idp.issuer.startswith("https://")
    assert post(pool(pki), idp.token_url, SECRET_FORM)[0] == 200
    # The system's CAs do not know the private one: verification fails, never skipped.
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib3.PoolManager(retries=False).request("POST", idp.token_url, fields=SECRET_FORM,
                                                   encode_multipart=False)
    # Nor does a client trusting another CA.
    other = urllib3.PoolManager(ca_certs=str(pki.rogue_ca.cert_file), retries=False)
    with pytest.raises(urllib3.exceptions.SSLError):
        other.request("POST", idp.token_url, fields=SECRET_FORM, encode_multipart=False)
    discovery = pool(pki).request("GET", idp.issuer + "/.well-known/openid-configuration")
    methods = json.loads(discovery.data)["token_endpoint_auth_methods_supported"]
    assert {"private_key_jwt", "tls_client_auth", "client_secret_post"} <= set(methods)


# --- resource indicators (RFC 8707) and audience ----------------------------------------------

def test_resource_gives_a_jwt_for_that_audience(idp: ModalIdp, pki: Pki, jwt: Any) -> None:
    http = pool(pki)
    status, body = post(http, idp.token_url, {**SECRET_FORM, "resource": RESOURCE})
    assert status == 200, body
    token = body["access_token"]
    jwks = json.loads(http.request("GET", idp.issuer + "/jwks").data)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["typ"]) == ("RS256", "at+jwt")
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["RS256"], audience=RESOURCE,
                        issuer=idp.issuer)
    assert claims["aud"] == RESOURCE
    assert claims["client_id"] == claims["sub"] == SECRET_CLIENT["client_id"]
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert idp.stats()["last_token_request"]["resource"] == [RESOURCE]


def test_resource_edge_cases(idp: ModalIdp, plain_idp: ModalIdp, pki: Pki) -> None:
    http = pool(pki)
    other = post(http, idp.token_url, {**SECRET_FORM, "resource": OTHER_RESOURCE})[1]
    assert unverified_claims(other["access_token"])["aud"] == OTHER_RESOURCE
    # scope is cut to what the resource server offers (read write admin): openid goes.
    scoped = post(http, idp.token_url, {**SECRET_FORM, "resource": RESOURCE,
                                        "scope": "read openid"})[1]
    assert scoped["scope"] == "read"
    assert unverified_claims(scoped["access_token"])["scope"] == "read"
    pairs = list(SECRET_FORM.items())
    status, body = post(http, idp.token_url,
                        [*pairs, ("resource", RESOURCE), ("resource", OTHER_RESOURCE)])
    assert (status, body["error"]) == (400, "invalid_target")
    assert "single resource" in body["error_description"]
    status, body = post(http, idp.token_url, [*pairs, ("resource", RESOURCE),
                                              ("resource", RESOURCE)])
    assert status == 200 and unverified_claims(body["access_token"])["aud"] == RESOURCE
    status, body = post(http, idp.token_url, {**SECRET_FORM, "resource": "https://nope.example"})
    assert (status, body["error"]) == (400, "invalid_target")
    status, body = post(http, idp.token_url, {**SECRET_FORM, "resource": "not a uri"})
    assert (status, body["error"]) == (400, "invalid_target")
    # audience (Auth0) is not OAuth: ignored, an opaque token as without it.
    status, body = post(http, idp.token_url, {**SECRET_FORM, "audience": RESOURCE})
    assert status == 200 and body["access_token"].count(".") == 0
    assert idp.stats()["last_token_request"]["audience"] == RESOURCE
    # An IdP without IDP_RESOURCES keeps oidc-provider's default: every resource refused.
    status, body = post(http, plain_idp.token_url, {**SECRET_FORM, "resource": RESOURCE})
    assert (status, body["error"]) == (400, "invalid_target")


def test_resource_with_private_key_jwt_and_tls_client_auth(
        idp: ModalIdp, pki: Pki, keys: dict[str, Any], jwt: Any) -> None:
    signed = assertion(jwt, "jwt-ec", keys["ec"], "ES256", idp.token_url)
    body = post(pool(pki), idp.token_url, {**assertion_form("jwt-ec", signed),
                                           "resource": RESOURCE})[1]
    assert unverified_claims(body["access_token"])["aud"] == RESOURCE
    body = post(pool(pki, pki.client), idp.token_url,
                {"grant_type": "client_credentials", "client_id": "mtls-service",
                 "resource": RESOURCE})[1]
    assert unverified_claims(body["access_token"])["aud"] == RESOURCE


# --- the CONNECT proxy --------------------------------------------------------------------------

def test_proxy_tunnels_https_and_forwards_http(idp: ModalIdp, plain_idp: ModalIdp,
                                               pki: Pki) -> None:
    password = "proxy-p@ss:w0rd"
    with ConnectProxy(username="proxy-user", password=password) as proxy:
        assert "proxy-p%40ss%3Aw0rd@" in proxy.url_with_credentials
        proxied = urllib3.ProxyManager(
            proxy.url, proxy_headers=make_headers(proxy_basic_auth=f"proxy-user:{password}"),
            ca_certs=str(pki.ca.cert_file), retries=False)
        idp.reset()
        plain_idp.reset()
        for _ in range(2):
            assert post(proxied, idp.token_url, SECRET_FORM)[0] == 200
            assert post(proxied, plain_idp.token_url, SECRET_FORM)[0] == 200
        # https: one CONNECT, then the tunnel is kept alive for the next request;
        # http: every request is forwarded.
        assert proxy.calls_to("127.0.0.1", idp.port) == 1
        assert proxy.calls_to("127.0.0.1", plain_idp.port) == 2
        assert (proxy.tunnels, proxy.forwarded, proxy.refused_auth) == (1, 2, 0)
        assert idp.stats()["token_calls"] == plain_idp.stats()["token_calls"] == 2
        # A client certificate goes through the tunnel end to end.
        through = urllib3.ProxyManager(
            proxy.url, proxy_headers=make_headers(proxy_basic_auth=f"proxy-user:{password}"),
            ca_certs=str(pki.ca.cert_file), cert_file=str(pki.client.cert_file),
            key_file=str(pki.client.key_file), retries=False)
        status, _ = post(through, idp.token_url, {"grant_type": "client_credentials",
                                                  "client_id": "mtls-service"})
        assert status == 200
        assert proxy.tunnels == 2
        basic = base64.b64encode(f"proxy-user:{password}".encode()).decode()
        assert not [line for line in proxy.log if password in line or basic in line]


def test_proxy_credentials_in_the_url_are_not_used_by_urllib3(plain_idp: ModalIdp,
                                                              pki: Pki) -> None:
    with ConnectProxy(username="proxy-user", password="proxy-pass") as proxy:
        # urllib3.ProxyManager ignores user:password in the proxy URL: the worker must
        # take them out and send them as proxy_headers (make_headers(proxy_basic_auth=...)).
        naive = urllib3.ProxyManager(proxy.url_with_credentials, retries=False)
        assert naive.request("GET", plain_idp.url + "/_test/stats").status == 407
        with pytest.raises(urllib3.exceptions.ProxyError, match="407"):
            urllib3.ProxyManager(proxy.url_with_credentials, ca_certs=str(pki.ca.cert_file),
                                 retries=False).request("GET", "https://127.0.0.1:1/")
        assert proxy.refused_auth == 2
        assert (proxy.tunnels, proxy.forwarded) == (0, 0)


def test_proxy_only_reaches_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1")
    assert is_loopback("[::1]") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("example.org")


# --- IPv6 ------------------------------------------------------------------------------------

@needs_ipv6
def test_idp_on_ipv6_loopback(pki: Pki) -> None:
    with ModalIdp(clients=[SECRET_CLIENT], host="::1") as v6, \
            ModalIdp(clients=[SECRET_CLIENT], host="::1", tls=pki.server,
                     ca_file=pki.ca.cert_file) as v6_tls, ConnectProxy() as proxy:
        assert v6.url.startswith("http://[::1]:")
        assert v6.issuer == v6.url + "/realms/phoenix"
        assert v6_tls.url.startswith("https://[::1]:")
        for server in (v6, v6_tls):
            assert post(pool(pki), server.token_url, SECRET_FORM)[0] == 200
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), 2).close()
        # The CONNECT proxy reaches [::1] targets too.
        through = urllib3.ProxyManager(proxy.url, ca_certs=str(pki.ca.cert_file), retries=False)
        assert post(through, v6_tls.token_url, SECRET_FORM)[0] == 200
        assert post(through, v6.token_url, SECRET_FORM)[0] == 200
        assert proxy.calls_to("::1") == 2
        assert v6.stats()["token_calls"] == v6_tls.stats()["token_calls"] == 2


@needs_ipv6
def test_nats_server_on_ipv6_loopback_only() -> None:
    nats = pytest.importorskip("nats")
    import asyncio

    with NatsServerV6() as server:
        assert server.url == f"nats://[::1]:{server.port}"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), 2).close()
        # An AF_INET socket cannot even be pointed at ::1 (what an IPv4-only client does).
        with socket.socket(socket.AF_INET) as v4, pytest.raises(socket.gaierror):
            v4.connect(("::1", server.port))
        with connect_any("::1", server.port) as sock:
            assert sock.family == socket.AF_INET6
            assert sock.recv(5) == b"INFO "

        async def round_trip() -> bytes:
            client = await nats.connect(server.url, connect_timeout=2, max_reconnect_attempts=0)
            try:
                subscription = await client.subscribe("ipv6.check")
                await client.publish("ipv6.check", b"over ::1")
                message = await subscription.next_msg(timeout=2)
                return bytes(message.data)
            finally:
                await client.close()

        assert asyncio.run(round_trip()) == b"over ::1"


@needs_ipv6
@pytest.mark.skipif(not private_hosts_supported(), reason="needs unshare -m (root)")
def test_a_name_that_resolves_only_to_ipv6(tmp_path: Path) -> None:
    probe = (
        "import socket, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from tests.integration.ipv6 import connect_any\n"
        "port = int(sys.argv[1])\n"
        "infos = socket.getaddrinfo('nats6.test', port, socket.AF_UNSPEC, socket.SOCK_STREAM)\n"
        "print(sorted({info[4][0] for info in infos}))\n"
        "with connect_any('nats6.test', port) as sock:\n"
        "    print(sock.recv(5).decode())\n"
        "infos = socket.getaddrinfo('nats6.test', port, socket.AF_INET, socket.SOCK_STREAM)\n"
        "print(sorted({info[4][0] for info in infos}))\n"
        "try:\n"
        "    socket.socket(socket.AF_INET).connect(infos[0][4])\n"
        "except OSError as error:\n"
        "    print(type(error).__name__)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    with NatsServerV6() as server:
        command = with_private_hosts([sys.executable, "-c", probe, str(server.port), root],
                                     {"nats6.test": "::1"}, tmp_path)
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    # AF_UNSPEC: ::1 only, and trying it works. AF_INET (an IPv4-only client): glibc maps
    # a ::1 hosts entry to 127.0.0.1, where nothing listens: refused, not "no address".
    assert done.stdout.split("\n")[:4] == [
        "['::1']", "INFO ", "['127.0.0.1']", "ConnectionRefusedError"]
    # The machine's own hosts file was not touched (no lookup here: it would go to DNS).
    assert "nats6.test" not in Path("/etc/hosts").read_text()
