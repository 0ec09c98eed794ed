"""The requester side: ask the worker fleet for a token in one call.

:class:`TokenClient` is safe to share between threads. It holds one NATS connection with
one wildcard inbox subscription; every request gets its own reply subject under it, and
replies are matched to waiting callers by that subject (never pynats2's ``request()``,
which re-creates its reader thread twice per call). A request that no worker answers is
retried with tenacity within the caller's time budget; an answer with an error raises a
typed error carrying the reply's ``error_code``. Tokens are kept (same cache as the
worker's, keyed by a digest of the secret) until near expiry, so a service asking every
second sends almost nothing over NATS.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from token_worker import defaults
from token_worker.cache import CachedToken, TokenCache, cache_key
from token_worker.config import NatsConfig
from token_worker.connection import Message, NatsConnection
from token_worker.errors import (
    NatsConnectionError,
    NoWorkerAnswered,
    RequestTimedOut,
    TokenRequestFailed,
)
from token_worker.idp import IssuedToken
from token_worker.messages import decode, encode, now_rfc3339

NO_RESPONDERS = 503
"""The status the server sends back at once when nobody is subscribed to the subject."""


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


class _Waiter:
    """One caller waiting for the reply on its reply subject."""

    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: Message | None = None


class TokenClient:
    """Requests tokens from the worker fleet; share one instance between threads.

    ``timeout`` bounds one attempt (10 s: longer than the workers' 8 s ``idp.deadline``, so
    a slow IdP yields an answer, not a timeout), ``retries`` the attempts after the first
    one that found no worker or no answer, ``budget`` (default: enough for every attempt)
    the whole call. ``cache`` keeps tokens until ``expiry_margin`` seconds before they
    expire.
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
    ) -> None:
        self._config = nats if isinstance(nats, NatsConfig) else NatsConfig(
            urls=tuple(url.strip() for url in nats.split(",")), reconnect_wait=1.0,
            max_reconnect=-1)
        self._subject = subject
        self._timeout = timeout
        self._retries = retries
        self._inbox = f"_INBOX.{secrets.token_hex(11)}"
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._sequence = 0
        self._now = now
        self._cache = TokenCache(max_entries=max_cached, expiry_margin=expiry_margin,
                                 refresh_ahead=0.0, now=now) if cache else None
        self.requests_sent = 0
        """Requests that went over NATS (cache hits send none)."""
        self.attempts_unanswered = 0
        """Attempts that got no answer (and were retried while the budget allowed)."""
        self._connection = NatsConnection(self._config, name, no_responders=True,
                                          first_connect_rounds=1)
        self._connection.connect()
        self._connection.subscribe(f"{self._inbox}.*", self._on_reply)

    def __enter__(self) -> TokenClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; callers still waiting get ``NoWorkerAnswered``."""
        self._connection.close()
        with self._lock:
            waiters, self._waiters = list(self._waiters.values()), {}
        for waiter in waiters:
            waiter.event.set()

    def get_token(self, client_id: str, client_secret: str, scope: str | None = None, *,
                  budget: float | None = None, skip_cache: bool = False) -> Token:
        """Return a token for the client, or raise a :class:`TokenRequestFailed`.

        ``IdP refused``: ``TokenRequestFailed`` with the IdP's OAuth2 ``error_code``;
        nobody answered after the retries: :class:`NoWorkerAnswered`; the budget ran out:
        :class:`RequestTimedOut`. ``skip_cache`` asks for a fresh token (from the IdP).
        """
        key = cache_key(self._subject, client_id, client_secret, scope or "", "nats")
        if self._cache is not None and not skip_cache:
            entry = self._cache.get(key)
            if entry is not None:
                return _token_from_entry(entry)
        body = request_body(client_id, client_secret, scope, skip_cache=skip_cache)
        reply = self.request(body, budget=budget)
        issued = _issued_from_reply(reply, body["request_id"], self._now())
        if self._cache is None:
            return _token(issued, issued.issued_at + issued.expires_in, body["request_id"])
        return _token_from_entry(self._cache.put(key, issued), body["request_id"])

    def request(self, body: dict[str, Any], *, budget: float | None = None) -> dict[str, Any]:
        """Send one raw request body and return the reply as a dict (retrying no-answers)."""
        payload = encode(body)
        total = budget if budget is not None else self._timeout * (self._retries + 1) + 1.0
        retrying = Retrying(
            stop=stop_after_attempt(self._retries + 1) | stop_after_delay(total),
            wait=wait_random_exponential(multiplier=0.1, max=1.0),
            retry=retry_if_exception_type(NoWorkerAnswered),
            reraise=True,
        )
        started = time.monotonic()
        try:
            return retrying(self._attempt, payload, started + total, body.get("request_id", ""))
        except NoWorkerAnswered:
            if time.monotonic() - started >= total:
                raise RequestTimedOut(f"no reply within the {total:g} s budget",
                                      request_id=str(body.get("request_id", ""))) from None
            raise

    def _attempt(self, payload: bytes, deadline: float, request_id: str) -> dict[str, Any]:
        timeout = min(self._timeout, deadline - time.monotonic())
        if timeout <= 0:
            raise NoWorkerAnswered("time budget spent", request_id=request_id)
        with self._lock:
            self._sequence += 1
            self.requests_sent += 1
            reply_subject = f"{self._inbox}.{self._sequence}"
            waiter = self._waiters[reply_subject] = _Waiter()
        try:
            try:
                self._connection.publish(self._subject, payload, reply=reply_subject)
            except NatsConnectionError as error:
                raise NoWorkerAnswered(f"not connected to NATS: {error}",
                                       request_id=request_id) from None
            if not waiter.event.wait(timeout) or waiter.message is None:
                with self._lock:
                    self.attempts_unanswered += 1
                raise NoWorkerAnswered(f"no worker answered within {timeout:g} s",
                                       request_id=request_id)
        finally:
            with self._lock:
                self._waiters.pop(reply_subject, None)
        message = waiter.message
        if message.status == NO_RESPONDERS:
            raise NoWorkerAnswered(f"no worker is subscribed to {self._subject}",
                                   request_id=request_id)
        try:
            reply = decode(message.payload)
        except ValueError:
            raise TokenRequestFailed("bad_reply", "worker reply is not JSON",
                                     request_id=request_id) from None
        if not isinstance(reply, dict):
            raise TokenRequestFailed("bad_reply", "worker reply is not a JSON object",
                                     request_id=request_id)
        return reply

    def _on_reply(self, message: Message) -> None:
        with self._lock:
            waiter = self._waiters.get(message.subject)
        if waiter is not None:
            waiter.message = message
            waiter.event.set()


def request_body(client_id: str, client_secret: str, scope: str | None = None, *,
                 skip_cache: bool = False) -> dict[str, Any]:
    """A token request as the wire contract has it, with a fresh ``request_id``."""
    body: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "client_id": client_id,
        "client_secret": client_secret,
        "timestamp": now_rfc3339(),
    }
    if scope is not None:
        body["scope"] = scope
    if skip_cache:
        body["skip_cache"] = True
    return body


def _issued_from_reply(reply: dict[str, Any], request_id: str, now: float) -> IssuedToken:
    if reply.get("error"):
        raise TokenRequestFailed(str(reply.get("error_code") or "error"), str(reply["error"]),
                                 request_id=request_id)
    token = reply.get("access_token")
    expires_in = reply.get("expires_in", 0)
    if (not isinstance(token, str) or not token or isinstance(expires_in, bool)
            or not isinstance(expires_in, int)):
        raise TokenRequestFailed("bad_reply", "worker reply carries no token",
                                 request_id=request_id)
    return IssuedToken(access_token=token, token_type=str(reply.get("token_type") or "Bearer"),
                       expires_in=expires_in, scope=str(reply.get("scope") or ""),
                       issued_at=now)


def _token(issued: IssuedToken, expires_at: float, request_id: str) -> Token:
    return Token(access_token=issued.access_token, token_type=issued.token_type,
                 expires_at=expires_at, scope=issued.scope, request_id=request_id)


def _token_from_entry(entry: CachedToken, request_id: str = "") -> Token:
    return _token(entry.token, entry.expires_at, request_id)
