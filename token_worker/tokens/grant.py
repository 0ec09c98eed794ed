"""What a client proves and asks for at the token endpoint, beyond its id and scope.

A :class:`Grant` is one client-credentials request as the IdP client sends it
(:meth:`IdpClient.fetch <token_worker.idp.client.IdpClient.fetch>`): the client, how it
authenticates (:class:`ClientAuth`: a secret in the form or in a Basic header, an
assertion signed with its :class:`PrivateKey`, or a TLS :class:`ClientCertificate`), what
the token is for (RFC 8707 ``resource`` indicators, an Auth0-style ``audience``), and
where it is asked (a token endpoint and a :class:`CaBundle` of its own, else the worker's).

Keys and certificates are read and held by :mod:`token_worker.tokens.keys`. Grants that
may be given different tokens never share a cache entry: :meth:`Grant.digest` is a keyed
digest of everything that tells them apart besides the token endpoint, the client id and
the scope set (the method, the secret, the key or the certificate and its key, the key id,
the resources, the audience).

This module imports no ``cryptography``: a requester may import it for nothing.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from token_worker.secret import Secret

if TYPE_CHECKING:
    from token_worker.tokens.keys import CaBundle, ClientCertificate, PrivateKey

__all__ = ["AUTH_METHODS", "SECRET_METHODS", "ClientAuth", "Grant", "check_audience",
           "check_key_id", "check_resource", "check_resources", "check_token_url"]

CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method's name, not a secret
CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method's name, not a secret
PRIVATE_KEY_JWT = "private_key_jwt"
TLS_CLIENT_AUTH = "tls_client_auth"
AUTH_METHODS = (CLIENT_SECRET_POST, CLIENT_SECRET_BASIC, PRIVATE_KEY_JWT, TLS_CLIENT_AUTH)
"""The token endpoint auth methods a credential may name (OAuth 2.0 registry names)."""
SECRET_METHODS = frozenset({CLIENT_SECRET_POST, CLIENT_SECRET_BASIC})
LONGEST_VALUE = 4096
"""Characters of a resource, an audience or a key id: far more than any real one."""

_DIGEST_KEY = secrets.token_bytes(32)
"""Random per process: the default key of :meth:`Grant.digest` (the local cache's)."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")
"""Control characters and spaces: never in a URI, a key id or an audience."""


# --- how a client authenticates, and one grant ------------------------------------------

@dataclass(frozen=True)
class ClientAuth:
    """How a client proves itself: ``method`` and what it needs (a ``secret`` for
    ``client_secret_post``/``_basic``, a ``private_key`` and optional ``key_id`` for
    ``private_key_jwt``, a ``certificate`` for ``tls_client_auth``). Raises ValueError
    when the method's proof is missing (never quoting one)."""

    method: str = CLIENT_SECRET_POST
    secret: Secret | None = None
    private_key: PrivateKey | None = None
    key_id: str | None = None
    """The ``kid`` put in the assertion's header (the JWK's ``kid`` at the IdP)."""
    certificate: ClientCertificate | None = None

    def __post_init__(self) -> None:
        if self.method not in AUTH_METHODS:
            raise ValueError(f"auth method must be one of {', '.join(AUTH_METHODS)}, "
                             f"got {self.method[:40]!r}")
        if self.method in SECRET_METHODS and not (self.secret and self.secret.reveal()):
            raise ValueError(f"{self.method} needs a client secret")
        if self.method == PRIVATE_KEY_JWT:
            if self.private_key is None:
                raise ValueError("private_key_jwt needs a private key")
            if self.private_key.algorithm is None:
                raise ValueError(f"private_key_jwt cannot sign with an "
                                 f"{self.private_key.kind} key")
        if self.method == TLS_CLIENT_AUTH and self.certificate is None:
            raise ValueError("tls_client_auth needs a client certificate and its key")
        if self.key_id is not None:
            check_key_id(self.key_id)

    def __repr__(self) -> str:
        shown = [f"method={self.method!r}"]
        if self.key_id:
            shown.append(f"key_id={self.key_id!r}")
        if self.certificate is not None:
            shown.append(f"subject={self.certificate.subject!r}")
        return f"ClientAuth({', '.join(shown)}, proof='********')"

    __str__ = __repr__

    def digest(self, key: bytes | None = None) -> bytes:
        """Keyed BLAKE2b (32 bytes) of the method and its proof (secret, key and key id,
        or certificate and key): equal for equal proofs, useless without ``key`` (default:
        a random per-process key, as the local cache digests secrets)."""
        return _digest(key, self._parts())

    def _parts(self) -> list[bytes]:
        proof = b""
        if self.method in SECRET_METHODS and self.secret is not None:
            proof = self.secret.reveal().encode()
        elif self.method == PRIVATE_KEY_JWT and self.private_key is not None:
            proof = self.private_key.material
        elif self.method == TLS_CLIENT_AUTH and self.certificate is not None:
            proof = self.certificate.material
        return [self.method.encode(), proof, (self.key_id or "").encode()]


@dataclass(frozen=True)
class Grant:
    """One client-credentials request: the client, its proof, and what the token is for.

    ``token_url`` None is the worker's token endpoint (``idp.url`` + ``idp.tokenPath``,
    or discovery); ``ca`` None is the worker's trust (``idp.caFile``, else the system's).
    ``resources`` are sent as one ``resource`` parameter each, in order; ``audience`` as
    ``audience``. Raises ValueError for a resource, audience or token URL that cannot be
    sent (naming the problem)."""

    client_id: str
    auth: ClientAuth
    scope: str = ""
    resources: tuple[str, ...] = ()
    audience: str | None = None
    token_url: str | None = None
    ca: CaBundle | None = None

    def __post_init__(self) -> None:
        if self.resources:
            object.__setattr__(self, "resources", check_resources(self.resources))
        if self.audience is not None:
            check_audience(self.audience)
        if self.token_url is not None:
            check_token_url(self.token_url)

    def __repr__(self) -> str:
        return (f"Grant(client_id={self.client_id!r}, auth={self.auth!r}, "
                f"scope={self.scope!r}, resources={self.resources!r}, "
                f"audience={self.audience!r}, token_url={self.token_url!r})")

    __str__ = __repr__

    def digest(self, key: bytes | None = None) -> bytes:
        """Keyed BLAKE2b (32 bytes) of what separates this grant's tokens from another's
        at the same token endpoint for the same client id and scope set: the method and
        its proof, the key id, the resources (as a set) and the audience. A cache key of
        (token endpoint, client id, this digest, scope set) never hands a token to a
        grant with another secret, key, certificate, resource or audience. ``key``
        defaults to a random per-process one; a fleet-wide name needs a fleet-wide key."""
        parts = self.auth._parts()
        parts.append("\n".join(sorted(set(self.resources))).encode())
        parts.append(b"" if self.audience is None else b"=" + self.audience.encode())
        return _digest(key, parts)

    @functools.cached_property
    def local_digest(self) -> bytes:
        """:meth:`digest` under the per-process key, made once per grant (the local cache's
        key; a handler that keeps a credential's grant pays for it once)."""
        return self.digest()


def _digest(key: bytes | None, parts: list[bytes]) -> bytes:
    digest = hashlib.blake2b(key=_DIGEST_KEY if key is None else key, digest_size=32)
    for part in parts:  # length-prefixed: no two sequences of parts read the same
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


# --- the values a grant sends, checked -------------------------------------------------

def check_resources(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """RFC 8707 resource indicators: each an absolute URI without a fragment; the order
    kept, duplicates dropped. Raises ValueError naming the problem (never the value)."""
    kept: list[str] = []
    for value in values:
        check_resource(value)
        if value not in kept:
            kept.append(value)
    return tuple(kept)


def check_resource(value: str) -> str:
    """One resource indicator (RFC 8707 2): an absolute URI without a fragment."""
    if not isinstance(value, str) or not value:
        raise ValueError("a resource must be a non-empty string")
    if len(value) > LONGEST_VALUE or _CONTROL.search(value):
        raise ValueError("a resource must be a URI without spaces or control characters")
    scheme, _, rest = value.partition(":")
    if not _SCHEME.fullmatch(scheme) or not rest:
        raise ValueError("a resource must be an absolute URI (scheme:...)")
    if "#" in value:
        raise ValueError("a resource must not have a fragment (RFC 8707 2)")
    return value


def check_audience(value: str) -> str:
    """An ``audience`` (Auth0 style): non-empty text without control characters."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("an audience must be a non-empty string")
    if len(value) > LONGEST_VALUE or _CONTROL.search(value.replace(" ", "x")):
        raise ValueError("an audience must be one line without control characters")
    return value


def check_key_id(value: str) -> str:
    """A key id (``kid``): non-empty, printable, no spaces."""
    if not value or len(value) > LONGEST_VALUE or _CONTROL.search(value):
        raise ValueError("a key id must be non-empty, without spaces or control characters")
    return value


def check_token_url(value: str) -> str:
    """A token endpoint: an ``http``/``https`` URL with a host, without credentials or a
    fragment, sent to exactly as written."""
    if _CONTROL.search(value):
        raise ValueError("a token URL must be one line without spaces")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("a token URL must be a valid URL (a bad port or bracket?)") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("a token URL must not carry credentials")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a token URL must be an http:// or https:// URL with a host")
    if parts.fragment or value.endswith("#"):
        raise ValueError("a token URL must not have a fragment")
    return value
