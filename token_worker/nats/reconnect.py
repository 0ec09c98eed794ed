"""The reconnect policy: rounds over the servers, a pause between rounds, and when to stop.

A round tries every server once, in the order :class:`~token_worker.nats.server_pool.ServerPool`
gives (shuffled unless ``nats.noRandomize``, the server used last tried last). Between rounds
the policy waits ``nats.reconnectWait`` (a ``close()`` ends the wait at once); after
``nats.maxReconnect`` rounds (negative: never) it gives up with
:class:`~token_worker.errors.ReconnectGaveUp`, or
:class:`~token_worker.errors.ConnectionClosed` when the connection was closed meanwhile. The
first connect follows the same policy (a worker may start before NATS), unless
``first_connect_rounds`` bounds it (a requester wants to know at once). tenacity runs the
rounds; what one attempt at one server does is the connection's business (``connect_to``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    stop_when_event_set,
    wait_fixed,
)

from token_worker.config import NatsConfig
from token_worker.errors import ConnectionClosed, HandshakeFailed, ReconnectGaveUp
from token_worker.nats.handshake import describe_connect_error
from token_worker.nats.server_pool import ServerPool

__all__ = ["ReconnectPolicy"]

log = logging.getLogger(__name__)


class ReconnectPolicy:
    """Runs connect rounds for one connection as its config allows.

    ``closing`` is the connection's: once set, the rounds end (and so does a pause).
    """

    def __init__(self, config: NatsConfig, pool: ServerPool, closing: threading.Event, *,
                 first_connect_rounds: int | None = None) -> None:
        self._config = config
        self._pool = pool
        self._closing = closing
        self._first_connect_rounds = first_connect_rounds

    def connect(self, connect_to: Callable[[str], None], *, first: bool) -> None:
        """Run connect rounds over the servers, calling ``connect_to(url)`` for each server
        until one succeeds; raise ReconnectGaveUp (or ConnectionClosed) when the policy is
        exhausted."""
        config = self._config
        if not first and (not config.allow_reconnect or config.max_reconnect == 0):
            raise ReconnectGaveUp("reconnecting is disabled (allowReconnect/maxReconnect)")
        rounds = config.max_reconnect if config.max_reconnect > 0 else None
        if first and (not config.allow_reconnect or config.max_reconnect == 0):
            rounds = 1
        if first and self._first_connect_rounds is not None:
            rounds = self._first_connect_rounds
        retrying = Retrying(
            stop=(stop_after_attempt(rounds) if rounds else stop_never)
            | stop_when_event_set(self._closing),
            wait=wait_fixed(config.reconnect_wait),
            retry=retry_if_exception_type(HandshakeFailed),
            sleep=self._sleep_unless_closing,
            before_sleep=self._log_failed_round,
            reraise=True,
        )
        try:
            retrying(self._round, connect_to)
        except HandshakeFailed as error:
            if self._closing.is_set():
                raise ConnectionClosed("closed while connecting to NATS") from None
            attempts = retrying.statistics.get("attempt_number", 1)
            raise ReconnectGaveUp(
                f"no NATS server reachable after {attempts} round(s) over "
                f"{', '.join(self._pool.urls)}: {error}"
            ) from None

    def _sleep_unless_closing(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _log_failed_round(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning(
            "nats connect round failed, retrying",
            extra={"attempt": retry_state.attempt_number, "error": str(error),
                   "retry_in_s": self._config.reconnect_wait},
        )

    def _round(self, connect_to: Callable[[str], None]) -> None:
        """Try every server once, in the pool's order."""
        errors = []
        for url in self._pool.round():
            if self._closing.is_set():
                raise HandshakeFailed("connection is closing")
            self._pool.tried(url)
            try:
                connect_to(url)
                return
            except Exception as error:
                errors.append(f"{url}: {describe_connect_error(error)}")
        if self._closing.is_set():
            raise HandshakeFailed("connection is closing")
        raise HandshakeFailed("; ".join(errors))
