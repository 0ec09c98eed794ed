"""One named credential: the files of its folder, what each may hold, and the
:class:`Credential` read from them.

A folder holds ``client_id`` and what proves it (:data:`FILES`): ``client_secret`` (the
default ``client_secret_post``, or ``client_secret_basic``), ``private_key`` and optional
``key_id`` (``auth_method`` ``private_key_jwt``), ``tls.crt`` and ``tls.key`` (the keys of
a ``kubernetes.io/tls`` Secret; ``auth_method`` ``tls_client_auth``); optional ``scope``,
``resource`` (one URI per line), ``audience``, ``token_url`` and ``ca.crt``. One trailing
newline of a text file is stripped. A key or certificate file beside another method is a
problem (a forgotten ``auth_method`` would send the secret instead); a secret beside a key
or certificate is ignored. Keys are held like secrets (:mod:`token_worker.tokens.keys`):
never in a ``repr``, a log line or a problem, which names the file and what is wrong with
it, never a value. Reading the directory as a whole, consistently, is
:mod:`token_worker.serve.credentials`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from token_worker.secret import Secret, read_regular_file
from token_worker.tokens.grant import (
    AUTH_METHODS,
    CLIENT_SECRET_POST,
    PRIVATE_KEY_JWT,
    SECRET_METHODS,
    TLS_CLIENT_AUTH,
    ClientAuth,
    Grant,
    check_audience,
    check_key_id,
    check_resource,
    check_token_url,
)
from token_worker.tokens.keys import CaBundle, ClientCertificate, PrivateKey

__all__ = ["FILES", "MAX_VALUE_BYTES", "Credential", "read_credential"]

MAX_VALUE_BYTES = 64 * 1024
"""A client id, secret, scope, key or certificate chain is far smaller; a bigger file is a
mistake, not read."""
FILES = {
    "client_id": "the client id at the IdP (required)",
    "client_secret": "its secret (client_secret_post, client_secret_basic)",
    "auth_method": "client_secret_post (default), client_secret_basic, private_key_jwt or "
                   "tls_client_auth",
    "private_key": "PEM private key signing the client assertions (private_key_jwt)",
    "key_id": "the key's kid at the IdP (private_key_jwt, optional)",
    "tls.crt": "PEM client certificate, then its chain (tls_client_auth)",
    "tls.key": "PEM key of tls.crt (tls_client_auth)",
    "scope": "default scope",
    "resource": "RFC 8707 resource indicators, one URI per line",
    "audience": "an audience parameter (Auth0 style)",
    "token_url": "this credential's own token endpoint",
    "ca.crt": "PEM CA bundle trusted for its token endpoint",
}
"""Every file a credential folder may hold, and what it is (others are ignored)."""


@dataclass(frozen=True)
class Credential:
    """One named client: what the worker sends to the IdP for ``token.named.<name>``.

    :meth:`grant` is the whole of it. ``client_secret`` and ``auth_method`` are the view of
    a path that can send a secret only: for a credential that needs more (a key, a
    certificate, resources, an audience, a token endpoint or CA of its own),
    ``client_secret`` is empty, so such a path fails without sending anything
    (:class:`~token_worker.errors.CannotAuthenticate`) rather than send a call without
    what the credential says."""

    name: str
    client_id: str
    client_secret: Secret
    """The secret for a path that sends a secret only; empty when the credential needs
    its :meth:`grant` (see above)."""
    scope: str | None = None
    """The credential's default scope; a request's own ``scope`` still wins."""
    auth_method: str | None = None
    """One of :data:`~token_worker.tokens.grant.AUTH_METHODS`; None means the worker's
    default (``idp.authMethod``, a secret method)."""
    auth: ClientAuth | None = None
    """How it proves itself. Made from ``client_secret`` when not given; with no
    ``auth_method``, its method stands in for the worker's default (:meth:`grant`)."""
    resources: tuple[str, ...] = ()
    """RFC 8707 ``resource`` indicators sent with every call."""
    audience: str | None = None
    token_url: str | None = None
    """Its own token endpoint; None: the worker's."""
    ca: CaBundle | None = None
    """The CAs its token endpoint is verified against; None: the worker's."""

    def __post_init__(self) -> None:
        if self.auth is None:
            auth = ClientAuth(self.auth_method or CLIENT_SECRET_POST, self.client_secret)
            object.__setattr__(self, "auth", auth)

    @property
    def needs_grant(self) -> bool:
        """True when a secret is not all its calls send (a key or a certificate, resources,
        an audience, a token endpoint or CA of its own): they go as its :meth:`grant`."""
        return not self.client_secret.reveal()

    @property
    def proof(self) -> ClientAuth:
        """How it proves itself (``auth``, never None once built)."""
        if self.auth is None:  # set by __post_init__: never
            raise RuntimeError("a Credential without its ClientAuth")
        return self.auth

    def grant(self, scope: str, default_method: str = CLIENT_SECRET_POST) -> Grant:
        """The grant one call for ``scope`` sends; ``default_method`` is the worker's
        ``idp.authMethod``, used by a secret credential that names no method."""
        auth = self.proof
        if self.auth_method is None and auth.method != default_method:
            auth = replace(auth, method=default_method)
        return Grant(self.client_id, auth, scope, resources=self.resources,
                     audience=self.audience, token_url=self.token_url, ca=self.ca)

    def digest(self, key: bytes | None = None, default_method: str = CLIENT_SECRET_POST
               ) -> bytes:
        """A keyed digest (BLAKE2b) of how it proves itself (the secret, the key and key id,
        or the certificate and its key) and of what its tokens are for (resources,
        audience): a credential with another key, certificate or secret never gets
        another's cached token. ``key`` as for :meth:`Grant.digest
        <token_worker.tokens.grant.Grant.digest>` (a random per-process one by default)."""
        return self.grant("", default_method).digest(key)

    def secret_values(self) -> tuple[str, ...]:
        """What no log line may hold, for the log redaction: the secret, or the PEM of the
        private key or of the certificate's key."""
        auth = self.proof
        values = [auth.secret.reveal()] if auth.secret is not None else []
        if auth.private_key is not None:
            values.append(auth.private_key.pem().decode("ascii"))
        if auth.certificate is not None:
            values.append(auth.certificate.key.pem().decode("ascii"))
        return tuple(value for value in values if value)

    def __repr__(self) -> str:
        return (f"Credential(name={self.name!r}, client_id={self.client_id!r}, "
                f"scope={self.scope!r}, auth_method={self.auth_method!r}, "
                f"resources={self.resources!r}, audience={self.audience!r}, "
                f"token_url={self.token_url!r}, client_secret='********')")

    __str__ = __repr__


