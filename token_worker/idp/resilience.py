"""Asking one token endpoint through its bad moments, without letting one client's bad day
become everyone's.

Only what a retry can change is retried: unreachable, timeouts, 5xx and 429
(:class:`IdpUnavailable`, :class:`IdpTimeout`). tenacity runs the retries, with exponential
back-off and full jitter, never less than the IdP's ``Retry-After`` and never past the
deadline. A refusal (4xx OAuth2 error) and an unusable answer (:class:`IdpBadResponse`)
are final at once. The whole fetch is bounded by ``idp.deadline`` (or the request's own
earlier deadline); when the deadline ends the retries, the error says the most telling
failure (a 500 followed by a retry cut short is ``idp_unavailable``, not a timeout).

What each attempt says about the endpoint goes to its circuit
(:class:`~token_worker.idp.circuit.EndpointCircuit`), which opens only on evidence that
the endpoint fails: failures for several distinct clients, or failures to reach it at all.
A client's own 5xx and hanging calls are that client's (the broker backs its key off); a
429 holds only the client that got it (its ``Retry-After``, in a bounded table); an
attempt that the request's own deadline cut short (it had less than half the time a fresh
request gets) is no evidence of anything. A refusal or an unusable answer proves the
endpoint answers.

Two numbers protect the IdP and the requests: :meth:`ResilientIdp.time_needed` (what a
fetch needs to have a fair chance: one and a half times the IdP's recent slowest answers,
between :data:`SHORTEST_NEED` and half an attempt's time), so a request that waited too
long for a thread is answered ``overloaded`` instead of starting a call the deadline would
cut; and a ceiling on calls per second (``idp.maxCallsPerSecond``), so a flood of distinct
clients cannot turn into a flood at the IdP.

Every failed exchange logs one line (``idp call failed``) with the HTTP status or the
network error, the reason, the attempt number and the elapsed time. Time, sleeping and
randomness are injected, so the policy is tested without waiting.

The module is longer than 400 lines because the resilient issuer is one object: its
retries, circuit, holds, ceiling and answer times judge the same fetches.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from cachetools import LRUCache, TTLCache
from tenacity import RetryCallState, Retrying, retry_if_exception

from token_worker import tracing
from token_worker.config import IdpConfig
from token_worker.errors import (
    AskedToWait,
    CircuitOpen,
    IdpError,
    IdpRefused,
    IdpTimeout,
    IdpUnavailable,
    NoToken,
    Overloaded,
)
from token_worker.idp.circuit import CircuitState, EndpointCircuit, Verdict
from token_worker.idp.client import IdpClient
from token_worker.logs import RateLimitedLog
from token_worker.metrics import Metrics, NullMetrics, outcome_label
from token_worker.tokens.grant import Grant
from token_worker.tokens.guards import Budgets
from token_worker.tokens.model import IssuedToken

log = logging.getLogger(__name__)

SHORTEST_ATTEMPT = 0.05
"""An attempt with less time than this left is not started."""
MOST_ATTEMPTS = 3
"""Attempts one fetch makes at most (within its deadline): a failure that persists is for
the key's back-off to pace, not for a burst of retries."""
FIRST_BACKOFF = 0.2
"""Upper bound of the first back-off, seconds; it doubles per attempt (full jitter)."""
LONGEST_BACKOFF = 2.0
"""Upper bound of any back-off, seconds (a longer ``Retry-After`` still wins)."""
LONGEST_HOLD = 300.0
"""The longest ``Retry-After`` honoured by failing fast, seconds: an IdP asking for a day
is asked again after five minutes."""
LONGEST_SHOWN_WAIT = 86400.0
"""A ``Retry-After`` longer than this (a day) is shown as "more than a day"."""
CLIENT_HOLDS = 10_000
"""Most clients held at once after their own 429 (the oldest hold goes first when full)."""
TOO_MANY_REQUESTS = 429
FULL_SHARE = 0.5
"""An attempt with less than this share of a fresh request's time (the smaller of
``idp.timeout`` and ``idp.deadline``) was cut short by its request: its timeout is no
evidence against the client or the endpoint."""
SHORTEST_NEED = 0.25
"""The least time a fetch is started with, seconds, whatever the IdP's recent speed."""
NEED_FACTOR = 1.5
"""A fetch starts only with this many times the IdP's recent slow answers left."""
MOST_ENDPOINTS = 256
"""Token endpoints whose circuit and ceiling are kept at once (credentials name few)."""
LATENCY_SAMPLES = 32
"""Recent answer times kept to judge what a fetch needs (the slowest tenth decides)."""


