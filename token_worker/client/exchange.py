"""What a requester sends and what it believes, whatever carries it: shared by
:class:`~token_worker.client.client.TokenClient` (its own threaded connection) and
:class:`~token_worker.client.async_client.AsyncTokenClient` (the app's nats-py connection).

- :func:`ask` turns ``get_token``'s arguments into one request: its body (the worker's own
  wire types, :mod:`token_worker.wire`), the subject it goes to, and the client's cache key
  (a keyed digest, never the secret);
- :func:`check_request` refuses, before sending, a body the worker would refuse;
- :func:`match_reply` says whether a reply answers the request (it echoes the
  ``request_id`` and, for a named credential, names it); anything else is dropped;
- :func:`issued_from_reply` reads a genuine reply into a well-formed token (visible ASCII,
  of type ``Bearer``, its life capped at ``max_ttl``) or the typed error it carries.

No transport, no thread, no event loop here: both clients read replies the same way.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from token_worker import defaults, wire
from token_worker.errors import InvalidReply, InvalidRequest, TokenRequestFailed
from token_worker.tokens.cache import CachedToken, CacheKey, TokenCache, cache_key
from token_worker.tokens.model import IssuedToken
from token_worker.wire import (
    INVALID_REQUEST,
    ErrorReply,
    NamedTokenRequest,
    TokenRequest,
    decode,
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


@dataclass(frozen=True)
class Asked:
    """One ``get_token`` call, ready to send: never shown with its body (it may hold a
    secret)."""

    request_id: str
    payload: bytes
    subject: str
    key: CacheKey
    """The client's cache key for it (a keyed digest, never the secret)."""
    credential: str | None

    def __repr__(self) -> str:
        return f"Asked(request_id={self.request_id!r}, subject={self.subject!r})"


def ask(client_id: str | None, client_secret: str | None, scope: str | None, *,
        credential: str | None, skip_cache: bool, subject: str,
        named_subject: str) -> Asked:
    """The request for ``get_token``'s arguments: either ``client_id`` and
    ``client_secret``, or ``credential`` (``TypeError`` otherwise; ``ValueError`` for a bad
    credential name). ``scope=None`` asks for the worker's default scope, ``""`` for none."""
    request_id = str(uuid.uuid4())
    request: TokenRequest | NamedTokenRequest
    if credential is not None:
        if client_id is not None or client_secret is not None:
            raise TypeError("give either credential or client_id and client_secret")
        request = NamedTokenRequest(request_id, scope=scope, skip_cache=skip_cache)
        subject = named(named_subject, credential)
        key = request_cache_key(subject, "", "", scope)
    else:
        if client_id is None or client_secret is None:
            raise TypeError("give client_id and client_secret, or credential")
        request = TokenRequest(request_id, client_id, client_secret, scope,
                               skip_cache=skip_cache)
        key = request_cache_key(subject, client_id, client_secret, scope)
    return Asked(request_id, request.to_bytes(), subject, key, credential)


def named(named_subject: str, credential: str) -> str:
    """The subject of a named credential's requests (``ValueError`` for a bad name)."""
    if not isinstance(credential, str) or not CREDENTIAL_NAME.fullmatch(credential):
        raise ValueError(f"credential must match [A-Za-z0-9_-]{{1,255}}, got {credential!r}")
    return f"{named_subject}.{credential}"


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


def check_size(payload: bytes, limit: int, request_id: str) -> None:
    """A request larger than the server takes would only cost a disconnect."""
    if len(payload) > limit:
        raise TokenRequestFailed(
            "request_too_large",
            f"request is {len(payload)} bytes, the NATS server's max_payload is {limit}",
            request_id=request_id)


def request_cache_key(subject: str, client_id: str, secret: str, scope: str | None
                      ) -> CacheKey:
    """The client's cache key for a request (a keyed digest, never the secret): ``None``
    (the worker's default scope) and ``""`` (no scope) are different requests."""
    marker = "default-scope" if scope is None else "scope"
    return cache_key(subject, client_id, secret, scope or "", marker)


def check_subject(field: str, value: str) -> None:
    """A subject prefix: dot-separated tokens, no wildcards, no whitespace."""
    if not value or not all(_SUBJECT_TOKEN.fullmatch(part) for part in value.split(".")):
        raise ValueError(f"{field} must be dot-separated subject tokens without wildcards "
                         f"or spaces, got {value!r}")


