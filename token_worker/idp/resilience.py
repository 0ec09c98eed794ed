"""Asking the IdP through its bad moments: retries within a deadline, then a cool-down.

Only what a retry can change is retried: unreachable, timeouts, 5xx and 429
(:class:`IdpUnavailable`, :class:`IdpTimeout`). tenacity runs the retries: exponential
back-off with full jitter (``wait_random_exponential``), never less than the IdP's
``Retry-After`` and never past the deadline. A refusal (4xx OAuth2 error) and an
unusable answer (:class:`IdpBadResponse`: not a token, a redirect, too large) are final at
once: one IdP call per request.

The whole fetch is bounded by ``idp.deadline`` (or a caller's earlier deadline, such as a
request's own), which should be shorter than requesters' timeouts. When the deadline ends
the retries, the error says the most telling failure: a 500 followed by a retry cut short
is ``idp_unavailable`` (HTTP 500), not a timeout.

Two ways of failing fast, both without calling the IdP:

- after ``idp.failureThreshold`` consecutive failures that say the IdP is down (transient
  ones only: a refusal or an unusable answer proves it is up, and counts as a success; a
  429 is about one client, not the endpoint, and counts for neither), a circuit breaker
  (``circuitbreaker``) refuses calls for ``idp.coolDown`` seconds;
- a ``Retry-After`` longer than the time left is remembered: until it has passed (at most
  ``LONGEST_HOLD``), fetches fail at once with "identity provider asked to wait N s"
  instead of calling again on the next request. Whose fetches depends on who was told: a
  429 (too many requests) is about the client that sent them, so only that client's
  fetches fail fast (one :class:`ResilientIdp` serves one token endpoint: the hold is per
  token endpoint and client id, in a bounded table); a 503 or other 5xx is about the
  endpoint, so every client's fetches fail fast.

Every failed exchange logs one line (``idp call failed``) with the HTTP status or the
network error, the reason, the attempt number and the elapsed time.

pybreaker was tried first and measured: it holds one lock for the whole duration of every
call, so eight handler threads asked a 50 ms IdP one at a time (100 cold misses took 5.5 s
instead of 0.7 s). ``circuitbreaker`` keeps no lock around the call.
"""

from __future__ import annotations

import logging
import threading
import time

from cachetools import TTLCache
from circuitbreaker import CircuitBreaker
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from token_worker.config import IdpConfig
from token_worker.errors import (
    AskedToWait,
    CircuitOpen,
    IdpError,
    IdpRefused,
    IdpTimeout,
    IdpUnavailable,
)
from token_worker.idp.client import IdpClient
from token_worker.logs import RateLimitedLog
from token_worker.metrics import Metrics, NullMetrics, outcome_label
from token_worker.tokens.model import IssuedToken

log = logging.getLogger(__name__)

SHORTEST_ATTEMPT = 0.05
"""An attempt with less time than this left is not started."""
FIRST_BACKOFF = 0.2
"""Upper bound of the first back-off, seconds; it doubles per attempt (full jitter)."""
LONGEST_BACKOFF = 2.0
"""Upper bound of any back-off, seconds (a longer ``Retry-After`` still wins)."""
LONGEST_HOLD = 300.0
"""The longest ``Retry-After`` the worker honours by failing fast, seconds: an IdP asking
for a day is asked again after five minutes."""
LONGEST_SHOWN_WAIT = 86400.0
"""A ``Retry-After`` longer than this (a day) is shown as "more than a day", not as the
forty digits an IdP may send."""
CLIENT_HOLDS = 10_000
"""Most clients held at once after their own 429 (the oldest hold goes first when full)."""
TOO_MANY_REQUESTS = 429