class ResilientIdp:
    """Wraps :class:`IdpClient` (one token endpoint) with the retry policy, the endpoint's
    circuit, the clients' ``Retry-After`` holds and the call ceiling."""

    def __init__(self, client: IdpClient, config: IdpConfig, metrics: Metrics | None = None,
                 *, endpoint: str | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Callable[[float, float], float] = random.uniform) -> None:
        self._client = client
        self._config = config
        self._endpoint = endpoint
        """A token endpoint of a credential's own; None: the worker's."""
        self._metrics = NullMetrics() if metrics is None else metrics
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self.circuit = EndpointCircuit(
            threshold=config.failure_threshold, window=config.failure_window,
            cool_down=config.cool_down, probes=config.half_open_probes, clock=clock)
        self._ceiling: Budgets[str] = Budgets(
            rate=config.max_calls_per_second, burst=config.max_calls_per_second, capacity=1,
            clock=clock)
        self._client_holds: TTLCache[str, tuple[float, float]] = TTLCache(
            CLIENT_HOLDS, LONGEST_HOLD, timer=clock)
        """Client id -> (end of its hold, the Retry-After asked): a 429's hold."""
        self._holds_lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._log_refusal = RateLimitedLog(log, logging.INFO, "idp call failed", clock=clock)
        """A refusal line: a line a second at most, counting the ones left out."""
        self.calls = 0
        """Token calls sent to the IdP (attempts, retries included)."""

    # --- what the broker asks without I/O -------------------------------------------------

    @property
    def token_url(self) -> str:
        """The token endpoint (after discovery, when configured: may do I/O once)."""
        return self._endpoint or self._client.token_url

    @property
    def known_token_url(self) -> str:
        """The token endpoint if known without I/O, else "" (discovery still to come)."""
        return self._endpoint or self._client.known_token_url

    @property
    def circuit_open(self) -> bool:
        """True while the endpoint is not asked (open, cool-down running)."""
        return self.circuit.state is CircuitState.OPEN

    @property
    def failing_fast(self) -> bool:
        """True while every client's fetches fail without a call (the circuit open)."""
        return self.circuit.refusal() is not None

    def refusal(self, client_id: str) -> NoToken | None:
        """Why ``client_id``'s fetch would fail without a call now (its 429's
        ``Retry-After``, the endpoint's circuit), or None."""
        until, asked = self._client_hold(client_id)
        left = until - self._clock()
        if left > 0:
            return AskedToWait(f"identity provider asked to wait {_shown(asked)} for this "
                               f"client; not asking it again for {left:.0f} s",
                               reason=f"Retry-After, {left:.0f} s left", retry_after=left,
                               attempted=False)
        verdict = self.circuit.refusal()
        return None if verdict is None else self._circuit_open(verdict)

    def time_needed(self) -> float:
        """The least time a fetch should start with: one and a half times the slowest
        tenth of the IdP's recent answers, within [:data:`SHORTEST_NEED`, half the time a
        fresh request gets]."""
        samples = sorted(self._latencies)
        slow = samples[int(len(samples) * 0.9)] if samples else 0.0
        fresh = min(self._config.timeout, self._config.deadline)
        return min(max(SHORTEST_NEED, NEED_FACTOR * slow), fresh * FULL_SHARE)

    # --- a fetch (a pool thread) --------------------------------------------------------

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    deadline: float | None = None, auth_method: str | None = None,
                    grant: Grant | None = None) -> IssuedToken:
        """Fetch a token, retrying transient failures until ``idp.deadline`` or the caller's
        ``deadline`` (a ``time.monotonic()`` value), whichever comes first."""
        fetch = _Fetch(self._clock, self._config.deadline, deadline, client_id)
        call = _Call(client_id, client_secret, scope, auth_method, grant)
        try:
            token: IssuedToken = self._retrying(fetch)(self._attempt, fetch, call)
        except _Ended as ended:
            raise ended.error from None
        except IdpError as error:
            raise self._conclude(error, fetch) from None
        return token

    def _retrying(self, fetch: _Fetch) -> Retrying:
        """The retry policy for one fetch: transient failures only, a back-off that honours
        ``Retry-After`` and fits the deadline, one log line per failed exchange."""
        return Retrying(
            before=lambda _: self._before_attempt(fetch),
            retry=retry_if_exception(_transient),
            wait=lambda state: self._pause(state, fetch),
            stop=lambda _: self._no_retry(fetch),
            before_sleep=lambda _: self._log_failure(fetch, retrying=True),
            sleep=self._sleep,
            reraise=True,
        )

    def _before_attempt(self, fetch: _Fetch) -> None:
        """End the fetch instead of calling: out of time, a hold, the circuit, the ceiling."""
        if fetch.left() < SHORTEST_ATTEMPT:
            raise _Ended(self._give_up(fetch) if fetch.failures else IdpTimeout(
                "no time left to ask the identity provider within the deadline",
                reason="deadline reached before the call", attempted=False))
        refused = self.refusal(fetch.client_id)
        if refused is not None:
            raise _Ended(self._give_up(fetch) if fetch.failures else refused)
        wait = self._ceiling.take("calls")
        if wait > 0:
            self._metrics.bulkhead("replica_ceiling")
            raise _Ended(self._give_up(fetch) if fetch.failures else Overloaded(
                f"this replica's ceiling of {self._config.max_calls_per_second:g} identity "
                f"provider calls a second is reached; retry shortly", retry_after=wait))

    def _attempt(self, fetch: _Fetch, call: _Call) -> IssuedToken:
        """One exchange within the time left, its outcome told to the circuit."""
        probe = self.circuit.acquire()
        if isinstance(probe, Verdict):  # the last probe slot went to another thread
            raise _Ended(self._give_up(fetch) if fetch.failures else self._circuit_open(probe))
        budget = min(self._config.timeout, fetch.left())
        started = self._clock()
        try:
            with tracing.span("idp token call",
                              {"token_worker.idp.attempt": len(fetch.failures) + 1}, client=True):
                token = self._call(call, budget)
        except IdpError as error:
            self._judge(error, fetch, budget, probe, self._clock() - started)
            fetch.failures.append(error)
            raise
        self._latencies.append(self._clock() - started)
        self.circuit.answered()
        return token

    def _judge(self, error: IdpError, fetch: _Fetch, budget: float, probe: bool,
               took: float) -> None:
        """What a failed attempt says, told to the circuit: the endpoint answered (a
        refusal, an unusable answer), failed for this client (5xx, a timeout with the time
        a fresh request gets), could not be reached (whoever asked), or nothing (a 429, a
        timeout the request's own deadline cut short)."""
        if isinstance(error, IdpTimeout):
            error.cut_short = budget < FULL_SHARE * min(self._config.timeout,
                                                        self._config.deadline)
        if not _transient(error):
            self._latencies.append(took)
            self.circuit.answered()
        elif error.status == TOO_MANY_REQUESTS or (isinstance(error, IdpTimeout)
                                                   and error.cut_short):
            self.circuit.no_evidence(probe=probe)
        elif self.circuit.failed(fetch.client_id, unreachable=error.unreachable,
                                 retry_after=error.retry_after, probe=probe):
            verdict = self.circuit.refusal()
            log.warning("idp circuit opened: failing fast",
                        extra={"evidence": verdict.evidence if verdict else "",
                               "open_s": round(verdict.retry_after, 1) if verdict else 0.0})

    def _pause(self, state: RetryCallState, fetch: _Fetch) -> float:
        """Full jitter, but never less than the IdP's ``Retry-After`` nor past the room left
        for another attempt (negative when there is none: :meth:`_no_retry` then stops)."""
        ceiling = min(LONGEST_BACKOFF, FIRST_BACKOFF * 2 ** (state.attempt_number - 1))
        asked = fetch.failures[-1].retry_after or 0.0
        return min(max(self._rng(0.0, ceiling), asked), fetch.room())

    def _no_retry(self, fetch: _Fetch) -> bool:
        """Stop when no attempt fits before the deadline, when the IdP asked for a longer
        wait than that, after :data:`MOST_ATTEMPTS`, or when the last failure made this
        client's fetches fail fast."""
        asked = fetch.failures[-1].retry_after
        room = fetch.room()
        return (room < 0 or (asked is not None and asked > room)
                or len(fetch.failures) >= MOST_ATTEMPTS
                or self.refusal(fetch.client_id) is not None)

    def _conclude(self, error: IdpError, fetch: _Fetch) -> IdpError:
        """The last exchange failed and no retry follows: log it, hold a 429's client for a
        ``Retry-After`` longer than the time left, and return the error that ends the fetch
        (a 5xx's long ``Retry-After`` is the broker's to honour, per key)."""
        self._log_failure(fetch, retrying=False)
        asked = error.retry_after if _transient(error) else None
        if asked is not None and asked > fetch.room():
            if error.status == TOO_MANY_REQUESTS:
                self._hold(fetch.client_id, asked)
            return AskedToWait(f"identity provider asked to wait {_shown(asked)}",
                               status=error.status, retry_after=min(asked, LONGEST_HOLD),
                               reason=error.reason, body=error.body)
        return self._give_up(fetch)

    def _hold(self, client_id: str, retry_after: float) -> None:
        """Remember a 429's ``Retry-After`` longer than the time left: ``client_id``'s
        fetches fail fast until then (at most :data:`LONGEST_HOLD`)."""
        seconds = min(retry_after, LONGEST_HOLD)
        until = self._clock() + seconds
        with self._holds_lock:
            held = self._client_holds.get(client_id, (0.0, 0.0))
            self._client_holds[client_id] = (max(held[0], until), retry_after)
        log.warning("idp asked to wait: failing fast for this client",
                    extra={"retry_after_s": min(retry_after, LONGEST_SHOWN_WAIT),
                           "failing_fast_s": seconds, "client_id": client_id})

    def _client_hold(self, client_id: str) -> tuple[float, float]:
        """(end of ``client_id``'s 429 hold, what was asked), or zeros without one."""
        if not self._client_holds:
            return 0.0, 0.0
        with self._holds_lock:
            return self._client_holds.get(client_id, (0.0, 0.0))

    def _circuit_open(self, verdict: Verdict) -> CircuitOpen:
        return CircuitOpen(f"identity provider failing ({verdict.evidence}); not asked for "
                           f"{max(1, round(verdict.retry_after))} s",
                           reason="circuit open", retry_after=max(1.0, verdict.retry_after),
                           attempted=False)

    def _give_up(self, fetch: _Fetch) -> IdpError:
        """The most telling failure, with the attempts and the time spent: an HTTP 5xx or
        429 rather than a later timeout of a retry the deadline cut short; a timeout that
        used up the deadline says the deadline, not the last attempt's shortened budget."""
        failures, started, end = fetch.failures, fetch.started, fetch.end
        chosen = failures[-1]
        now = self._clock()
        spent = now >= end - 2 * SHORTEST_ATTEMPT
        if isinstance(chosen, IdpTimeout):
            answered = [f for f in failures if isinstance(f, IdpUnavailable) and f.status]
            if answered:
                chosen = answered[-1]
            elif spent:
                cut_short = all(isinstance(f, IdpTimeout) and f.cut_short for f in failures)
                chosen = IdpTimeout(f"identity provider gave no token within the "
                                    f"{end - started:.3g} s deadline", reason=chosen.reason,
                                    cut_short=cut_short)
        if len(failures) > 1 or chosen is not failures[-1]:
            ended = "; the deadline ended the retries" if spent else ""
            chosen.add_context(f"{len(failures)} attempts in {now - started:.1f} s{ended}")
        return chosen

    def _call(self, call: _Call, timeout: float) -> IssuedToken:
        self.calls += 1
        started = self._clock()
        outcome = "ok"
        try:
            if call.grant is not None:
                return self._client.fetch(call.grant, timeout=timeout)
            return self._client.fetch_token(call.client_id, call.client_secret, call.scope,
                                            timeout=timeout, auth_method=call.auth_method)
        except IdpError as error:
            outcome = outcome_label(error.error_code)
            raise
        finally:
            self._metrics.idp_calls.labels(outcome).inc()
            self._metrics.idp_seconds.observe(self._clock() - started)

    def _log_failure(self, fetch: _Fetch, *, retrying: bool) -> None:
        """One line per failed exchange (the last one): what happened, which attempt, how
        long it took. An error body is an excerpt; a 2xx body never appears (it may hold a
        token). Refusals are a line a second at most (with a ``suppressed`` count): a flood
        of bad requests is not a flood of log."""
        error = fetch.failures[-1]
        fields: dict[str, object] = {
            "error_code": error.error_code, "reason": error.reason,
            "attempt": len(fetch.failures),
            "elapsed_ms": round((self._clock() - fetch.started) * 1000, 1),
            "retrying": retrying}
        if error.status is not None:
            fields["status"] = error.status
        else:
            fields["network_error"] = error.reason
        if error.body:
            fields["body"] = error.body
        if error.retry_after is not None:
            fields["retry_after_s"] = min(error.retry_after, LONGEST_SHOWN_WAIT)
        if isinstance(error, IdpTimeout) and error.cut_short:
            fields["cut_short"] = True
        if isinstance(error, IdpRefused):
            self._log_refusal(fields)
        else:  # transient: a few a fetch at most, and back-offs bound the fetches
            log.warning("idp call failed", extra=fields)


