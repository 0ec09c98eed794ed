"""One token request, from request bytes to reply bytes.

The handler owns a single request: parse and validate it, get a token from the broker
(cache or IdP), and turn the result, good or bad, into a reply. It never raises for a bad
request or an IdP failure: every such case becomes an error reply with a ``request_id``
where one could be read, a sentence in ``error`` and a code in ``error_code``.

:meth:`TokenHandler.answer_now` is the fast path: what can be answered without I/O (a bad
request, a cache hit) is answered there, on the connection's reading thread; everything
else goes to a pool thread through ``__call__``, which parses the body again (about 3 µs,
against a millisecond or more at the IdP) so that the handler stays a plain
bytes-to-bytes callable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from token_worker import messages
from token_worker.broker import Answer, TokenBroker, TokenQuery
from token_worker.cache import TokenCache
from token_worker.config import Config
from token_worker.errors import IdpError, IdpRefused
from token_worker.idp import IdpClient
from token_worker.logs import request_context
from token_worker.metrics import Metrics
from token_worker.resilience import ResilientIdp

log = logging.getLogger(__name__)


class TokenHandler:
    """The default request handler: a client-credentials token through the broker."""

    def __init__(self, broker: TokenBroker, *, default_scope: str, max_payload: int,
                 on_close: Callable[[], None] | None = None) -> None:
        self._broker = broker
        self._default_scope = default_scope
        self._max_payload = max_payload
        self._on_close = on_close

    @classmethod
    def from_config(cls, config: Config, metrics: Metrics | None = None) -> TokenHandler:
        """Wire IdP client, retry policy, cache and broker as the config says."""
        client = IdpClient(config.idp, pool_size=config.workers + 2)
        idp = ResilientIdp(client, config.idp, metrics)
        if metrics is not None:
            metrics.circuit_open.set_function(lambda: 1.0 if idp.circuit_open else 0.0)
        cache = None
        if config.cache.enabled:
            cache = TokenCache(max_entries=config.cache.max_entries,
                               expiry_margin=config.cache.expiry_margin,
                               refresh_ahead=config.cache.refresh_ahead, now=time.time,
                               max_ttl=config.cache.max_ttl)
        broker = TokenBroker(idp, cache, auth_method=config.idp.auth_method,
                             follower_timeout=config.idp.deadline + 1.0, metrics=metrics)

        def close() -> None:
            broker.close()
            client.close()

        return cls(broker, default_scope=config.idp.default_scope,
                   max_payload=config.max_payload, on_close=close)

    def close(self) -> None:
        """Release the IdP connections and stop background refreshes."""
        if self._on_close is not None:
            self._on_close()

    def answer_now(self, payload: bytes) -> bytes | None:
        """The reply if it needs no I/O (invalid request, cache hit), else None."""
        request = self._parse(payload)
        if isinstance(request, bytes):
            return request
        if request.skip_cache:
            return None
        scope = self._default_scope if request.scope is None else request.scope
        answer = self._broker.cached(TokenQuery(request.client_id, request.client_secret, scope))
        if answer is None:
            return None
        if log.isEnabledFor(logging.DEBUG):
            with request_context(request.request_id, request.client_id):
                log.debug("token served from cache", extra={"expires_in": answer.expires_in})
        return _token_reply(request.request_id, answer)

    def __call__(self, payload: bytes) -> bytes:
        request = self._parse(payload)
        if isinstance(request, bytes):
            return request
        with request_context(request.request_id, request.client_id):
            return self._serve(request)

    def _parse(self, payload: bytes) -> messages.TokenRequest | bytes:
        """The parsed request, or the error reply for an invalid one."""
        try:
            return messages.parse_request(payload, max_size=self._max_payload)
        except messages.InvalidRequest as error:
            with request_context(error.request_id):
                log.warning("invalid request", extra={"error": str(error)})
            return messages.error_reply(error.request_id, messages.INVALID_REQUEST, str(error))

    def _query(self, request: messages.TokenRequest) -> TokenQuery:
        scope = self._default_scope if request.scope is None else request.scope
        return TokenQuery(request.client_id, request.client_secret, scope)

    def _serve(self, request: messages.TokenRequest) -> bytes:
        started = time.monotonic()
        try:
            answer = self._broker.fetch(self._query(request), skip_cache=request.skip_cache)
        except IdpError as error:
            self._log_failure(error, started)
            return messages.error_reply(
                request.request_id, error.error_code, str(error), description=error.description
            )
        log.info("token issued", extra={"idp_ms": _ms_since(started),
                                         "expires_in": answer.expires_in,
                                         "token_source": answer.source})
        return _token_reply(request.request_id, answer)

    @staticmethod
    def _log_failure(error: IdpError, started: float) -> None:
        level = logging.INFO if isinstance(error, IdpRefused) else logging.WARNING
        log.log(level, "token not issued", extra={
            "error_code": error.error_code, "error": str(error), "idp_ms": _ms_since(started)})


def _token_reply(request_id: str, answer: Answer) -> bytes:
    return messages.token_reply(
        request_id,
        access_token=answer.token.access_token,
        token_type=answer.token.token_type,
        expires_in=answer.expires_in,
        scope=answer.token.scope,
        token_source=answer.source,
    )


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
