"""The default handlers: a client-credentials token through the broker.

Two endpoints, one path. :class:`TokenHandler` serves the token subject (requests that
carry their client's secret); :class:`NamedTokenHandler` serves ``<namedSubject>.<name>``
with the credential ``name`` the worker holds (a dict lookup in the
:class:`~token_worker.serve.credentials.CredentialStore`, no I/O; only the subject names
the credential, and a ``client_id`` or ``client_secret`` in the body is never read). Both
implement the handler contract (:mod:`token_worker.serve.handler`) on the reader thread:
parse once, look the cache up once, and otherwise ask the broker
(:meth:`~token_worker.tokens.broker.TokenBroker.ask`), which answers at once (a refusal
remembered, the client's back-off or budget, the endpoint's circuit) or resolves a
:class:`~token_worker.serve.handler.Waiting` when the fetch it joined or started ends.
Every request's deadline is ``idp.deadline`` from its arrival, so time spent waiting for a
pool thread counts. With ``credentials.inline`` false, a request on the token subject is
answered ``inline_secrets_disabled`` without a lookup, an IdP call or a log line quoting it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from cachetools import LRUCache

from token_worker import defaults, wire
from token_worker.errors import IdpRefused, InvalidCredentialName, InvalidRequest, NoToken
from token_worker.logs import RateLimitedLog, request_context
from token_worker.nats.protocol import Message
from token_worker.secret import Secret
from token_worker.serve.credential_folder import Credential
from token_worker.serve.credentials import CredentialStore, name_from_subject
from token_worker.serve.handler import Reply, RequestHandler, Waiting
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.grant import ClientAuth, Grant
from token_worker.tokens.model import Answer, TokenQuery

__all__ = ["NamedTokenHandler", "TokenHandler"]

log = logging.getLogger(__name__)

_new_tuple = tuple.__new__
GRANTS_KEPT = 10_000
"""Credential grants kept ready (one per credential and scope asked for)."""


class _Asked(NamedTuple):
    """A request waiting for a fetch: what its reply needs."""

    request_id: str
    client_id: str
    credential: str | None
    query: TokenQuery
    started: float


class _Logs:
    """The token handlers' per-request lines, each at most one a second (a flood of bad
    requests is not a flood of log)."""

    def __init__(self) -> None:
        self.invalid = RateLimitedLog(log, logging.WARNING, "invalid request")
        self.not_issued = RateLimitedLog(log, logging.WARNING, "token not issued")
        self.refused_by_idp = RateLimitedLog(log, logging.INFO, "token not issued")
        self.refused = RateLimitedLog(log, logging.WARNING, "request refused")


class _TokenPath(RequestHandler):
    """What both token endpoints do once they know the query."""

    def __init__(self, broker: TokenBroker, *, default_scope: str, max_payload: int,
                 deadline: float | None, clock: Callable[[], float] = time.monotonic,
                 default_method: str = defaults.IDP_AUTH_METHOD) -> None:
        """``deadline``: seconds from a request's arrival to its answer being due (the
        IdP's deadline); None: only the IdP's own bounds. ``clock`` is the broker's;
        ``default_method`` the worker's ``idp.authMethod``, for grants made here."""
        self._broker = broker
        self._clock = clock
        self._default_method = default_method
        self._default_scope = default_scope
        self._max_payload = max_payload
        self._deadline = deadline
        self._logs = _Logs()

    def unsent(self, reply: Reply) -> None:
        """A token reply the worker could not send: its token leaves the local cache."""
        if isinstance(reply.query, TokenQuery):
            self._broker.discard(reply.query)

    def _route(self, request_id: str, client_id: str, query: TokenQuery,
               credential: str | None, skip_cache: bool) -> Reply | Waiting:
        """A cache hit is answered now (the hot path); the rest goes to the broker, due
        ``idp.deadline`` from now."""
        broker = self._broker
        key = broker.key(query)
        if not skip_cache and key is not None:
            hit = broker.hit(query, key)
            if hit is not None:
                entry, expires_in = hit
                if log.isEnabledFor(logging.DEBUG):
                    _served_from_cache(request_id, client_id, expires_in, credential)
                return _new_tuple(Reply, (
                    entry.reply_parts.encode(request_id, expires_in, credential), "",
                    request_id, client_id, query))
        started = self._clock()
        deadline = None if self._deadline is None else started + self._deadline
        waiting = Waiting(request_id)
        outcome = broker.ask(query, deadline=deadline, skip_cache=skip_cache, key=key,
                             on_outcome=self._resolver(waiting, _Asked(
                                 request_id, client_id, credential, query, started)))
        if outcome is None:
            return waiting
        if isinstance(outcome, Answer):
            return _token_reply(request_id, client_id, credential, outcome, query)
        with request_context(request_id, client_id):
            return self._not_issued(request_id, client_id, outcome, started)

    def _resolver(self, waiting: Waiting, asked: _Asked
                  ) -> Callable[[Answer | None, BaseException | None], None]:
        """What runs when the fetch ends (on the thread that ends it): the reply."""
        request_id, client_id, credential, query, started = asked

        def resolve(answer: Answer | None, error: BaseException | None) -> None:
            with request_context(request_id, client_id):
                if answer is not None:
                    log.info("token issued", extra={"idp_ms": self._ms_since(started),
                                                     "expires_in": answer.expires_in,
                                                     "token_source": answer.source,
                                                     "credential": credential})
                    waiting.resolve(_token_reply(request_id, client_id, credential, answer,
                                                 query))
                elif isinstance(error, NoToken):
                    waiting.resolve(self._not_issued(request_id, client_id, error, started))
                else:
                    log.error("fetch failed unexpectedly", exc_info=error)
                    waiting.resolve(_error(request_id, wire.INTERNAL_ERROR,
                                           "internal error while serving the request",
                                           client_id=client_id))
        return resolve

    def _not_issued(self, request_id: str, client_id: str, error: NoToken,
                    started: float) -> Reply:
        """The error reply for ``error``, logged at most a line a second: a refusal is an
        answer (INFO), anything else a fault."""
        details = {"error_code": error.error_code, "error": str(error),
                   "idp_ms": self._ms_since(started)}
        if isinstance(error, IdpRefused):
            self._logs.refused_by_idp(details)
        else:
            self._logs.not_issued(details)
        body = wire.ErrorReply(request_id, str(error), error.error_code, error.description,
                               retry_after=wire.retry_seconds(error.retry_after)).to_bytes()
        return Reply(body, error.error_code, request_id, client_id)

    def _ms_since(self, started: float) -> float:
        return round((self._clock() - started) * 1000, 1)

    def _refuse(self, request_id: str, error_code: str, error: str) -> Reply:
        """A request refused before any lookup; logged without its body, at most once a
        second."""
        with request_context(request_id):
            self._logs.refused({"error_code": error_code})
        return _error(request_id, error_code, error)

    def _invalid(self, error: InvalidRequest) -> Reply:
        with request_context(error.request_id):
            self._logs.invalid({"error": str(error)})
        return _error(error.request_id, wire.INVALID_REQUEST, str(error))


