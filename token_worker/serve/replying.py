"""The worker's reply path: every reply checked, counted, then sent, from any thread.

A reply larger than the server's ``max_payload`` would make the server drop the
connection: it is replaced by a ``token_too_large`` error reply (the handler is told, so
it forgets what it served), and so is one the server refuses because its limit changed
meanwhile. Each reply is counted (Prometheus and ``$SRV.STATS``) before it is published,
so whoever reads the numbers after getting a reply sees it counted. A reply lost with the
connection is logged, at most a line a second.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from token_worker import wire
from token_worker.errors import NatsConnectionError, NotConnected, PayloadTooLarge
from token_worker.logs import RateLimitedLog, request_context
from token_worker.metrics import Metrics, ReplyCounts
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.nats.subscriptions import Subscription
from token_worker.serve.handler import Reply

__all__ = ["Connection", "ReplySender", "Warnings", "error_reply"]

LOG_INTERVAL = 1.0
"""Seconds between two lines of one per-request warning (each counts what it suppressed)."""


class Connection(Protocol):
    """What the worker needs of a NATS connection
    (:class:`~token_worker.nats.connection.NatsConnection`, or a stub in tests)."""

    @property
    def state(self) -> State: ...
    @property
    def is_connected(self) -> bool: ...
    @property
    def server_url(self) -> str: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def max_payload(self) -> int: ...
    def connect(self) -> None: ...
    def close(self, timeout: float = 5.0) -> None: ...
    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Subscription: ...
    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None: ...
    def publish(self, subject: str, payload: bytes, reply: str = "") -> None: ...
    def publish_reply(self, subject: str, payload: bytes) -> None: ...
    def flush(self, timeout: float) -> None: ...


class Warnings:
    """The worker's per-request warnings, each at most one line a second, on ``log``."""

    def __init__(self, log: logging.Logger) -> None:
        def limited(level: int, message: str) -> RateLimitedLog:
            return RateLimitedLog(log, level, message, interval=LOG_INTERVAL)

        self.no_reply = limited(logging.WARNING, "request without reply subject dropped")
        self.reply_elsewhere = limited(
            logging.WARNING,
            "request dropped: its reply subject is outside replySubjects or not literal")
        self.overloaded = limited(logging.WARNING, "overloaded: requests rejected")
        self.too_large = limited(logging.WARNING,
                                 "reply too large for NATS: answered token_too_large")
        self.reply_lost = limited(logging.WARNING, "reply lost: NATS connection down")
        self.handler_failed = limited(logging.ERROR, "handler failed")


class ReplySender:
    """Checks, counts and publishes the replies of one worker (see the module docstring).

    ``unsent`` is the handler's hook for a reply that was replaced (too large to send).
    """

    def __init__(self, connection: Connection, *, metrics: Metrics,
                 unsent: Callable[[Reply], None], warnings: Warnings) -> None:
        self._connection = connection
        self._metrics = metrics
        self._unsent = unsent
        self._warn = warnings

    def endpoint_counts(self) -> ReplyCounts:
        """Reply counts for a new endpoint (pass them to :meth:`send` with its replies)."""
        return self._metrics.endpoint_counts()

    def send(self, subject: str, reply: Reply, received: float, counts: ReplyCounts
             ) -> None:
        """Check the size, count the reply, then send it: whoever reads the metrics or
        ``$SRV.STATS`` after getting the reply sees it counted. ``received`` is the
        ``time.perf_counter()`` moment the request arrived; ``counts``, its endpoint's."""
        limit = self._connection.max_payload
        if len(reply.body) > limit:
            self._unsent(reply)
            reply = self._too_large(reply, len(reply.body), limit)
        counts.count(reply.error_code, time.perf_counter() - received)
        try:
            self._connection.publish_reply(subject, reply.body)
        except PayloadTooLarge as error:  # the server's limit changed under us
            self._unsent(reply)
            with contextlib.suppress(NatsConnectionError):
                self._connection.publish_reply(
                    subject, self._too_large(reply, error.size, error.limit).body)
        except NotConnected as error:
            self._warn.reply_lost({"error": str(error)})

    @property
    def max_size(self) -> int:
        """The largest reply the server takes (its ``max_payload``)."""
        return self._connection.max_payload

    def send_ok(self, subject: str, body: bytes, received: float, counts: ReplyCounts,
                max_size: int) -> None:
        """:meth:`send` for a handler's hot path (``answer_at_once``): a reply (outcome
        ``ok``) checked, counted, then sent. A body that breaks the hook's contract (not
        ``bytes``, or longer than ``max_size``, what the hook was given) raises
        ``TypeError`` before anything is counted: the handler failed."""
        if type(body) is not bytes or len(body) > max_size:
            raise TypeError(f"answer_at_once returned {type(body).__name__} of "
                            f"{len(body) if isinstance(body, (bytes, bytearray)) else '?'} "
                            f"bytes, not bytes of at most {max_size}")
        counts.count("", time.perf_counter() - received)
        try:
            self._connection.publish_reply(subject, body)
        except NotConnected as error:
            self._warn.reply_lost({"error": str(error)})

    def _too_large(self, reply: Reply, size: int, limit: int) -> Reply:
        """The reply that replaces one the server would refuse (logged with the client id,
        never with the reply, which may hold a token)."""
        with request_context(reply.request_id, reply.client_id):
            self._warn.too_large({"bytes": size, "max_payload": limit})
        return error_reply(reply.request_id, wire.TOKEN_TOO_LARGE,
                           f"reply is {size} bytes, larger than the {limit} bytes the NATS "
                           "server accepts", client_id=reply.client_id)


def error_reply(request_id: str, error_code: str, error: str, *, client_id: str = "") -> Reply:
    """An error reply, ready to send."""
    return Reply(wire.ErrorReply(request_id, error, error_code).to_bytes(), error_code,
                 request_id, client_id)
