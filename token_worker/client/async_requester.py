"""One request over the app's nats-py connection, attempt by attempt, without blocking the
event loop: the asyncio twin of :mod:`token_worker.client.requester`.

:class:`AsyncInbox` is the client's reply space on that connection: a subscription of its
own, ``<inbox_prefix>.<22 random characters>.*`` (made on first use), and a reply subject
per attempt under it ending in another 22 random characters, so no other connection can
guess where a reply is awaited. A reply over the size cap, or for no pending attempt, is
dropped unread and counted. While calls wait, one task looks at the connection every
:data:`WATCH_INTERVAL` seconds: a lost connection ends their attempts at once (their
replies are lost with it), and the retry policy asks again once it is back.

:class:`AsyncRequester` runs the attempts with tenacity's ``AsyncRetrying`` under the same
:class:`~token_worker.client.retries.Course` and
:class:`~token_worker.client.retries.RetryPolicy` as the threaded requester, believes the
same replies (:func:`~token_worker.client.exchange.match_reply`) and ends with the same
errors (:func:`~token_worker.client.retries.final_error`). It needs nothing of nats-py but
the connection object: :class:`NatsClient` is what it uses of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from tenacity import AsyncRetrying

from token_worker.client.exchange import check_size, match_reply
from token_worker.client.retries import (
    AttemptFailed,
    BudgetSpent,
    Call,
    ConnectionLost,
    Course,
    NoResponders,
    RetryPolicy,
    Unanswered,
    turned_away,
    unless_turned_away,
)
from token_worker.errors import ClientClosed, NatsUnavailable

__all__ = ["AsyncInbox", "AsyncRequester", "NatsClient"]

WATCH_INTERVAL = 0.1
"""Seconds between two looks at the connection while calls wait for replies."""
NO_RESPONDERS = "503"
"""The status nats-py hands over (header ``Status``) when nobody is subscribed."""


class NatsMessage(Protocol):
    """What is read of a nats-py ``Msg``."""

    subject: str
    data: bytes
    headers: dict[str, str] | None


class NatsClient(Protocol):
    """What the asyncio requester uses of a connected nats-py ``Client``."""

    @property
    def is_connected(self) -> bool: ...
    @property
    def is_closed(self) -> bool: ...
    @property
    def max_payload(self) -> int: ...
    async def publish(self, subject: str, payload: bytes = b"", reply: str = "",
                      headers: dict[str, str] | None = None) -> None: ...
    async def subscribe(self, subject: str, queue: str = "",
                        cb: Callable[[Any], Awaitable[None]] | None = None) -> Any: ...


class _Waiter:
    """One call waiting for its reply: the messages routed to it, and why it must stop."""

    __slots__ = ("closed", "lost", "messages", "wake")

    def __init__(self) -> None:
        self.messages: collections.deque[NatsMessage] = collections.deque()
        self.wake = asyncio.Event()
        self.lost = ""
        """Why the connection was lost during the attempt ("" while it holds)."""
        self.closed = False

    def put(self, message: NatsMessage) -> None:
        self.messages.append(message)
        self.wake.set()

    def stop(self, *, lost: str = "", closed: bool = False) -> None:
        self.lost = self.lost or lost
        self.closed = self.closed or closed
        self.wake.set()


class AsyncInbox:
    """A client's reply space on the app's connection (see the module docstring)."""

    def __init__(self, nc: NatsClient, prefix: str, max_reply_size: int) -> None:
        self._nc = nc
        self.prefix = f"{prefix}.{secrets.token_urlsafe(16)}"
        """Unguessable: 22 random characters after the configured prefix."""
        self._max_reply_size = max_reply_size
        self._waiters: dict[str, _Waiter] = {}
        self._subscription: Any = None
        self._subscribing: asyncio.Lock | None = None
        self._watch: asyncio.Task[None] | None = None
        self.closed = False
        self.dropped = 0
        """Messages not believed: for no pending attempt, too large, or not the answer."""

    async def open(self) -> None:
        """Subscribe the reply space, once (nats-py keeps it across reconnects)."""
        if self._subscription is not None:
            return
        if self._subscribing is None:
            self._subscribing = asyncio.Lock()
        async with self._subscribing:
            if self._subscription is None and not self.closed:
                self._subscription = await self._nc.subscribe(f"{self.prefix}.*",
                                                              cb=self._on_message)

    def new_subject(self, waiter: _Waiter) -> str:
        """A fresh, unguessable reply subject routed to ``waiter``."""
        if self.closed:
            raise ClientClosed("the AsyncTokenClient is closed")
        subject = f"{self.prefix}.{secrets.token_urlsafe(16)}"
        self._waiters[subject] = waiter
        if self._watch is None or self._watch.done():
            self._watch = asyncio.ensure_future(self._watch_connection())
        return subject

    def forget(self, subjects: list[str]) -> None:
        """Stop routing these subjects (their call has ended): later replies are dropped."""
        for subject in subjects:
            self._waiters.pop(subject, None)

    async def close(self) -> None:
        """Wake every waiting call (it raises ``ClientClosed``) and unsubscribe."""
        self.closed = True
        for waiter in set(self._waiters.values()):
            waiter.stop(closed=True)
        if self._watch is not None:
            self._watch.cancel()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):  # the app's connection may be closed
                await subscription.unsubscribe()

    async def _on_message(self, message: NatsMessage) -> None:
        """nats-py's callback for the reply space: route, never parse."""
        waiter = self._waiters.get(message.subject)
        if waiter is None or len(message.data) > self._max_reply_size:
            self.dropped += 1
            return
        waiter.put(message)

    async def _watch_connection(self) -> None:
        """While calls wait: end their attempts when the connection is lost."""
        connected = True
        while self._waiters:
            await asyncio.sleep(WATCH_INTERVAL)
            now_connected = self._nc.is_connected
            if connected and not now_connected:
                state = "closed" if self._nc.is_closed else "reconnecting"
                for waiter in set(self._waiters.values()):
                    waiter.stop(lost=f"NATS connection lost ({state})")
            connected = now_connected


