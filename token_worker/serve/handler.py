"""The handler contract: one request, from request bytes to a typed reply.

A :class:`RequestHandler` gets a request body on the connection's reader thread and
returns, without blocking:

- a :class:`Reply` (the encoded body with its ``error_code``) when it needs no I/O: a
  bad request or a cache hit. The worker sends it at once, batched with the other
  replies of the same read. This is the fast path: keep it free of I/O and locks held
  for long.
- a :class:`Deferred` when it needs a thread: the request, parsed once, with the call that
  serves it. The worker runs the call on a pool thread (or answers ``overloaded`` when the
  pool is full, ``shutting_down`` when it stops before starting it).
- a :class:`Waiting` when the answer will come from work already under way (or work the
  handler queued itself): the request holds no thread and no pool slot; the handler
  resolves it with its :class:`Reply` when the work ends, on whatever thread ends it. The
  token handler answers this way while a token is being fetched: however many requests
  wait for one key, they cost the pool one task.

A handler with a hot path also overrides :meth:`RequestHandler.answer_at_once`: the body
of a reply it can build at once (the token handler's cache hit), tried before anything
else, so the commonest request costs no :class:`Reply` and no other call.

Outcomes travel with the reply (``Reply.error_code``), so counting them never reads the
bytes. A plain function from request bytes to reply bytes becomes a handler through
:class:`BytesHandler` (always deferred; its replies count as ``ok``)::

    worker = TokenWorker(config, handler=lambda payload: b'{"ok": true}')

The default handler is :class:`~token_worker.serve.token_handler.TokenHandler`. This module
is the contract's one home; the package's top level exports it too
(``from token_worker import RequestHandler, Reply, Deferred, BytesHandler``).
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from token_worker.nats.protocol import Message

__all__ = ["BytesHandler", "Deferred", "Reply", "RequestHandler", "Waiting"]

RequestT = TypeVar("RequestT")


class Reply(NamedTuple):
    """A reply ready to send (a tuple: one is built for every request)."""

    body: bytes
    """The encoded reply."""
    error_code: str = ""
    """Empty for a token, else the reply's ``error_code`` (what metrics count)."""
    request_id: str = ""
    """The request's id, for a reply the worker must replace (too large to send)."""
    client_id: str = ""
    """Who asked, for the log line of a reply the worker must replace."""
    query: object = None
    """What the handler needs to take back what it served if the worker cannot send the
    reply (:meth:`RequestHandler.unsent`); the token handler puts its query here."""


class Deferred(Generic[RequestT]):
    """A request that needs I/O: ``serve(request)`` runs on a pool thread.

    ``request_id`` is the request's id when the handler read one, ``None`` when it did not
    look (the worker then reads it from the payload only if it must answer without serving:
    overloaded, shutting down, a failed call). ``on_drop``, if given, is called instead of
    ``serve`` when the worker answers the request without serving it (so a handler can
    release what it set up for it).
    """

    __slots__ = ("on_drop", "request", "request_id", "serve")

    def __init__(self, serve: Callable[[RequestT], Reply], request: RequestT,
                 request_id: str | None = None, *,
                 on_drop: Callable[[], None] | None = None) -> None:
        self.serve = serve
        self.request = request
        self.request_id = request_id
        self.on_drop = on_drop

    def run(self) -> Reply:
        """Serve the request (on a pool thread)."""
        return self.serve(self.request)

    def drop(self) -> None:
        """The worker will never serve this request (overloaded, shutting down)."""
        if self.on_drop is not None:
            self.on_drop()


class Waiting:
    """A reply that will come later without a thread: the handler calls :meth:`resolve`
    once, from any thread; the worker calls :meth:`then` once, with what to do with it
    (whichever comes second delivers). ``request_id`` is the request's, for the reply the
    worker sends instead if it stops first (``shutting_down``)."""

    __slots__ = ("_deliver", "_lock", "_reply", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._lock = threading.Lock()
        self._reply: Reply | None = None
        self._deliver: Callable[[Reply], None] | None = None

    def resolve(self, reply: Reply) -> None:
        """The reply is ready."""
        with self._lock:
            if self._reply is not None:
                return
            self._reply = reply
            deliver = self._deliver
        if deliver is not None:
            deliver(reply)

    def then(self, deliver: Callable[[Reply], None]) -> None:
        """Send the reply with ``deliver`` once it is ready (at once if it is)."""
        with self._lock:
            self._deliver = deliver
            reply = self._reply
        if reply is not None:
            deliver(reply)


class RequestHandler(abc.ABC):
    """What a worker asks to serve each request (see the module's docstring)."""

    @abc.abstractmethod
    def handle(self, payload: bytes) -> Reply | Deferred[Any] | Waiting:
        """Runs on the reader thread: a :class:`Reply` now, a :class:`Deferred` or a
        :class:`Waiting`.

        Should not raise; if it does, the requester gets ``internal_error`` and the
        exception is logged."""

    def handle_message(self, message: Message) -> Reply | Deferred[Any] | Waiting:
        """What the worker calls for each request: :meth:`handle` with its payload.
        Override it to see the subject (the named-credential endpoint reads the
        credential's name there)."""
        return self.handle(message.payload)

    def answer_at_once(self, message: Message, max_size: int) -> bytes | None:
        """The hot path, for handlers that have one: the body of a successful reply (it
        counts as ``ok``) of at most ``max_size`` bytes (what the server takes), built from
        parts made ready earlier, such as a cached token's; None for any other request,
        having counted nothing (then :meth:`handle_message` serves it, as if this had not
        been asked). Called first for every request, on the reader thread, only when a
        subclass overrides it, and not while the worker traces requests (a request's span
        records what :meth:`handle_message` says of it).

        Should not raise, nor return anything but ``bytes`` of at most ``max_size``; if it
        does, the requester gets ``internal_error`` (counted once) and the failure is
        logged, as for :meth:`handle`."""
        return None

    def unsent(self, reply: Reply) -> None:  # noqa: B027 - a hook: doing nothing is right
        """The worker replaced ``reply`` (too large to send, ``token_too_large``): forget
        what it served, so the next request does not get it again."""


class BytesHandler(RequestHandler):
    """Adapts a function from request bytes to reply bytes: every request is deferred to a
    pool thread, and its reply counts as ``ok`` (return :class:`Reply` from a
    :class:`RequestHandler` of your own to count outcomes)."""

    def __init__(self, function: Callable[[bytes], bytes]) -> None:
        self._function = function

    def handle(self, payload: bytes) -> Deferred[bytes]:
        return Deferred(self._serve, payload)

    def _serve(self, payload: bytes) -> Reply:
        return Reply(self._function(payload))
