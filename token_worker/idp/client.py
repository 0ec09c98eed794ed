"""The identity provider: one OAuth2 client-credentials call over pooled HTTP connections.

:class:`IdpClient` sends one :class:`~token_worker.tokens.grant.Grant` (:meth:`IdpClient.fetch`)
authenticated as its :class:`~token_worker.tokens.grant.ClientAuth` says:

- ``client_secret_post``: ``client_id`` and ``client_secret`` in the form;
- ``client_secret_basic``: both in a Basic ``Authorization`` header (RFC 6749 2.3.1);
- ``private_key_jwt``: a client assertion signed for this one call
  (:mod:`token_worker.idp.assertion`), its ``aud`` the token endpoint exactly as called,
  or the issuer when the endpoint came from the issuer's discovery document;
- ``tls_client_auth`` (RFC 8705): the credential's certificate presented in TLS, and only
  ``client_id`` in the form; never over plain ``http``.

``resource`` (one parameter per URI, RFC 8707) and ``audience`` go in the form too. It
does so within one deadline for the whole attempt (:mod:`token_worker.idp.http`), and turns
the answer into an :class:`~token_worker.tokens.model.IssuedToken` or a typed
:class:`~token_worker.errors.IdpError` (:mod:`token_worker.idp.answers`), every text taken
from it scrubbed of what the call must not show (:mod:`token_worker.idp.scrub`); network
failures are :class:`~token_worker.errors.IdpUnavailable` or
:class:`~token_worker.errors.IdpTimeout`. Retries are not its business
(:mod:`token_worker.idp.resilience`).

Connections are pooled per TLS identity: one urllib3 manager per (proxy, trusted CAs,
client certificate), each with its own SSL context (:mod:`token_worker.idp.tls`), pooling
per endpoint inside it; so a connection that presented one client certificate is never
used for another client's call, and a credential with its own CA never shares one with
the worker's trust. Calls honour ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``
(:mod:`token_worker.idp.proxy`, read once when the client is built).

With ``idp.issuer``, the token endpoint comes from OIDC discovery, and must be as safe as
the issuer: an ``https`` issuer naming an ``http`` token endpoint is refused (the secret
would go out in clear text).

HTTP is urllib3's connection pool, used directly: measured against the test IdP, a token
call costs 0.5 ms of CPU this way against 1.4 ms through requests (built on the same
urllib3), which matters on every cache miss.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as HttpTimeout

from token_worker import tracing
from token_worker.config import IdpConfig
from token_worker.errors import (
    CannotAuthenticate,
    IdpError,
    IdpTimeout,
    IdpUnavailable,
)
from token_worker.idp.answers import error_for, issued_token, json_object, network_reason, origin
from token_worker.idp.assertion import ASSERTION_TYPE, client_assertion
from token_worker.idp.http import POOL_CLASSES, Answer, attempt_deadline, read_answer
from token_worker.idp.proxy import Proxies, ProxyRoute
from token_worker.idp.scrub import NO_SECRET, Scrubber
from token_worker.idp.tls import ssl_context
from token_worker.secret import Secret
from token_worker.tokens.grant import (
    CLIENT_SECRET_BASIC,
    PRIVATE_KEY_JWT,
    SECRET_METHODS,
    TLS_CLIENT_AUTH,
    ClientAuth,
    Grant,
)
from token_worker.tokens.keys import CaBundle, ClientCertificate
from token_worker.tokens.model import IssuedToken

__all__ = ["IdpClient"]

log = logging.getLogger(__name__)
USER_AGENT = "token-worker"
TLS_IDENTITIES = 64
"""Connection managers kept at once, one per (proxy, TLS or not, trusted CAs, client
certificate); the least recently used is closed first (a rotated certificate's, for one).
Each holds its SSL context: measured, 0.9 MB and 25 ms to make with the system's CAs,
0.03 MB and 2 ms with a private CA's bundle; so at most about 56 MB."""
_IDENTITY_KEY = secrets.token_bytes(32)
"""Random per process: what a certificate or CA bundle is named under in the pool table."""
_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}

