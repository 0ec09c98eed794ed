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
from dataclasses import dataclass
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type

from token_worker.client.inbox import Inbox, Waiter, match_reply
from token_worker.client.retries import (
    AttemptFailed,
    BudgetSpent,
    ConnectionLost,
    NoResponders,
    Overloaded,
    RetryPolicy,
    ShuttingDown,
    TurnedAway,
    Unanswered,
)
from token_worker.errors import (
    ClientClosed,
    NatsConnectionError,
    NatsUnavailable,
    NoWorkerAnswered,
    PayloadTooLarge,
    RequestTimedOut,
    TokenRequestFailed,
)
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.wire import OVERLOADED, SHUTTING_DOWN

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
             budget: float) -> dict[str, Any]:
        """Send ``payload`` to ``subject`` and return the decoded reply that echoes
        ``request_id`` (and names ``credential``), within ``budget`` seconds."""
        self._check_size(payload, request_id)
        return self._call(_Call(subject, payload, request_id, credential, time.monotonic(),
                                budget))

    def _check_size(self, payload: bytes, request_id: str) -> None:
        """A request larger than the server takes would only cost a disconnect."""
        limit = self._connection.max_payload
        if len(payload) > limit:
            raise TokenRequestFailed(
                "request_too_large",
                f"request is {len(payload)} bytes, the NATS server's max_payload is {limit}",
                request_id=request_id)

    def _call(self, call: _Call) -> dict[str, Any]:
        """Attempt until a genuine reply, a final outcome or the end of the budget: tenacity
        runs the attempts, :class:`RetryPolicy` says how long to pause, or to stop."""
        waiter = Waiter()
        subjects: list[str] = []
        course = _Course(RetryPolicy(self._retries, self._timeout), call)
        retrying = Retrying(
            before=lambda _: self._check_open(),
            retry=retry_if_exception_type(AttemptFailed),
            wait=course.pause,
            stop=course.ends,
            sleep=lambda seconds: self._pause(course.failure, seconds),
            reraise=True,
        )
        try:
            reply: dict[str, Any] = retrying(self._attempt, call, waiter, subjects)
        except BudgetSpent:  # no time for another attempt: the last one says why
            if isinstance(course.failure, TurnedAway):
                return course.failure.reply  # the worker's own answer says best why
            raise self._final_error(call, course.failure, budget_spent=True) from None
        except TurnedAway as turned_away:  # no attempt fits the budget, or retries=0
            return turned_away.reply
        except AttemptFailed:
            raise self._final_error(call, course.failure,
                                    budget_spent=course.budget_spent) from None
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

    def _final_error(self, call: _Call, failure: AttemptFailed, *,
                     budget_spent: bool) -> TokenRequestFailed:
        spent = time.monotonic() - call.started
        if isinstance(failure, NoResponders):
            return NoWorkerAnswered(f"no worker is subscribed to {call.subject} "
                                    f"(asked for {spent:.2f} s)", request_id=call.request_id)
        if isinstance(failure, ConnectionLost):
            return NatsUnavailable(f"{failure}; not back within {spent:.2f} s",
                                   request_id=call.request_id)
        if budget_spent:
            return RequestTimedOut(f"no reply within the {call.budget:g} s budget ({failure})",
                                   request_id=call.request_id)
        return NoWorkerAnswered(str(failure), request_id=call.request_id)

    def _attempt(self, call: _Call, waiter: Waiter, subjects: list[str]) -> dict[str, Any]:
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
            self._connection.publish(call.subject, call.payload, reply=reply_subject)
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

    def _await_reply(self, call: _Call, waiter: Waiter, reply_subject: str,
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
                if _turned_away(reply) and message.subject != reply_subject:
                    continue  # an earlier attempt's: says nothing about this one
                return _unless_turned_away(reply)
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


def _turned_away(reply: dict[str, Any]) -> bool:
    return bool(reply.get("error")) and reply.get("error_code") in (SHUTTING_DOWN, OVERLOADED)


def _unless_turned_away(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply, unless the worker turned the request away (``shutting_down``,
    ``overloaded``): then the attempt failed, and the policy asks again."""
    if reply.get("error"):
        code = reply.get("error_code")
        if code == SHUTTING_DOWN:
            raise ShuttingDown(reply)
        if code == OVERLOADED:
            raise Overloaded(reply)
    return reply


class _Course:
    """How one call is going: the last failed outcome and the policy's verdict on it."""

    def __init__(self, policy: RetryPolicy, call: _Call) -> None:
        self._policy = policy
        self._call = call
        self.failure: AttemptFailed = Unanswered("time budget spent", dropped=0)
        """The last failed attempt's outcome (before any: the budget was spent)."""
        self._delay: float | None = None
        self.budget_spent = False
        """Whether the call ends because its budget is spent (not because it gave up)."""

    def pause(self, state: RetryCallState) -> float:
        """tenacity's wait: the policy's pause after the outcome just seen."""
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        assert isinstance(error, AttemptFailed)  # tenacity retries only these
        self.failure = error
        self._delay = self._policy.pause_after(error)
        return self._delay or 0.0

    def ends(self, _state: RetryCallState) -> bool:
        """tenacity's stop: the policy gave up, or the pause would outlast the budget."""
        remaining = self._call.remaining()
        if self._delay is None:
            self.budget_spent = remaining <= 0
            return True
        self.budget_spent = remaining <= self._delay
        return self.budget_spent


@dataclass(frozen=True)
class _Call:
    """One ``request()``: what is sent where, and its time budget."""

    subject: str
    payload: bytes
    request_id: str
    credential: str | None
    started: float
    budget: float

    def remaining(self) -> float:
        return self.started + self.budget - time.monotonic()

