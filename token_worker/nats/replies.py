"""Request/reply over one connection: one wildcard inbox, one unguessable reply subject per
request.

A connection has one :class:`ReplyMux` (:attr:`NatsConnection.replies
<token_worker.nats.connection.NatsConnection.replies>`), as nats.py keeps one response map
behind one wildcard inbox. On first use it subscribes to ``<prefix>.<22 random
characters>.*``, and every request gets its own reply subject under it, ending in another 22
random characters (as nats.go builds them), so no other connection can guess where a reply
is awaited. The prefix is the connection's: ``_INBOX.token-worker`` for the worker's (a NATS
account can allow it exactly ``_INBOX.token-worker.>``, never another service's inbox), a
requester's own for a :class:`~token_worker.client.client.TokenClient`.

A reply goes to whoever routed its subject. One that nobody awaits any more (late, or
sent to a guessed subject), or larger than its route's size cap, is dropped before anyone
parses it, and counted (:attr:`ReplyMux.dropped`). Two kinds of users:

- :meth:`ReplyMux.request` sends and waits for one reply, up to its timeout: the JetStream
  KV client (:mod:`token_worker.nats.kv`), through :meth:`NatsConnection.request
  <token_worker.nats.connection.NatsConnection.request>`;
- :meth:`ReplyMux.route` gives a subject whose replies go to a function of the caller's: the
  requester routes every attempt of a call to one waiter and decides itself which reply
  answers (:mod:`token_worker.client.inbox`).

Replies arrive on the connection's reader thread, so a request made there would wait for
itself: :meth:`ReplyMux.request` refuses it at once.
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol

from token_worker.errors import NatsConnectionError
from token_worker.nats.protocol import Message
from token_worker.nats.subscriptions import Subscription

__all__ = ["INBOX_PREFIX", "Connection", "ReplyMux", "Sink", "Transport"]

INBOX_PREFIX = "_INBOX.token-worker"
"""Where the worker's requests (JetStream's answers) are awaited: the subscribe permission
it needs. A requester names its own."""

Sink = Callable[[Message], None]
"""Takes the replies of one routed subject (on the reader thread: keep it short)."""


class Transport(Protocol):
    """What the multiplexer needs of a connection (NatsConnection has it)."""

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Subscription: ...

    def publish(self, subject: str, payload: bytes, reply: str = "", *,
                headers: Mapping[str, str] | None = None) -> None: ...

    def on_reader_thread(self) -> bool:
        """True on the thread where replies arrive (never wait for one there)."""


class Connection(Protocol):
    """What a client of request/reply needs of a connection, the KV client's view
    (NatsConnection has it)."""

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Subscription: ...

    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None: ...

    def request(self, subject: str, payload: bytes, timeout: float, *,
                headers: Mapping[str, str] | None = None) -> Message | None: ...

    def on_reader_thread(self) -> bool:
        """True on the thread where replies arrive (never wait for one there)."""


class _Route(NamedTuple):
    sink: Sink
    max_size: int | None


class ReplyMux:
    """One connection's reply space (see the module docstring); subscribes on first use."""

    def __init__(self, transport: Transport, prefix: str = INBOX_PREFIX) -> None:
        self._transport = transport
        self.prefix = f"{prefix}.{secrets.token_urlsafe(16)}"
        """The wildcard inbox's stem: replies arrive on ``<prefix>.<random token>``."""
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._subscribe_lock = threading.Lock()
        """Held while subscribing (I/O), never with ``_lock``: the reader thread's
        :meth:`deliver` must not wait behind a write."""
        self._subscribed = False
        self.dropped = 0
        """Replies dropped unread: for a subject nobody awaits (late, guessed), or over
        their route's size cap."""

    def route(self, sink: Sink, *, max_size: int | None = None) -> str:
        """A fresh, unguessable reply subject whose replies go to ``sink`` (those larger
        than ``max_size`` bytes are dropped), until :meth:`forget`."""
        self._subscribe_once()
        subject = f"{self.prefix}.{secrets.token_urlsafe(16)}"
        with self._lock:
            self._routes[subject] = _Route(sink, max_size)
        return subject

    def forget(self, subjects: Iterable[str]) -> None:
        """Stop routing these subjects: what still arrives on them is dropped and counted."""
        with self._lock:
            for subject in subjects:
                self._routes.pop(subject, None)

    def request(self, subject: str, payload: bytes, timeout: float, *,
                headers: Mapping[str, str] | None = None) -> Message | None:
        """Send ``payload`` to ``subject`` and return the one reply, or None when none came
        within ``timeout`` seconds. Raises :class:`NatsConnectionError` when the request
        could not be sent, or when called on the reader thread (its reply would wait
        behind it)."""
        if self._transport.on_reader_thread():
            raise NatsConnectionError("a request on the connection's reader thread would "
                                      "wait for its own reply: make it from another thread")
        replies: queue.SimpleQueue[Message] = queue.SimpleQueue()
        reply = self.route(replies.put)
        try:
            self._transport.publish(subject, payload, reply, headers=headers)
            try:
                return replies.get(timeout=timeout)
            except queue.Empty:
                return None
        finally:
            self.forget((reply,))

    def deliver(self, message: Message) -> None:
        """The wildcard subscription's callback (reader thread): hand the reply to its
        route, or drop and count it."""
        with self._lock:
            route = self._routes.get(message.subject)
            if route is None or (route.max_size is not None
                                 and len(message.payload) > route.max_size):
                self.dropped += 1
                return
        route.sink(message)

    def _subscribe_once(self) -> None:
        if self._subscribed:
            return
        with self._subscribe_lock:
            if not self._subscribed:
                self._transport.subscribe(self.prefix + ".*", self.deliver)
                self._subscribed = True
