"""Asking the IdP through its bad moments: retries within a deadline, then a cool-down.

Transient failures (unreachable, timeouts, 5xx, 429) are retried with tenacity, with
exponential back-off and full jitter, never waiting less than a 429's ``Retry-After``. The
whole fetch is bounded by ``idp.deadline``, which should be shorter than requesters'
timeouts. OAuth2 refusals (4xx) are answers, never retried. After
``idp.failureThreshold`` consecutive transient failures, a circuit breaker
(``circuitbreaker``) fails fast for ``idp.coolDown`` seconds instead of piling threads up
on a dead IdP, then lets calls through again; one success closes it.

pybreaker was tried first and measured: it holds one lock for the whole duration of every
call, so eight handler threads asked a 50 ms IdP one at a time (100 cold misses took 5.5 s
instead of 0.7 s). ``circuitbreaker`` keeps no lock around the call.
"""

from __future__ import annotations

import logging
import time

from circuitbreaker import CircuitBreaker
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from token_worker.config import IdpConfig
from token_worker.errors import IdpError, IdpTimeout, IdpUnavailable
from token_worker.idp import IdpClient, IssuedToken
from token_worker.metrics import Metrics, outcome_label

log = logging.getLogger(__name__)

SHORTEST_ATTEMPT = 0.05
"""An attempt with less time than this left is not started."""


class CircuitOpen(IdpUnavailable):
    """The IdP failed repeatedly; it is not asked until the cool-down has passed."""


class ResilientIdp:
    """Wraps :class:`IdpClient` with the retry policy and the circuit breaker."""

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
        self._backoff = wait_random_exponential(multiplier=0.1, max=2.0)
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

    def fetch_token(self, client_id: str, client_secret: str, scope: str) -> IssuedToken:
        """Fetch a token, retrying transient failures until the deadline."""
        deadline = time.monotonic() + self._config.deadline
        retrying = Retrying(
            retry=retry_if_exception(_is_transient),
            stop=lambda state: self._no_time_for_another(state, deadline),
            wait=lambda state: min(self._wait(state),
                                   max(0.0, deadline - time.monotonic() - SHORTEST_ATTEMPT)),
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retrying(self._attempt, client_id, client_secret, scope, deadline)

    def _attempt(self, client_id: str, client_secret: str, scope: str,
                 deadline: float) -> IssuedToken:
        if self._breaker.opened:
            raise CircuitOpen(f"identity provider failing; not asked for up to "
                              f"{self._config.cool_down:g} s")
        timeout = min(self._config.timeout, deadline - time.monotonic())
        if timeout < SHORTEST_ATTEMPT:
            raise IdpTimeout(f"identity provider gave no token within the "
                             f"{self._config.deadline:g} s deadline")
        try:
            token: IssuedToken = self._breaker.call(self._call, client_id, client_secret,
                                                    scope, timeout)
        except (IdpUnavailable, IdpTimeout):
            if self._breaker.opened:
                log.warning("idp circuit opened: failing fast",
                            extra={"cool_down_s": self._config.cool_down})
            raise
        return token

    def _call(self, client_id: str, client_secret: str, scope: str, timeout: float
              ) -> IssuedToken:
        self.calls += 1
        started = time.monotonic()
        outcome = "ok"
        try:
            return self._client.fetch_token(client_id, client_secret, scope, timeout=timeout)
        except IdpError as error:
            outcome = outcome_label(error.error_code)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.idp_calls.labels(outcome).inc()
                self._metrics.idp_seconds.observe(time.monotonic() - started)

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None) or 0.0
        return max(float(self._backoff(state)), retry_after)

    def _no_time_for_another(self, state: RetryCallState, deadline: float) -> bool:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None) or 0.0
        return deadline - time.monotonic() <= max(SHORTEST_ATTEMPT, retry_after)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        code = error.error_code if isinstance(error, IdpError) else type(error).__name__
        log.info("idp attempt failed, retrying", extra={"attempt": state.attempt_number,
                                                          "error_code": code})


def _is_transient(error: BaseException) -> bool:
    """Worth another try: the IdP could not answer. A refusal or an open circuit is not."""
    return isinstance(error, IdpUnavailable | IdpTimeout) and not isinstance(error, CircuitOpen)
