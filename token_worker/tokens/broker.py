"""The token broker: cache, single flight, refresh-ahead and the bulkheads in front of the IdP.

A request the cache cannot answer (or one that asks ``skip_cache``) goes through
:meth:`TokenBroker.ask`, on the connection's reader thread and without I/O, which answers
it at once, joins a fetch under way, or starts one:

- **Answered at once**: a key the bulkheads hold back (:mod:`token_worker.tokens.bulkheads`:
  a refusal remembered, the key's back-off, the endpoint's circuit, a client's
  ``Retry-After``), or a client whose call budget is spent (a still-servable cached token
  saying the fresh fetch was refused, or ``rate_limited`` with ``retry_after``).
- **Joined**: another request for the key is being fetched for. The request waits for that
  fetch's outcome without a thread or a pool slot (a :class:`Flight` callback); at most
  ``max_waiters_per_key`` per key and ``max_waiting`` in all, so memory stays bounded.
- **Started**: the request leads a :class:`Flight` whose work is queued on the worker's
  pool (only IdP work counts against it). When a thread takes it, the deadline decides: a
  fetch with less time left than the IdP needs (:meth:`Issuer.time_needed`) is answered
  ``overloaded`` and the IdP is not called. Otherwise the shared tier is read, its lease
  taken (or the lease holder's token awaited, again without a thread), and the IdP asked.

A fetch's failure is the bulkheads' to judge; only evidence about the endpoint opens its
circuit (:mod:`token_worker.idp.circuit`). Tokens go to the local cache and the shared tier
before the flight's waiters get them. Refresh-ahead: a hit past the entry's refresh point
queues one background refresh (:mod:`token_worker.tokens.refresh`), while the valid token
keeps being served; it takes the key's flight only when it starts.

The module is longer than 400 lines because the broker is one object whose steps (on the
reader thread, a pool thread, a refresh thread) share one lock and one table of flights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor

from token_worker import tracing
from token_worker.errors import IdpError, NoToken, Overloaded, RateLimited, ShuttingDown
from token_worker.metrics import Metrics, NullMetrics
from token_worker.tokens.bulkheads import Guards
from token_worker.tokens.cache import CachedToken, CacheKey, TokenCache, cache_key, scope_set
from token_worker.tokens.flight import Flight
from token_worker.tokens.model import (
    FROM_CACHE,
    FROM_IDP,
    Answer,
    InlineWork,
    IssuedToken,
    Issuer,
    Outcome,
    TokenQuery,
    WorkQueue,
)
from token_worker.tokens.refresh import RefreshQueue
from token_worker.tokens.shared import Lease, SharedKey, SharedTier

log = logging.getLogger(__name__)

EXPIRY_SLACK = 1.0
"""Seconds by which a shared token must outlive the local one to count as a refresh (the
two tiers count the same expiry on different clocks' arithmetic)."""


class TokenBroker:
    """Gets tokens through the cache (if any), one fetch per key at a time, behind the
    bulkheads."""

    def __init__(self, issuer: Issuer, cache: TokenCache | None, *, auth_method: str,
                 guards: Guards | None = None, work: WorkQueue | None = None,
                 max_waiters_per_key: int = 1000, max_waiting: int = 10_000,
                 lease_ttl: float = 8.0, metrics: Metrics | None = None,
                 refresher: Executor | None = None, shared: SharedTier | None = None,
                 endpoints: Callable[[str], Issuer] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``work`` runs the IdP work (the worker's pool; without one, the thread that asks
        runs it: for callers outside a worker); ``refresher`` runs background
        refreshes (two threads by default; tests pass one that runs tasks when they say).
        ``shared`` is the fleet's tier (used with a local cache only); ``lease_ttl`` how
        long its lease on a key lasts (``idp.deadline``: a leader that dies frees the key
        by then). ``endpoints`` gives the issuer of a token endpoint other than the
        worker's (a credential's ``token_url``: its own circuit, ceiling and holds); without
        it, ``issuer`` serves them all."""
        self._metrics = NullMetrics() if metrics is None else metrics
        self._issuer = issuer
        self._token_url = ""
        """The issuer's token endpoint, once known without I/O (see :meth:`key`)."""
        self._endpoints = endpoints
        self._cache = cache
        self._shared = shared if cache is not None else None
        self._auth_method = auth_method
        self._guards = guards if guards is not None else Guards.from_defaults(clock=clock)
        self._work: WorkQueue = work if work is not None else InlineWork()
        self._max_waiters_per_key = max_waiters_per_key
        self._max_waiting = max_waiting
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._in_flight: dict[CacheKey, Flight[CacheKey, Answer]] = {}
        self._lock = threading.Lock()
        self._waiting = 0
        self._refreshes = RefreshQueue(self._refresh, refresher)
        if self._shared is not None:
            self._shared.on_recreated = self._give_back_to_bucket

    @property
    def refreshes(self) -> int:
        """Background refreshes queued so far."""
        return self._refreshes.count

    @property
    def in_flight(self) -> int:
        """Fetches under way (requests' and refreshes')."""
        with self._lock:
            return len(self._in_flight)

    @property
    def waiting(self) -> int:
        """Requests waiting for a fetch under way (holding no thread)."""
        return self._waiting

    @property
    def shared(self) -> SharedTier | None:
        """The shared tier, if any (for its counts and its preparation at start)."""
        return self._shared

    # --- the reader thread: no I/O ----------------------------------------------------------

    def key(self, query: TokenQuery) -> CacheKey | None:
        """The query's cache key, or None while the token endpoint is not known without
        I/O (OIDC discovery still to come)."""
        grant = query.grant
        if grant is not None:
            token_url = grant.token_url or self._issuer.known_token_url
            if not token_url:
                return None
            return CacheKey(token_url, query.client_id, grant.local_digest,
                            scope_set(query.scope), grant.auth.method)
        token_url = self._token_url or self._learn_token_url()
        if not token_url:
            return None
        return cache_key(token_url, query.client_id, query.client_secret, query.scope,
                         query.auth_method or self._auth_method)

    def _learn_token_url(self) -> str:
        """The issuer's token endpoint once it is known (it never changes after), kept."""
        self._token_url = self._issuer.known_token_url
        return self._token_url

    def cached(self, query: TokenQuery, key: CacheKey | None = None) -> Answer | None:
        """A servable cached token, or None; counts one hit or one miss; never does I/O."""
        key = key or self.key(query)
        hit = None if key is None else self.hit(query, key)
        if hit is None:
            return None
        entry, expires_in = hit
        return Answer(entry.token, expires_in, FROM_CACHE)

    def hit(self, query: TokenQuery, key: CacheKey) -> tuple[CachedToken, int] | None:
        """The hot path of :meth:`cached`: the servable entry and its ``expires_in`` now,
        or None; counts one hit or one miss, starts a refresh ahead when it is time."""
        cache = self._cache
        if cache is None:
            return None
        now = cache.now()
        entry = cache.get(key, now)
        if entry is None:
            self._metrics.cache_miss()
            return None
        self._metrics.cache_hit()
        if now >= entry.refresh_at and not self._issuer.failing_fast:
            self._refresh_in_background(key, query)  # not while it would only fail at once
        return entry, max(0, int(entry.expires_at - now))

    def hit_reply(self, client_id: str, client_secret: str, scope: str, request_id: str,
                  max_size: int) -> tuple[bytes, int] | None:
        """The hottest path: the reply (at most ``max_size`` bytes) to a request for a
        token the cache holds and need not refresh yet (the client's own, with the
        worker's auth method), and its ``expires_in``, counted as a hit; None for anything
        else, counting nothing (then :meth:`key`, :meth:`hit` and :meth:`ask` decide, as
        for any request: a refresh due is started there). Never does I/O."""
        cache, token_url = self._cache, self._token_url
        if cache is None or not token_url:
            return None
        key = cache_key(token_url, client_id, client_secret, scope, self._auth_method)
        now = cache.now()
        entry = cache.get(key, now)
        if entry is None or now >= entry.refresh_at:
            return None
        expires_in = int(entry.expires_at - now)  # now < refresh_at <= expires_at: >= 0
        body = entry.reply_parts.encode(request_id, expires_in, None)
        if len(body) > max_size:
            return None
        self._metrics.cache_hit()
        return body, expires_in

    def ask(self, query: TokenQuery, *, deadline: float | None, skip_cache: bool,
            on_outcome: Outcome, key: CacheKey | None = None) -> Answer | NoToken | None:
        """After a cache miss (or for ``skip_cache``): an answer now (a token, or the
        :class:`NoToken` to reply with), or None when ``on_outcome`` will be called with
        the outcome of a fetch (joined or started). Never does I/O, never blocks.

        ``deadline`` is the ``time.monotonic()`` moment the answer is due (the request's
        arrival plus ``idp.deadline``)."""
        key = key or self.key(query)
        if key is None:  # the endpoint is still to be discovered: that is I/O, on the pool
            return self._start(None, query, deadline, skip_cache, on_outcome)
        held = self._held(key, query)
        if held is not None:
            return held
        with self._lock:
            flight = self._in_flight.get(key)
            if flight is not None:
                return None if self._join(flight, on_outcome) else self._crowded()
            if not skip_cache:
                # A leader caches its token before it leaves the table, so with no flight
                # under way the cache holds whatever the last one got.
                answer = self._local(key)
                if answer is not None:
                    return answer
        return self._start(key, query, deadline, skip_cache, on_outcome)

    def fetch(self, query: TokenQuery, *, skip_cache: bool = False,
              deadline: float | None = None) -> Answer:
        """A token on the calling thread's time, for callers outside a worker (scripts,
        tests): :meth:`cached`, then :meth:`ask`, waiting for its outcome. Raises the
        :class:`~token_worker.errors.NoToken` a reply would carry."""
        if not skip_cache:
            answer = self.cached(query)
            if answer is not None:
                return answer
        done = threading.Event()
        got: list[tuple[Answer | None, BaseException | None]] = []

        def on_outcome(answer: Answer | None, error: BaseException | None) -> None:
            got.append((answer, error))
            done.set()

        outcome = self.ask(query, deadline=deadline, skip_cache=skip_cache,
                           on_outcome=on_outcome)
        if isinstance(outcome, NoToken):
            raise outcome
        if isinstance(outcome, Answer):
            return outcome
        done.wait()  # a flight always ends: the deadline bounds the IdP, a timer the waits
        answer, error = got[0]
        if error is not None:
            raise error
        assert answer is not None
        return answer

    def discard(self, query: TokenQuery) -> bool:
        """Drop the cached token of ``query`` (one the worker cannot send, for instance);
        True if there was one. Never does I/O (the shared tier keeps its copy: another
        replica's server may take it)."""
        key = self.key(query)
        if self._cache is None or key is None:
            return False
        return self._cache.discard(key)

    def forget_refusals(self, credential: str) -> int:
        """A named credential changed: the refusals remembered for it are forgotten at
        once (its next request asks the IdP); how many."""
        return self._guards.refusals.forget(credential)

    def close(self) -> None:
        """Stop background refreshes; fetches still under way end ``shutting_down``."""
        self._refreshes.close()
        with self._lock:
            flights = list(self._in_flight.values())
        for flight in flights:
            self._settle(flight, error=ShuttingDown("worker shutting down, retry (another "
                                                    "replica answers)"))

    def _held(self, key: CacheKey, query: TokenQuery) -> NoToken | None:
        """Why the IdP is not asked for ``key`` now, or None (:meth:`Guards.held`)."""
        return self._guards.held(key, self._issuer_for(query), query.client_id, self._metrics)

    def _join(self, flight: Flight[CacheKey, Answer], on_outcome: Outcome) -> bool:
        """Wait for ``flight`` without a thread (lock held); False when it is full."""
        if self._waiting >= self._max_waiting:
            return False
        if not flight.join(self._waiter(on_outcome)):
            return False
        self._waiting += 1
        return True

    def _waiter(self, on_outcome: Outcome) -> Outcome:
        def done(answer: Answer | None, error: BaseException | None) -> None:
            with self._lock:
                self._waiting -= 1
            on_outcome(answer, error)
        return done

    def _crowded(self) -> Overloaded:
        self._metrics.bulkhead("waiters_full")
        return Overloaded(f"too many requests waiting for tokens (at most "
                          f"{self._max_waiters_per_key} for one, {self._max_waiting} in "
                          "all); retry shortly", retry_after=1.0)

    def _start(self, key: CacheKey | None, query: TokenQuery, deadline: float | None,
               skip_cache: bool, on_outcome: Outcome) -> Answer | NoToken | None:
        """Lead a new flight for ``key``: spend the client's budget and queue its work."""
        query = self._guards.placed(query, key)
        wait = self._guards.budgets.take(query.budget_key)
        if wait > 0:
            self._metrics.bulkhead("client_budget")
            cached = self._local(key) if key is not None else None
            if cached is not None:
                return cached._replace(fetch_refused="rate_limited")
            return RateLimited(f"this client asked the identity provider too often; retry "
                               f"in {wait:.1f} s", retry_after=wait)
        flight: Flight[CacheKey, Answer] = Flight(key, started=self._clock(), deadline=deadline,
                                        max_waiters=self._max_waiters_per_key + 1)
        flight.join(on_outcome)  # the leader's own request: not counted as a waiter
        if key is not None:
            with self._lock:
                if key in self._in_flight:  # another thread started one meanwhile: join it
                    self._guards.budgets.give_back(query.budget_key)
                    joined = self._join(self._in_flight[key], on_outcome)
                    return None if joined else self._crowded()
                self._in_flight[key] = flight
        self._submit(flight, lambda: self._lead(flight, query, not skip_cache),
                     query.budget_key)
        return None

    def _submit(self, flight: Flight[CacheKey, Answer], work: Callable[[], None],
                budget_key: str | None = None) -> None:
        """Queue ``work`` for ``flight`` on the pool, or end the flight when it is full or
        closed (the budget spent for it given back)."""
        def dropped() -> None:
            self._settle(flight, error=ShuttingDown("worker shutting down, retry (another "
                                                    "replica answers)"))
        if self._work.try_submit(tracing.carried(flight.trace, work), dropped):
            return
        if budget_key is not None:
            self._guards.budgets.give_back(budget_key)
        if self._work.closed:
            dropped()
        else:
            self._metrics.bulkhead("pool_full")
            self._settle(flight, error=Overloaded(
                f"all {self._work.workers} workers are busy and the backlog is full; retry "
                "shortly", retry_after=1.0))

    # --- a pool thread: the flight's work ----------------------------------------------------

    def _lead(self, flight: Flight[CacheKey, Answer], query: TokenQuery, read_tiers: bool) -> None:
        try:
            if flight.key is None and not self._rekey(flight, query, read_tiers):
                return  # joined a flight for the same key, or answered from the cache
            if self._admit(flight, query):
                assert flight.key is not None
                self._obtain(flight, query, flight.key, read_tiers)
        except BaseException as error:
            self._settle(flight, error=error)
            if not isinstance(error, NoToken):
                raise

    def _rekey(self, flight: Flight[CacheKey, Answer], query: TokenQuery, read_tiers: bool) -> bool:
        """A flight started before the token endpoint was known (OIDC discovery): learn it
        (I/O, once), then go on as if it had been known: join a flight for the same key
        under way, take a token cached meanwhile, or lead under the key. True: lead."""
        self._issuer.token_url  # noqa: B018 - discovery, once; an IdpError ends the flight
        key = self.key(query)
        assert key is not None
        with self._lock:
            other = self._in_flight.get(key)
            if other is None:
                answer = self._local(key) if read_tiers else None
                if answer is None:
                    flight.key = key
                    self._in_flight[key] = flight
                    return True
        self._guards.budgets.give_back(query.budget_key)
        callbacks = flight.take_callbacks()
        if other is None:
            for callback in callbacks:
                callback(answer, None)
            return False
        for callback in callbacks:
            with self._lock:
                joined = self._join(other, callback)
            if not joined:
                callback(None, self._crowded())
        return False

    def _admit(self, flight: Flight[CacheKey, Answer], query: TokenQuery) -> bool:
        """The deadline decides: a fetch that cannot start with the time the IdP needs is
        answered ``overloaded`` now, and the IdP is not called (nor blamed)."""
        if flight.deadline is None:
            return True
        now = self._clock()
        left = flight.deadline - now
        needed = self._issuer_for(query).time_needed()
        if left >= needed:
            return True
        self._metrics.bulkhead("admission")
        self._guards.budgets.give_back(query.budget_key)  # no call made: none spent
        self._settle(flight, error=Overloaded(
            f"waited {now - flight.started:.1f} s for a worker thread; {max(0.0, left):.1f} "
            f"s of the deadline were left, the identity provider needs about {needed:.1f} s; "
            "retry shortly", retry_after=1.0))
        return False

    def _obtain(self, flight: Flight[CacheKey, Answer], query: TokenQuery, key: CacheKey,
                read_tiers: bool) -> None:
        """The leader's way to a token: the shared tier, its lease (or, without a thread,
        the lease holder's token), then the IdP."""
        shared = self._shared
        if shared is None:
            self._call_idp(flight, query, key)
            return
        shared_key = self._shared_key(shared, key, query)
        if not read_tiers:
            self._call_idp(flight, query, key, shared_key)
            return
        with tracing.span("shared-tier lookup"):
            token = shared.lookup(shared_key)
            tracing.annotate({"token_worker.shared.found": token is not None})
        if token is not None:
            self._guards.budgets.give_back(query.budget_key)
            self._settle(flight, answer=self._keep(key, token, shared_key))
            return
        lease = shared.lease(shared_key, self._lease_ttl)
        if lease is Lease.HELD_ELSEWHERE:
            shared.wait_then(shared_key, self._wait_budget(flight.deadline),
                             lambda token: self._waited(flight, query, key, shared_key, token))
            return
        self._call_idp(flight, query, key, shared_key, leased=lease is Lease.TAKEN)

    def _waited(self, flight: Flight[CacheKey, Answer], query: TokenQuery, key: CacheKey,
                shared_key: SharedKey, token: IssuedToken | None) -> None:
        """The lease holder's token came (or not: the lease was released, the wait ended):
        on the thread that saw it, no I/O here; a takeover goes back to the pool."""
        if token is not None:
            self._guards.budgets.give_back(query.budget_key)
            self._settle(flight, answer=self._keep(key, token, shared_key))
            return
        self._submit(flight, lambda: self._take_over(flight, query, key, shared_key))

    def _take_over(self, flight: Flight[CacheKey, Answer], query: TokenQuery, key: CacheKey,
                   shared_key: SharedKey) -> None:
        """Nothing came from the lease holder: read the stream leader once more (a value
        stored while the watch was being set up on a cluster), then ask the IdP."""
        try:
            if not self._admit(flight, query):
                return
            assert self._shared is not None
            token = self._shared.latest(shared_key)
            if token is not None:
                self._guards.budgets.give_back(query.budget_key)
                self._settle(flight, answer=self._keep(key, token, shared_key))
                return
            self._call_idp(flight, query, key, shared_key)
        except BaseException as error:
            self._settle(flight, error=error)
            if not isinstance(error, NoToken):
                raise

    def _call_idp(self, flight: Flight[CacheKey, Answer], query: TokenQuery, key: CacheKey,
                  shared_key: SharedKey | None = None, *, leased: bool = False) -> None:
        """One fetch from the IdP; its token goes to both tiers, its failure to the
        guards, then the flight's waiters get the outcome."""
        shared = self._shared
        try:
            token = self._issuer_for(query).fetch_token(
                query.client_id, query.client_secret, query.scope, deadline=flight.deadline,
                auth_method=query.auth_method, grant=query.grant)
        except NoToken as error:
            if leased and shared is not None and shared_key is not None:
                shared.release(shared_key)
            if not (isinstance(error, IdpError) and error.attempted):
                # Ended before any call (the replica's ceiling, the circuit, a hold, no time
                # left): the client's budget counts calls made, so it gets this one back.
                self._guards.budgets.give_back(query.budget_key)
            self._after_failure(key, query, error)
            self._settle(flight, error=error)
            return
        self._guards.backoffs.succeeded(key)
        self._guards.proved(key, spent=query)
        if self._cache is not None:
            self._cache.put(key, token, shared_key=shared_key)
        if shared is not None and shared_key is not None:
            shared.store(shared_key, token)
            if leased:
                shared.release(shared_key)
        self._settle(flight, answer=Answer(token, self._expires_in(token), FROM_IDP))

    def _after_failure(self, key: CacheKey, query: TokenQuery, error: NoToken) -> None:
        """What the failure costs the key (:meth:`Guards.after_failure`)."""
        self._guards.after_failure(key, error, client_id=query.client_id,
                                   credential=query.credential)

    def _wait_budget(self, deadline: float | None) -> float:
        """How long to wait for another replica's token: the lease's life, but at most half
        the request's time left, so a takeover still has time for its own IdP call."""
        if deadline is None:
            return self._lease_ttl
        return max(0.0, min(self._lease_ttl, (deadline - self._clock()) / 2))

    def _settle(self, flight: Flight[CacheKey, Answer], *, answer: Answer | None = None,
                error: BaseException | None = None) -> None:
        """End ``flight``: out of the table first (so the next miss starts afresh, finding
        the token in the cache), then every waiter gets the outcome."""
        key = flight.key
        if key is not None:
            with self._lock:
                if self._in_flight.get(key) is flight:
                    del self._in_flight[key]
        if answer is not None:
            flight.succeed(answer)
        else:
            flight.fail(error or RuntimeError("no token"))

    # --- the tiers ------------------------------------------------------------------------

    def _local(self, key: CacheKey) -> Answer | None:
        """The cached answer, looked up without counting."""
        if self._cache is None:
            return None
        entry = self._cache.get(key)
        if entry is None:
            return None
        return Answer(entry.token, entry.expires_in(self._cache.now()), FROM_CACHE)

    def _shared_key(self, shared: SharedTier, key: CacheKey, query: TokenQuery) -> SharedKey:
        if query.grant is not None:
            return shared.key_for_grant(key.token_url, query.grant, key.scopes)
        return shared.key(key.token_url, query.client_id, query.client_secret, key.scopes,
                          query.auth_method or self._auth_method)

    def _issuer_for(self, query: TokenQuery) -> Issuer:
        """The issuer of the query's token endpoint: the worker's, or a credential's own."""
        grant = query.grant
        if grant is None or grant.token_url is None or self._endpoints is None:
            return self._issuer
        return self._endpoints(grant.token_url)

    def _keep(self, key: CacheKey, token: IssuedToken, shared_key: SharedKey) -> Answer:
        """A token from the shared tier: into the local cache with the life it has left."""
        self._guards.proved(key)
        cache = self._cache
        if cache is None:  # not reached: the shared tier is used with a local cache only
            return Answer(token, self._expires_in(token), FROM_CACHE)
        now = cache.now()
        entry = cache.put(key, token, age=max(0.0, now - token.issued_at),
                          shared_key=shared_key)
        return Answer(token, entry.expires_in(now), FROM_CACHE)

    def _expires_in(self, token: IssuedToken) -> int:
        """What a reply says of a fresh token: its life as the cache keeps it (capped at
        ``cache.maxTtl``), so the first reply and later hits agree."""
        if self._cache is None:
            return token.expires_in
        return min(token.expires_in, int(self._cache.max_ttl))

    def _give_back_to_bucket(self) -> None:
        """The bucket was lost and made again: store what this replica holds back into it,
        in the background, so replicas started since find those tokens there."""
        cache, shared = self._cache, self._shared
        if cache is not None and shared is not None:
            self._refreshes.run_in_background(lambda: shared.refill(cache.servable()))

    # --- refresh-ahead (the refresh queue's threads) ----------------------------------------

    def _refresh_in_background(self, key: CacheKey, query: TokenQuery) -> None:
        """Queue one refresh for ``key`` (:class:`RefreshQueue`), unless a fetch for it is
        under way; it takes the key's flight only when it starts."""
        if key in self._in_flight or not self._refreshes.queue(key, query):
            return  # a fetch (or a refresh) for this key is already coming
        self._metrics.cache_refresh()
        log.debug("refreshing ahead of expiry", extra={"client_id": query.client_id})

    def _due(self, key: CacheKey) -> CachedToken | None:
        """The cached entry if it still needs this refresh (no fetch replaced it meanwhile)."""
        if self._cache is None:
            return None
        entry = self._cache.get(key)
        return entry if entry is not None and self._cache.now() >= entry.refresh_at else None

    def _refresh(self, key: CacheKey, query: TokenQuery) -> None:
        """The refresh, on a refresher thread: lead the key's flight now, unless a fetch
        already leads one (its token lands in the cache all the same) or the key is held
        back (its back-off, a remembered refusal)."""
        with self._lock:
            entry = None if key in self._in_flight else self._due(key)
            if entry is None:
                return
            flight: Flight[CacheKey, Answer] = Flight(key, started=self._clock(), deadline=None,
                                            max_waiters=self._max_waiters_per_key + 1)
            self._in_flight[key] = flight
        if self._guards.backoffs.held(key) or self._guards.refusals.recall(key):
            self._settle(flight, error=ShuttingDown("refresh skipped: the key is held back"))
            return
        try:
            self._renew(flight, key, query, entry)
        except Exception as error:
            self._settle(flight, error=error)
            log.warning("refresh ahead failed; the cached token is still served",
                        extra={"client_id": query.client_id, "error": str(error)})

    def _renew(self, flight: Flight[CacheKey, Answer], key: CacheKey, query: TokenQuery,
               entry: CachedToken) -> None:
        """A newer token for ``entry``: with a shared tier, only the replica holding the
        key's lease asks the IdP; the others take its token from the bucket."""
        shared = self._shared
        if shared is None:
            self._call_idp(flight, query, key)
            return
        shared_key = self._shared_key(shared, key, query)
        newer_than = entry.expires_at + EXPIRY_SLACK
        lease = shared.lease(shared_key, self._lease_ttl, newer_than=newer_than)
        if lease is not Lease.HELD_ELSEWHERE:
            self._call_idp(flight, query, key, shared_key, leased=lease is Lease.TAKEN)
            return
        token = shared.wait(shared_key, self._lease_ttl, newer_than=newer_than)
        if token is not None:
            self._settle(flight, answer=self._keep(key, token, shared_key))
        else:
            self._call_idp(flight, query, key, shared_key)  # nothing came: take over