def check_options(*, inbox_prefix: str, named_subject: str, max_reply_size: int,
                  max_ttl: float, timeout: float, retries: int) -> None:
    """The options both clients take, checked alike (``ValueError`` naming the option).

    A NaN or infinite time would make every comparison with it false: a call that never
    ends, or one that ends at once, instead of an error where the option is given."""
    check_subject("inbox_prefix", inbox_prefix)
    check_subject("named_subject", named_subject)
    if isinstance(max_reply_size, bool) or not isinstance(max_reply_size, int) \
            or max_reply_size <= 0:
        raise ValueError("max_reply_size must be a whole number of bytes above 0")
    check_seconds("max_ttl", max_ttl, longest=math.inf)
    check_seconds("timeout", timeout)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError("retries must be a whole number, 0 or more")


def check_seconds(name: str, value: float, *, longest: float = defaults.LONGEST_WAIT
                  ) -> float:
    """``value`` if it is a finite number of seconds above 0 and at most ``longest``; else
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds above 0, not {value!r}")
    if value > longest:
        raise ValueError(f"{name} must be at most {longest:g} seconds, not {value!r}")
    return float(value)


def call_budget(budget: float | None, *, timeout: float, retries: int) -> float:
    """The seconds one call may take: ``budget`` (checked), or by default enough for every
    attempt and a second to spare."""
    if budget is None:
        return timeout * (retries + 1) + 1.0
    return check_seconds("budget", budget)


def request_body(client_id: str, client_secret: str, scope: str | None = None, *,
                 skip_cache: bool = False) -> dict[str, Any]:
    """A token request body (:class:`~token_worker.wire.TokenRequest`) as a dict for
    :meth:`TokenClient.request <token_worker.client.client.TokenClient.request>`, with a
    fresh ``request_id``."""
    request = TokenRequest(str(uuid.uuid4()), client_id, client_secret, scope,
                           skip_cache=skip_cache)
    return dict(decode(request.to_bytes()))


def named_request_body(scope: str | None = None, *, skip_cache: bool = False) -> dict[str, Any]:
    """A named-credential request body (:class:`~token_worker.wire.NamedTokenRequest`): no
    client id, no secret (the worker holds them)."""
    request = NamedTokenRequest(str(uuid.uuid4()), scope=scope, skip_cache=skip_cache)
    return dict(decode(request.to_bytes()))


def match_reply(payload: bytes, request_id: str, credential: str | None
                ) -> dict[str, Any] | None:
    """The decoded reply if it answers this request, else None (to be dropped).

    It answers when it is a JSON object echoing ``request_id``; for a named ``credential``
    a token must also name it (an error need not, but must not name another). Whether the
    answer is a well-formed token is for the wire types to say
    (:func:`token_worker.wire.reply_from_document`): a malformed answer to this request is
    an error for the caller, not a forgery to wait past.
    """
    try:
        reply = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(reply, dict) or reply.get("request_id") != request_id:
        return None
    if credential is not None:
        named = reply.get("credential")
        if named != credential and (named is not None or "access_token" in reply):
            return None
    return reply


def issued_from_reply(reply: dict[str, Any], request_id: str, now: float,
                      max_ttl: float) -> IssuedToken:
    """A well-formed token from a genuine reply, read by the wire types (``expires_in``
    capped at ``max_ttl``; the token a b64token, the type Bearer), or the reply's error as
    :class:`TokenRequestFailed`. ``now`` is when the request was sent: its life is counted
    from then, so the token is never kept longer than it said it lives."""
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


def token_of(issued: IssuedToken, expires_at: float, request_id: str) -> Token:
    """The :class:`Token` handed out for ``issued``."""
    return Token(access_token=issued.access_token, token_type=issued.token_type,
                 expires_at=expires_at, scope=issued.scope, request_id=request_id)


def token_from_entry(entry: CachedToken, request_id: str = "") -> Token:
    """The :class:`Token` of a cache entry (its expiry as the cache counts it)."""
    return token_of(entry.token, entry.expires_at, request_id)


def token_from_reply(reply: dict[str, Any], asked: Asked, sent: float, *,
                     cache: TokenCache | None, now: Callable[[], float],
                     max_ttl: float) -> Token:
    """The token a genuine reply to ``asked`` carries (sent at ``sent``), kept in ``cache``
    if there is one; or the reply's error as :class:`TokenRequestFailed`."""
    issued = issued_from_reply(reply, asked.request_id, sent, max_ttl)
    if cache is None:
        return token_of(issued, issued.issued_at + issued.expires_in, asked.request_id)
    # expires_in was counted when the reply was built, after the request was sent:
    # counting from the send, the token is never kept longer than it said it lives.
    return token_from_entry(cache.put(asked.key, issued, age=now() - sent), asked.request_id)