class ResilientIdp:
    """Wraps :class:`IdpClient` with the retry policy and the two ways of failing fast."""

    def __init__(self, client: IdpClient, config: IdpConfig, metrics: Metrics | None = None
                 ) -> None:
        self._client = client
        self._config = config
        self._metrics = NullMetrics() if metrics is None else metrics
        self._breaker = CircuitBreaker(
            failure_threshold=config.failure_threshold,
            recovery_timeout=config.cool_down,
            expected_exception=_endpoint_failure,
            name="idp",
        )
        self._jitter = wait_random_exponential(multiplier=FIRST_BACKOFF, max=LONGEST_BACKOFF)
        self._hold_until = 0.0
        """Monotonic time before which the IdP asked not to be called."""
        self._hold_asked = 0.0
        self._client_holds: TTLCache[str, tuple[float, float]] = TTLCache(
            CLIENT_HOLDS, LONGEST_HOLD)
        """Client id -> (monotonic end of its hold, the Retry-After asked): a 429's hold."""
        self._holds_lock = threading.Lock()
        self._log_refusal = RateLimitedLog(log, logging.INFO, "idp call failed")
        """A refusal line: a line a second at most, counting the ones left out."""
        self.calls = 0
        """Token calls sent to the IdP (attempts, retries included)."""

    @property
    def token_url(self) -> str:
        """The token endpoint (after discovery, when configured: may do I/O once)."""
        return self._client.token_url

    @property
    def known_token_url(self) -> str:
        """The token endpoint if known without I/O, else "" (discovery still to come)."""
        return self._client.known_token_url

    @property
    def circuit_open(self) -> bool:
        """True while the IdP is not asked (the cool-down after repeated failures)."""
        return bool(self._breaker.opened)

    @property
    def failing_fast(self) -> bool:
        """True while every client's fetches fail without a call (circuit open, or an
        endpoint-wide Retry-After running); a client's own 429 hold does not count."""
        return self._hold_until > time.monotonic() or self.circuit_open

    def client_held(self, client_id: str) -> bool:
        """True while ``client_id``'s fetches fail fast after its own 429."""
        return self._client_hold(client_id)[0] > time.monotonic()

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    deadline: float | None = None,
                    auth_method: str | None = None) -> IssuedToken:
        """Fetch a token, retrying transient failures until ``idp.deadline`` or the caller's
        ``deadline`` (a ``time.monotonic()`` value), whichever comes first."""
        fetch = _Fetch(self._config.deadline, deadline, client_id)
        try:
            token: IssuedToken = self._retrying(fetch)(
                self._attempt, fetch, client_id, client_secret, scope, auth_method)
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
            sleep=time.sleep,
            reraise=True,
        )

    def _attempt(self, fetch: _Fetch, client_id: str, client_secret: str, scope: str,
                 auth_method: str | None) -> IssuedToken:
        """One exchange, through the circuit breaker, within the time left."""
        try:
            token: IssuedToken = self._breaker.call(
                self._call, client_id, client_secret, scope,
                min(self._config.timeout, fetch.left()), auth_method)
        except IdpError as error:
            fetch.failures.append(error)
            raise
        return token

    def _before_attempt(self, fetch: _Fetch) -> None:
        """End the fetch instead of calling when failing fast or out of time."""
        self._fail_fast(fetch)
        if fetch.left() < SHORTEST_ATTEMPT:
            raise _Ended(self._give_up(fetch) if fetch.failures else IdpTimeout(
                "no time left to ask the identity provider within the deadline",
                reason="deadline reached before the call"))

    def _pause(self, state: RetryCallState, fetch: _Fetch) -> float:
        """Full jitter, but never less than the IdP's ``Retry-After`` nor past the room left
        for another attempt (negative when there is none: :meth:`_no_retry` then stops)."""
        asked = fetch.failures[-1].retry_after or 0.0
        return min(max(self._jitter(state), asked), fetch.room())

    def _no_retry(self, fetch: _Fetch) -> bool:
        """Stop when no attempt fits before the deadline, when the IdP asked for a longer
        wait than that, or when the last failure made the fetches fail fast."""
        asked = fetch.failures[-1].retry_after
        room = fetch.room()
        return (room < 0 or (asked is not None and asked > room) or self.failing_fast
                or self.client_held(fetch.client_id))

    def _conclude(self, error: IdpError, fetch: _Fetch) -> IdpError:
        """The last exchange failed and no retry follows: log it, remember a long
        ``Retry-After``, and return the error that ends the fetch."""
        self._log_failure(fetch, retrying=False)
        asked = error.retry_after if _transient(error) else None
        if asked is not None and asked > fetch.room():
            self._hold(asked, fetch.client_id if error.status == TOO_MANY_REQUESTS else None)
            return AskedToWait(f"identity provider asked to wait {_shown(asked)}",
                               status=error.status, retry_after=min(asked, LONGEST_HOLD),
                               reason=error.reason, body=error.body)
        return self._give_up(fetch)

    def _fail_fast(self, fetch: _Fetch) -> None:
        """End the fetch instead of calling while the IdP asked to wait or the circuit is
        open: with the failures so far if any, else with the reason for not calling."""
        now = time.monotonic()
        client_until, client_asked = self._client_hold(fetch.client_id)
        if client_until > self._hold_until:
            until, asked, whom = client_until, client_asked, " for this client"
        else:
            until, asked, whom = self._hold_until, self._hold_asked, ""
        wait = until - now
        if wait > 0:
            error: IdpError = AskedToWait(
                f"identity provider asked to wait {_shown(asked)}{whom}; not asking it "
                f"again for {wait:.0f} s", reason=f"Retry-After, {wait:.0f} s left",
                retry_after=wait)
        elif self._breaker.opened:
            error = CircuitOpen(f"identity provider failing; not asked for up to "
                                f"{self._config.cool_down:g} s", reason="circuit open")
        else:
            return
        raise _Ended(self._give_up(fetch) if fetch.failures else error)

    def _hold(self, retry_after: float, client_id: str | None) -> None:
        """Remember a ``Retry-After`` longer than the time left: fail fast until then, for
        ``client_id`` only (a 429) or for every client (``None``: a 5xx)."""
        seconds = min(retry_after, LONGEST_HOLD)
        until = time.monotonic() + seconds
        if client_id is None:
            self._hold_asked = retry_after
            self._hold_until = max(self._hold_until, until)
        else:
            with self._holds_lock:
                held = self._client_holds.get(client_id, (0.0, 0.0))
                self._client_holds[client_id] = (max(held[0], until), retry_after)
        log.warning("idp asked to wait: failing fast",
                    extra={"retry_after_s": min(retry_after, LONGEST_SHOWN_WAIT),
                           "failing_fast_s": seconds,
                           "scope": "endpoint" if client_id is None else "client",
                           "client_id": client_id})

    def _client_hold(self, client_id: str) -> tuple[float, float]:
        """(end of ``client_id``'s 429 hold, what was asked), or zeros without one."""
        if not self._client_holds:
            return 0.0, 0.0
        with self._holds_lock:
            return self._client_holds.get(client_id, (0.0, 0.0))

    @staticmethod
    def _give_up(fetch: _Fetch) -> IdpError:
        """The most telling failure, with the attempts and the time spent: an HTTP 5xx or
        429 rather than a later timeout of a retry the deadline cut short; a timeout that
        used up the deadline says the deadline, not the last attempt's shortened budget."""
        failures, started, end = fetch.failures, fetch.started, fetch.end
        chosen = failures[-1]
        spent = time.monotonic() >= end - 2 * SHORTEST_ATTEMPT
        if isinstance(chosen, IdpTimeout):
            answered = [f for f in failures if isinstance(f, IdpUnavailable) and f.status]
            if answered:
                chosen = answered[-1]
            elif spent:
                chosen = IdpTimeout(f"identity provider gave no token within the "
                                    f"{end - started:.3g} s deadline", reason=chosen.reason)
        if len(failures) > 1 or chosen is not failures[-1]:
            ended = "; the deadline ended the retries" if spent else ""
            chosen.add_context(f"{len(failures)} attempts in "
                               f"{time.monotonic() - started:.1f} s{ended}")
        return chosen

    def _call(self, client_id: str, client_secret: str, scope: str, timeout: float,
              auth_method: str | None) -> IssuedToken:
        self.calls += 1
        started = time.monotonic()
        outcome = "ok"
        try:
            return self._client.fetch_token(client_id, client_secret, scope, timeout=timeout,
                                            auth_method=auth_method)
        except IdpError as error:
            outcome = outcome_label(error.error_code)
            raise
        finally:
            self._metrics.idp_calls.labels(outcome).inc()
            self._metrics.idp_seconds.observe(time.monotonic() - started)

    def _log_failure(self, fetch: _Fetch, *, retrying: bool) -> None:
        """One line per failed exchange (the last one): what happened, which attempt, how long
        it took. An error body is an excerpt; a 2xx body never appears (it may hold a token).
        Refusals, one a bad request, are a line a second at most (with a ``suppressed``
        count): a flood of bad requests is not a flood of log."""
        error = fetch.failures[-1]
        fields: dict[str, object] = {
            "error_code": error.error_code, "reason": error.reason,
            "attempt": len(fetch.failures),
            "elapsed_ms": round((time.monotonic() - fetch.started) * 1000, 1),
            "retrying": retrying}
        if error.status is not None:
            fields["status"] = error.status
        else:
            fields["network_error"] = error.reason
        if error.body:
            fields["body"] = error.body
        if error.retry_after is not None:
            fields["retry_after_s"] = min(error.retry_after, LONGEST_SHOWN_WAIT)
        if isinstance(error, IdpRefused):  # one a request: a flood of bad requests
            self._log_refusal(fields)
        else:  # transient: at most a few a fetch, and the circuit bounds the fetches
            log.warning("idp call failed", extra=fields)
        if self._breaker.opened and _transient(error):
            log.warning("idp circuit opened: failing fast",
                        extra={"cool_down_s": self._config.cool_down})



