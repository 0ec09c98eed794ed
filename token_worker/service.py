"""NATS service discovery (ADR-32): each worker answers ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS``, alone, with the service name and with name plus instance id.

So ``nats micro list``, ``nats micro stats token-worker`` or any services client lists
the replicas, each with its own id, its version, the endpoint's subject and queue group,
and its request, error and processing-time numbers. These subscriptions are plain (not
queue) subscriptions: every instance answers.
"""

from __future__ import annotations

import contextlib
import secrets
import string
from datetime import datetime, timezone
from typing import Any

from token_worker import messages
from token_worker.connection import Message, NatsConnection
from token_worker.errors import NotConnected
from token_worker.metrics import Metrics

SERVICE_NAME = "token-worker"
ENDPOINT_NAME = "token"
DESCRIPTION = "OAuth2 client-credentials tokens over NATS request-reply"
_ID_ALPHABET = string.ascii_uppercase + string.digits


def new_instance_id() -> str:
    """A 22-character instance id, in the alphabet NATS ids use."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(22))


class ServiceResponder:
    """Answers the services API for one worker instance."""

    def __init__(self, connection: NatsConnection, *, version: str, subject: str, queue: str,
                 metrics: Metrics, metadata: dict[str, str]) -> None:
        self._connection = connection
        self._metrics = metrics
        self.instance_id = new_instance_id()
        self._identity = {"name": SERVICE_NAME, "id": self.instance_id, "version": version,
                          "metadata": metadata}
        self._endpoint = {"name": ENDPOINT_NAME, "subject": subject, "queue_group": queue,
                          "metadata": None}

    def start(self) -> None:
        """Subscribe to the nine discovery subjects."""
        for verb, answer in (("PING", self._ping), ("INFO", self._info),
                             ("STATS", self._stats_response)):
            for subject in (f"$SRV.{verb}", f"$SRV.{verb}.{SERVICE_NAME}",
                            f"$SRV.{verb}.{SERVICE_NAME}.{self.instance_id}"):
                self._connection.subscribe(subject, self._responder(answer))

    def _responder(self, answer: Any) -> Any:
        def respond(message: Message) -> None:
            if message.reply:
                # Without a connection there is nobody to tell; the asker will ask again.
                with contextlib.suppress(NotConnected):
                    self._connection.publish(message.reply, messages.encode(answer()))
        return respond

    def _ping(self) -> dict[str, Any]:
        return {"type": "io.nats.micro.v1.ping_response", **self._identity}

    def _info(self) -> dict[str, Any]:
        return {"type": "io.nats.micro.v1.info_response", **self._identity,
                "description": DESCRIPTION, "endpoints": [self._endpoint]}

    def _stats_response(self) -> dict[str, Any]:
        started = datetime.fromtimestamp(self._metrics.started, timezone.utc)
        return {"type": "io.nats.micro.v1.stats_response", **self._identity,
                "started": started.isoformat().replace("+00:00", "Z"),
                "endpoints": [{**self._endpoint, **self._metrics.endpoint_stats()}]}
