"""One request, from request bytes to a typed reply: the handler contract and its default.

A :class:`RequestHandler` gets a request body on the connection's reader thread and
returns, without blocking:

- a :class:`Reply` (the encoded body with its ``error_code``) when it needs no I/O: a
  bad request or a cache hit. The worker sends it at once, batched with the other
  replies of the same read. This is the fast path: keep it free of I/O and locks held
  for long.
- a :class:`Deferred` otherwise: the request, parsed once, with the call that serves it.
  The worker runs the call on a pool thread (or answers ``overloaded`` when the pool is
  full, ``shutting_down`` when it stops before starting it).

Outcomes travel with the reply (``Reply.error_code``), so counting them never reads the
bytes. A plain function from request bytes to reply bytes becomes a handler through
:class:`BytesHandler` (always deferred; its replies count as ``ok``)::

    worker = TokenWorker(config, handler=lambda payload: b'{"ok": true}')

:class:`TokenHandler` is the default: parse, look the cache up once on the reader thread,
and on a miss ask the broker from a pool thread (:meth:`TokenBroker.fetch_after_miss`:
it looks again without counting a second miss, then joins the key's single flight, so
misses for one query that queue behind each other share one IdP call). Every request's
deadline is ``idp.deadline`` from its arrival, so time spent waiting for a pool thread
counts.

Named requests (``<namedSubject>.<credential>``, :meth:`TokenHandler.handle_named`) take
the same path once the credential is looked up (a dict lookup in the
:class:`~token_worker.credentials.CredentialStore`, no I/O): only the subject names the
credential, and a ``client_id`` or ``client_secret`` in their body is never read. With
``credentials.inline`` false, a request on the token subject (which always carries its
secret) is answered ``inline_secrets_disabled`` without a lookup, an IdP call or a log
line quoting it.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from token_worker import defaults, wire
from token_worker.config import Config
from token_worker.credentials import CredentialStore, name_from_subject
from token_worker.errors import IdpError, IdpRefused, InvalidCredentialName, InvalidRequest
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import ResilientIdp
from token_worker.logs import RateLimitedLog, request_context
from token_worker.metrics import Metrics, NullMetrics
from token_worker.nats.kv import KeyValue
from token_worker.nats.replies import Connection as KvConnection
from token_worker.secret import load_key_file
from token_worker.tokens.broker import Answer, TokenBroker, TokenQuery
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.shared import SharedTier

log = logging.getLogger(__name__)

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


class RequestHandler(abc.ABC):
    """What a worker asks to serve each request (see the module's docstring)."""

    @abc.abstractmethod
    def handle(self, payload: bytes) -> Reply | Deferred[Any]:
        """Runs on the reader thread: a :class:`Reply` now, or a :class:`Deferred`.

        Should not raise; if it does, the requester gets ``internal_error`` and the
        exception is logged."""

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


class Asked(NamedTuple):
    """What one token request asks the broker for, inline or named (a tuple: one is built
    for every request that misses the cache)."""

    request_id: str
    client_id: str
    """For log lines (never the secret)."""
    query: TokenQuery
    credential: str | None = None
    """The named credential, echoed in the reply; None for an inline request."""
    skip_cache: bool = False
    deadline: float | None = None
    """``time.monotonic()`` by which the answer is due (time queued for a thread counts)."""


class TokenHandler(RequestHandler):
    """The default handler: a client-credentials token through the broker.

    ``credentials`` serves named requests (:meth:`handle_named`, subjects
    ``<named_prefix>.<name>``); ``inline_secrets`` False refuses requests that carry their
    own secret."""

    def __init__(self, broker: TokenBroker, *, default_scope: str, max_payload: int,
                 deadline: float | None = None,
                 on_close: Callable[[], None] | None = None,
                 credentials: CredentialStore | None = None, inline_secrets: bool = True,
                 named_prefix: str = defaults.NAMED_SUBJECT) -> None:
        """``deadline``: seconds from a request's arrival to its answer being due (the
        IdP's deadline); None: only the IdP's own bounds."""
        self._broker = broker
        self._credentials = credentials
        self._inline_secrets = inline_secrets
        self._named_prefix = named_prefix
        self._default_scope = default_scope
        self._max_payload = max_payload
        self._deadline = deadline
        self._on_close = on_close
        self._warn_invalid = RateLimitedLog(log, logging.WARNING, "invalid request")
        self._warn_not_issued = RateLimitedLog(log, logging.WARNING, "token not issued")
        self._note_refused_by_idp = RateLimitedLog(log, logging.INFO, "token not issued")
        self._warn_refused = RateLimitedLog(log, logging.WARNING, "request refused")

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None, *,
                    connection: KvConnection | None = None,
                    credentials: CredentialStore | None = None) -> TokenHandler:
        """Wire IdP client, retry policy, cache, shared tier (with ``cache.shared.bucket``,
        over ``connection``, the worker's, which must announce headers) and broker as the
        config says; the handler closes them in :meth:`close` (``credentials`` stays its
        owner's)."""
        metrics = NullMetrics() if metrics is None else metrics
        client = IdpClient(config.idp, pool_size=config.workers + 2)
        idp = ResilientIdp(client, config.idp, metrics)
        metrics.circuit_open.set_function(lambda: 1.0 if idp.circuit_open else 0.0)
        cache = None
        if config.cache.enabled:
            cache = TokenCache(max_entries=config.cache.max_entries,
                               expiry_margin=config.cache.expiry_margin,
                               refresh_ahead=config.cache.refresh_ahead, now=time.time,
                               max_ttl=config.cache.max_ttl)
        shared = None
        if cache is not None and connection is not None and config.cache.shared.bucket:
            shared = tier = shared_tier(config, connection)
            metrics.track_shared(lambda: tier.counts)
        broker = TokenBroker(idp, cache, auth_method=config.idp.auth_method,
                             follower_timeout=config.idp.deadline + 1.0, metrics=metrics,
                             shared=shared, lease_ttl=config.idp.deadline)

        def close() -> None:
            broker.close()
            client.close()

        return cls(broker, default_scope=config.idp.default_scope,
                   max_payload=config.max_payload, deadline=config.idp.deadline,
                   on_close=close, credentials=credentials,
                   inline_secrets=config.credentials.inline,
                   named_prefix=config.named_subject)

    def prepare(self) -> None:
        """Make the shared tier's bucket ready on a thread of its own (created when
        missing): never in the way of serving, which goes without the tier meanwhile."""
        shared = self._broker.shared
        if shared is not None:
            threading.Thread(target=shared.prepare, name="shared-cache-prepare",
                             daemon=True).start()

    @property
    def shared_available(self) -> bool | None:
        """Whether the shared tier answers now (its bucket ensured, no failure resting);
        None without a shared tier."""
        shared = self._broker.shared
        return None if shared is None else shared.available

    def unsent(self, reply: Reply) -> None:
        """A token reply the worker could not send: its token leaves the local cache."""
        if isinstance(reply.query, TokenQuery):
            self._broker.discard(reply.query)

    def close(self) -> None:
        """Release the IdP connections and stop background refreshes."""
        if self._on_close is not None:
            self._on_close()

    def handle(self, payload: bytes) -> Reply | Deferred[Asked]:
        """Parse once; a bad request or a cache hit is answered now, the rest deferred."""
        try:
            request = wire.TokenRequest.from_bytes(payload, max_size=self._max_payload)
        except InvalidRequest as error:
            return self._invalid(error)
        if not self._inline_secrets:
            return self._refuse(request.request_id, wire.INLINE_SECRETS_DISABLED,
                                "requests carrying client_secret are disabled on this "
                                f"worker: ask on {self._named_prefix}.<credential>")
        scope = self._default_scope if request.scope is None else request.scope
        query = TokenQuery(request.client_id, request.client_secret, scope)
        return self._route(request.request_id, request.client_id, query, None,
                           request.skip_cache)

    def handle_named(self, subject: str, payload: bytes) -> Reply | Deferred[Asked]:
        """A request on ``<named_prefix>.<name>``: served with the credential ``name`` from
        the store (the subject alone decides which); on the reader thread, no I/O."""
        try:
            name = name_from_subject(subject, self._named_prefix)
            request = wire.NamedTokenRequest.from_bytes(payload, max_size=self._max_payload)
        except InvalidCredentialName as error:
            request_id = wire.peek_request_id(payload, max_size=self._max_payload)
            return self._invalid(InvalidRequest(str(error), request_id=request_id))
        except InvalidRequest as error:
            return self._invalid(error)
        credential = self._credentials.get(name) if self._credentials is not None else None
        if credential is None:
            return self._refuse(request.request_id, wire.UNKNOWN_CREDENTIAL,
                                f"no credential named {name!r} on this worker")
        scope = request.scope
        if scope is None:
            scope = self._default_scope if credential.scope is None else credential.scope
        query = TokenQuery(credential.client_id, credential.client_secret.reveal(), scope,
                           credential.auth_method)
        return self._route(request.request_id, credential.client_id, query, name,
                           request.skip_cache)

    def _route(self, request_id: str, client_id: str, query: TokenQuery,
               credential: str | None, skip_cache: bool) -> Reply | Deferred[Asked]:
        """A cache hit is answered now; the rest is deferred, due ``idp.deadline`` from now
        (an :class:`Asked` is built only then: hits are the hot path)."""
        answer = None if skip_cache else self._broker.cached(query)
        if answer is None:
            deadline = None if self._deadline is None else time.monotonic() + self._deadline
            return Deferred(self._serve, Asked(request_id, client_id, query, credential,
                                               skip_cache, deadline), request_id)
        if log.isEnabledFor(logging.DEBUG):
            with request_context(request_id, client_id):
                log.debug("token served from cache", extra={"expires_in": answer.expires_in,
                                                            "credential": credential})
        return _token_reply(request_id, client_id, credential, answer, query)

    def _refuse(self, request_id: str, error_code: str, error: str) -> Reply:
        """A request refused before any lookup; logged without its body, at most once a
        second."""
        with request_context(request_id):
            self._warn_refused({"error_code": error_code})
        return Reply(wire.ErrorReply(request_id, error, error_code).to_bytes(), error_code,
                     request_id)

    def _invalid(self, error: InvalidRequest) -> Reply:
        with request_context(error.request_id):
            self._warn_invalid({"error": str(error)})
        body = wire.ErrorReply(error.request_id, str(error), wire.INVALID_REQUEST).to_bytes()
        return Reply(body, wire.INVALID_REQUEST, error.request_id)

    def _serve(self, request: Asked) -> Reply:
        """On a pool thread: the cache was looked up already (or skipping it was asked),
        so to the broker's single flight, which caches what it gets."""
        if request.skip_cache:
            return self._answer(request, lambda: self._broker.fetch(
                request.query, skip_cache=True, deadline=request.deadline))
        return self._answer(request, lambda: self._broker.fetch_after_miss(
            request.query, request.deadline))

    def _answer(self, request: Asked, get: Callable[[], Answer]) -> Reply:
        with request_context(request.request_id, request.client_id):
            started = time.monotonic()
            try:
                answer = get()
            except IdpError as error:
                self._log_failure(error, started)
                body = wire.ErrorReply(request.request_id, str(error), error.error_code,
                                       error.description).to_bytes()
                return Reply(body, error.error_code, request.request_id, request.client_id)
            log.info("token issued", extra={"idp_ms": _ms_since(started),
                                             "expires_in": answer.expires_in,
                                             "token_source": answer.source,
                                             "credential": request.credential})
            return _token_reply(request.request_id, request.client_id, request.credential,
                                answer, request.query)

    def _log_failure(self, error: IdpError, started: float) -> None:
        """At most a line a second: a refusal is an answer (INFO), anything else a fault;
        a flood of wrong secrets must not become a flood of lines."""
        details = {"error_code": error.error_code, "error": str(error),
                   "idp_ms": _ms_since(started)}
        if isinstance(error, IdpRefused):
            self._note_refused_by_idp(details)
        else:
            self._warn_not_issued(details)


def _token_reply(request_id: str, client_id: str, credential: str | None, answer: Answer,
                 query: TokenQuery) -> Reply:
    token = answer.token
    body = wire.encode_token_reply(request_id, token.access_token, token.token_type,
                                   answer.expires_in, scope=token.scope,
                                   token_source=answer.source, credential=credential)
    return Reply(body, "", request_id, client_id, query)


def shared_tier(config: Config, connection: KvConnection) -> SharedTier:
    """The shared tier ``cache.shared`` describes, over ``connection`` (not ensured yet:
    :meth:`TokenHandler.prepare`)."""
    settings = config.cache.shared
    if not settings.bucket or not settings.key_file:
        raise ValueError("cache.shared needs a bucket and a key file")
    previous = settings.previous_key_file
    return SharedTier(
        KeyValue(connection, settings.bucket, timeout=settings.timeout),
        load_key_file(settings.key_file),
        previous_key=load_key_file(previous, field="cache.shared.previousKeyFile")
        if previous else None,
        expiry_margin=config.cache.expiry_margin, max_age=config.cache.max_ttl,
        replicas=settings.replicas)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
