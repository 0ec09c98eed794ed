"""NATS service discovery (ADR-32): each worker answers ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS``, alone, with the service name and with name plus instance id.

So ``nats micro list``, ``nats micro stats token-worker`` or any services client lists
the replicas, each with its own id, its version, the endpoint's subject and queue group,
and its request, error and processing-time numbers. These subscriptions are plain (not
queue) subscriptions: every instance answers. The bodies are :mod:`token_worker.wire`
types.

A worker with named credentials lists two endpoints: ``token`` (the token subject) and
``named`` (``token.named.*``, same queue group). Each endpoint counts its own replies in
its :class:`~token_worker.metrics.ReplyCounts`, where they are sent (as the NATS micro
libraries count them in each endpoint's handler): nothing is derived from worker-wide
totals, and the worker's Prometheus numbers are these counts summed.
"""

from __future__ import annotations

import contextlib
import secrets
import string
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

from token_worker.errors import NotConnected
from token_worker.metrics import Metrics, ReplyCounts
from token_worker.micro import (
    Endpoint,
    EndpointStats,
    InfoResponse,
    PingResponse,
    ServiceIdentity,
    StatsResponse,
)
from token_worker.nats.protocol import Message
from token_worker.serve.reply_scope import reply_allowed

SERVICE_NAME = "token-worker"
ENDPOINT_NAME = "token"
NAMED_ENDPOINT_NAME = "named"
DESCRIPTION = "OAuth2 client-credentials tokens over NATS request-reply"
_ID_ALPHABET = string.ascii_uppercase + string.digits


class Bus(Protocol):
    """What the responder needs of a connection."""

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Any: ...

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None: ...


def new_instance_id() -> str:
    """A 22-character instance id, in the alphabet NATS ids use."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


def endpoint_stats(endpoint: Endpoint, counts: ReplyCounts,
                   data: dict[str, Any] | None = None) -> EndpointStats:
    """An endpoint's ``$SRV.STATS`` entry, from its reply counts."""
    requests, errors, nanoseconds, last_error = counts.summary()
    average = nanoseconds // requests if requests else 0
    return EndpointStats(endpoint, requests, errors, last_error, nanoseconds, average, data)


class ServiceResponder:
    """Answers the services API for one worker instance, about ``endpoints`` (each with the
    :class:`~token_worker.metrics.ReplyCounts` its replies are counted in)."""

    def __init__(self, connection: Bus, *, version: str,
                 endpoints: list[tuple[Endpoint, ReplyCounts]], metrics: Metrics,
                 metadata: dict[str, str], reply_prefixes: tuple[str, ...] | None = None
                 ) -> None:
        self._connection = connection
        self._reply_prefixes = reply_prefixes
        self._metrics = metrics
        self.instance_id = new_instance_id()
        self._identity = ServiceIdentity(SERVICE_NAME, self.instance_id, version, metadata)
        self._endpoints = endpoints

    def start(self) -> None:
        """Subscribe to the nine discovery subjects."""
        answers: tuple[tuple[str, Callable[[], bytes]], ...] = (
            ("PING", self._ping), ("INFO", self._info), ("STATS", self._stats))
        for verb, answer in answers:
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE_NAME}",
                            f"$SRV.{verb}.{SERVICE_NAME}.{self.instance_id}"):
                self._connection.subscribe(subject, self._responder(answer))

    def _responder(self, answer: Callable[[], bytes]) -> Callable[[Message], None]:
        def respond(message: Message) -> None:
            if message.reply and reply_allowed(message.reply, self._reply_prefixes):
                # Without a connection there is nobody to tell; the asker will ask again.
                with contextlib.suppress(NotConnected):
                    self._connection.publish(message.reply, answer())
        return respond

    def _ping(self) -> bytes:
        return PingResponse(self._identity).to_bytes()

    def _info(self) -> bytes:
        return InfoResponse(self._identity, DESCRIPTION,
                            tuple(endpoint for endpoint, _ in self._endpoints)).to_bytes()

    def _stats(self) -> bytes:
        started = datetime.fromtimestamp(self._metrics.started, timezone.utc)
        data = _shared_data(self._metrics.shared_stats())
        stats = tuple(endpoint_stats(endpoint, counts, data)
                      for endpoint, counts in self._endpoints)
        return StatsResponse(self._identity, started.isoformat().replace("+00:00", "Z"),
                             stats).to_bytes()


def _shared_data(counts: dict[str, int] | None) -> dict[str, Any] | None:
    """The endpoint's ``data``: the shared tier's counts, when there is a shared tier."""
    return None if counts is None else {"shared_cache": counts}