class TokenHandler(_TokenPath):
    """The token subject: requests that carry their client's id and secret (refused
    ``inline_secrets_disabled`` when ``inline_secrets`` is False)."""

    def __init__(self, broker: TokenBroker, *, default_scope: str, max_payload: int,
                 deadline: float | None = None, inline_secrets: bool = True,
                 named_prefix: str = defaults.NAMED_SUBJECT,
                 default_method: str = defaults.IDP_AUTH_METHOD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(broker, default_scope=default_scope, max_payload=max_payload,
                         deadline=deadline, clock=clock, default_method=default_method)
        self._inline_secrets = inline_secrets
        self._named_prefix = named_prefix

    def handle(self, payload: bytes) -> Reply | Waiting:
        return self.handle_message(_new_tuple(Message, ("", "", payload, 0, b"")))

    def answer_at_once(self, message: Message, max_size: int) -> bytes | None:
        """A usual request whose token is cached: its reply, in one parse and one lookup
        (anything else, a bad request included, is left to :meth:`handle_message`)."""
        payload = message.payload
        if len(payload) > self._max_payload or not self._inline_secrets:
            return None
        request = wire.usual_token_request(payload)
        if request is None:
            return None
        request_id, client_id, secret, scope, _, skip_cache, _, _ = request
        if skip_cache:
            return None
        hit = self._broker.hit_reply(client_id, secret,
                                     self._default_scope if scope is None else scope,
                                     request_id, max_size)
        if hit is None:
            return None
        body, expires_in = hit
        if log.isEnabledFor(logging.DEBUG):
            _served_from_cache(request_id, client_id, expires_in, None)
        return body

    def handle_message(self, message: Message) -> Reply | Waiting:
        """Parse once; a bad request or a cache hit is answered now."""
        try:
            request = wire.TokenRequest.from_bytes(message.payload,
                                                   max_size=self._max_payload)
        except InvalidRequest as error:
            return self._invalid(error)
        request_id, client_id, secret, scope, _, skip_cache, resource, audience = request
        if not self._inline_secrets:
            return self._refuse(request_id, wire.INLINE_SECRETS_DISABLED,
                                "requests carrying client_secret are disabled on this "
                                f"worker: ask on {self._named_prefix}.<credential>")
        if scope is None:
            scope = self._default_scope
        query = _new_tuple(TokenQuery, (client_id, secret, scope, None, None, None, False))
        if resource or audience is not None:
            try:  # a token aimed at a resource: off the hot path
                query = query._replace(grant=Grant(
                    client_id, ClientAuth(self._default_method, Secret(secret)), scope,
                    resources=resource, audience=audience))
            except ValueError as error:
                return self._invalid(InvalidRequest(str(error), request_id=request_id))
        return self._route(request_id, client_id, query, None, skip_cache)


class NamedTokenHandler(_TokenPath):
    """``<named_prefix>.<name>``: served with the credential ``name`` from ``credentials``
    (the subject alone decides which)."""

    def __init__(self, broker: TokenBroker, credentials: CredentialStore, *,
                 default_scope: str, max_payload: int, deadline: float | None = None,
                 named_prefix: str = defaults.NAMED_SUBJECT,
                 default_method: str = defaults.IDP_AUTH_METHOD,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(broker, default_scope=default_scope, max_payload=max_payload,
                         deadline=deadline, clock=clock, default_method=default_method)
        self._credentials = credentials
        self._named_prefix = named_prefix
        self._grants: LRUCache[tuple[str, str], tuple[Credential, Grant]] = LRUCache(
            GRANTS_KEPT)

    def handle(self, payload: bytes) -> Reply:
        """A named request needs its subject: without one it is not a request."""
        request_id = wire.peek_request_id(payload, max_size=self._max_payload)
        return self._invalid(InvalidRequest("a named request needs its subject",
                                            request_id=request_id))

    def handle_message(self, message: Message) -> Reply | Waiting:
        """On the reader thread, no I/O."""
        payload = message.payload
        try:
            name = name_from_subject(message.subject, self._named_prefix)
            request = wire.NamedTokenRequest.from_bytes(payload, max_size=self._max_payload)
        except InvalidCredentialName as error:
            request_id = wire.peek_request_id(payload, max_size=self._max_payload)
            return self._invalid(InvalidRequest(str(error), request_id=request_id))
        except InvalidRequest as error:
            return self._invalid(error)
        credential = self._credentials.get(name)
        if credential is None:
            return self._refuse(request.request_id, wire.UNKNOWN_CREDENTIAL,
                                f"no credential named {name!r} on this worker")
        scope = request.scope
        if scope is None:
            scope = self._default_scope if credential.scope is None else credential.scope
        if credential.needs_grant:
            grant = self._grant(credential, scope)
            query = TokenQuery(credential.client_id, "", scope, grant.auth.method, name, grant)
        else:
            query = TokenQuery(credential.client_id, credential.client_secret.reveal(), scope,
                               credential.auth_method, name)
        return self._route(request.request_id, credential.client_id, query, name,
                           request.skip_cache)

    def _grant(self, credential: Credential, scope: str) -> Grant:
        """The credential's grant for ``scope``, made once per credential and scope (its
        digest, the cache key's part, is made once with it); a rotated credential is a
        new object, and gets new grants."""
        kept = self._grants.get((credential.name, scope))
        if kept is not None and kept[0] is credential:
            return kept[1]
        grant = credential.grant(scope, self._default_method)
        self._grants[(credential.name, scope)] = (credential, grant)
        return grant


def _served_from_cache(request_id: str, client_id: str, expires_in: int,
                       credential: str | None) -> None:
    """The DEBUG line of a request answered from the cache."""
    with request_context(request_id, client_id):
        log.debug("token served from cache",
                  extra={"expires_in": expires_in, "credential": credential})


def _token_reply(request_id: str, client_id: str, credential: str | None, answer: Answer,
                 query: TokenQuery) -> Reply:
    token = answer.token
    body = wire.encode_token_reply(request_id, token.access_token, token.token_type,
                                   answer.expires_in, scope=token.scope,
                                   token_source=answer.source, credential=credential,
                                   fetch_refused=answer.fetch_refused)
    return Reply(body, "", request_id, client_id, query)


def _error(request_id: str, error_code: str, error: str, *, client_id: str = "") -> Reply:
    return Reply(wire.ErrorReply(request_id, error, error_code).to_bytes(), error_code,
                 request_id, client_id)

