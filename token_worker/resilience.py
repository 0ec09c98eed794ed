"""Asking the IdP through its bad moments: retries within a deadline, then a cool-down.

Only what a retry can change is retried: unreachable, timeouts, 5xx and 429
(:class:`IdpUnavailable`, :class:`IdpTimeout`), with exponential back-off and full jitter,
never waiting less than the IdP's ``Retry-After``. A refusal (4xx OAuth2 error) and an
unusable answer (:class:`IdpBadResponse`: not a token, a redirect, too large) are final at
once: one IdP call per request.

The whole fetch is bounded by ``idp.deadline`` (or a caller's earlier deadline, such as a
request's own), which should be shorter than requesters' timeouts. When the deadline ends
the retries, the error says the most telling failure: a 500 followed by a retry cut short
is ``idp_unavailable`` (HTTP 500), not a timeout.

Two ways of failing fast, both without calling the IdP:

- after ``idp.failureThreshold`` consecutive failures that say the IdP is down (transient
  ones only: a refusal or an unusable answer proves it is up, and counts as a success), a
  circuit breaker (``circuitbreaker``) refuses calls for ``idp.coolDown`` seconds;
- a ``Retry-After`` longer than the time left is remembered: until it has passed, every
  fetch fails at once with "identity provider asked to wait N s" instead of calling again
  on the next request. One :class:`ResilientIdp` serves one token endpoint, so this is
  per endpoint.

Every failed exchange logs one line (``idp call failed``) with the HTTP status or the
network error, the reason, the attempt number and the elapsed time.

pybreaker was tried first and measured: it holds one lock for the whole duration of every
call, so eight handler threads asked a 50 ms IdP one at a time (100 cold misses took 5.5 s
instead of 0.7 s). ``circuitbreaker`` keeps no lock around the call.
"""

from __future__ import annotations

import logging
import random
import time

from circuitbreaker import CircuitBreaker

from token_worker.config import IdpConfig
from token_worker.errors import IdpError, IdpRefused, IdpTimeout, IdpUnavailable
from token_worker.idp import IdpClient, IssuedToken
from token_worker.metrics import Metrics, outcome_label

log = logging.getLogger(__name__)

SHORTEST_ATTEMPT = 0.05
"""An attempt with less time than this left is not started."""
FIRST_BACKOFF = 0.1
"""Upper bound of the first back-off, seconds; it doubles per attempt (full jitter)."""
LONGEST_BACKOFF = 2.0
"""Upper bound of any back-off, seconds (a longer ``Retry-After`` still wins)."""
LONGEST_HOLD = 300.0
"""The longest ``Retry-After`` the worker honours by failing fast, seconds: an IdP asking
for a day is asked again after five minutes."""


class CircuitOpen(IdpUnavailable):
    """The IdP failed repeatedly; it is not asked until the cool-down has passed."""


class AskedToWait(IdpUnavailable):
    """The IdP asked (``Retry-After``) not to be called before a moment still to come."""


