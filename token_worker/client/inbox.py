"""The requester's waiting calls over its connection's reply space, and which replies are
believed.

A :class:`~token_worker.client.client.TokenClient`'s connection has one reply space
(:class:`~token_worker.nats.replies.ReplyMux`): one wildcard subscription,
``<inbox_prefix>.<22 random characters>.*``, and a reply subject per attempt under it,
ending in another random token, so no other connection can guess where a reply is awaited.
The :class:`Inbox` routes each attempt's subject to the :class:`Waiter` of its call (a
reply over the size cap, or for no pending attempt, is dropped there, unread); the call
then asks :func:`~token_worker.client.exchange.match_reply` whether the message is the
answer to the request (it echoes the ``request_id`` and, for a named credential, names it).
Anything else is dropped and counted, never returned or cached.
"""

from __future__ import annotations

import collections
import threading

from token_worker.errors import ClientClosed
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.nats.replies import ReplyMux


class Waiter:
    """One call waiting for its reply; the reader thread hands it messages."""

    __slots__ = ("closed", "condition", "lost", "messages")

    def __init__(self) -> None:
        self.condition = threading.Condition(threading.Lock())
        self.messages: collections.deque[Message] = collections.deque()
        self.lost = ""
        """Why the connection was lost while waiting ("" while it holds)."""
        self.closed = False

    def put(self, message: Message) -> None:
        """A reply on one of the call's subjects (reader thread)."""
        with self.condition:
            self.messages.append(message)
            self.condition.notify()


class Inbox:
    """A client's calls waiting on its connection's reply space (see the module docstring).

    Deliberately holds no reference to the :class:`~token_worker.client.client.TokenClient`,
    so that the connection's threads (which deliver replies and call :meth:`on_state`) never
    keep a dropped client alive.
    """

    def __init__(self, replies: ReplyMux, max_reply_size: int) -> None:
        self._replies = replies
        self.prefix = replies.prefix
        """Unguessable per connection: 22 random characters after the configured prefix."""
        self._max_reply_size = max_reply_size
        self._lock = threading.Lock()
        self._waiters: dict[str, Waiter] = {}
        self._closed = False
        self._not_believed = 0
        self.usable = threading.Event()
        """Set while connected, or once closed: ends a back-off early."""

    @property
    def dropped(self) -> int:
        """Messages not believed: for no pending attempt (late, guessed), too large, or not
        the answer."""
        return self._replies.dropped + self._not_believed

    def new_subject(self, waiter: Waiter) -> str:
        """A fresh, unguessable reply subject routed to ``waiter``."""
        subject = self._replies.route(waiter.put, max_size=self._max_reply_size)
        with self._lock:
            if not self._closed:
                self._waiters[subject] = waiter
                return subject
        self._replies.forget((subject,))
        raise ClientClosed("the TokenClient is closed")

    def forget(self, subjects: list[str]) -> None:
        """Stop routing these subjects (their call has ended): later replies are dropped."""
        self._replies.forget(subjects)
        with self._lock:
            for subject in subjects:
                self._waiters.pop(subject, None)

    def count_dropped(self) -> None:
        """Count a delivered message its call did not believe."""
        with self._lock:
            self._not_believed += 1

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