_Identity = tuple[str, bool, bytes, bytes]
"""(proxy URL or "", TLS or not, digest of the trusted CAs, digest of the client
certificate): what one connection manager serves."""


class IdpClient:
    """Asks token endpoints for client-credentials tokens; safe to share between threads.

    Each connection manager keeps up to ``pool_size`` kept-alive connections per host, so
    a busy worker does not open a TCP (and TLS) connection per request. Retries are not
    urllib3's business here: :mod:`token_worker.idp.resilience` decides them. ``proxies``
    defaults to the process's proxy variables, read now (an unusable one is a
    :class:`~token_worker.errors.ConfigError`).
    """

    def __init__(self, config: IdpConfig, *, pool_size: int = 10,
                 proxies: Proxies | None = None) -> None:
        self._config = config
        self._token_url = "" if config.issuer else config.token_url
        self._issuer = ""
        """The issuer as its discovery document names itself: the assertions' audience
        for the endpoint it named."""
        self._discovery_lock = threading.Lock()
        self._pool_size = pool_size
        self._proxies = Proxies.from_environment() if proxies is None else proxies
        if self._proxies:
            log.info("idp calls go through a proxy", extra={"proxies": repr(self._proxies)})
        self._managers: OrderedDict[_Identity, urllib3.PoolManager] = OrderedDict()
        self._managers_lock = threading.Lock()

    @property
    def known_token_url(self) -> str:
        """The token endpoint if known without I/O, else ""."""
        return self._token_url

    @property
    def token_url(self) -> str:
        """The worker's token endpoint; with ``idp.issuer``, read once from OIDC discovery."""
        if not self._token_url:
            with self._discovery_lock:
                if not self._token_url:
                    self._token_url = self._discover()
        return self._token_url

    def endpoint(self, grant: Grant) -> str:
        """Where ``grant`` is sent: its own token endpoint, else the worker's (which may
        do discovery's I/O once). What per-endpoint state (circuits, budgets, cache keys)
        is kept under."""
        return grant.token_url or self.token_url

    def _discover(self) -> str:
        issuer = (self._config.issuer or "").rstrip("/")
        url = issuer + "/.well-known/openid-configuration"
        try:
            answer = self._exchange("GET", url, self._config.timeout)
        except IdpError as error:
            raise IdpUnavailable(f"OIDC discovery at {url} failed: {error.reason}",
                                 reason=error.reason, status=error.status) from None
        document = json_object(answer.content) if answer.status == 200 else None
        endpoint = document.get("token_endpoint") if document else None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise IdpUnavailable(f"OIDC discovery at {url} gave no token_endpoint "
                                 f"(HTTP {answer.status})", status=answer.status,
                                 reason=f"HTTP {answer.status}, no token_endpoint")
        if issuer.lower().startswith("https://") and not endpoint.lower().startswith("https://"):
            reason = "token_endpoint is http under an https issuer"
            log.error("discovered token endpoint refused: the secret would go out unencrypted",
                      extra={"issuer": issuer, "token_url": origin(endpoint),
                             "reason": reason})
            raise IdpUnavailable(f"OIDC discovery at {url} refused: {reason}", reason=reason)
        named = document.get("issuer") if document else None
        self._issuer = named if isinstance(named, str) and named else issuer
        log.info("token endpoint discovered", extra={"issuer": issuer, "token_url": endpoint})
        return endpoint

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    timeout: float | None = None,
                    auth_method: str | None = None) -> IssuedToken:
        """:meth:`fetch` for a client that proves itself with a secret: ``auth_method``
        (``client_secret_post`` or ``client_secret_basic``; default ``idp.authMethod``).
        A method that needs a key or a certificate cannot be served from a secret alone:
        :class:`~token_worker.errors.CannotAuthenticate`, and nothing is sent."""
        method = auth_method or self._config.auth_method
        if method not in SECRET_METHODS:
            raise CannotAuthenticate(f"{method} needs the credential's key or certificate, "
                                     "and this call carried a secret only")
        try:
            auth = ClientAuth(method, Secret(client_secret))
        except ValueError as error:
            raise CannotAuthenticate(str(error)) from None
        return self.fetch(Grant(client_id, auth, scope), timeout=timeout)

    def fetch(self, grant: Grant, *, timeout: float | None = None) -> IssuedToken:
        """Run the client-credentials grant once, within ``timeout`` seconds (connect,
        headers and body; default ``idp.timeout``); raise an
        :class:`~token_worker.IdpError`."""
        token_url = self.endpoint(grant)
        form, headers, scrub = self._request_for(grant, token_url)
        limit = self._config.timeout if timeout is None else timeout
        started = time.monotonic()
        tracing.annotate(endpoint_attributes(token_url))
        answer = self._exchange("POST", token_url, limit, body=urlencode(form), headers=headers,
                                scrub=scrub, grant=grant)
        tracing.annotate({"http.response.status_code": answer.status})
        log.debug("idp answered", extra={"status": answer.status,
                                         "idp_ms": round((time.monotonic() - started) * 1000, 1)})
        if 200 <= answer.status < 300:
            return issued_token(answer, grant.scope, self._config, scrub)
        raise error_for(answer, token_url, self._config.max_response_bytes, scrub)

    def _request_for(self, grant: Grant, token_url: str
                     ) -> tuple[list[tuple[str, str]], dict[str, str], Scrubber]:
        """The form and headers of ``grant``'s call, authenticated as its method says, and
        the scrubber of everything in them no text may show."""
        auth = grant.auth
        form = [("grant_type", "client_credentials")]
        if grant.scope:
            form.append(("scope", grant.scope))
        headers = dict(_FORM_HEADERS)
        secret = auth.secret.reveal() if auth.secret is not None else ""
        hidden: tuple[str, ...] = ()
        if auth.method == CLIENT_SECRET_BASIC:
            headers["Authorization"] = _basic_auth(grant.client_id, secret)
        elif auth.method in SECRET_METHODS:
            form += [("client_id", grant.client_id), ("client_secret", secret)]
        elif auth.method == PRIVATE_KEY_JWT and auth.private_key is not None:
            audience = self._issuer if grant.token_url is None and self._issuer else token_url
            try:
                signed = client_assertion(grant.client_id, audience, auth.private_key,
                                          key_id=auth.key_id)
            except ValueError as error:
                raise CannotAuthenticate(str(error)) from None
            form += [("client_id", grant.client_id),
                     ("client_assertion_type", ASSERTION_TYPE), ("client_assertion", signed)]
            hidden = (signed, auth.private_key.pem().decode("ascii"))
        elif auth.method == TLS_CLIENT_AUTH and auth.certificate is not None:
            if urlsplit(token_url).scheme != "https":
                raise CannotAuthenticate(f"tls_client_auth needs an https token endpoint, "
                                         f"not {origin(token_url)}")
            form.append(("client_id", grant.client_id))
            hidden = (auth.certificate.key.pem().decode("ascii"),)
        else:  # ClientAuth refuses to be built so; kept for whoever subclasses it
            raise CannotAuthenticate(f"{auth.method} without what it needs")
        form += [("resource", resource) for resource in grant.resources]
        if grant.audience is not None:
            form.append(("audience", grant.audience))
        route = self._proxies.route(token_url)
        if route is not None:
            hidden += route.hidden
        return form, headers, Scrubber(grant.client_id, secret, also=hidden)

    def close(self) -> None:
        """Close the pooled connections."""
        with self._managers_lock:
            managers = list(self._managers.values())
            self._managers.clear()
        for manager in managers:
            manager.clear()

    # --- HTTP -----------------------------------------------------------------------------

    def _exchange(self, method: str, url: str, limit: float, *, body: str | None = None,
                  headers: dict[str, str] | None = None, scrub: Scrubber = NO_SECRET,
                  grant: Grant | None = None) -> Answer:
        """One HTTP exchange, finished within ``limit`` seconds, body capped, never
        following a redirect; network failures become :class:`IdpError`."""
        with attempt_deadline(time.monotonic() + limit):
            return self._request(method, url, limit, body=body, headers=headers, scrub=scrub,
                                 grant=grant)

    def _request(self, method: str, url: str, limit: float, *, body: str | None,
                 headers: dict[str, str] | None, scrub: Scrubber,
                 grant: Grant | None) -> Answer:
        try:
            manager = self._manager(url, grant)
            response = manager.request(
                method, url, body=body, headers=headers, redirect=False,
                timeout=urllib3.Timeout(connect=limit, read=limit), preload_content=False)
            return read_answer(response, self._config.max_response_bytes)
        except NewConnectionError as error:  # refused, unresolved: urllib3 files it as timeout
            reason = network_reason(error, scrub)  # a bad status line is quoted in it
            raise IdpUnavailable(f"identity provider unreachable: {reason}",
                                 reason=reason, unreachable=True) from None
        except HttpTimeout as error:
            connect = isinstance(error, ConnectTimeoutError)
            reason = f"no {'connect' if connect else 'complete answer'} within {limit:.3g} s"
            raise IdpTimeout(f"identity provider gave {reason}", reason=reason,
                             unreachable=connect) from None
        except (HTTPError, OSError, http.client.HTTPException) as error:
            reason = network_reason(error, scrub)  # a bad status line is quoted in it
            raise IdpUnavailable(f"identity provider unreachable: {reason}",
                                 reason=reason, unreachable=True) from None

    def _manager(self, url: str, grant: Grant | None) -> urllib3.PoolManager:
        """The connection manager for ``url`` as ``grant`` calls it: its proxy, the CAs it
        trusts and the client certificate it presents (https only), made on first use."""
        route = self._proxies.route(url)
        ca = grant.ca if grant is not None else None
        certificate = None
        if grant is not None and grant.auth.method == TLS_CLIENT_AUTH:
            certificate = grant.auth.certificate
        tls = urlsplit(url).scheme == "https"
        identity: _Identity = (
            route.url if route is not None else "", tls,
            _named(ca.pem) if tls and ca is not None else b"",
            _named(certificate.material) if tls and certificate is not None else b"")
        with self._managers_lock:
            manager = self._managers.get(identity)
            if manager is not None:
                self._managers.move_to_end(identity)
                return manager
        made = self._new_manager(route, ca, certificate, tls=tls)
        evicted: list[urllib3.PoolManager] = []
        with self._managers_lock:
            manager = self._managers.setdefault(identity, made)
            while len(self._managers) > TLS_IDENTITIES:
                evicted.append(self._managers.popitem(last=False)[1])
        if manager is not made:
            evicted.append(made)  # another thread made the same one first
        for old in evicted:
            old.clear()
        return manager

    def _new_manager(self, route: ProxyRoute | None, ca: CaBundle | None,
                     certificate: ClientCertificate | None, *, tls: bool
                     ) -> urllib3.PoolManager:
        options: dict[str, Any] = {
            "num_pools": 4, "maxsize": self._pool_size, "retries": False,
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"}}
        if tls:
            try:
                options["ssl_context"] = ssl_context(ca=ca, ca_file=self._config.ca_file,
                                                     certificate=certificate)
            except (ssl.SSLError, OSError) as error:
                what = "client certificate" if certificate is not None else "CA bundle"
                raise CannotAuthenticate(f"TLS cannot load the {what}: "
                                         f"{type(error).__name__}") from None
        manager: urllib3.PoolManager
        if route is None:
            manager = urllib3.PoolManager(**options)
        else:
            manager = urllib3.ProxyManager(route.url, proxy_headers=dict(route.headers),
                                           **options)
        manager.pool_classes_by_scheme = POOL_CLASSES
        return manager


def endpoint_attributes(url: str) -> dict[str, str | int]:
    """What a span says of a token endpoint: host, port and path (never a query)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"http.request.method": "POST", "server.address": parts.hostname or "",
            "server.port": port, "url.scheme": parts.scheme, "url.path": parts.path}


def _named(material: bytes) -> bytes:
    """A key of the pool table for a certificate or CA bundle: a keyed digest, so the
    table never holds key material."""
    return hashlib.blake2b(material, key=_IDENTITY_KEY, digest_size=16).digest()


def _basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 2.3.1: both parts form-encoded, then Basic (as Keycloak expects)."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()