class ResilientIdp:
    """Wraps :class:`IdpClient` with the retry policy and the two ways of failing fast."""

    def __init__(self, client: IdpClient, config: IdpConfig, metrics: Metrics | None = None
                 ) -> None:
        self._client = client
        self._config = config
        self._metrics = metrics
        self._breaker = CircuitBreaker(
            failure_threshold=config.failure_threshold,
            recovery_timeout=config.cool_down,
            expected_exception=(IdpUnavailable, IdpTimeout),
            name="idp",
        )
        self._hold_until = 0.0
        """Monotonic time before which the IdP asked not to be called."""
        self._hold_asked = 0.0
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
        """True while fetches fail without a call (circuit open, or a Retry-After running)."""
        return self._hold_until > time.monotonic() or self.circuit_open

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    deadline: float | None = None,
                    auth_method: str | None = None) -> IssuedToken:
        """Fetch a token, retrying transient failures until ``idp.deadline`` or the caller's
        ``deadline`` (a ``time.monotonic()`` value), whichever comes first."""
        started = time.monotonic()
        end = started + self._config.deadline
        if deadline is not None:
            end = min(end, deadline)
        failures: list[IdpError] = []
        while True:
            self._fail_fast(failures, started, end)
            left = end - time.monotonic()
            if left < SHORTEST_ATTEMPT:
                if failures:
                    raise self._give_up(failures, started, end)
                raise IdpTimeout("no time left to ask the identity provider within the "
                                 "deadline", reason="deadline reached before the call")
            try:
                token: IssuedToken = self._breaker.call(
                    self._call, client_id, client_secret, scope, min(self._config.timeout, left),
                    auth_method)
            except IdpError as error:
                failures.append(error)
                self._after_failure(error, failures, started, end)
            else:
                return token

    def _after_failure(self, error: IdpError, failures: list[IdpError], started: float,
                       end: float) -> None:
        """Log the failed attempt, then wait for the next one or raise the final error."""
        transient = isinstance(error, IdpUnavailable | IdpTimeout)
        left = end - time.monotonic()
        asked = error.retry_after if transient else None
        room = left - 2 * SHORTEST_ATTEMPT  # the longest pause that leaves time to try again
        if asked is not None and asked > room:
            self._log_failure(error, len(failures), started, retrying=False)
            self._hold(asked)
            raise AskedToWait(f"identity provider asked to wait {asked:.0f} s",
                              status=error.status, retry_after=asked, reason=error.reason,
                              body=error.body) from None
        pause = min(max(_backoff(len(failures)), asked or 0.0), room)
        retrying = transient and pause >= 0
        self._log_failure(error, len(failures), started, retrying=retrying)
        if not retrying:
            raise self._give_up(failures, started, end) from None
        time.sleep(pause)

    def _fail_fast(self, failures: list[IdpError], started: float, end: float) -> None:
        """Raise instead of calling while the IdP asked to wait or the circuit is open."""
        wait = self._hold_until - time.monotonic()
        if wait > 0:
            error: IdpError = AskedToWait(
                f"identity provider asked to wait {self._hold_asked:.0f} s; not asking it "
                f"again for {wait:.0f} s", reason=f"Retry-After, {wait:.0f} s left")
        elif self._breaker.opened:
            error = CircuitOpen(f"identity provider failing; not asked for up to "
                                f"{self._config.cool_down:g} s", reason="circuit open")
        else:
            return
        raise self._give_up(failures, started, end) if failures else error

    def _hold(self, retry_after: float) -> None:
        """Remember a ``Retry-After`` longer than the time left: fail fast until then."""
        seconds = min(retry_after, LONGEST_HOLD)
        self._hold_asked = retry_after
        self._hold_until = max(self._hold_until, time.monotonic() + seconds)
        log.warning("idp asked to wait: failing fast", extra={"retry_after_s": retry_after,
                                                              "failing_fast_s": seconds})

    @staticmethod
    def _give_up(failures: list[IdpError], started: float, end: float) -> IdpError:
        """The most telling failure, with the attempts and the time spent: an HTTP 5xx or
        429 rather than a later timeout of a retry the deadline cut short; a timeout that
        used up the deadline says the deadline, not the last attempt's shortened budget."""
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
              auth_method: str | None = None) -> IssuedToken:
        self.calls += 1
        started = time.monotonic()
        outcome = "ok"
        try:
            if auth_method is None:  # stand-in clients in tests take no auth_method
                return self._client.fetch_token(client_id, client_secret, scope,
                                                timeout=timeout)
            return self._client.fetch_token(client_id, client_secret, scope, timeout=timeout,
                                            auth_method=auth_method)
        except IdpError as error:
            outcome = outcome_label(error.error_code)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.idp_calls.labels(outcome).inc()
                self._metrics.idp_seconds.observe(time.monotonic() - started)

    def _log_failure(self, error: IdpError, attempt: int, started: float, *,
                     retrying: bool) -> None:
        """One line per failed exchange: what happened, which attempt, how long it took. An
        error body is an excerpt; a 2xx body never appears (it may hold a token)."""
        fields: dict[str, object] = {
            "error_code": error.error_code, "reason": error.reason, "attempt": attempt,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1), "retrying": retrying}
        if error.status is not None:
            fields["status"] = error.status
        else:
            fields["network_error"] = error.reason
        if error.body:
            fields["body"] = error.body
        if error.retry_after is not None:
            fields["retry_after_s"] = error.retry_after
        level = logging.INFO if isinstance(error, IdpRefused) else logging.WARNING
        log.log(level, "idp call failed", extra=fields)
        if self._breaker.opened and isinstance(error, IdpUnavailable | IdpTimeout):
            log.warning("idp circuit opened: failing fast",
                        extra={"cool_down_s": self._config.cool_down})


def _backoff(attempt: int) -> float:
    """Full jitter: anything up to an exponentially growing bound."""
    return random.uniform(0.0, min(LONGEST_BACKOFF, FIRST_BACKOFF * 2**attempt))  # noqa: S311
