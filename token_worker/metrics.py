"""The worker's numbers, for Prometheus (``/metrics``) and the NATS services API (``$SRV.STATS``).

One :class:`Metrics` per worker, in its own registry, so several workers in one process
(tests, embedding services) never collide. Outcome labels are a closed set, never the
IdP's free-form codes, so the number of series stays bounded.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client import utils as prometheus_utils
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from token_worker.counting import ThreadCounts
from token_worker.wire import (
    IDP_BAD_RESPONSE,
    IDP_TIMEOUT,
    IDP_UNAVAILABLE,
    INLINE_SECRETS_DISABLED,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    OVERLOADED,
    RATE_LIMITED,
    SHUTTING_DOWN,
    TOKEN_TOO_LARGE,
    UNKNOWN_CREDENTIAL,
)

OK = "ok"
IDP_REFUSED = "idp_refused"
"""Outcome label of every OAuth2 refusal (the codes themselves go to logs and replies)."""
_OUTCOMES = frozenset({OK, INVALID_REQUEST, IDP_UNAVAILABLE, IDP_TIMEOUT, IDP_BAD_RESPONSE,
                       INTERNAL_ERROR, OVERLOADED, RATE_LIMITED, TOKEN_TOO_LARGE, SHUTTING_DOWN,
                       UNKNOWN_CREDENTIAL, INLINE_SECRETS_DISABLED})

BULKHEADS = ("refusal_remembered", "backoff", "circuit_open", "client_retry_after",
             "client_budget", "replica_ceiling", "admission", "waiters_full", "pool_full")
"""Why a request was answered without calling the IdP (the label of
``token_worker_bulkhead_refusals_total``): a refusal remembered, the key's back-off, the
endpoint's circuit, the client's Retry-After, the client's call budget, the replica's call
ceiling, too little deadline left after waiting for a thread, too many waiting, the pool
full."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
CACHE_EVENTS = ("hit", "miss", "refresh")
"""The labels of ``token_worker_cache_events_total``."""

_go_float: Callable[[float], str] = prometheus_utils.floatToGoString
"""How prometheus_client writes a bucket's bound (``0.0005``, ``+Inf``)."""

_OUTCOME_LABELS = (OK, *sorted(_OUTCOMES - {OK}), IDP_REFUSED)
# Where each number of an endpoint's per-thread reply counts is (ThreadCounts): outcomes,
# latency buckets (the last one +Inf), the latency sum, the error replies.
_REFUSED_AT = len(_OUTCOME_LABELS) - 1
_BUCKETS_AT = len(_OUTCOME_LABELS)
_SECONDS_AT = _BUCKETS_AT + len(LATENCY_BUCKETS) + 1
_ERRORS_AT = _SECONDS_AT + 1
_REPLY_COUNTS = _ERRORS_AT + 1
_CODE_AT = {label: at for at, label in enumerate(_OUTCOME_LABELS) if label != OK} | {"": 0}
"""Reply error code -> where it is counted; any other code (an IdP's, even one it names
``ok``) counts as idp_refused."""


def outcome_label(error_code: str) -> str:
    """The label for a reply: ``ok``, one of token-worker's codes, or ``idp_refused``."""
    if not error_code:
        return OK
    return error_code if error_code in _OUTCOMES and error_code != OK else IDP_REFUSED


