"""Private keys, client certificates and CA bundles, read from PEM and held like secrets.

A :class:`PrivateKey` signs client assertions (``private_key_jwt``: RSA of at least 2048
bits signs RS256, EC P-256 signs ES256); a :class:`ClientCertificate` (a certificate chain
and its key, as in a ``kubernetes.io/tls`` Secret) is presented in TLS
(``tls_client_auth``); a :class:`CaBundle` is what a credential's token endpoint is
trusted by. Neither a key nor a certificate's key ever shows in a ``repr``, a log line or
an error: a problem with one is described (its kind, its size, its curve), never quoted.

This module loads ``cryptography``; :mod:`token_worker.tokens.grant` does not, so the
requester, which never reads a key, never loads it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["MIN_RSA_BITS", "CaBundle", "ClientCertificate", "PrivateKey"]

MIN_RSA_BITS = 2048
"""Smallest RSA key accepted, for signing and for TLS alike (RFC 7518 3.3)."""
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
"""EC curves a TLS client key may use, by their NIST names; an assertion is signed with
P-256 only (ES256)."""
_HASH_KEY = secrets.token_bytes(32)
"""Random per process: what a key's ``hash`` is computed under."""


class PrivateKey:
    """A private key read from PEM, held like a secret: its ``repr`` shows only its kind.

    ``algorithm`` is the JWS algorithm it signs client assertions with: ``RS256`` for RSA
    (at least 2048 bits), ``ES256`` for EC P-256; None for a key that may serve TLS only
    (P-384, P-521, Ed25519)."""

    __slots__ = ("_der", "_key", "algorithm", "kind")

    def __init__(self, key: Any, der: bytes, kind: str, algorithm: str | None) -> None:
        self._key = key
        self._der = der
        self.kind = kind
        """``RSA-2048``, ``EC-P-256``, ...: what a problem may say of it."""
        self.algorithm = algorithm

    @classmethod
    def from_pem(cls, data: bytes, *, label: str = "private_key",
                 signing: bool = True) -> PrivateKey:
        """Read an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC 1). ``signing``:
        it must sign assertions (RSA >= 2048 or EC P-256); else it may also be EC P-384,
        P-521 or Ed25519 (a TLS client key). Raises ValueError naming ``label`` and the
        problem, never a byte of the key."""
        if b"-----BEGIN" not in data:
            raise ValueError(f"{label} is not PEM (expected -----BEGIN PRIVATE KEY-----)")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise ValueError(f"{label} is encrypted: store it without a passphrase "
                             "(the Secret is what protects it)") from None
        except (ValueError, UnsupportedAlgorithm):
            raise ValueError(f"{label} holds no private key that can be read") from None
        algorithm: str | None
        if isinstance(key, rsa.RSAPrivateKey):
            kind, algorithm = f"RSA-{key.key_size}", "RS256"
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"{label} is an RSA key of {key.key_size} bits: at least "
                                 f"{MIN_RSA_BITS} are needed")
        elif isinstance(key, ec.EllipticCurvePrivateKey):
            curve = CURVES.get(key.curve.name, key.curve.name)
            kind = f"EC-{curve}"
            algorithm = "ES256" if curve == "P-256" else None
            if key.curve.name not in CURVES or (signing and algorithm is None):
                wanted = "P-256 (ES256)" if signing else "P-256, P-384 or P-521"
                raise ValueError(f"{label} is an EC key on {curve}: use {wanted}")
        elif isinstance(key, ed25519.Ed25519PrivateKey) and not signing:
            kind, algorithm = "Ed25519", None
        else:
            wanted = "RSA (2048 bits or more) or EC P-256" if signing else (
                "RSA, EC or Ed25519")
            named = type(key).__name__.removeprefix("_").removesuffix("PrivateKey")
            raise ValueError(f"{label} is a {named} key: use {wanted}")
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return cls(key, der, kind, algorithm)

    def reveal(self) -> Any:
        """The ``cryptography`` key object, for the one place that signs with it."""
        return self._key

    def pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM, for the one place that loads it into TLS."""
        return bytes(self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def public_der(self) -> bytes:
        """The public half (SubjectPublicKeyInfo, DER): what a certificate must hold."""
        return bytes(self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))

    @property
    def material(self) -> bytes:
        """The key's bytes (PKCS#8 DER), for a keyed digest only."""
        return self._der

    def __repr__(self) -> str:
        return f"PrivateKey({self.kind}, '********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and secrets.compare_digest(other._der, self._der)

    def __hash__(self) -> int:
        return hash(hashlib.blake2b(self._der, key=_HASH_KEY, digest_size=16).digest())


class ClientCertificate:
    """A TLS client certificate (``tls.crt``: the leaf first, intermediates after) and its
    key (``tls.key``), held like a secret: its ``repr`` shows the subject, never the key."""

    __slots__ = ("chain_pem", "key", "not_after", "subject")

    def __init__(self, chain_pem: bytes, key: PrivateKey, subject: str,
                 not_after: str) -> None:
        self.chain_pem = chain_pem
        """The certificates as PEM (public)."""
        self.key = key
        self.subject = subject
        """The leaf's subject, RFC 4514 (``CN=orders,O=example``)."""
        self.not_after = not_after
        """When the leaf expires, ISO 8601 UTC."""

    @classmethod
    def from_pem(cls, chain: bytes, key: bytes, *, cert_label: str = "tls.crt",
                 key_label: str = "tls.key") -> ClientCertificate:
        """Read a certificate chain and its key; raises ValueError naming the file and the
        problem (a key that is not the certificate's is one), never a byte of the key."""
        certificates = _certificates(chain, cert_label)
        private = PrivateKey.from_pem(key, label=key_label, signing=False)
        leaf = certificates[0]
        public = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if public != private.public_der():
            raise ValueError(f"{key_label} is not the key of the (first) certificate in "
                             f"{cert_label}")
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
        return cls(pem, private, leaf.subject.rfc4514_string(),
                   leaf.not_valid_after_utc.isoformat())

    @property
    def material(self) -> bytes:
        """Certificates and key, for a keyed digest only."""
        return self.chain_pem + b"\x00" + self.key.material

    def __repr__(self) -> str:
        return f"ClientCertificate(subject={self.subject!r}, key='********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ClientCertificate) and other.chain_pem == self.chain_pem
                and other.key == self.key)

    def __hash__(self) -> int:
        return hash((self.chain_pem, self.key))


@dataclass(frozen=True)
class CaBundle:
    """CA certificates (PEM) trusted for one credential's token endpoint (``ca.crt``)."""

    pem: bytes

    @classmethod
    def from_pem(cls, data: bytes, *, label: str = "ca.crt") -> CaBundle:
        """Raises ValueError naming ``label`` unless ``data`` holds a PEM certificate."""
        return cls(b"".join(c.public_bytes(serialization.Encoding.PEM)
                            for c in _certificates(data, label)))

    def __repr__(self) -> str:
        return f"CaBundle({self.pem.count(b'-----BEGIN CERTIFICATE')} certificates)"


def _certificates(data: bytes, label: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{label} holds no PEM certificate")
    try:
        return list(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise ValueError(f"{label} holds a certificate that cannot be read") from None
