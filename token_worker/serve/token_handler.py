"""The default handler: a client-credentials token through the broker.

:class:`TokenHandler` implements the handler contract (:mod:`token_worker.serve.handler`):
parse, look the cache up once on the reader thread, and on a miss ask the broker from a
pool thread (:meth:`TokenBroker.fetch_after_miss
<token_worker.tokens.broker.TokenBroker.fetch_after_miss>`: it looks again without
counting a second miss, then joins the key's single flight, so misses for one query that
queue behind each other share one IdP call). Every request's deadline is ``idp.deadline``
from its arrival, so time spent waiting for a pool thread counts. What it serves with (IdP
client, retry policy, caches, broker) is built by :mod:`token_worker.serve.assembly`.
Named requests (``<namedSubject>.<credential>``, :meth:`TokenHandler.handle_named`) take
the same path once the credential is looked up (a dict lookup in the
:class:`~token_worker.serve.credentials.CredentialStore`, no I/O): only the subject names the
credential, and a ``client_id`` or ``client_secret`` in their body is never read. With
``credentials.inline`` false, a request on the token subject (which always carries its
secret) is answered ``inline_secrets_disabled`` without a lookup, an IdP call or a log
line quoting it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from token_worker import defaults, wire
from token_worker.errors import IdpError, IdpRefused, InvalidCredentialName, InvalidRequest
from token_worker.logs import RateLimitedLog, request_context
from token_worker.serve.credentials import CredentialStore, name_from_subject
from token_worker.serve.handler import Deferred, Reply, RequestHandler
from token_worker.tokens.broker import Answer, TokenBroker, TokenQuery

__all__ = ["Asked", "TokenHandler"]

log = logging.getLogger(__name__)


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


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