class Metrics:
    """Counters, histograms and gauges of one worker.

    What every reply counts (its outcome and latency, a cache hit or miss) goes to
    per-thread counts without a lock (:mod:`token_worker.counting`), exported when
    scraped; the rest are ``prometheus_client``'s own, with label children resolved once
    here.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._cache_events = ThreadCounts(len(CACHE_EVENTS))
        self._endpoints: list[ReplyCounts] = []
        registry.register(_ReplyCollector(self._endpoints, self._cache_events))
        self.idp_calls = Counter("token_worker_idp_calls", "Token calls to the IdP, by outcome",
                                 ["outcome"], registry=registry)
        self.idp_seconds = Histogram("token_worker_idp_seconds", "IdP token call latency",
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.reconnects = Counter("token_worker_nats_reconnects",
                                  "Times the NATS connection was re-established",
                                  registry=registry)
        self.connection_state = Enum(
            "token_worker_nats_connection", "State of the NATS connection",
            states=["disconnected", "connected", "reconnecting", "closed"], registry=registry)
        self.in_flight = Gauge("token_worker_in_flight",
                               "Requests running or waiting for a handler thread",
                               registry=registry)
        self.capacity = Gauge("token_worker_capacity",
                              "Requests that may be running or waiting (workers + backlog)",
                              registry=registry)
        self.reconnect_buffer = Gauge(
            "token_worker_nats_reconnect_buffer_bytes",
            "Bytes published while reconnecting, waiting for the next server",
            registry=registry)
        self.circuit_open = Gauge("token_worker_idp_circuit_open",
                                  "1 while the token endpoint is not asked (its circuit open)",
                                  registry=registry)
        self.circuit_state = Gauge(
            "token_worker_idp_circuit_state",
            "The token endpoint's circuit: 0 closed, 1 open, 2 half-open (probing)",
            registry=registry)
        self.waiting = Gauge(
            "token_worker_waiting",
            "Requests waiting, without a thread, for a token being fetched", registry=registry)
        self.client_backoffs = Gauge(
            "token_worker_client_backoffs",
            "Keys (client, secret, scope) held back after their own failed fetches",
            registry=registry)
        self.refusals_remembered = Gauge(
            "token_worker_refusals_remembered",
            "IdP refusals (invalid_client, unauthorized_client, invalid_scope) kept to answer "
            "again from memory", registry=registry)
        self.bulkheads = Counter(
            "token_worker_bulkhead_refusals",
            "Requests answered without an IdP call to protect the IdP or other clients, by "
            "reason", ["reason"], registry=registry)
        self._by_bulkhead = {reason: self.bulkheads.labels(reason) for reason in BULKHEADS}
        self.started = time.time()
        self._shared_counts: Callable[[], Mapping[str, int]] | None = None

    def bulkhead(self, reason: str) -> None:
        """A request answered by a bulkhead (one of :data:`BULKHEADS`) instead of the IdP."""
        self._by_bulkhead[reason].inc()

    def track_cache(self, evictions: Callable[[], Mapping[str, int]]) -> None:
        """Export the token cache's evictions (``client_share``: a client over its share
        evicted its own; ``capacity``: the cache was full) as
        ``token_worker_cache_evictions_total``, read when scraped."""
        self.registry.register(_CountsCollector(
            "token_worker_cache_evictions", "Cached tokens evicted to make room, by reason: "
            "client_share (a client over its share evicted its own), capacity (cache full)",
            "reason", evictions))

    def track_shared(self, counts: Callable[[], Mapping[str, int]]) -> None:
        """Export the shared tier's counts (``SharedTier.counts``: hits, misses, leases,
        lease_waits, lease_takeovers, errors) as ``token_worker_shared_cache_events_total``
        and in ``$SRV.STATS``; read when scraped, so the tier only counts."""
        self._shared_counts = counts
        self.registry.register(_CountsCollector(
            "token_worker_shared_cache_events",
            "Shared token tier: hits, misses, leases taken, lease waits, lease takeovers "
            "(waits that ended without a token), errors, squatted leases taken over, buckets "
            "made again after they were lost", "event", counts))

    def shared_stats(self) -> dict[str, int] | None:
        """The shared tier's counts, or None without a shared tier."""
        counts = self._shared_counts
        return None if counts is None else dict(counts())

    def endpoint_counts(self) -> ReplyCounts:
        """A new endpoint's reply counts: what it counts is exported with every other
        endpoint's (summed) and read for its own ``$SRV.STATS``."""
        counts = ReplyCounts()
        self._endpoints.append(counts)
        return counts

    def cache_hit(self) -> None:
        """A request served from the local cache."""
        try:
            values = self._cache_events.local.values
        except AttributeError:
            values = self._cache_events.mine()
        values[0] += 1

    def cache_miss(self) -> None:
        """A request the local cache could not serve."""
        self._cache_events.mine()[1] += 1

    def cache_refresh(self) -> None:
        """A token refreshed ahead of its expiry."""
        self._cache_events.mine()[2] += 1


