"""The NATS services API (ADR-32, "micro") bodies: what ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS`` answer, with ``to_bytes()`` and ``from_bytes()``, as nats.py's ``micro``
package shapes them (``io.nats.micro.v1.*_response``). The worker's responder is
:mod:`token_worker.serve.service`; ``nats micro`` and any services client read them.

Parsing never raises anything but :class:`~token_worker.errors.InvalidReply`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from token_worker.errors import InvalidReply
from token_worker.wire import text_field

__all__ = ["Endpoint", "EndpointStats", "InfoResponse", "PingResponse", "ServiceIdentity",
           "StatsResponse"]


@dataclass(frozen=True)
class ServiceIdentity:
    """What every ``$SRV`` response starts with."""

    name: str
    id: str
    version: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "version": self.version,
                "metadata": self.metadata}

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> ServiceIdentity:
        metadata = document.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InvalidReply("field metadata must be an object")
        return cls(name=text_field(document, "name", required=True),
                   id=text_field(document, "id", required=True),
                   version=text_field(document, "version"), metadata=metadata)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of the service, as ``$SRV.INFO`` lists it."""

    name: str
    subject: str
    queue_group: str
    metadata: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "queue_group": self.queue_group,
                "metadata": self.metadata}


@dataclass(frozen=True)
class EndpointStats:
    """An endpoint's numbers, as ``$SRV.STATS`` reports them."""

    endpoint: Endpoint
    num_requests: int
    num_errors: int
    last_error: str
    processing_time: int
    """Nanoseconds, summed over every request."""
    average_processing_time: int
    data: dict[str, Any] | None = None
    """The endpoint's own numbers (ADR-32 ``data``): the shared tier's counts."""

    def to_dict(self) -> dict[str, Any]:
        body = {**self.endpoint.to_dict(), "num_requests": self.num_requests,
                "num_errors": self.num_errors, "last_error": self.last_error,
                "processing_time": self.processing_time,
                "average_processing_time": self.average_processing_time}
        if self.data is not None:
            body["data"] = self.data
        return body


def _service_document(payload: bytes, kind: str) -> dict[str, Any]:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidReply("response is not JSON") from None
    if not isinstance(document, dict) or document.get("type") != kind:
        raise InvalidReply(f"response is not a {kind}")
    return document


def _endpoints(document: dict[str, Any]) -> list[dict[str, Any]]:
    endpoints = document.get("endpoints") or []
    if not isinstance(endpoints, list) or not all(isinstance(e, dict) for e in endpoints):
        raise InvalidReply("field endpoints must be a list of objects")
    return endpoints


def _endpoint(document: dict[str, Any]) -> Endpoint:
    return Endpoint(name=text_field(document, "name", required=True),
                    subject=text_field(document, "subject", required=True),
                    queue_group=text_field(document, "queue_group"),
                    metadata=document.get("metadata"))


def _count(document: dict[str, Any], name: str) -> int:
    value = document.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidReply(f"field {name} must be an integer")
    return value


@dataclass(frozen=True)
class PingResponse:
    """``$SRV.PING``: who is there."""

    TYPE = "io.nats.micro.v1.ping_response"
    identity: ServiceIdentity

    def to_bytes(self) -> bytes:
        return orjson.dumps({"type": self.TYPE, **self.identity.to_dict()})

    @classmethod
    def from_bytes(cls, payload: bytes) -> PingResponse:
        return cls(ServiceIdentity.from_dict(_service_document(payload, cls.TYPE)))


@dataclass(frozen=True)
class InfoResponse:
    """``$SRV.INFO``: what the service does and where."""

    TYPE = "io.nats.micro.v1.info_response"
    identity: ServiceIdentity
    description: str
    endpoints: tuple[Endpoint, ...]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"type": self.TYPE, **self.identity.to_dict(),
                             "description": self.description,
                             "endpoints": [e.to_dict() for e in self.endpoints]})

    @classmethod
    def from_bytes(cls, payload: bytes) -> InfoResponse:
        document = _service_document(payload, cls.TYPE)
        return cls(ServiceIdentity.from_dict(document), text_field(document, "description"),
                   tuple(_endpoint(e) for e in _endpoints(document)))


@dataclass(frozen=True)
class StatsResponse:
    """``$SRV.STATS``: each endpoint's numbers since ``started``."""

    TYPE = "io.nats.micro.v1.stats_response"
    identity: ServiceIdentity
    started: str
    """RFC 3339, UTC."""
    endpoints: tuple[EndpointStats, ...]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"type": self.TYPE, **self.identity.to_dict(),
                             "started": self.started,
                             "endpoints": [e.to_dict() for e in self.endpoints]})

    @classmethod
    def from_bytes(cls, payload: bytes) -> StatsResponse:
        document = _service_document(payload, cls.TYPE)
        stats = tuple(EndpointStats(
            _endpoint(e), _count(e, "num_requests"), _count(e, "num_errors"),
            text_field(e, "last_error"), _count(e, "processing_time"),
            _count(e, "average_processing_time"),
            e["data"] if isinstance(e.get("data"), dict) else None)
            for e in _endpoints(document))
        return cls(ServiceIdentity.from_dict(document), text_field(document, "started"),
                   stats)
