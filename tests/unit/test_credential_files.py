"""The credential folder's files beyond a secret: a private key, a TLS certificate and its
key, resources, an audience, a token endpoint and a CA of its own; each problem described
without a value, keys never shown, and a rotated key picked up like any other file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.conftest import remember_secret
from tests.kubelet_volume import KubeletVolume
from tests.pki import CertificateAuthority, ec_key, key_pem, rsa_key
from token_worker.serve.credential_folder import FILES
from token_worker.serve.credentials import CredentialStore
from token_worker.tokens.keys import PrivateKey

RSA_PEM = key_pem(rsa_key()).decode()
EC_PEM = key_pem(ec_key()).decode()
remember_secret(RSA_PEM, EC_PEM, *RSA_PEM.splitlines()[2:5], *EC_PEM.splitlines()[1:3])


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


def store_of(stores: list[CredentialStore], volume: KubeletVolume,
             files: dict[str, str]) -> CredentialStore:
    volume.write(files)
    store = CredentialStore(volume.root, start=False)
    stores.append(store)
    return store


def folder(name: str, **files: str) -> dict[str, str]:
    """A credential's files (``tls_crt`` for ``tls.crt``, ``ca_crt`` for ``ca.crt``)."""
    return {f"{name}/{key.replace('_crt', '.crt').replace('tls_key', 'tls.key')}": value
            for key, value in files.items()}


def test_a_private_key_jwt_credential(volume, stores) -> None:
    store = store_of(stores, volume, folder(
        "orders", client_id="orders-client\n", auth_method="private_key_jwt\n",
        private_key=RSA_PEM, key_id="rsa-1\n",
        resource="https://api.example\n\nhttps://other.example\nhttps://api.example\n",
        audience="https://api.example\n", token_url="https://idp2.example/realms/x/token\n"))
    credential = store.get("orders")
    assert credential is not None, store.problems()
    assert (credential.client_id, credential.auth_method) == ("orders-client", "private_key_jwt")
    assert credential.client_secret.reveal() == ""
    assert credential.auth is not None and credential.auth.key_id == "rsa-1"
    assert credential.auth.private_key == PrivateKey.from_pem(RSA_PEM.encode())
    assert credential.resources == ("https://api.example", "https://other.example")
    assert credential.audience == "https://api.example"
    assert credential.token_url == "https://idp2.example/realms/x/token"
    grant = credential.grant("read", "client_secret_post")
    assert (grant.client_id, grant.scope, grant.resources, grant.token_url) == (
        "orders-client", "read", credential.resources, credential.token_url)
    assert grant.auth is credential.auth
    for text in (repr(credential), str(credential), repr(grant), repr(store)):
        assert "BEGIN" not in text and RSA_PEM.splitlines()[3] not in text


def test_a_tls_client_auth_credential_with_its_own_ca(volume, stores, ca) -> None:
    issued = ca.issue_client("mtls-service")
    store = store_of(stores, volume, folder(
        "mtls", client_id="mtls-service", auth_method="tls_client_auth",
        tls_crt=(issued.cert_pem + ca.issued.cert_pem).decode(),
        tls_key=issued.key_pem.decode(), ca_crt=ca.issued.cert_pem.decode()))
    credential = store.get("mtls")
    assert credential is not None, store.problems()
    assert credential.auth is not None and credential.auth.certificate is not None
    assert credential.auth.certificate.subject == "CN=mtls-service,O=token-worker tests"
    assert credential.ca is not None and b"BEGIN CERTIFICATE" in credential.ca.pem
    assert issued.key_pem.decode().splitlines()[1] not in repr(credential)


def test_a_secret_credential_is_as_before(volume, stores) -> None:
    store = store_of(stores, volume, {
        **folder("plain", client_id="c", client_secret="s3cret!"),
        **folder("aimed", client_id="c", client_secret="s3cret!",
                 resource="https://api.example")})
    plain, aimed = store.get("plain"), store.get("aimed")
    assert plain is not None and aimed is not None
    assert (plain.client_secret.reveal(), plain.auth_method, plain.resources) == (
        "s3cret!", None, ())
    # No method named: the worker's default is the grant's.
    assert plain.grant("", "client_secret_basic").auth.method == "client_secret_basic"
    assert plain.grant("").auth.method == "client_secret_post"
    assert plain.secret_values() == ("s3cret!",)
    # A credential that needs more than its secret offers no secret-only view: a path that
    # sends a secret only must fail rather than send it without the resource.
    assert aimed.client_secret.reveal() == ""
    grant = aimed.grant("read")
    assert grant.auth.secret.reveal() == "s3cret!" and grant.resources == ("https://api.example",)
    assert aimed.digest() != plain.digest()


