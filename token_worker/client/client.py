"""The requester side: ask the worker fleet for a token in one call.

:class:`TokenClient` is safe to share between threads. It holds one NATS connection whose
reply space (:mod:`token_worker.nats.replies`: one wildcard inbox subscription under
``inbox_prefix``, an unguessable reply subject per attempt) its calls wait on
(:mod:`token_worker.client.inbox`, which also says which replies are believed); requests
are built and replies read with the worker's own wire
types (:mod:`token_worker.wire`), so the two ends cannot drift apart.

A reply is believed only if it arrives on an attempt's subject, fits the size cap, is a JSON
object and echoes the request's ``request_id`` (and, for a named credential, its name).
Anything else is dropped and counted (:attr:`TokenClient.replies_dropped`), never returned
or cached, and the attempt keeps waiting for the genuine reply. A genuine reply that is not
a well-formed token (visible ASCII, of type ``Bearer``) is a ``bad_reply`` error,
never cached. A body the worker would refuse is refused before it is sent.

Each call runs attempt by attempt (:mod:`token_worker.client.requester`); retries follow what
happened (:mod:`token_worker.client.retries`): "no worker subscribed" is retried for one
``timeout``, a lost NATS connection for the whole budget and said to be the cause, an
attempt with no answer counts against ``retries``, a worker turning the request away
(``shutting_down``, ``overloaded``) is asked again within the budget. Tokens are kept (the
worker's cache: keyed by a digest of the secret, bounded, capped at ``max_ttl``; their life
counted from the send, never longer than ``expires_in`` says) until near expiry, so a
service asking every second sends almost nothing over NATS.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from token_worker import defaults, wire
from token_worker.client.session import Session, Sessions, open_session
from token_worker.config import NatsConfig, parse_nats_urls
from token_worker.errors import ClientClosed, InvalidReply, InvalidRequest, TokenRequestFailed
from token_worker.tokens.cache import CachedToken, CacheKey, TokenCache, cache_key
from token_worker.tokens.model import IssuedToken
from token_worker.wire import (
    INVALID_REQUEST,
    ErrorReply,
    NamedTokenRequest,
    TokenRequest,
    decode,
    encode,
    reply_from_document,
)

NAMED_SUBJECT = "token.named"
"""Prefix of the named-credential subjects: ``token.named.<credential>``."""
MAX_REPLY_SIZE = 1024 * 1024
"""Largest reply believed, in bytes (1 MiB, as x/oauth2 caps a token response)."""
MAX_TTL = 86400.0
"""Longest a token is kept by the client, whatever ``expires_in`` says (one day)."""
CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_-]{1,255}")
"""A credential name: what the worker accepts as the last token of its subject."""
_SUBJECT_TOKEN = re.compile(r"[^\s.*>]+")


@dataclass(frozen=True)
class Token:
    """An access token handed to a requester."""

    access_token: str
    token_type: str
    expires_at: float
    """Absolute expiry, as ``time.time()``."""
    scope: str
    request_id: str

    def expires_in(self, now: float | None = None) -> float:
        """Seconds of life left."""
        return self.expires_at - (time.time() if now is None else now)

    def __repr__(self) -> str:
        return (f"Token(token_type={self.token_type!r}, expires_at={self.expires_at:.0f}, "
                f"scope={self.scope!r}, access_token='********')")


class TokenClient:
    """Requests tokens from the worker fleet; share one instance between threads.

    ``timeout`` bounds one attempt (10 s: longer than the workers' 8 s ``idp.deadline``, so
    a slow IdP yields an answer, not a timeout, and the longest a call waits for a worker to
    subscribe), ``retries`` the attempts after the first one that got no answer (0: exactly
    one attempt, nothing retried), ``budget`` (default: enough for every attempt) the whole
    call. ``cache`` keeps tokens until
    ``expiry_margin`` seconds before they expire, and never longer than ``max_ttl``.
    ``inbox_prefix`` is where replies are awaited (``<inbox_prefix>.<random>.<random>``), so
    NATS permissions can give each service a private reply space. ``max_reply_size``
    bounds a believed reply; ``named_subject`` is the prefix of named-credential requests.

    Safe across ``fork``: a child process opens its own connection on first use and never
    touches its parent's (:mod:`token_worker.client.session`).
    """

    def __init__(
        self,
        nats: NatsConfig | str = defaults.NATS_URL,
        *,
        subject: str = defaults.SUBJECT,
        timeout: float = 10.0,
        retries: int = 2,
        name: str = "token-worker requester",
        cache: bool = True,
        expiry_margin: float = 30.0,
        max_cached: int = 1000,
        now: Callable[[], float] = time.time,
        inbox_prefix: str = "_INBOX",
        named_subject: str = NAMED_SUBJECT,
        max_reply_size: int = MAX_REPLY_SIZE,
        max_ttl: float = MAX_TTL,
    ) -> None:
        _check_subject("inbox_prefix", inbox_prefix)
        _check_subject("named_subject", named_subject)
        if max_reply_size <= 0 or max_ttl <= 0:
            raise ValueError("max_reply_size and max_ttl must be positive")
        config = nats if isinstance(nats, NatsConfig) else NatsConfig(
            urls=_urls(nats), reconnect_wait=1.0, max_reconnect=-1)
        # Requests never wait in the reconnect buffer: the client retries them itself
        # within the budget, so a request is neither sent twice nor held out of sight.
        self._config = replace(config, reconnect_buffer_size=0)
        self._subject = subject
        self._named_subject = named_subject
        self._timeout = timeout
        self._retries = retries
        self._max_ttl = max_ttl
        self._now = now
        new_cache = functools.partial(TokenCache, max_entries=max_cached,
                                      expiry_margin=expiry_margin, refresh_ahead=0.0,
                                      now=now) if cache else lambda: None
        self._sessions = Sessions(functools.partial(
            open_session, config=self._config, name=name, inbox_prefix=inbox_prefix,
            max_reply_size=max_reply_size, timeout=timeout, retries=retries,
            new_cache=new_cache))

    @property
    def requests_sent(self) -> int:
        """Requests that went over NATS from this process (cache hits send none)."""
        return mine.requester.requests_sent if (mine := self._sessions.mine()) else 0

    @property
    def attempts_unanswered(self) -> int:
        """Attempts from this process that got no genuine answer in time."""
        return mine.requester.attempts_unanswered if (mine := self._sessions.mine()) else 0

    @property
    def replies_dropped(self) -> int:
        """Replies not believed (other or no ``request_id``, not JSON, too large, late,
        for no pending request): dropped, never returned or cached."""
        return mine.inbox.dropped if (mine := self._sessions.mine()) else 0

    @property
    def inbox(self) -> str:
        """This process's reply space: replies arrive on ``<inbox>.<random token>``."""
        return self._sessions.here().inbox.prefix

    def __enter__(self) -> TokenClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; calls waiting or made later raise :class:`ClientClosed`.
        In a forked child, only the child's own connection is closed, never the parent's."""
        self._sessions.close()

    def get_token(self, client_id: str | None = None, client_secret: str | None = None,
                  scope: str | None = None, *, credential: str | None = None,
                  budget: float | None = None, skip_cache: bool = False) -> Token:
        """Return a token, or raise a :class:`TokenRequestFailed`.

        Either ``client_id`` and ``client_secret`` (sent to the worker), or ``credential``,
        the name of a credential the worker holds (no secret leaves this process).
        ``scope=None`` asks for the worker's default scope, ``""`` for none.
        ``IdP refused``: ``TokenRequestFailed`` with the IdP's OAuth2 ``error_code``;
        nobody answered after the retries: :class:`NoWorkerAnswered`; the budget ran out:
        :class:`RequestTimedOut`; NATS away: :class:`NatsUnavailable`; after
        :meth:`close`: :class:`ClientClosed`. ``skip_cache`` asks for a fresh token.
        """
        if self._sessions.closed.is_set():
            raise ClientClosed("the TokenClient is closed")
        request_id = str(uuid.uuid4())
        request: TokenRequest | NamedTokenRequest
        if credential is not None:
            if client_id is not None or client_secret is not None:
                raise TypeError("give either credential or client_id and client_secret")
            request = NamedTokenRequest(request_id, scope=scope, skip_cache=skip_cache)
            subject = f"{self._named_subject}.{_credential(credential)}"
            key = request_cache_key(subject, "", "", scope)
        else:
            if client_id is None or client_secret is None:
                raise TypeError("give client_id and client_secret, or credential")
            request = TokenRequest(request_id, client_id, client_secret, scope,
                                   skip_cache=skip_cache)
            key = request_cache_key(self._subject, client_id, client_secret, scope)
        here = self._sessions.here()
        if here.cache is not None and not skip_cache:
            entry = here.cache.get(key)
            if entry is not None:
                return _token_from_entry(entry)
        sent = self._now()
        reply = self._send(here, request.to_bytes(), request_id, credential, budget)
        # expires_in was counted when the reply was built, after the request was sent:
        # counting from the send, the token is never kept longer than it said it lives.
        issued = _issued_from_reply(reply, request_id, sent, self._max_ttl)
        if here.cache is None:
            return _token(issued, issued.issued_at + issued.expires_in, request_id)
        return _token_from_entry(here.cache.put(key, issued, age=self._now() - sent),
                                 request_id)

    def request(self, body: dict[str, Any], *, budget: float | None = None,
                credential: str | None = None) -> dict[str, Any]:
        """Send one raw request body and return the genuine reply as a dict.

        With ``credential`` the body goes to ``<named_subject>.<credential>`` and the reply
        must name that credential. A body without ``request_id`` gets one (on a copy): the
        reply is matched by it. A body the worker would refuse (the wire types' rules: a
        field too long, of the wrong type, with control characters, a missing secret) is
        not sent: :class:`TokenRequestFailed` ``invalid_request`` says why, at once.
        """
        if self._sessions.closed.is_set():
            raise ClientClosed("the TokenClient is closed")
        if not isinstance(body.get("request_id"), str) or not body["request_id"]:
            body = {**body, "request_id": str(uuid.uuid4())}
        return self._send(self._sessions.here(), encode(body), body["request_id"], credential,
                          budget)

    def _send(self, here: Session, payload: bytes, request_id: str, credential: str | None,
              budget: float | None) -> dict[str, Any]:
        """Send one encoded request and return the decoded reply that answers it."""
        subject = self._subject if credential is None else (
            f"{self._named_subject}.{_credential(credential)}")
        check_request(payload, named=credential is not None)
        total = budget if budget is not None else self._timeout * (self._retries + 1) + 1.0
        return here.requester.send(subject, payload, request_id, credential, total)


def check_request(payload: bytes, *, named: bool) -> None:
    """Refuse, before sending, a body the worker would answer ``invalid_request``: it is
    read with the worker's own wire types (:class:`~token_worker.wire.TokenRequest`, or
    :class:`~token_worker.wire.NamedTokenRequest` for a named credential). Sending it would
    cost a round trip, and an answer whose ``request_id`` the worker could not echo (too
    long, not text) would be dropped as not genuine while the call waits out its budget."""
    kind: type[TokenRequest] | type[NamedTokenRequest] = (
        NamedTokenRequest if named else TokenRequest)
    try:
        kind.from_bytes(payload, max_size=len(payload))  # the size is the server's to say
    except InvalidRequest as error:
        raise TokenRequestFailed(INVALID_REQUEST, f"request not sent: {error}",
                                 request_id=error.request_id) from None


def request_cache_key(subject: str, client_id: str, secret: str, scope: str | None
                      ) -> CacheKey:
    """The client's cache key for a request (a keyed digest, never the secret): ``None``
    (the worker's default scope) and ``""`` (no scope) are different requests."""
    marker = "default-scope" if scope is None else "scope"
    return cache_key(subject, client_id, secret, scope or "", marker)


def _urls(raw: str) -> tuple[str, ...]:
    """The worker's URL normalisation (``host:port`` becomes ``nats://host:port``)."""
    try:
        return parse_nats_urls(raw)
    except ValueError as error:
        raise ValueError(f"NATS URL {error}") from None


def _check_subject(field: str, value: str) -> None:
    """A subject prefix: dot-separated tokens, no wildcards, no whitespace."""
    if not value or not all(_SUBJECT_TOKEN.fullmatch(part) for part in value.split(".")):
        raise ValueError(f"{field} must be dot-separated subject tokens without wildcards "
                         f"or spaces, got {value!r}")


def _credential(name: str) -> str:
    if not isinstance(name, str) or not CREDENTIAL_NAME.fullmatch(name):
        raise ValueError(f"credential must match [A-Za-z0-9_-]{{1,255}}, got {name!r}")
    return name


def request_body(client_id: str, client_secret: str, scope: str | None = None, *,
                 skip_cache: bool = False) -> dict[str, Any]:
    """A token request body (:class:`~token_worker.wire.TokenRequest`) as a dict for
    :meth:`TokenClient.request`, with a fresh ``request_id``."""
    request = TokenRequest(str(uuid.uuid4()), client_id, client_secret, scope,
                           skip_cache=skip_cache)
    return dict(decode(request.to_bytes()))


def named_request_body(scope: str | None = None, *, skip_cache: bool = False) -> dict[str, Any]:
    """A named-credential request body (:class:`~token_worker.wire.NamedTokenRequest`): no
    client id, no secret (the worker holds them)."""
    request = NamedTokenRequest(str(uuid.uuid4()), scope=scope, skip_cache=skip_cache)
    return dict(decode(request.to_bytes()))


def _issued_from_reply(reply: dict[str, Any], request_id: str, now: float,
                       max_ttl: float) -> IssuedToken:
    """A well-formed token from a genuine reply, read by the wire types (``expires_in``
    capped at ``max_ttl``; the token a b64token, the type Bearer), or the reply's error as
    :class:`TokenRequestFailed`."""
    try:
        typed = reply_from_document(_whole_seconds(reply))
    except InvalidReply as error:
        raise TokenRequestFailed("bad_reply", f"worker reply carries no well-formed token: "
                                 f"{error}", request_id=request_id) from None
    if isinstance(typed, ErrorReply):
        raise TokenRequestFailed(typed.error_code or "error", typed.error,
                                 request_id=request_id)
    if not wire.ACCESS_TOKEN.fullmatch(typed.access_token):
        raise TokenRequestFailed("bad_reply", "worker reply carries no well-formed token: reply "
                                 "field access_token must be visible ASCII (no space, no "
                                 "control character)", request_id=request_id)
    if typed.token_type.lower() != "bearer":  # RFC 6749 5.1: compared in any case
        raise TokenRequestFailed("bad_reply", "worker reply carries no well-formed token: reply "
                                 "field token_type must be Bearer", request_id=request_id)
    return IssuedToken(access_token=typed.access_token, token_type="Bearer",  # noqa: S106
                       expires_in=int(min(typed.expires_in, max_ttl)), scope=typed.scope,
                       issued_at=now)


def _whole_seconds(reply: dict[str, Any]) -> dict[str, Any]:
    """A float ``expires_in`` is still a number of seconds (JSON numbers are numbers, as the
    worker reads its IdP's): read it as whole seconds. The wire types want an integer, which
    is what a worker sends."""
    expires_in = reply.get("expires_in")
    if isinstance(expires_in, float) and expires_in >= 0:
        return {**reply, "expires_in": int(expires_in)}
    return reply


def _token(issued: IssuedToken, expires_at: float, request_id: str) -> Token:
    return Token(access_token=issued.access_token, token_type=issued.token_type,
                 expires_at=expires_at, scope=issued.scope, request_id=request_id)


def _token_from_entry(entry: CachedToken, request_id: str = "") -> Token:
    return _token(entry.token, entry.expires_at, request_id)
