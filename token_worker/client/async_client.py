"""The requester for asyncio services: ask the worker fleet for a token over the nats-py
connection the app already has.

:class:`AsyncTokenClient` keeps :class:`~token_worker.client.client.TokenClient`'s promises
on the event loop, and never blocks it: the same request bodies, checks and cache keys
(:mod:`token_worker.client.exchange`), a reply space of its own on the app's connection
(an unguessable inbox under ``inbox_prefix``), replies believed only when they echo the
request's ``request_id`` and fit ``max_reply_size``, the same retry policy
(:mod:`token_worker.client.retries`), the same :class:`~token_worker.client.exchange.Token`
and typed errors, a local cache capped at ``max_ttl``, and single flight per key among
coroutines: however many ask at once for a token it does not hold, one request goes over
NATS and all of them get its answer (a ``skip_cache`` call shares only with other
``skip_cache`` calls). A caller that is cancelled leaves the request running for the others;
its token lands in the cache.

nats-py is the app's (``pip install 'token-worker[asyncio]'``); this module does not import
it, nor the threaded connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from token_worker import defaults, tracing
from token_worker.client.async_requester import AsyncInbox, AsyncRequester, NatsClient
from token_worker.client.exchange import (
    MAX_REPLY_SIZE,
    MAX_TTL,
    NAMED_SUBJECT,
    Asked,
    Token,
    ask,
    call_budget,
    check_options,
    check_request,
    token_from_entry,
    token_from_reply,
)
from token_worker.errors import ClientClosed
from token_worker.tokens.cache import CacheKey, TokenCache

__all__ = ["AsyncTokenClient"]


class AsyncTokenClient:
    """Requests tokens from the worker fleet over a connected nats-py client ``nc``; share
    one between the coroutines of a loop. The settings are :class:`TokenClient`'s (see
    there); the connection is the app's to close, :meth:`close` only ends this client's
    subscription and calls.
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        subject: str = defaults.SUBJECT,
        timeout: float = 10.0,
        retries: int = 2,
        cache: bool = True,
        expiry_margin: float = 30.0,
        max_cached: int = 1000,
        now: Callable[[], float] = time.time,
        inbox_prefix: str = "_INBOX",
        named_subject: str = NAMED_SUBJECT,
        max_reply_size: int = MAX_REPLY_SIZE,
        max_ttl: float = MAX_TTL,
    ) -> None:
        check_options(inbox_prefix=inbox_prefix, named_subject=named_subject,
                      max_reply_size=max_reply_size, max_ttl=max_ttl, timeout=timeout,
                      retries=retries)
        self._subject = subject
        self._named_subject = named_subject
        self._timeout = timeout
        self._retries = retries
        self._max_ttl = max_ttl
        self._now = now
        self._cache = TokenCache(max_entries=max_cached, expiry_margin=expiry_margin,
                                 refresh_ahead=0.0, now=now) if cache else None
        self._inbox = AsyncInbox(nc, inbox_prefix, max_reply_size)
        self._requester = AsyncRequester(nc, self._inbox, timeout=timeout, retries=retries)
        self._flights: dict[tuple[CacheKey, bool], asyncio.Future[Token]] = {}

    @property
    def requests_sent(self) -> int:
        """Requests that went over NATS (cache hits and joined flights send none)."""
        return self._requester.requests_sent

    @property
    def attempts_unanswered(self) -> int:
        """Attempts that got no genuine answer in time."""
        return self._requester.attempts_unanswered

    @property
    def replies_dropped(self) -> int:
        """Replies not believed (other or no ``request_id``, not JSON, too large, late,
        for no pending request): dropped, never returned or cached."""
        return self._inbox.dropped

    @property
    def inbox(self) -> str:
        """This client's reply space: replies arrive on ``<inbox>.<random token>``."""
        return self._inbox.prefix

    async def __aenter__(self) -> AsyncTokenClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Unsubscribe this client's reply space; calls waiting or made later raise
        :class:`ClientClosed`. The nats-py connection stays open (it is the app's)."""
        await self._inbox.close()

    async def get_token(self, client_id: str | None = None, client_secret: str | None = None,
                        scope: str | None = None, *, credential: str | None = None,
                        budget: float | None = None, skip_cache: bool = False) -> Token:
        """Return a token, or raise a :class:`TokenRequestFailed`; as
        :meth:`TokenClient.get_token <token_worker.client.client.TokenClient.get_token>`.

        Either ``client_id`` and ``client_secret`` (sent to the worker), or ``credential``,
        the name of a credential the worker holds. Concurrent calls for the same token share
        one request (and, joining it, its ``budget``).
        """
        if self._inbox.closed:
            raise ClientClosed("the AsyncTokenClient is closed")
        asked = ask(client_id, client_secret, scope, credential=credential,
                    skip_cache=skip_cache, subject=self._subject,
                    named_subject=self._named_subject)
        if self._cache is not None and not skip_cache:
            entry = self._cache.get(asked.key)
            if entry is not None:
                return token_from_entry(entry)
        key = (asked.key, skip_cache)
        flight = self._flights.get(key)
        if flight is None:
            check_request(asked.payload, named=credential is not None)
            total = call_budget(budget, timeout=self._timeout, retries=self._retries)
            flight = asyncio.ensure_future(self._fetch(asked, total))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)

    async def _fetch(self, asked: Asked, total: float) -> Token:
        """One request over NATS within ``total`` seconds, in a span of its own when tracing
        (its context goes in the request's headers); its token kept in the cache."""
        sent = self._now()
        with tracing.requesting(asked.subject, asked.request_id) as headers:
            reply = await self._requester.send(asked.subject, asked.payload, asked.request_id,
                                               asked.credential, total, headers=headers)
            return token_from_reply(reply, asked, sent, cache=self._cache, now=self._now,
                                    max_ttl=self._max_ttl)

    def _landed(self, key: tuple[CacheKey, bool], done: asyncio.Future[Any]) -> None:
        """A flight ended: the next miss starts a new one. Its outcome is read here, so a
        flight whose callers were all cancelled is not reported as never retrieved."""
        if self._flights.get(key) is done:
            del self._flights[key]
        if not done.cancelled():
            done.exception()