class _Fetch:
    """One :meth:`ResilientIdp.fetch_token` call: its time bounds and its failed exchanges."""

    def __init__(self, longest: float, deadline: float | None, client_id: str = "") -> None:
        self.client_id = client_id
        self.started = time.monotonic()
        self.end = self.started + longest if deadline is None else min(
            self.started + longest, deadline)
        self.failures: list[IdpError] = []

    def left(self) -> float:
        """Seconds until the deadline."""
        return self.end - time.monotonic()

    def room(self) -> float:
        """The longest pause that still leaves time to try again (negative: none)."""
        return self.left() - 2 * SHORTEST_ATTEMPT


class _Ended(Exception):
    """Ends a fetch before an exchange, carrying the error to raise (not retried)."""

    def __init__(self, error: IdpError) -> None:
        super().__init__(str(error))
        self.error = error


def _transient(error: BaseException) -> bool:
    """A failure a retry can change: unreachable, a timeout, 5xx or 429."""
    return isinstance(error, IdpUnavailable | IdpTimeout)


def _endpoint_failure(_kind: type[BaseException], error: BaseException) -> bool:
    """What counts toward the circuit breaker: a transient failure that says the endpoint
    is down; not a 429, which is about one client (its own hold handles it)."""
    return _transient(error) and getattr(error, "status", None) != TOO_MANY_REQUESTS


def _shown(seconds: float) -> str:
    """A wait as a reader wants it: ``120 s``, but never forty digits."""
    return f"{seconds:.0f} s" if seconds <= LONGEST_SHOWN_WAIT else "more than a day"