class AsyncRequester:
    """Sends requests over the app's connection and awaits their genuine replies; one per
    :class:`~token_worker.client.async_client.AsyncTokenClient`, for all its coroutines."""

    def __init__(self, nc: NatsClient, inbox: AsyncInbox, *, timeout: float,
                 retries: int) -> None:
        self._nc = nc
        self._inbox = inbox
        self._timeout = timeout
        self._retries = retries
        self.requests_sent = 0
        """Requests that went over NATS."""
        self.attempts_unanswered = 0
        """Attempts that got no genuine answer in time."""

    async def send(self, subject: str, payload: bytes, request_id: str, credential: str | None,
                   budget: float, *, headers: Mapping[str, str] | None = None
                   ) -> dict[str, Any]:
        """Send ``payload`` to ``subject`` (with ``headers``) and return the decoded reply
        that echoes ``request_id`` (and names ``credential``), within ``budget`` seconds."""
        check_size(payload, self._nc.max_payload, request_id)
        call = Call(subject, payload, request_id, credential, time.monotonic(), budget, headers)
        waiter = _Waiter()
        subjects: list[str] = []
        course = Course(RetryPolicy(self._retries, self._timeout), call)
        retrying = AsyncRetrying(**course.retrying(self._check_open, self._pause))
        try:
            reply: dict[str, Any] = await retrying(self._attempt, call, waiter, subjects)
        except (BudgetSpent, AttemptFailed) as error:
            return course.outcome(error)
        finally:
            self._inbox.forget(subjects)
        return reply

    def _check_open(self) -> None:
        if self._inbox.closed:
            raise ClientClosed("the AsyncTokenClient is closed")

    async def _pause(self, seconds: float) -> None:
        """Wait before the next attempt (a ``close()`` is noticed by the next attempt)."""
        await asyncio.sleep(seconds)

    async def _attempt(self, call: Call, waiter: _Waiter, subjects: list[str]
                       ) -> dict[str, Any]:
        """Publish once and await the genuine reply; earlier attempts' subjects stay open,
        so a late genuine reply to one of them is still taken."""
        timeout = min(self._timeout, call.remaining())
        if timeout <= 0:
            raise BudgetSpent
        nc = self._nc
        if nc.is_closed:
            raise NatsUnavailable("the NATS connection is closed", request_id=call.request_id)
        if not nc.is_connected:  # never into nats-py's reconnect buffer: retried here
            raise ConnectionLost("NATS connection lost (reconnecting)")
        await self._inbox.open()
        reply_subject = self._inbox.new_subject(waiter)
        subjects.append(reply_subject)
        waiter.lost = ""
        self.requests_sent += 1
        try:
            await nc.publish(call.subject, call.payload, reply=reply_subject,
                             headers=dict(call.headers) if call.headers else None)
        except Exception as error:  # nats-py's: closed, reconnecting, a limit
            if self._inbox.closed:
                raise ClientClosed("the AsyncTokenClient is closed") from None
            if nc.is_closed:
                raise NatsUnavailable("the NATS connection is closed",
                                      request_id=call.request_id) from None
            if not nc.is_connected:
                raise ConnectionLost("NATS connection lost (reconnecting)") from None
            raise NatsUnavailable(f"NATS refused the request: {type(error).__name__}",
                                  request_id=call.request_id) from None
        return await self._await_reply(call, waiter, reply_subject,
                                       time.monotonic() + timeout)

    async def _await_reply(self, call: Call, waiter: _Waiter, reply_subject: str,
                           until: float) -> dict[str, Any]:
        dropped = 0
        while True:
            message = await _next_message(waiter, until)
            if message is None:
                self.attempts_unanswered += 1
                raise Unanswered(f"no worker answered within {self._timeout:g} s"
                                 + (f" ({dropped} forged replies dropped)" if dropped else ""),
                                 dropped=dropped)
            status = (message.headers or {}).get("Status")
            if status == NO_RESPONDERS and not message.data:
                if message.subject == reply_subject:
                    raise NoResponders(f"no worker is subscribed to {call.subject}")
                continue  # an earlier attempt's: says nothing about this one
            reply = match_reply(message.data, call.request_id, call.credential)
            if reply is not None:
                if turned_away(reply) and message.subject != reply_subject:
                    continue  # an earlier attempt's: says nothing about this one
                return unless_turned_away(reply)
            dropped += 1
            self._inbox.dropped += 1


async def _next_message(waiter: _Waiter, until: float) -> NatsMessage | None:
    """The next message routed to ``waiter``, or None when the attempt's time is up."""
    while not waiter.messages:
        if waiter.closed:
            raise ClientClosed("the AsyncTokenClient is closed")
        if waiter.lost:
            raise ConnectionLost(waiter.lost)
        left = until - time.monotonic()
        if left <= 0:
            return None
        waiter.wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(waiter.wake.wait(), left)
    return waiter.messages.popleft()