def _inside(path: Path, base: str) -> str:
    """``path`` with every symlink resolved, or ValueError when that leaves ``base`` (the
    resolved credentials directory): a value must never come from elsewhere, such as
    ``/proc/self/environ`` or another mount."""
    resolved = os.path.realpath(path)
    if resolved != base and not resolved.startswith(base.rstrip(os.sep) + os.sep):
        raise ValueError(f"{path.name} leads outside the credentials directory")
    return resolved


def _raw(path: Path, base: str) -> bytes | None:
    """A file's bytes; None when the file does not exist."""
    try:
        return read_regular_file(_inside(path, base), MAX_VALUE_BYTES, label=path.name)
    except FileNotFoundError:
        return None


def _value(path: Path, base: str) -> str | None:
    """A file's text minus one trailing newline; None when the file does not exist."""
    data = _raw(path, base)
    if data is None:
        return None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path.name} is not UTF-8 text") from None


def read_credential(name: str, folder: Path, base: str) -> Credential:
    """Read one credential folder; every value must resolve inside ``base`` (the resolved
    credentials directory). Raises ValueError saying what is wrong (never a value), or
    OSError when a file cannot be read."""
    client_id = _value(folder / "client_id", base)
    if not client_id or not client_id.strip():
        raise ValueError("client_id is missing or empty")
    if any(ord(char) < 32 for char in client_id):
        raise ValueError("client_id contains control characters")
    scope = (_value(folder / "scope", base) or "").strip() or None
    method = (_value(folder / "auth_method", base) or "").strip() or None
    if method is not None and method not in AUTH_METHODS:
        raise ValueError(f"auth_method must be one of {', '.join(AUTH_METHODS)}")
    secret, auth = _proof(method, folder, base)
    token_url = (_value(folder / "token_url", base) or "").strip() or None
    if token_url is not None:
        _checked("token_url", check_token_url, token_url)
        if method == TLS_CLIENT_AUTH and not token_url.lower().startswith("https://"):
            raise ValueError("token_url must be https:// for tls_client_auth")
    audience = (_value(folder / "audience", base) or "").strip() or None
    if audience is not None:
        _checked("audience", check_audience, audience)
    ca_pem = _raw(folder / "ca.crt", base)
    ca = CaBundle.from_pem(ca_pem) if ca_pem else None
    resources = _resources(folder, base)
    if resources or audience or token_url or ca:
        secret = Secret("")  # a secret-only path must not send it without them
    return Credential(name=name, client_id=client_id.strip(), client_secret=secret,
                      scope=scope, auth_method=method, auth=auth, resources=resources,
                      audience=audience, token_url=token_url, ca=ca)


