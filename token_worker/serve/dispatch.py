"""Dispatch: each request from the reader thread to exactly one reply.

The connection's reader thread hands each request to its endpoint's handler
(:mod:`token_worker.serve.handler`), which answers at once what needs no I/O (a
:class:`~token_worker.serve.handler.Reply`: a cache hit, a bad request, a refusal from
memory), defers what needs a thread (a :class:`~token_worker.serve.handler.Deferred`, run
on the bounded pool, or answered ``overloaded`` at once when the pool is full), or waits,
holding no thread, for work under way (a :class:`~token_worker.serve.handler.Waiting`: a
request for a token already being fetched). Replies go back through the reply path
(:mod:`token_worker.serve.replying`), counted for their endpoint. A handler that raises
costs its requester an ``internal_error``, never the reader thread.

Every request not answered at once holds a ticket in :class:`Outstanding` until it is
answered, exactly once: by its handler, or by the drain. When the worker stops, the pool
drops what it has not started (a flight's waiters are then answered ``shutting_down`` by
the flight), running work may finish within ``drainTimeout``, and whatever is still
outstanding at the end is answered ``shutting_down`` (late replies are dropped).

With tracing on (:func:`token_worker.tracing.request_tracer`), each request gets a span from
its arrival to its reply, a child of the requester's span when the request's headers carry
its context; it is the current span while the handler runs, so work the handler hands to
another thread can carry it along. With tracing off, nothing of it runs: the headers are
not read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from token_worker import tracing, wire
from token_worker.logs import request_context
from token_worker.metrics import ReplyCounts
from token_worker.micro import Endpoint
from token_worker.nats.protocol import Message, parse_headers
from token_worker.serve.handler import Deferred, Reply, RequestHandler, Waiting
from token_worker.serve.pool import BoundedPool
from token_worker.serve.reply_scope import reply_allowed
from token_worker.serve.replying import ReplySender, Warnings, error_reply

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["Dispatcher", "Outstanding", "Route", "unsent_to"]

log = logging.getLogger(__name__)

SHUTTING_DOWN_TEXT = "worker shutting down, retry (another replica answers)"


@dataclass(frozen=True)
class Route:
    """One endpoint a worker serves: its ``$SRV`` name, the subject it subscribes (in the
    worker's queue group) and the handler of its requests."""

    name: str
    subject: str
    handler: RequestHandler


class _Ticket:
    """A request accepted and not answered yet."""

    __slots__ = ("counts", "payload", "received", "reply_to", "request_id", "span")

    def __init__(self, reply_to: str, received: float, counts: ReplyCounts, payload: bytes,
                 request_id: str | None, *, span: Span | None = None) -> None:
        self.reply_to = reply_to
        self.received = received
        self.counts = counts
        self.payload = payload
        self.request_id = request_id
        self.span = span
        """The request's span, ended with its reply (None: tracing off)."""


class Outstanding:
    """The requests accepted and not answered yet; :meth:`close` says which answer is the
    one (the first), so each request is answered exactly once."""

    def __init__(self) -> None:
        self._open: set[_Ticket] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    def open(self, ticket: _Ticket) -> _Ticket:
        with self._lock:
            self._open.add(ticket)
        return ticket

    def close(self, ticket: _Ticket) -> bool:
        """True the first time: the caller answers; False: it was answered already."""
        with self._lock:
            if ticket not in self._open:
                return False
            self._open.remove(ticket)
            if not self._open:
                self._idle.notify_all()
            return True

    def take_all(self) -> list[_Ticket]:
        """Close every ticket still open (the drain answers them)."""
        with self._lock:
            taken = list(self._open)
            self._open.clear()
            self._idle.notify_all()
        return taken

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: not self._open, timeout)

    def __len__(self) -> int:
        return len(self._open)


