"""One request over NATS, attempt by attempt, until a genuine reply or a final outcome.

Each attempt publishes the request with a fresh reply subject from the client's
:class:`~token_worker.client.inbox.Inbox` and waits for the reply that answers it
(:func:`~token_worker.client.inbox.match_reply`); what happens after a failed attempt is
:class:`~token_worker.client.retries.RetryPolicy`'s call. Earlier attempts' subjects stay
open until the call ends, so a late genuine reply to one of them is still taken. The last
failed outcome becomes the public error: :class:`NoWorkerAnswered`,
:class:`NatsUnavailable`, :class:`RequestTimedOut` or :class:`ClientClosed`; when the last
attempt was turned away (``shutting_down``, ``overloaded``) the worker's answer is returned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from tenacity import Retrying

from token_worker.client.exchange import check_size, match_reply
from token_worker.client.inbox import Inbox, Waiter
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
from token_worker.errors import (
    ClientClosed,
    NatsConnectionError,
    NatsUnavailable,
    PayloadTooLarge,
    TokenRequestFailed,
)
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.nats.protocol import Message

NO_RESPONDERS = 503
"""The status the server sends back at once when nobody is subscribed to the subject."""


class Requester:
    """Sends requests over a client's connection and waits for their genuine replies.

    ``timeout`` bounds one attempt, ``retries`` the attempts that got no answer (see
    :class:`RetryPolicy`); ``closed`` is the client's: once set, every call ends with
    :class:`ClientClosed`. Safe to share between threads.
    """

    def __init__(self, connection: NatsConnection, inbox: Inbox, closed: threading.Event, *,
                 timeout: float, retries: int) -> None:
        self._connection = connection
        self._inbox = inbox
        self._closed = closed
        self._timeout = timeout
        self._retries = retries
        self._lock = threading.Lock()
        self.requests_sent = 0
        """Requests that went over NATS."""
        self.attempts_unanswered = 0
        """Attempts that got no genuine answer in time."""

    def send(self, subject: str, payload: bytes, request_id: str, credential: str | None,
             budget: float, *, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Send ``payload`` to ``subject`` (with ``headers``, if any) and return the decoded
        reply that echoes ``request_id`` (and names ``credential``), within ``budget``
        seconds."""
        check_size(payload, self._connection.max_payload, request_id)
        return self._call(Call(subject, payload, request_id, credential, time.monotonic(),
                               budget, headers))

    def _call(self, call: Call) -> dict[str, Any]:
        """Attempt until a genuine reply, a final outcome or the end of the budget: tenacity
        runs the attempts, :class:`RetryPolicy` says how long to pause, or to stop."""
        waiter = Waiter()
        subjects: list[str] = []
        course = Course(RetryPolicy(self._retries, self._timeout), call)
        retrying = Retrying(**course.retrying(
            self._check_open, lambda seconds: self._pause(course.failure, seconds)))
        try:
            reply: dict[str, Any] = retrying(self._attempt, call, waiter, subjects)
        except (BudgetSpent, AttemptFailed) as error:
            return course.outcome(error)
        finally:
            self._inbox.forget(subjects)
        return reply

    def _pause(self, failure: AttemptFailed, seconds: float) -> None:
        """Wait before the next attempt; a reconnect ends a pause for NATS early, a
        ``close()`` ends any pause."""
        (self._inbox.usable if isinstance(failure, ConnectionLost) else self._closed).wait(
            seconds)

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise ClientClosed("the TokenClient is closed")

    def _attempt(self, call: Call, waiter: Waiter, subjects: list[str]) -> dict[str, Any]:
        """Publish once and wait for the genuine reply; earlier attempts' subjects stay
        open, so a late genuine reply to one of them is still taken."""
        timeout = min(self._timeout, call.remaining())
        if timeout <= 0:
            raise BudgetSpent
        reply_subject = self._inbox.new_subject(waiter)
        subjects.append(reply_subject)
        with waiter.condition:
            waiter.lost = ""
        with self._lock:
            self.requests_sent += 1
        try:
            self._connection.publish(call.subject, call.payload, reply=reply_subject,
                                     headers=call.headers)
        except PayloadTooLarge as error:  # the server's limit shrank since _check_size
            raise TokenRequestFailed("request_too_large", str(error),
                                     request_id=call.request_id) from None
        except NatsConnectionError as error:
            if self._closed.is_set():
                raise ClientClosed("the TokenClient is closed") from None
            if self._connection.state is State.CLOSED:  # gave up: nothing to wait for
                raise NatsUnavailable(self._lost_reason(error),
                                      request_id=call.request_id) from None
            raise ConnectionLost(self._lost_reason(error)) from None
        return self._await_reply(call, waiter, reply_subject, time.monotonic() + timeout)

    def _lost_reason(self, error: Exception) -> str:
        connection = self._connection
        if connection.state is State.CLOSED and connection.gave_up_reason:
            return f"NATS connection gave up: {connection.gave_up_reason}"
        if connection.state is State.RECONNECTING:
            return "NATS connection lost (reconnecting)"
        return f"NATS connection lost ({connection.state.value}): {error}"

    def _await_reply(self, call: Call, waiter: Waiter, reply_subject: str,
                     until: float) -> dict[str, Any]:
        dropped = 0
        while True:
            message = self._next_message(waiter, until)
            if message is None:
                with self._lock:
                    self.attempts_unanswered += 1
                raise Unanswered(f"no worker answered within {self._timeout:g} s"
                                 + (f" ({dropped} forged replies dropped)" if dropped else ""),
                                 dropped=dropped)
            if message.status == NO_RESPONDERS and not message.payload:
                if message.subject == reply_subject:
                    raise NoResponders(f"no worker is subscribed to {call.subject}")
                continue  # an earlier attempt's: says nothing about this one
            reply = match_reply(message.payload, call.request_id, call.credential)
            if reply is not None:
                if turned_away(reply) and message.subject != reply_subject:
                    continue  # an earlier attempt's: says nothing about this one
                return unless_turned_away(reply)
            dropped += 1
            self._inbox.count_dropped()

    def _next_message(self, waiter: Waiter, until: float) -> Message | None:
        """The next delivered message, or None when the attempt's time is up."""
        with waiter.condition:
            while not waiter.messages:
                if waiter.closed or self._closed.is_set():
                    raise ClientClosed("the TokenClient is closed")
                if waiter.lost:
                    raise ConnectionLost(waiter.lost)
                left = until - time.monotonic()
                if left <= 0:
                    return None
                waiter.condition.wait(left)
            return waiter.messages.popleft()