@pytest.mark.parametrize(("files", "problem"), [
    ({"auth_method": "private_key_jwt"}, "private_key is missing or empty (private_key_jwt)"),
    ({"auth_method": "private_key_jwt", "private_key": "not a key"},
     "private_key is not PEM (expected -----BEGIN PRIVATE KEY-----)"),
    ({"auth_method": "private_key_jwt", "private_key": key_pem(rsa_key(1024)).decode()},
     "private_key is an RSA key of 1024 bits: at least 2048 are needed"),
    ({"auth_method": "private_key_jwt", "private_key": RSA_PEM, "key_id": "two words"},
     "key_id: a key id must be non-empty, without spaces or control characters"),
    ({"client_secret": "s3cret", "private_key": RSA_PEM},
     "private_key given, but auth_method is not set (a secret method)"),
    ({"client_secret": "s3cret", "auth_method": "client_secret_basic", "tls_crt": "x",
      "tls_key": "y"}, "tls.crt and tls.key given, but auth_method is client_secret_basic"),
    ({"auth_method": "tls_client_auth", "tls_crt": "x"},
     "tls.crt and tls.key are both needed (tls_client_auth)"),
    ({"auth_method": "tls_client_auth", "tls_crt": "x", "tls_key": EC_PEM},
     "tls.crt holds no PEM certificate"),
    ({"client_secret": "s3cret", "resource": "https://a.example\nnot a uri\n"},
     "resource (line 2): a resource must be a URI without spaces or control characters"),
    ({"client_secret": "s3cret", "resource": "https://a.example#frag"},
     "resource (line 1): a resource must not have a fragment (RFC 8707 2)"),
    ({"client_secret": "s3cret", "token_url": "ftp://idp.example/token"},
     "token_url: a token URL must be an http:// or https:// URL with a host"),
    ({"client_secret": "s3cret", "token_url": "https://u:p@idp.example/token"},
     "token_url: a token URL must not carry credentials"),
    ({"client_secret": "s3cret", "ca_crt": "junk"}, "ca.crt holds no PEM certificate"),
    ({"client_secret": "s3cret", "audience": "two\x01"},
     "audience: an audience must be one line without control characters"),
])
def test_each_problem_is_named_never_quoted(volume, stores, files, problem, caplog) -> None:
    caplog.set_level(logging.WARNING)
    store = store_of(stores, volume, folder("bad", client_id="c", **files))
    assert store.get("bad") is None
    assert store.problems() == {"bad": problem}
    logged = " ".join(str(record.__dict__) for record in caplog.records)
    assert "bad" in logged
    for name in ("private_key", "tls_key", "client_secret"):
        for line in files.get(name, "").splitlines():
            assert "-----" in line or len(line) < 8 or line not in logged


def test_tls_client_auth_needs_an_https_token_url(volume, stores, ca) -> None:
    issued = ca.issue_client("mtls-service")
    store = store_of(stores, volume, folder(
        "mtls", client_id="mtls-service", auth_method="tls_client_auth",
        tls_crt=issued.cert_pem.decode(), tls_key=issued.key_pem.decode(),
        token_url="http://idp.example/token"))
    assert store.problems() == {"mtls": "token_url must be https:// for tls_client_auth"}


def test_a_rotated_key_or_certificate_is_a_change(volume, stores, ca, caplog) -> None:
    caplog.set_level(logging.INFO, logger="token_worker.serve.credentials")
    first, second = ca.issue_client("svc"), ca.issue_client("svc", stem="svc-2")
    files = {**folder("jwt", client_id="c", auth_method="private_key_jwt", private_key=RSA_PEM),
             **folder("mtls", client_id="svc", auth_method="tls_client_auth",
                      tls_crt=first.cert_pem.decode(), tls_key=first.key_pem.decode())}
    store = store_of(stores, volume, files)
    before = {name: store.get(name) for name in ("jwt", "mtls")}
    assert all(before.values()), store.problems()
    volume.write({**folder("jwt", client_id="c", auth_method="private_key_jwt",
                           private_key=EC_PEM),
                  **folder("mtls", client_id="svc", auth_method="tls_client_auth",
                           tls_crt=second.cert_pem.decode(), tls_key=second.key_pem.decode())})
    assert store.reload()
    after = {name: store.get(name) for name in ("jwt", "mtls")}
    changes = [(r.getMessage(), getattr(r, "credential", None)) for r in caplog.records]
    assert ("credential changed", "jwt") in changes and ("credential changed", "mtls") in changes
    for name in ("jwt", "mtls"):
        assert after[name].digest() != before[name].digest()  # never the old entry's token
    assert after["jwt"].auth.private_key.algorithm == "ES256"
    volume.write({**folder("jwt", client_id="c", auth_method="private_key_jwt",
                           private_key=EC_PEM),
                  **folder("mtls", client_id="svc", auth_method="tls_client_auth",
                           tls_crt=second.cert_pem.decode(), tls_key=second.key_pem.decode())})
    assert not store.reload()  # the same files again: no change
    assert store.get("jwt").digest() == after["jwt"].digest()


def test_the_files_are_documented() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    security = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for name in FILES:
        assert f"`{name}`" in readme, name
        assert f"/orders/{name}" in security, name