def _proof(method: str | None, folder: Path, base: str) -> tuple[Secret, ClientAuth]:
    """The secret and the :class:`ClientAuth` of ``method``, from the files it needs; a
    key or certificate file beside another method is a problem (a forgotten
    ``auth_method`` would send the secret instead)."""
    present = {file for file in ("private_key", "tls.crt", "tls.key")
               if (folder / file).exists()}
    belongs = {PRIVATE_KEY_JWT: {"private_key"}, TLS_CLIENT_AUTH: {"tls.crt", "tls.key"}}
    stray = sorted(present - belongs.get(method or "", set()))
    if stray:
        raise ValueError(f"{' and '.join(stray)} given, but auth_method is "
                         f"{method or 'not set (a secret method)'}")
    if method is None or method in SECRET_METHODS:
        secret = _value(folder / "client_secret", base)
        if not secret:
            raise ValueError("client_secret is missing or empty")
        return Secret(secret), ClientAuth(method or CLIENT_SECRET_POST, Secret(secret))
    if method == PRIVATE_KEY_JWT:
        pem = _raw(folder / "private_key", base)
        if not pem:
            raise ValueError("private_key is missing or empty (private_key_jwt)")
        key = PrivateKey.from_pem(pem, label="private_key")
        key_id = (_value(folder / "key_id", base) or "").strip() or None
        if key_id is not None:
            _checked("key_id", check_key_id, key_id)
        return Secret(""), ClientAuth(method, private_key=key, key_id=key_id)
    chain, key_pem = _raw(folder / "tls.crt", base), _raw(folder / "tls.key", base)
    if not chain or not key_pem:
        raise ValueError("tls.crt and tls.key are both needed (tls_client_auth)")
    certificate = ClientCertificate.from_pem(chain, key_pem)
    return Secret(""), ClientAuth(method, certificate=certificate)


def _resources(folder: Path, base: str) -> tuple[str, ...]:
    """The ``resource`` file: one URI per line, blank lines skipped, duplicates dropped."""
    kept: list[str] = []
    text = _value(folder / "resource", base) or ""
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.strip()
        if value:
            _checked(f"resource (line {number})", check_resource, value)
            if value not in kept:
                kept.append(value)
    return tuple(kept)


_T = TypeVar("_T")
_V = TypeVar("_V")


def _checked(file: str, check: Callable[[_V], _T], value: _V) -> _T:
    """``check(value)``, its problem prefixed with the file's name (``token_url: ...``)."""
    try:
        return check(value)
    except ValueError as error:
        raise ValueError(f"{file}: {error}") from None
