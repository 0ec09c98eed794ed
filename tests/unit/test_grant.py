"""Keys, certificates and grants, without a server: which keys are accepted and what a
refusal says (never a byte of the key), what a repr shows, and what the grant's digest
keeps apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519

from tests.pki import CertificateAuthority, ec_key, key_pem, rsa_key
from token_worker.secret import Secret
from token_worker.tokens.grant import (
    ClientAuth,
    Grant,
    check_resources,
    check_token_url,
)
from token_worker.tokens.keys import CaBundle, ClientCertificate, PrivateKey

RSA = rsa_key()
EC = ec_key()


def pem_body(key_bytes: bytes) -> str:
    """A line from the middle of a PEM key: what a leak would show."""
    return key_bytes.decode().splitlines()[3]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


# --- private keys ---------------------------------------------------------------------

@pytest.mark.parametrize(("key", "kind", "algorithm"), [
    (RSA, "RSA-2048", "RS256"), (EC, "EC-P-256", "ES256")])
def test_signing_keys_are_read_with_their_algorithm(key, kind, algorithm) -> None:
    read = PrivateKey.from_pem(key_pem(key))
    assert (read.kind, read.algorithm) == (kind, algorithm)
    assert repr(read) == str(read) == f"PrivateKey({kind}, '********')"
    assert read == PrivateKey.from_pem(key_pem(key))
    assert hash(read) == hash(PrivateKey.from_pem(key_pem(key)))
    assert read != PrivateKey.from_pem(key_pem(rsa_key() if kind.startswith("RSA") else ec_key()))


def test_a_pkcs1_and_a_sec1_key_are_read_too() -> None:
    pkcs1 = RSA.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
    assert b"BEGIN RSA PRIVATE KEY" in pkcs1
    assert PrivateKey.from_pem(pkcs1) == PrivateKey.from_pem(key_pem(RSA))
    sec1 = EC.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    assert PrivateKey.from_pem(sec1).algorithm == "ES256"


def _pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


SMALL_RSA = rsa_key(1024)
P384 = ec.generate_private_key(ec.SECP384R1())
SECP256K1 = ec.generate_private_key(ec.SECP256K1())
ED25519 = ed25519.Ed25519PrivateKey.generate()


@pytest.mark.parametrize(("data", "problem"), [
    (_pem(SMALL_RSA), "private_key is an RSA key of 1024 bits: at least 2048 are needed"),
    (_pem(P384), "private_key is an EC key on P-384: use P-256 (ES256)"),
    (_pem(SECP256K1), "private_key is an EC key on secp256k1: use P-256 (ES256)"),
    (_pem(ED25519), "private_key is a Ed25519 key: use RSA (2048 bits or more) or EC P-256"),
    (_pem(ed448.Ed448PrivateKey.generate()), "private_key is a Ed448 key: use RSA"),
    (b"not a key at all", "private_key is not PEM"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
     "private_key holds no private key that can be read"),
    (EC.public_key().public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo),
     "private_key holds no private key that can be read"),
    (RSA.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                       serialization.BestAvailableEncryption(b"passphrase")),
     "private_key is encrypted: store it without a passphrase"),
])
def test_unusable_signing_keys_are_described_never_quoted(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match="^" + problem.replace("(", r"\(").replace(")", r"\)")
                       ) as caught:
        PrivateKey.from_pem(data)
    if b"-----BEGIN" in data and len(data.splitlines()) > 4:
        assert data.decode().splitlines()[2] not in str(caught.value)


def test_tls_keys_may_be_other_curves_and_ed25519() -> None:
    assert PrivateKey.from_pem(_pem(P384), signing=False).kind == "EC-P-384"
    assert PrivateKey.from_pem(_pem(P384), signing=False).algorithm is None
    assert PrivateKey.from_pem(_pem(ED25519), signing=False).kind == "Ed25519"
    with pytest.raises(ValueError, match=r"tls\.key is an RSA key of 1024 bits"):
        PrivateKey.from_pem(_pem(SMALL_RSA), label="tls.key", signing=False)
    with pytest.raises(ValueError, match="on secp256k1: use P-256, P-384 or P-521"):
        PrivateKey.from_pem(_pem(SECP256K1), signing=False)


# --- certificates and CA bundles -----------------------------------------------------------

def test_a_client_certificate_and_its_key(ca: CertificateAuthority) -> None:
    issued = ca.issue_client("orders-service")
    certificate = ClientCertificate.from_pem(issued.cert_pem, issued.key_pem)
    assert certificate.subject == "CN=orders-service,O=token-worker tests"
    assert repr(certificate) == ("ClientCertificate(subject='CN=orders-service,O=token-worker "
                                 "tests', key='********')")
    assert pem_body(issued.key_pem) not in repr(certificate)
    assert certificate == ClientCertificate.from_pem(issued.cert_pem, issued.key_pem)
    chain = ClientCertificate.from_pem(issued.cert_pem + ca.issued.cert_pem, issued.key_pem)
    assert chain.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    assert chain != certificate


def test_a_certificate_with_another_key_is_refused(ca: CertificateAuthority) -> None:
    issued = ca.issue_client("orders-service")
    with pytest.raises(ValueError, match=r"^tls\.key is not the key of the .*certificate in "
                       r"tls\.crt$"):
        ClientCertificate.from_pem(issued.cert_pem, key_pem(ec_key()))
    with pytest.raises(ValueError, match=r"^tls\.crt holds no PEM certificate$"):
        ClientCertificate.from_pem(issued.key_pem, issued.key_pem)
    with pytest.raises(ValueError, match=r"^tls\.key is not PEM"):
        ClientCertificate.from_pem(issued.cert_pem, b"")


def test_a_ca_bundle(ca: CertificateAuthority, tmp_path: Path) -> None:
    bundle = CaBundle.from_pem(ca.issued.cert_pem + b"\n" + ca.issued.cert_pem)
    assert repr(bundle) == "CaBundle(2 certificates)"
    with pytest.raises(ValueError, match=r"^ca\.crt holds no PEM certificate$"):
        CaBundle.from_pem(b"junk")
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match=r"^ca\.crt holds a certificate that cannot be read$"):
        CaBundle.from_pem(broken)


# --- how a client authenticates ------------------------------------------------------------

def test_each_method_needs_its_proof() -> None:
    key = PrivateKey.from_pem(key_pem(RSA))
    ClientAuth("client_secret_post", Secret("s3cret"))
    ClientAuth("private_key_jwt", private_key=key, key_id="rsa-1")
    for method, problem in (("client_secret_basic", "needs a client secret"),
                            ("private_key_jwt", "needs a private key"),
                            ("tls_client_auth", "needs a client certificate"),
                            ("client_secret_jwt", "must be one of")):
        with pytest.raises(ValueError, match=problem):
            ClientAuth(method)
    with pytest.raises(ValueError, match="cannot sign with an EC-P-384 key"):
        ClientAuth("private_key_jwt", private_key=PrivateKey.from_pem(_pem(P384), signing=False))
    with pytest.raises(ValueError, match="key id"):
        ClientAuth("private_key_jwt", private_key=key, key_id="two words")


def test_reprs_never_show_a_proof(ca: CertificateAuthority) -> None:
    issued = ca.issue_client("mtls-service")
    key_bytes = key_pem(RSA)
    auths = [ClientAuth("client_secret_basic", Secret("the-secret-value")),
             ClientAuth("private_key_jwt", private_key=PrivateKey.from_pem(key_bytes),
                        key_id="rsa-1"),
             ClientAuth("tls_client_auth",
                        certificate=ClientCertificate.from_pem(issued.cert_pem,
                                                               issued.key_pem))]
    for auth in auths:
        grant = Grant("client", auth, "read", resources=("https://api.example",))
        for text in (repr(auth), str(auth), repr(grant), str(grant)):
            assert "the-secret-value" not in text
            assert pem_body(key_bytes) not in text and pem_body(issued.key_pem) not in text
            assert "'********'" in text
    assert repr(auths[1]) == ("ClientAuth(method='private_key_jwt', key_id='rsa-1', "
                              "proof='********')")


def test_the_digest_keeps_apart_what_may_get_another_token(ca: CertificateAuthority) -> None:
    key_a, key_b = PrivateKey.from_pem(key_pem(RSA)), PrivateKey.from_pem(key_pem(rsa_key()))
    issued = ca.issue_client("mtls-service")
    other = ca.issue_client("mtls-service", stem="other")
    cert_a = ClientCertificate.from_pem(issued.cert_pem, issued.key_pem)
    cert_b = ClientCertificate.from_pem(other.cert_pem, other.key_pem)

    def grant(auth: ClientAuth, **kwargs) -> Grant:
        return Grant("client", auth, "read", **kwargs)

    jwt_a = ClientAuth("private_key_jwt", private_key=key_a)
    variants = [
        grant(ClientAuth("client_secret_post", Secret("one"))),
        grant(ClientAuth("client_secret_post", Secret("two"))),
        grant(ClientAuth("client_secret_basic", Secret("one"))),
        grant(jwt_a),
        grant(ClientAuth("private_key_jwt", private_key=key_a, key_id="k1")),
        grant(ClientAuth("private_key_jwt", private_key=key_b)),
        grant(ClientAuth("tls_client_auth", certificate=cert_a)),
        grant(ClientAuth("tls_client_auth", certificate=cert_b)),
        grant(jwt_a, resources=("https://api.example",)),
        grant(jwt_a, resources=("https://other.example",)),
        grant(jwt_a, resources=("https://api.example", "https://other.example")),
        grant(jwt_a, audience="https://api.example"),
        grant(jwt_a, audience="https://other.example"),
    ]
    digests = [variant.digest() for variant in variants]
    assert len(set(digests)) == len(variants)
    # The same grant, read again or with the resources in another order: the same digest.
    again = grant(ClientAuth("private_key_jwt", private_key=PrivateKey.from_pem(key_pem(RSA))),
                  resources=("https://other.example", "https://api.example",
                             "https://api.example"))
    assert again.digest() == digests[10]
    assert again.resources == ("https://other.example", "https://api.example")
    # Keyed: another key, another digest; the endpoint, CA and scope are not in it.
    assert variants[3].digest(b"k" * 32) != digests[3]
    assert grant(jwt_a, token_url="https://idp2.example/token").digest() == digests[3]


@pytest.mark.parametrize(("values", "problem"), [
    (["https://api.example#part"], "must not have a fragment"),
    (["api.example"], "must be an absolute URI"),
    (["/relative"], "must be an absolute URI"),
    (["https://api example"], "without spaces"),
    ([""], "non-empty"),
])
def test_resources_are_absolute_uris_without_fragments(values, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        check_resources(values)
    assert check_resources(["urn:example:api", "https://api.example/v1?x=1"]) == (
        "urn:example:api", "https://api.example/v1?x=1")


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://idp.example/token", "http:// or https://"),
    ("https://user:pw@idp.example/token", "must not carry credentials"),
    ("https://idp.example/token#x", "fragment"),
    ("https://[::1/token", "valid URL"),
    ("https://idp.example:99999/token", "valid URL"),
    ("https://idp.example/to ken", "one line"),
])
def test_token_urls(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        check_token_url(url)
    assert "pw" not in str(caught.value)
    assert check_token_url("https://[::1]:8443/realms/x/token") == (
        "https://[::1]:8443/realms/x/token")
