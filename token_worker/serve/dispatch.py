"""Dispatch: each request from the reader thread to its reply, through the pool if needed.

The connection's reader thread hands each request to the handler
(:mod:`token_worker.serve.handler`), which answers at once what needs no I/O (a cache hit,
a bad request: a :class:`~token_worker.serve.handler.Reply`) and defers the rest (a
:class:`~token_worker.serve.handler.Deferred`) to the bounded pool, or the dispatcher
answers ``overloaded`` at once when the pool is full (``shutting_down`` while draining). A
pool thread runs the deferred call, and its reply goes back through the reply path
(:mod:`token_worker.serve.replying`). A handler that raises costs its requester an
``internal_error``, never the reader thread.

When the worker drains, :meth:`Dispatcher.hand_back_queued` answers ``shutting_down`` to
the requests not started, and :meth:`Dispatcher.answer_running` to those still running when
the drain ends (their late replies are dropped: exactly one answer per request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from token_worker import wire
from token_worker.logs import request_context
from token_worker.nats.protocol import Message
from token_worker.serve.handler import Deferred, Reply, RequestHandler
from token_worker.serve.pool import BoundedPool
from token_worker.serve.replying import ReplySender, Warnings, error_reply

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

NamedHandle = Callable[[str, bytes], "Reply | Deferred[Any]"]
"""A named-credential request's entry: (subject, payload) to a reply or a deferral."""


class _Job(NamedTuple):
    """A deferred request waiting for (or on) a pool thread."""

    message: Message
    deferred: Deferred[Any]
    received: float
    named: bool = False
    """Came on a named-credential subject (counted for its own ``$SRV`` endpoint)."""


class Dispatcher:
    """Serves the requests of one worker: ``workers`` pool threads, ``backlog`` waiting.

    ``handler`` serves the token subject; ``handle_named``, when given, the
    named-credential subjects. ``draining`` (set by the worker when it stops) turns the
    answer to a full pool from ``overloaded`` into ``shutting_down``.
    """

    def __init__(self, handler: RequestHandler, *, workers: int, backlog: int,
                 max_payload: int, replies: ReplySender, warnings: Warnings,
                 handle_named: NamedHandle | None = None) -> None:
        self._handle = handler.handle
        self._handle_named = handle_named
        self._max_payload = max_payload
        self._replies = replies
        self._warn = warnings
        self.pool: BoundedPool[_Job] = BoundedPool(workers, backlog, self.serve)
        self.draining = False

    def on_message(self, message: Message) -> None:
        """Runs on the reader thread: answer what needs no I/O at once (the connection
        sends all replies of one read together); hand the rest to the pool, never block.
        (Kept apart from :meth:`on_named_message`, line for line, because it is the
        hottest path: one call less per request.)"""
        received = time.perf_counter()
        if not message.reply:
            self._warn.no_reply({"subject": message.subject, "bytes": len(message.payload)})
            return
        try:
            outcome = self._handle(message.payload)
        except Exception:
            self._replies.send(message.reply, self._internal_error(message.payload, None),
                               received)
            return
        if isinstance(outcome, Reply):
            self._replies.send(message.reply, outcome, received)
        elif not self.pool.try_submit(_Job(message, outcome, received)):
            self._reject(message, outcome, received)

    def on_named_message(self, message: Message) -> None:
        """A request on ``<namedSubject>.<credential>``, on the reader thread: as
        :meth:`on_message`, through the handler's named path."""
        received = time.perf_counter()
        handle_named = self._handle_named
        if not message.reply or handle_named is None:
            self._warn.no_reply({"subject": message.subject, "bytes": len(message.payload)})
            return
        try:
            outcome = handle_named(message.subject, message.payload)
        except Exception:
            self._replies.send(message.reply, self._internal_error(message.payload, None),
                               received, True)
            return
        if isinstance(outcome, Reply):
            self._replies.send(message.reply, outcome, received, True)
        elif not self.pool.try_submit(_Job(message, outcome, received, True)):
            self._reject(message, outcome, received, True)

    def serve(self, job: _Job) -> None:
        """Runs on a pool thread. A reply that comes after the drain ended is dropped: its
        requester was answered ``shutting_down`` already (:meth:`answer_running`)."""
        try:
            reply = job.deferred.run()
        except Exception:
            reply = self._internal_error(job.message.payload, job.deferred.request_id)
        if self.pool.claim(job):
            self._replies.send(job.message.reply, reply, job.received, job.named)
        else:
            log.debug("late reply dropped: answered shutting_down at the end of the drain",
                      extra={"request_id": reply.request_id})

    def _internal_error(self, payload: bytes, request_id: str | None) -> Reply:
        if request_id is None:
            request_id = wire.peek_request_id(payload, max_size=self._max_payload)
        with request_context(request_id):
            self._warn.handler_failed(exc_info=True)
        return error_reply(request_id, wire.INTERNAL_ERROR,
                           "internal error while serving the request")

    def _reject(self, message: Message, deferred: Deferred[Any], received: float,
                named: bool = False) -> None:
        """The pool is full (``overloaded``) or closed (``shutting_down``): answer at once,
        and log at most once a second, with a count."""
        deferred.drop()
        request_id = self._request_id(message, deferred)
        if self.draining:
            reply = error_reply(request_id, wire.SHUTTING_DOWN,
                                "worker shutting down, retry (another replica answers)")
        else:
            with request_context(request_id):
                self._warn.overloaded({"capacity": self.pool.capacity})
            reply = error_reply(request_id, wire.OVERLOADED, "worker overloaded, retry shortly")
        self._replies.send(message.reply, reply, received, named)

    def _request_id(self, message: Message, deferred: Deferred[Any]) -> str:
        if deferred.request_id is not None:
            return deferred.request_id
        return wire.peek_request_id(message.payload, max_size=self._max_payload)

    def hand_back_queued(self) -> None:
        """Answer ``shutting_down`` to every request not started: its requester retries
        another replica at once instead of waiting out its timeout."""
        queued = self.pool.close()
        for job in queued:
            job.deferred.drop()
            request_id = self._request_id(job.message, job.deferred)
            self._replies.send(job.message.reply, error_reply(
                request_id, wire.SHUTTING_DOWN,
                "worker shutting down, retry (another replica answers)"), job.received,
                job.named)
        if queued:
            log.info("queued requests answered shutting_down", extra={"requests": len(queued)})

    def answer_running(self) -> None:
        """The drain ended (``drainTimeout``, or a second signal) with requests still
        running: answer each ``shutting_down`` now, so its requester retries another
        replica at once instead of waiting out its timeout. Their late replies are dropped
        (exactly one answer per request)."""
        running = self.pool.take_running()
        for job in running:
            request_id = self._request_id(job.message, job.deferred)
            self._replies.send(job.message.reply, error_reply(
                request_id, wire.SHUTTING_DOWN,
                "worker shutting down, retry (another replica answers)"), job.received,
                job.named)
        if running:
            log.warning("drain ended with requests running: answered shutting_down",
                        extra={"requests": len(running)})
