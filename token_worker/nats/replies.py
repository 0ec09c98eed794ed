"""Request/reply over one connection: one wildcard inbox, one reply subject per request.

:class:`ReplyMux` subscribes once to ``_INBOX.token-worker.<random>.*`` (a NATS account can
allow the worker exactly ``_INBOX.token-worker.>``, never another service's inbox) and gives
every request its own reply subject under it, ending in a random token, like a requester.
Frames are built by :mod:`token_worker.nats.protocol`. The JetStream KV client
(:mod:`token_worker.nats.kv`) asks through it; a call waits for its one reply up to its
timeout and fails with a typed :class:`~token_worker.errors.KvError`, never forever, and
at once when made on the connection's reader thread (where its reply would wait behind it).
"""

from __future__ import annotations

import itertools
import queue
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from token_worker.errors import KvError, KvTimeout, KvUnavailable, NatsConnectionError
from token_worker.nats import protocol
from token_worker.nats.protocol import Message
from token_worker.nats.subscriptions import Subscription

__all__ = ["INBOX_PREFIX", "Connection", "ReplyMux"]

INBOX_PREFIX = "_INBOX.token-worker"
"""Where JetStream answers the worker's calls (the subscribe permission it needs)."""


class Connection(Protocol):
    """What the multiplexer and the KV client need of a NATS connection (NatsConnection has
    it)."""

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Subscription: ...

    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None: ...

    def send_raw(self, data: bytes) -> None: ...

    def on_reader_thread(self) -> bool:
        """True on the thread where replies arrive (never wait for one there)."""


class ReplyMux:
    """Request/reply over one wildcard inbox subscription, made on first use."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._prefix = f"{INBOX_PREFIX}.{secrets.token_hex(11)}."
        self._waiting: dict[str, queue.SimpleQueue[Message]] = {}
        self._lock = threading.Lock()
        self._subscribed = False
        self._counter = itertools.count(1)

    def request(self, subject: str, payload: bytes, timeout: float, *,
                headers: Mapping[str, str] | None = None) -> Message:
        """Send and wait for the one reply; raises KvTimeout or KvUnavailable."""
        if self._connection.on_reader_thread():
            raise KvError(500, "a JetStream call on the connection's reader thread would "
                               "wait for its own reply: call it from another thread")
        self._subscribe_once()
        token = f"{secrets.token_hex(4)}{next(self._counter)}"
        inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        with self._lock:
            self._waiting[token] = inbox
        try:
            frame = protocol.publish_frame(subject, payload, reply=self._prefix + token,
                                           headers=headers)
            try:
                self._connection.send_raw(frame)
            except NatsConnectionError as error:
                raise KvUnavailable(f"request not sent: {error}") from None
            try:
                reply = inbox.get(timeout=timeout)
            except queue.Empty:
                raise KvTimeout(f"no answer on {_api_name(subject)} within {timeout:g} s"
                                ) from None
        finally:
            with self._lock:
                self._waiting.pop(token, None)
        if reply.status == 503:
            raise KvUnavailable(f"no responders on {_api_name(subject)}: JetStream is off, "
                                "the bucket is missing, or its stream has no leader yet")
        return reply

    def _subscribe_once(self) -> None:
        with self._lock:
            if self._subscribed:
                return
            self._connection.subscribe(self._prefix + "*", self._on_reply)
            self._subscribed = True

    def _on_reply(self, message: Message) -> None:
        token = message.subject[len(self._prefix):]
        with self._lock:
            inbox = self._waiting.get(token)
        if inbox is not None:
            inbox.put(message)


def _api_name(subject: str) -> str:
    """A subject fit for an error text: the API call, never the key (a digest anyway)."""
    parts = subject.split(".")
    return ".".join(parts[:4]) if subject.startswith("$JS.") else ".".join(parts[:2])