class _Served:
    """One endpoint being served: its handler's entry, and its reply counts (metrics and
    ``$SRV.STATS``)."""

    __slots__ = ("at_once", "counts", "dispatcher", "handle", "route", "span_name")

    def __init__(self, dispatcher: Dispatcher, route: Route) -> None:
        self.dispatcher = dispatcher
        self.route = route
        self.handle = route.handler.handle_message
        handler_type = type(route.handler)
        self.at_once = (None if handler_type.answer_at_once is RequestHandler.answer_at_once
                        else route.handler.answer_at_once)
        """The handler's hot path, if it has one (else not called at all)."""
        self.counts = dispatcher.replies.endpoint_counts()
        self.span_name = f"process {route.subject}"

    def on_message(self, message: Message) -> None:
        """Runs on the reader thread: answer what needs no I/O at once (the connection
        sends all replies of one read together); hand the rest on, never block."""
        received = time.perf_counter()
        dispatcher = self.dispatcher
        if not message.reply:
            dispatcher.warn.no_reply({"subject": message.subject,
                                      "bytes": len(message.payload)})
            return
        if not reply_allowed(message.reply, dispatcher.reply_prefixes):
            dispatcher.warn.reply_elsewhere({"subject": message.subject,
                                             "reply_subject": message.reply[:128]})
            return
        if dispatcher.tracer is not None:
            self._traced(message, received, dispatcher.tracer)
            return
        at_once = self.at_once
        try:
            if at_once is not None:
                replies = dispatcher.replies
                limit = replies.max_size
                body = at_once(message, limit)
                if body is not None:
                    replies.send_ok(message.reply, body, received, self.counts, limit)
                    return
            outcome = self.handle(message)
        except Exception:
            dispatcher.replies.send(message.reply, dispatcher.internal_error(
                message.payload, None), received, self.counts)
            return
        if isinstance(outcome, Reply):
            dispatcher.replies.send(message.reply, outcome, received, self.counts)
        else:
            dispatcher.later(message, outcome, received, self.counts)

    def _traced(self, message: Message, received: float, tracer: Tracer) -> None:
        """:meth:`on_message` with tracing on (kept apart so that the untraced hot path
        stays as it was): the handler runs with the request's span current, and the
        span ends with the reply."""
        dispatcher = self.dispatcher
        headers = parse_headers(message.headers).fields if message.headers else None
        span = tracing.start_request(tracer, self.span_name, message.subject, headers)
        with tracing.current(span):
            try:
                outcome = self.handle(message)
            except Exception:
                outcome = dispatcher.internal_error(message.payload, None)
        if isinstance(outcome, Reply):
            dispatcher.replies.send(message.reply, outcome, received, self.counts)
            finish(span, outcome)
        else:
            dispatcher.later(message, outcome, received, self.counts, span)