class ReplyCounts:
    """One endpoint's replies, counted once for both readers: its outcomes and latencies
    for ``token_worker_requests_total`` and ``token_worker_reply_seconds`` (summed over the
    worker's endpoints when scraped) and its requests, errors and processing time for
    ``$SRV.STATS``. Each thread counts without a lock (:mod:`token_worker.counting`); an
    error, rare, also keeps the last code, under a lock."""

    __slots__ = ("_counts", "_lock", "last_error")

    def __init__(self) -> None:
        self._counts = ThreadCounts(_REPLY_COUNTS)
        self._lock = threading.Lock()
        self.last_error = ""

    def count(self, error_code: str, seconds: float) -> None:
        """One reply sent: its outcome and how long it took (from the reader thread or a
        pool thread)."""
        try:
            values = self._counts.local.values
        except AttributeError:
            values = self._counts.mine()
        values[_CODE_AT.get(error_code, _REFUSED_AT)] += 1
        values[_BUCKETS_AT + bisect_left(LATENCY_BUCKETS, seconds)] += 1
        values[_SECONDS_AT] += seconds
        if error_code:
            values[_ERRORS_AT] += 1
            with self._lock:
                self.last_error = error_code

    def totals(self) -> list[float]:
        """Every number added up over the threads (the layout of this module's ``_*_AT``)."""
        return self._counts.totals()

    def summary(self) -> tuple[int, int, int, str]:
        """Requests, errors, nanoseconds spent and the last error code: ``$SRV.STATS``."""
        totals = self._counts.totals()
        requests = int(sum(totals[:_BUCKETS_AT]))
        with self._lock:
            last_error = self.last_error
        return (requests, int(totals[_ERRORS_AT]), int(totals[_SECONDS_AT] * 1e9),
                last_error)


class _ReplyCollector(Collector):
    """``token_worker_requests_total``, ``token_worker_reply_seconds`` (every endpoint's
    replies) and ``token_worker_cache_events_total``, from the per-thread counts, when
    scraped."""

    def __init__(self, endpoints: list[ReplyCounts], cache_events: ThreadCounts) -> None:
        self._endpoints = endpoints
        self._cache_events = cache_events

    def collect(self) -> Iterator[Metric]:
        totals: list[float] = [0] * _REPLY_COUNTS
        for endpoint in list(self._endpoints):
            for at, value in enumerate(endpoint.totals()):
                totals[at] += value
        requests, latency, cache = self.describe()
        for at, label in enumerate(_OUTCOME_LABELS):
            requests.add_metric([label], totals[at])
        cumulative, buckets = 0.0, []
        for at, bound in enumerate((*LATENCY_BUCKETS, float("inf"))):
            cumulative += totals[_BUCKETS_AT + at]
            buckets.append((_go_float(bound), cumulative))
        latency.add_metric([], buckets, totals[_SECONDS_AT])
        for event, count in zip(CACHE_EVENTS, self._cache_events.totals(), strict=True):
            cache.add_metric([event], count)
        yield from (requests, latency, cache)

    def describe(self) -> tuple[CounterMetricFamily, HistogramMetricFamily,
                                CounterMetricFamily]:
        return (
            CounterMetricFamily("token_worker_requests", "Requests answered, by outcome",
                                labels=["outcome"]),
            HistogramMetricFamily("token_worker_reply_seconds",
                                  "From request received to reply ready to send"),
            CounterMetricFamily("token_worker_cache_events",
                                "Token cache hits, misses and refreshes ahead of expiry",
                                labels=["event"]))


class _CountsCollector(Collector):
    """Counters kept by a part of the worker (a dict of counts), read at scrape time, so
    the part only counts."""

    def __init__(self, name: str, documentation: str, label: str,
                 counts: Callable[[], Mapping[str, int]]) -> None:
        self._name = name
        self._documentation = documentation
        self._label = label
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=[self._label])
        for value, count in sorted(self._counts().items()):
            family.add_metric([value], count)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, labels=[self._label])


class NullMetrics(Metrics):
    """Metrics nobody reads: for a handler or broker built without a worker (tests,
    benchmarks, embedding code), so that no code path has to check for ``None``. It counts
    into a registry of its own, which nothing scrapes."""
