"""The requester's reply space: unguessable inbox subjects, and which replies are believed.

A :class:`~token_worker.client.client.TokenClient` holds one wildcard subscription,
``<inbox_prefix>.<22 random characters>.*``; every attempt gets its own reply subject under
it, ending in another random token (as nats.go builds them), so no other connection can
guess where a reply is awaited. The :class:`Inbox` hands each delivered message to the
:class:`Waiter` of its subject; :func:`match_reply` then decides whether the message is the
answer to the request (it echoes the ``request_id`` and, for a named credential, names it).
Anything else is dropped and counted, never returned or cached.
"""

from __future__ import annotations

import collections
import secrets
import threading
from typing import Any

import orjson

from token_worker.errors import ClientClosed
from token_worker.nats.link import State
from token_worker.nats.protocol import Message


class Waiter:
    """One call waiting for its reply; the reader thread hands it messages."""

    __slots__ = ("closed", "condition", "lost", "messages")

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.messages: collections.deque[Message] = collections.deque()
        self.lost = ""
        """Why the connection was lost while waiting ("" while it holds)."""
        self.closed = False


class Inbox:
    """The client's reply space: hands each reply to the call waiting on its subject.

    Deliberately holds no reference to the :class:`~token_worker.client.client.TokenClient`, so
    that the connection's threads (which call :meth:`deliver` and :meth:`on_state`) never
    keep a dropped client alive.
    """

    def __init__(self, prefix: str, max_reply_size: int) -> None:
        self.prefix = f"{prefix}.{secrets.token_urlsafe(16)}"
        """Unguessable per client: 22 random characters after the configured prefix."""
        self._max_reply_size = max_reply_size
        self._lock = threading.Lock()
        self._waiters: dict[str, Waiter] = {}
        self._closed = False
        self.dropped = 0
        """Messages not believed: for no pending request, too large, or not the answer."""
        self.usable = threading.Event()
        """Set while connected, or once closed: ends a back-off early."""

    def new_subject(self, waiter: Waiter) -> str:
        """A fresh, unguessable reply subject routed to ``waiter``."""
        subject = f"{self.prefix}.{secrets.token_urlsafe(16)}"
        with self._lock:
            if self._closed:
                raise ClientClosed("the TokenClient is closed")
            self._waiters[subject] = waiter
        return subject

    def forget(self, subjects: list[str]) -> None:
        """Stop routing these subjects (their call has ended): later replies are dropped."""
        with self._lock:
            for subject in subjects:
                self._waiters.pop(subject, None)

    def count_dropped(self) -> None:
        """Count a delivered message its call did not believe."""
        with self._lock:
            self.dropped += 1

    def deliver(self, message: Message) -> None:
        """Subscription callback (reader thread): route, or drop what nobody awaits and
        anything over the size cap before anyone parses it."""
        with self._lock:
            waiter = self._waiters.get(message.subject)
            if waiter is None or len(message.payload) > self._max_reply_size:
                self.dropped += 1
                return
        with waiter.condition:
            waiter.messages.append(message)
            waiter.condition.notify()

    def on_state(self, state: State) -> None:
        """Connection listener: replies in flight are lost with the connection."""
        if state is State.CONNECTED:
            self.usable.set()
        elif state in (State.RECONNECTING, State.CLOSED):
            if not self._closed:
                self.usable.clear()
            self._wake_all(lost=f"NATS connection lost ({state.value})")

    def close(self) -> None:
        """Refuse new subjects and wake every waiting call (it raises ``ClientClosed``)."""
        with self._lock:
            self._closed = True
        self.usable.set()
        self._wake_all(closed=True)

    def _wake_all(self, *, lost: str = "", closed: bool = False) -> None:
        with self._lock:
            waiters = set(self._waiters.values())
        for waiter in waiters:
            with waiter.condition:
                waiter.lost = waiter.lost or lost
                waiter.closed = waiter.closed or closed
                waiter.condition.notify()


def match_reply(payload: bytes, request_id: str, credential: str | None
                ) -> dict[str, Any] | None:
    """The decoded reply if it answers this request, else None (to be dropped).

    It answers when it is a JSON object echoing ``request_id``; for a named ``credential``
    a token must also name it (an error need not, but must not name another). Whether the
    answer is a well-formed token is for the wire types to say
    (:func:`token_worker.wire.reply_from_document`): a malformed answer to this request is
    an error for the caller, not a forgery to wait past.
    """
    try:
        reply = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(reply, dict) or reply.get("request_id") != request_id:
        return None
    if credential is not None:
        named = reply.get("credential")
        if named != credential and (named is not None or "access_token" in reply):
            return None
    return reply