class Dispatcher:
    """Serves the requests of one worker's ``routes`` with ``pool``. ``draining`` (set by
    the worker when it stops) turns the answer to a full pool from ``overloaded`` into
    ``shutting_down``."""

    def __init__(self, routes: list[Route], *, pool: BoundedPool, max_payload: int,
                 replies: ReplySender, warnings: Warnings, tracer: Tracer | None = None,
                 reply_prefixes: tuple[str, ...] | None = None) -> None:
        self.tracer = tracer
        """Records a span per request when set (:func:`token_worker.tracing.request_tracer`)."""
        self.reply_prefixes = reply_prefixes
        """What a reply subject must start with
        (:func:`~token_worker.serve.reply_scope.reply_prefixes`); None: anything."""
        self.pool = pool
        self.replies = replies
        self.warn = warnings
        self.outstanding = Outstanding()
        self.served = [_Served(self, route) for route in routes]
        self.draining = False
        self._max_payload = max_payload

    def later(self, message: Message, outcome: Deferred[Any] | Waiting, received: float,
              counts: ReplyCounts, span: Span | None = None) -> None:
        """A request not answered at once: it waits (no thread) or goes to the pool."""
        if isinstance(outcome, Waiting):
            ticket = self.outstanding.open(_Ticket(message.reply, received, counts,
                                                   message.payload, outcome.request_id,
                                                   span=span))
            outcome.then(lambda reply: self.answer(ticket, reply))
            return
        ticket = self.outstanding.open(_Ticket(message.reply, received, counts,
                                               message.payload, outcome.request_id,
                                               span=span))

        if not self.pool.try_submit(lambda: self._run(ticket, outcome),
                                    lambda: self._drop(ticket, outcome)):
            outcome.drop()
            self.answer(ticket, self._turned_away(ticket))

    def answer(self, ticket: _Ticket, reply: Reply) -> None:
        """Send ``reply`` unless the request was answered already (late replies after the
        drain ended are dropped)."""
        if self.outstanding.close(ticket):
            self.replies.send(ticket.reply_to, reply, ticket.received, ticket.counts)
            if ticket.span is not None:
                finish(ticket.span, reply)
        else:
            log.debug("late reply dropped: the request was answered already",
                      extra={"request_id": reply.request_id})

    def hand_back_queued(self) -> None:
        """Close the pool and drop what it has not started: each requester waiting for it
        is answered ``shutting_down`` and retries another replica at once."""
        queued = self.pool.close()
        for task in queued:
            task.drop()
        if queued:
            log.info("queued work dropped: its requests answered shutting_down",
                     extra={"tasks": len(queued)})

    def answer_outstanding(self) -> int:
        """The drain ended (``drainTimeout``, or a second signal) with requests not
        answered: answer each ``shutting_down`` now, so its requester retries another
        replica at once instead of waiting out its timeout; how many."""
        taken = self.outstanding.take_all()
        for ticket in taken:
            reply = self._shutting_down(ticket)
            self.replies.send(ticket.reply_to, reply, ticket.received, ticket.counts)
            if ticket.span is not None:
                finish(ticket.span, reply)
        if taken:
            log.warning("drain ended with requests not answered: answered shutting_down",
                        extra={"requests": len(taken)})
        return len(taken)

    def internal_error(self, payload: bytes, request_id: str | None) -> Reply:
        if request_id is None:
            request_id = wire.peek_request_id(payload, max_size=self._max_payload)
        with request_context(request_id):
            self.warn.handler_failed(exc_info=True)
        return error_reply(request_id, wire.INTERNAL_ERROR,
                           "internal error while serving the request")

    def _run(self, ticket: _Ticket, deferred: Deferred[Any]) -> None:
        """On a pool thread (with the request's span current, when tracing)."""
        try:
            if ticket.span is None:
                reply = deferred.run()
            else:
                with tracing.current(ticket.span):
                    reply = deferred.run()
        except Exception:
            reply = self.internal_error(ticket.payload, ticket.request_id)
        self.answer(ticket, reply)

    def _drop(self, ticket: _Ticket, deferred: Deferred[Any]) -> None:
        """The pool closed before running it."""
        deferred.drop()
        self.answer(ticket, self._shutting_down(ticket))

    def _turned_away(self, ticket: _Ticket) -> Reply:
        """The pool is full (``overloaded``) or closed (``shutting_down``); logged at most
        once a second, with a count."""
        if self.draining or self.pool.closed:
            return self._shutting_down(ticket)
        request_id = self._request_id(ticket)
        with request_context(request_id):
            self.warn.overloaded({"capacity": self.pool.capacity})
        return error_reply(request_id, wire.OVERLOADED, "worker overloaded, retry shortly")

    def _shutting_down(self, ticket: _Ticket) -> Reply:
        return error_reply(self._request_id(ticket), wire.SHUTTING_DOWN, SHUTTING_DOWN_TEXT)

    def _request_id(self, ticket: _Ticket) -> str:
        if ticket.request_id is not None:
            return ticket.request_id
        return wire.peek_request_id(ticket.payload, max_size=self._max_payload)

    def endpoints(self, queue: str) -> list[tuple[Endpoint, ReplyCounts]]:
        """The ``$SRV`` endpoints served, each with its reply counts."""
        return [(Endpoint(served.route.name, served.route.subject, queue), served.counts)
                for served in self.served]



def finish(span: Span, reply: Reply) -> None:
    """End a request's span with what its reply says."""
    tracing.finish_request(span, error_code=reply.error_code, request_id=reply.request_id,
                           client_id=reply.client_id)


def unsent_to(routes: list[Route]) -> Callable[[Reply], None]:
    """Tell every handler of a reply the worker could not send (each ignores the others')."""
    handlers = {id(route.handler): route.handler for route in routes}.values()

    def unsent(reply: Reply) -> None:
        for handler in handlers:
            handler.unsent(reply)
    return unsent