class _Call(NamedTuple):
    """What each attempt of a fetch sends."""

    client_id: str
    client_secret: str
    scope: str
    auth_method: str | None
    grant: Grant | None


class _Fetch:
    """One :meth:`ResilientIdp.fetch_token` call: its time bounds and its failed exchanges."""

    def __init__(self, clock: Callable[[], float], longest: float, deadline: float | None,
                 client_id: str) -> None:
        self._clock = clock
        self.client_id = client_id
        self.started = clock()
        self.end = self.started + longest if deadline is None else min(
            self.started + longest, deadline)
        self.failures: list[IdpError] = []

    def left(self) -> float:
        """Seconds until the deadline."""
        return self.end - self._clock()

    def room(self) -> float:
        """The longest pause that still leaves time to try again (negative: none)."""
        return self.left() - 2 * SHORTEST_ATTEMPT


class _Ended(Exception):
    """Ends a fetch before an exchange, carrying the error to raise (not retried)."""

    def __init__(self, error: NoToken) -> None:
        super().__init__(str(error))
        self.error = error


def _transient(error: BaseException) -> bool:
    """A failure a retry can change: unreachable, a timeout, 5xx or 429."""
    return isinstance(error, IdpUnavailable | IdpTimeout)


def _shown(seconds: float) -> str:
    """A wait as a reader wants it: ``120 s``, but never forty digits."""
    return f"{seconds:.0f} s" if seconds <= LONGEST_SHOWN_WAIT else "more than a day"


class Endpoints:
    """The resilient issuer of each token endpoint a worker asks: the worker's own, and any
    a credential names (``token_url``), each with its own circuit, call ceiling and
    ``Retry-After`` holds, over one IdP client (which keeps a connection pool per
    endpoint). Endpoints come from the config and the credentials directory, so there are
    few; past :data:`MOST_ENDPOINTS` the least recently used one is forgotten."""

    def __init__(self, client: IdpClient, config: IdpConfig, metrics: Metrics | None = None
                 ) -> None:
        self._client = client
        self._config = config
        self._metrics = metrics
        self.default = ResilientIdp(client, config, metrics)
        """The worker's own token endpoint (``idp.url`` + ``idp.tokenPath``, or discovery)."""
        self._others: LRUCache[str, ResilientIdp] = LRUCache(MOST_ENDPOINTS)
        self._lock = threading.Lock()

    def __call__(self, token_url: str) -> ResilientIdp:
        """The issuer of ``token_url`` (made on first use)."""
        with self._lock:
            issuer = self._others.get(token_url)
            if issuer is None:
                issuer = self._others[token_url] = ResilientIdp(
                    self._client, self._config, self._metrics, endpoint=token_url)
            return issuer
