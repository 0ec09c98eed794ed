"""One token request, from request bytes to reply bytes.

The handler owns a single request: parse and validate it, ask the identity provider, and
turn the result, good or bad, into a reply. It never raises for a bad request or an IdP
failure: every such case becomes an error reply with a ``request_id`` where one could be
read, a sentence in ``error`` and a code in ``error_code``.
"""

from __future__ import annotations

import logging
import time

from token_worker import messages
from token_worker.errors import IdpError, IdpRefused
from token_worker.idp import IdpClient
from token_worker.logs import request_context

log = logging.getLogger(__name__)


class TokenHandler:
    """The default request handler: a client-credentials exchange at the IdP."""

    def __init__(self, idp: IdpClient, *, default_scope: str, max_payload: int) -> None:
        self._idp = idp
        self._default_scope = default_scope
        self._max_payload = max_payload

    def __call__(self, payload: bytes) -> bytes:
        try:
            request = messages.parse_request(payload, max_size=self._max_payload)
        except messages.InvalidRequest as error:
            with request_context(error.request_id):
                log.warning("invalid request", extra={"error": str(error)})
            return messages.error_reply(error.request_id, messages.INVALID_REQUEST, str(error))
        with request_context(request.request_id, request.client_id):
            return self._serve(request)

    def _serve(self, request: messages.TokenRequest) -> bytes:
        scope = self._default_scope if request.scope is None else request.scope
        started = time.monotonic()
        try:
            token = self._idp.fetch_token(request.client_id, request.client_secret, scope)
        except IdpError as error:
            self._log_failure(error, started)
            return messages.error_reply(
                request.request_id, error.error_code, str(error), description=error.description
            )
        log.info("token issued", extra={"idp_ms": _ms_since(started),
                                         "expires_in": token.expires_in})
        return messages.token_reply(
            request.request_id,
            access_token=token.access_token,
            token_type=token.token_type,
            expires_in=token.expires_in,
            scope=token.scope,
        )

    @staticmethod
    def _log_failure(error: IdpError, started: float) -> None:
        level = logging.INFO if isinstance(error, IdpRefused) else logging.WARNING
        log.log(level, "token not issued", extra={
            "error_code": error.error_code, "error": str(error), "idp_ms": _ms_since(started)})


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
