"""The token broker: cache, single-flight and refresh-ahead in front of the IdP.

- A cache hit answers without I/O, so the worker can answer it on the reading thread.
- Single-flight: however many concurrent requests miss for one key, one IdP call is made;
  the others wait for its result (bounded by the IdP deadline) and share it, success or
  error.
- Refresh-ahead: a hit past the entry's refresh point (inside its servable life, see
  :mod:`token_worker.cache`) queues one background refresh (with the secret of the request
  that triggered it, held only by the queued task) while the still-valid token keeps being
  served, so steady traffic never waits for the IdP. A failed refresh leaves the valid
  token in place. A queued refresh takes the key's in-flight slot only when its thread
  starts: a fetch never waits behind a refresh that has not begun.
- Deadlines: a caller may pass the moment (``time.monotonic()``) its request must be
  answered by; the IdP call and the wait for another request's call end by then.
- Counting: each lookup counts one hit or one miss; ``fetch(skip_cache=True)`` looks
  nothing up and counts nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import NamedTuple

from token_worker.cache import CacheKey, TokenCache, cache_key
from token_worker.errors import IdpError, IdpTimeout
from token_worker.idp import IssuedToken
from token_worker.metrics import Metrics
from token_worker.resilience import ResilientIdp

log = logging.getLogger(__name__)

FROM_CACHE = "cache"
FROM_IDP = "idp"


class Answer(NamedTuple):
    """A token for a requester: what to send and where it came from."""

    token: IssuedToken
    expires_in: int
    """Seconds left now (recomputed for cached tokens)."""
    source: str
    """``cache`` or ``idp`` (the reply's ``token_source``)."""


class TokenQuery(NamedTuple):
    """What a request asks for."""

    client_id: str
    client_secret: str
    scope: str
    auth_method: str | None = None
    """A named credential's own ``client_secret_post``/``_basic``; None: the worker's."""

    def __repr__(self) -> str:
        return f"TokenQuery(client_id={self.client_id!r}, scope={self.scope!r})"


class TokenBroker:
    """Gets tokens through the cache (if any), one IdP call per key at a time."""

    def __init__(self, idp: ResilientIdp, cache: TokenCache | None, *, auth_method: str,
                 follower_timeout: float, metrics: Metrics | None = None,
                 refresher: Executor | None = None) -> None:
        """``refresher`` runs background refreshes (two threads by default; tests pass one
        that runs tasks when they say)."""
        self._metrics = metrics
        self._idp = idp
        self._cache = cache
        self._auth_method = auth_method
        self._follower_timeout = follower_timeout
        self._in_flight: dict[CacheKey, Future[IssuedToken]] = {}
        self._refresh_queued: set[CacheKey] = set()
        self._lock = threading.Lock()
        self._refresher = refresher or ThreadPoolExecutor(max_workers=2,
                                                          thread_name_prefix="refresh")
        self.refreshes = 0
        """Background refreshes queued."""

    @property
    def in_flight(self) -> int:
        """IdP calls under way (fetches and refreshes)."""
        with self._lock:
            return len(self._in_flight)

    def cached(self, query: TokenQuery) -> Answer | None:
        """A servable cached token, or None; never does I/O (safe on the reader thread)."""
        token_url = self._idp.known_token_url
        if self._cache is None or not token_url:
            return None  # no cache, or discovery not done yet (it is I/O: not here)
        key = self._key(query, token_url)
        entry = self._cache.get(key)
        if entry is None:
            if self._metrics is not None:
                self._metrics.cache_miss.inc()
            return None
        if self._metrics is not None:
            self._metrics.cache_hit.inc()
        now = self._cache.now()
        if now >= entry.refresh_at and not self._idp.failing_fast:
            self._refresh_in_background(key, query)  # not while it would only fail at once
        return Answer(entry.token, entry.expires_in(now), FROM_CACHE)

    def fetch(self, query: TokenQuery, *, skip_cache: bool = False,
              deadline: float | None = None) -> Answer:
        """A token from the cache or, once per key at a time, from the IdP.

        ``skip_cache`` goes to the IdP without a lookup (and counts no miss: a caller that
        already looked up with :meth:`cached` passes it). ``deadline`` is the
        ``time.monotonic()`` moment the answer is due; past it, :class:`IdpTimeout`."""
        if not skip_cache:
            answer = self.cached(query)
            if answer is not None:
                return answer
        if deadline is not None and deadline - time.monotonic() <= 0:
            raise IdpTimeout("the request's deadline passed before the identity provider "
                             "could be asked", reason="deadline passed while queued")
        key = self._key(query, self._idp.token_url)
        future, leader = self._join_or_lead(key)
        if leader:
            self._call_idp(key, query, future, deadline)
        wait = self._follower_timeout
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        try:
            token = future.result(timeout=wait)
        except FutureTimeout:
            raise IdpTimeout(f"waited {wait:.3g} s for the identity provider call in flight",
                             reason="follower wait ended") from None
        return Answer(token, self._expires_in(token), FROM_IDP)

    def discard(self, query: TokenQuery) -> bool:
        """Drop the cached token of ``query`` (one the worker cannot send, for instance);
        True if there was one. Never does I/O."""
        token_url = self._idp.known_token_url
        if self._cache is None or not token_url:
            return False
        return self._cache.discard(self._key(query, token_url))

    def close(self) -> None:
        """Stop background refreshes."""
        self._refresher.shutdown(wait=False, cancel_futures=True)

    def _key(self, query: TokenQuery, token_url: str) -> CacheKey:
        return cache_key(token_url, query.client_id, query.client_secret, query.scope,
                         query.auth_method or self._auth_method)

    def _join_or_lead(self, key: CacheKey) -> tuple[Future[IssuedToken], bool]:
        with self._lock:
            future = self._in_flight.get(key)
            if future is not None:
                return future, False
            future = self._in_flight[key] = Future()
            return future, True

    def _expires_in(self, token: IssuedToken) -> int:
        """What a reply says of a fresh token: its life as the cache keeps it (capped at
        ``cache.maxTtl``), so the first reply and later hits agree."""
        if self._cache is None:
            return token.expires_in
        return min(token.expires_in, int(self._cache.max_ttl))

    def _call_idp(self, key: CacheKey, query: TokenQuery, future: Future[IssuedToken],
                  deadline: float | None = None) -> None:
        """The leader's call: its outcome goes to every waiter and, if good, to the cache."""
        try:
            if query.auth_method is None:
                token = self._idp.fetch_token(query.client_id, query.client_secret,
                                              query.scope, deadline=deadline)
            else:
                token = self._idp.fetch_token(query.client_id, query.client_secret,
                                              query.scope, deadline=deadline,
                                              auth_method=query.auth_method)
        except Exception as error:
            self._finish(key, future, error=error)  # every waiter gets the same answer
            if not isinstance(error, IdpError):
                raise
        else:
            if self._cache is not None:
                self._cache.put(key, token)
            self._finish(key, future, token=token)

    def _finish(self, key: CacheKey, future: Future[IssuedToken], *,
                token: IssuedToken | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            self._in_flight.pop(key, None)
        if token is not None:
            future.set_result(token)
        else:
            future.set_exception(error or RuntimeError("no token"))

    def _refresh_in_background(self, key: CacheKey, query: TokenQuery) -> None:
        """Queue one refresh for ``key``; it takes the in-flight slot only when it starts."""
        with self._lock:
            if key in self._refresh_queued or key in self._in_flight:
                return  # a refresh (or a fetch) for this key is already coming
            self._refresh_queued.add(key)
        self.refreshes += 1
        if self._metrics is not None:
            self._metrics.cache_refresh.inc()
        log.debug("refreshing ahead of expiry", extra={"client_id": query.client_id})
        try:
            self._refresher.submit(self._refresh, key, query)
        except RuntimeError:  # shutting down
            with self._lock:
                self._refresh_queued.discard(key)

    def _still_due(self, key: CacheKey) -> bool:
        """The cached token still needs this refresh (no fetch replaced it meanwhile)."""
        if self._cache is None:
            return False
        entry = self._cache.get(key)
        return entry is not None and self._cache.now() >= entry.refresh_at

    def _refresh(self, key: CacheKey, query: TokenQuery) -> None:
        """The refresh, on a refresher thread: lead the key's IdP call now, unless a fetch
        already leads one (its token lands in the cache all the same)."""
        with self._lock:
            self._refresh_queued.discard(key)
            if key in self._in_flight or not self._still_due(key):
                return
            future: Future[IssuedToken] = Future()
            self._in_flight[key] = future
        self._call_idp(key, query, future)
        error = future.exception()
        if error is not None:
            log.warning("refresh ahead failed; the cached token is still served",
                        extra={"client_id": query.client_id, "error": str(error)})
