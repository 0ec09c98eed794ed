"""A private PKI for tests, made with ``cryptography`` in milliseconds: a CA, server
certificates (for an HTTPS IdP on loopback) and client certificates (for tls_client_auth),
plus the keys and public JWKs a private_key_jwt client needs.

Standard library and ``cryptography`` only; nothing here touches the network.

    ca = CertificateAuthority.create(tmp_path, "token-worker test CA")
    server = ca.issue_server("idp")                      # SANs localhost, 127.0.0.1, ::1
    client = ca.issue_client("mtls-service")             # subject CN=mtls-service,O=...
    client.subject_dn  # 'CN=mtls-service,O=token-worker tests' -> tls_client_auth_subject_dn
    key = rsa_key(); jwk = public_jwk(key, kid="k1")     # for a client's "jwks"
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
ORGANIZATION = "token-worker tests"


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 key (ES256)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (what a ``private_key`` file holds)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _b64url_uint(value: int, length: int | None = None) -> str:
    raw = value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: PrivateKey, kid: str | None = None) -> dict[str, str]:
    """The public half of ``key`` as a JWK (RFC 7517/7518), for a client's ``jwks``:
    ``{"kty": "RSA", "n", "e"}`` or ``{"kty": "EC", "crv": "P-256", "x", "y"}``, with
    ``use: sig`` and ``kid`` when given. Never includes private members."""
    jwk: dict[str, str]
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("only P-256 EC keys")
        point = key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-256", "x": _b64url_uint(point.x, 32),
               "y": _b64url_uint(point.y, 32)}
    else:
        raise TypeError(f"unsupported key type {type(key).__name__}")
    jwk["use"] = "sig"
    if kid:
        jwk["kid"] = kid
    return jwk


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, written as PEM files (``cert_file``, ``key_file``)."""

    certificate: x509.Certificate
    key: PrivateKey
    cert_file: Path
    key_file: Path

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    @property
    def subject_dn(self) -> str:
        """The subject as RFC 4514 text (``CN=...,O=...``): the value for a client's
        ``tls_client_auth_subject_dn`` that the dev IdP matches."""
        return self.certificate.subject.rfc4514_string()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(directory: Path, stem: str, certificate: x509.Certificate,
           key: PrivateKey) -> Issued:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file = directory / f"{stem}.crt"
    key_file = directory / f"{stem}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key_pem(key))
    key_file.chmod(0o600)
    return Issued(certificate, key, cert_file, key_file)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed root CA kept in ``directory`` (``<stem>.crt`` is the file a client
    trusts: ``IDP_CA_FILE``, ``IDP_TLS_CLIENT_CA``)."""

    directory: Path
    issued: Issued

    @property
    def cert_file(self) -> Path:
        return self.issued.cert_file

    @classmethod
    def create(cls, directory: Path, name: str = "token-worker test CA",
               stem: str = "ca", days: int = 2) -> CertificateAuthority:
        key = ec_key()
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(Path(directory), _write(Path(directory), stem, certificate, key))

    def _issue(self, stem: str, subject: x509.Name, sans: list[x509.GeneralName],
               usage: x509.ObjectIdentifier, key: PrivateKey | None, days: int) -> Issued:
        key = key or ec_key()
        now = _now()
        ca_key = self.issued.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.issued.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.directory, stem, builder.sign(ca_key, hashes.SHA256()), key)

    def issue_server(self, stem: str = "server", dns: tuple[str, ...] = ("localhost",),
                     ips: tuple[str, ...] = ("127.0.0.1", "::1"), days: int = 2,
                     key: PrivateKey | None = None) -> Issued:
        """A TLS server certificate whose SANs are ``dns`` and ``ips`` (hostname checks
        use SANs only; the CN is informational)."""
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                             x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else ips[0])])
        return self._issue(stem, subject, sans, ExtendedKeyUsageOID.SERVER_AUTH, key, days)

    def issue_client(self, common_name: str, stem: str | None = None, *,
                     organization: str | None = ORGANIZATION,
                     dns: tuple[str, ...] = (), uris: tuple[str, ...] = (),
                     emails: tuple[str, ...] = (), ips: tuple[str, ...] = (),
                     days: int = 2, key: PrivateKey | None = None) -> Issued:
        """A TLS client certificate with subject ``CN=<common_name>,O=<organization>`` and
        the SANs given (for tls_client_auth_san_dns / _uri / _email / _ip)."""
        attributes = []
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        sans += [x509.UniformResourceIdentifier(uri) for uri in uris]
        sans += [x509.RFC822Name(email) for email in emails]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._issue(stem or f"client-{common_name}", x509.Name(attributes), sans,
                           ExtendedKeyUsageOID.CLIENT_AUTH, key, days)
