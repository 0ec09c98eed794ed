"""The token broker: cache, single-flight and refresh-ahead in front of the IdP.

The IdP is whatever implements :class:`~token_worker.tokens.model.Issuer` (in a worker,
:class:`~token_worker.idp.resilience.ResilientIdp`): the broker never imports the IdP client.

- A cache hit answers without I/O, so the worker can answer it on the reading thread.
- Single-flight: however many concurrent requests miss for one key, one IdP call is made;
  the others wait for its result (bounded by the IdP deadline) and share it, success or
  error.
- Refresh-ahead: a hit past the entry's refresh point (inside its servable life, see
  :mod:`token_worker.tokens.cache`) queues one background refresh (with the secret of the request
  that triggered it, held only by the queued task) while the still-valid token keeps being
  served, so steady traffic never waits for the IdP. A failed refresh leaves the valid
  token in place. A queued refresh takes the key's in-flight slot only when its thread
  starts: a fetch never waits behind a refresh that has not begun.
- Deadlines: a caller may pass the moment (``time.monotonic()``) its request must be
  answered by; the IdP call and the wait for another request's call end by then.
- Counting: each lookup counts one hit or one miss; ``fetch(skip_cache=True)`` looks
  nothing up and counts nothing, and :meth:`TokenBroker.fetch_after_miss` (the pool
  thread's call after a miss on the reading thread) looks again without counting.
- The shared tier (:mod:`token_worker.tokens.shared`), when given, sits between the local
  cache and the IdP, only ever on a pool or refresher thread: the key's single flight
  leader reads it, and on a miss takes the key's fleet-wide lease (one replica calls the
  IdP) or waits for the lease holder's token, calling the IdP itself only when none comes.
  A token from the IdP goes to both tiers; one from the shared tier enters the local cache
  with what is left of its life. Refresh-ahead takes the same lease, so a fleet refreshes
  each token once. ``skip_cache`` reads neither tier, and still stores in both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import NamedTuple

from token_worker.errors import IdpError, IdpTimeout
from token_worker.metrics import Metrics, NullMetrics
from token_worker.tokens.cache import CachedToken, CacheKey, TokenCache, cache_key
from token_worker.tokens.model import IssuedToken, Issuer
from token_worker.tokens.shared import SharedKey, SharedTier

log = logging.getLogger(__name__)

FROM_CACHE = "cache"
FROM_IDP = "idp"
EXPIRY_SLACK = 1.0
"""Seconds by which a shared token must outlive the local one to count as a refresh (the
two tiers count the same expiry on different clocks' arithmetic)."""


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

    def __init__(self, idp: Issuer, cache: TokenCache | None, *, auth_method: str,
                 follower_timeout: float, metrics: Metrics | None = None,
                 refresher: Executor | None = None, shared: SharedTier | None = None,
                 lease_ttl: float | None = None) -> None:
        """``refresher`` runs background refreshes (two threads by default; tests pass one
        that runs tasks when they say). ``shared`` is the fleet's tier (used with a local
        cache only); ``lease_ttl`` how long its lease on a key lasts (``idp.deadline``: a
        leader that dies frees the key by then)."""
        self._metrics = NullMetrics() if metrics is None else metrics
        self._idp = idp
        self._cache = cache
        self._shared = shared if cache is not None else None
        self._lease_ttl = follower_timeout if lease_ttl is None else lease_ttl
        self._auth_method = auth_method
        self._follower_timeout = follower_timeout
        self._in_flight: dict[CacheKey, Future[Answer]] = {}
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

    @property
    def shared(self) -> SharedTier | None:
        """The shared tier, if any (for its counts and its preparation at start)."""
        return self._shared

    def cached(self, query: TokenQuery) -> Answer | None:
        """A servable cached token, or None; never does I/O (safe on the reader thread)."""
        token_url = self._idp.known_token_url
        if self._cache is None or not token_url:
            return None  # no cache, or discovery not done yet (it is I/O: not here)
        key = self._key(query, token_url)
        entry = self._cache.get(key)
        if entry is None:
            self._metrics.cache_miss.inc()
            return None
        self._metrics.cache_hit.inc()
        now = self._cache.now()
        if now >= entry.refresh_at and not self._idp.failing_fast:
            self._refresh_in_background(key, query)  # not while it would only fail at once
        return Answer(entry.token, entry.expires_in(now), FROM_CACHE)

    def fetch(self, query: TokenQuery, *, skip_cache: bool = False,
              deadline: float | None = None) -> Answer:
        """A token from the cache or, once per key at a time, from the shared tier or the
        IdP.

        ``skip_cache`` goes to the IdP without reading either tier (and counts no miss); the
        token still goes to both. ``deadline`` is the ``time.monotonic()`` moment the answer
        is due; past it, :class:`IdpTimeout`."""
        if not skip_cache:
            answer = self.cached(query)
            if answer is not None:
                return answer
        return self._fetch(query, deadline, read_tiers=not skip_cache, recheck=False)

    def fetch_after_miss(self, query: TokenQuery, deadline: float | None = None) -> Answer:
        """What a pool thread calls after :meth:`cached` missed on the reading thread: look
        the local cache up again without counting a second miss (a fetch that finished
        since has cached the token), else join or lead the key's single flight."""
        return self._fetch(query, deadline, read_tiers=True, recheck=True)

    def discard(self, query: TokenQuery) -> bool:
        """Drop the cached token of ``query`` (one the worker cannot send, for instance);
        True if there was one. Never does I/O (the shared tier keeps its copy: another
        replica's server may take it)."""
        token_url = self._idp.known_token_url
        if self._cache is None or not token_url:
            return False
        return self._cache.discard(self._key(query, token_url))

    def close(self) -> None:
        """Stop background refreshes."""
        self._refresher.shutdown(wait=False, cancel_futures=True)

    # --- the single flight ------------------------------------------------------------------

    def _key(self, query: TokenQuery, token_url: str) -> CacheKey:
        return cache_key(token_url, query.client_id, query.client_secret, query.scope,
                         query.auth_method or self._auth_method)

    def _fetch(self, query: TokenQuery, deadline: float | None, *, read_tiers: bool,
               recheck: bool) -> Answer:
        if deadline is not None and deadline - time.monotonic() <= 0:
            raise IdpTimeout("the request's deadline passed before the identity provider "
                             "could be asked", reason="deadline passed while queued")
        key = self._key(query, self._idp.token_url)
        with self._lock:
            future = self._in_flight.get(key)
            leader = future is None
            if future is None:
                # A leader caches its token before it leaves the in-flight table, so with
                # no flight under way the cache already holds whatever the last one got.
                answer = self._local(key) if recheck else None
                if answer is not None:
                    return answer
                future = self._in_flight[key] = Future()
        if leader:
            self._lead(key, future, lambda: self._obtain(key, query, deadline, read_tiers))
        wait = self._follower_timeout
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            raise IdpTimeout(f"waited {wait:.3g} s for the identity provider call in flight",
                             reason="follower wait ended") from None

    def _local(self, key: CacheKey) -> Answer | None:
        """The cached answer, looked up without counting."""
        if self._cache is None:
            return None
        entry = self._cache.get(key)
        if entry is None:
            return None
        return Answer(entry.token, entry.expires_in(self._cache.now()), FROM_CACHE)

    def _lead(self, key: CacheKey, future: Future[Answer], obtain: Callable[[], Answer]
              ) -> None:
        """The leader's work: its outcome goes to every waiter (the tiers hold it by then)."""
        try:
            answer = obtain()
        except Exception as error:
            self._finish(key, future, error=error)  # every waiter gets the same answer
            if not isinstance(error, IdpError):
                raise
        else:
            self._finish(key, future, answer=answer)

    def _finish(self, key: CacheKey, future: Future[Answer], *,
                answer: Answer | None = None, error: BaseException | None = None) -> None:
        with self._lock:
            self._in_flight.pop(key, None)
        if answer is not None:
            future.set_result(answer)
        else:
            future.set_exception(error or RuntimeError("no token"))

    # --- the tiers behind the local cache ---------------------------------------------------

    def _obtain(self, key: CacheKey, query: TokenQuery, deadline: float | None,
                read_tiers: bool) -> Answer:
        """The leader's way to a token: the shared tier, its lease (or the lease holder's
        token), then the IdP."""
        shared = self._shared
        if shared is None:
            return self._from_idp(key, query, deadline)
        shared_key = self._shared_key(shared, key, query)
        if not read_tiers:
            return self._from_idp(key, query, deadline, shared_key)
        token = shared.lookup(shared_key)
        if token is not None:
            return self._keep(key, token)
        if shared.lease(shared_key, self._lease_ttl):
            try:
                return self._from_idp(key, query, deadline, shared_key)
            finally:
                shared.release(shared_key)
        token = shared.wait(shared_key, self._wait_budget(deadline))
        if token is not None:
            return self._keep(key, token)
        return self._from_idp(key, query, deadline, shared_key)  # nothing came: take over

    def _wait_budget(self, deadline: float | None) -> float:
        """How long to wait for another replica's token: the lease's life, but at most half
        the request's time left, so a takeover still has time for its own IdP call."""
        if deadline is None:
            return self._lease_ttl
        return max(0.0, min(self._lease_ttl, (deadline - time.monotonic()) / 2))

    def _shared_key(self, shared: SharedTier, key: CacheKey, query: TokenQuery) -> SharedKey:
        return shared.key(key.token_url, query.client_id, query.client_secret, key.scopes,
                          query.auth_method or self._auth_method)

    def _from_idp(self, key: CacheKey, query: TokenQuery, deadline: float | None,
                  shared_key: SharedKey | None = None) -> Answer:
        """One IdP call; its token goes to the local cache and the shared tier."""
        token = self._idp.fetch_token(query.client_id, query.client_secret, query.scope,
                                      deadline=deadline, auth_method=query.auth_method)
        if self._cache is not None:
            self._cache.put(key, token)
        if shared_key is not None and self._shared is not None:
            self._shared.store(shared_key, token)
        return Answer(token, self._expires_in(token), FROM_IDP)

    def _keep(self, key: CacheKey, token: IssuedToken) -> Answer:
        """A token from the shared tier: into the local cache with the life it has left."""
        cache = self._cache
        if cache is None:  # not reached: the shared tier is used with a local cache only
            return Answer(token, self._expires_in(token), FROM_CACHE)
        now = cache.now()
        entry = cache.put(key, token, age=max(0.0, now - token.issued_at))
        return Answer(token, entry.expires_in(now), FROM_CACHE)

    def _expires_in(self, token: IssuedToken) -> int:
        """What a reply says of a fresh token: its life as the cache keeps it (capped at
        ``cache.maxTtl``), so the first reply and later hits agree."""
        if self._cache is None:
            return token.expires_in
        return min(token.expires_in, int(self._cache.max_ttl))

    # --- refresh-ahead ----------------------------------------------------------------------

    def _refresh_in_background(self, key: CacheKey, query: TokenQuery) -> None:
        """Queue one refresh for ``key``; it takes the in-flight slot only when it starts."""
        with self._lock:
            if key in self._refresh_queued or key in self._in_flight:
                return  # a refresh (or a fetch) for this key is already coming
            self._refresh_queued.add(key)
        self.refreshes += 1
        self._metrics.cache_refresh.inc()
        log.debug("refreshing ahead of expiry", extra={"client_id": query.client_id})
        try:
            self._refresher.submit(self._refresh, key, query)
        except RuntimeError:  # shutting down
            with self._lock:
                self._refresh_queued.discard(key)

    def _due(self, key: CacheKey) -> CachedToken | None:
        """The cached entry if it still needs this refresh (no fetch replaced it meanwhile)."""
        if self._cache is None:
            return None
        entry = self._cache.get(key)
        return entry if entry is not None and self._cache.now() >= entry.refresh_at else None

    def _refresh(self, key: CacheKey, query: TokenQuery) -> None:
        """The refresh, on a refresher thread: lead the key's flight now, unless a fetch
        already leads one (its token lands in the cache all the same)."""
        with self._lock:
            self._refresh_queued.discard(key)
            entry = None if key in self._in_flight else self._due(key)
            if entry is None:
                return
            future: Future[Answer] = Future()
            self._in_flight[key] = future
        self._lead(key, future, lambda: self._renew(key, query, entry))
        error = future.exception()
        if error is not None:
            log.warning("refresh ahead failed; the cached token is still served",
                        extra={"client_id": query.client_id, "error": str(error)})

    def _renew(self, key: CacheKey, query: TokenQuery, entry: CachedToken) -> Answer:
        """A newer token for ``entry``: with a shared tier, only the replica holding the
        key's lease asks the IdP; the others take its token from the bucket."""
        shared = self._shared
        if shared is None:
            return self._from_idp(key, query, None)
        shared_key = self._shared_key(shared, key, query)
        newer_than = entry.expires_at + EXPIRY_SLACK
        if shared.lease(shared_key, self._lease_ttl, newer_than=newer_than):
            try:
                return self._from_idp(key, query, None, shared_key)
            finally:
                shared.release(shared_key)
        token = shared.wait(shared_key, self._lease_ttl, newer_than=newer_than)
        if token is not None:
            return self._keep(key, token)
        return self._from_idp(key, query, None, shared_key)  # nothing came: take over
