"""The error tree of token-worker.

Each error says which part failed and carries what its caller needs: a config error names
the field and where its value came from, an identity-provider error keeps the OAuth2 code,
a requester error keeps the reply's ``error_code``. Catch the branch you mean::

    TokenWorkerError
    ├── ConfigError                 bad configuration (exit code 2)
    ├── NatsConnectionError         the NATS connection is not usable
    │   ├── NotConnected            publish while disconnected or reconnecting
    │   ├── ReconnectGaveUp         every reconnect attempt failed (exit code 3)
    │   └── PayloadTooLarge         a message larger than the server's max_payload
    ├── IdpError                    the identity provider did not issue a token
    │   ├── IdpRefused              it answered with an OAuth2 error (never retried)
    │   ├── IdpUnavailable          unreachable, 5xx, 429 or an unreadable answer
    │   └── IdpTimeout              no answer within ``idp.timeout``
    ├── InvalidRequest              a request body the wire contract refuses
    ├── InvalidReply                requester side: a reply body the wire contract refuses
    └── TokenRequestFailed          requester side: a worker answered with an error
        ├── NoWorkerAnswered        nobody is subscribed, or nobody answered in time
        └── RequestTimedOut         the request's time budget ran out
"""

from __future__ import annotations


class TokenWorkerError(Exception):
    """Base of every error token-worker raises on purpose."""


class ConfigError(TokenWorkerError):
    """A configuration value is invalid; names the field and the source of the value.

    The value itself is only shown for non-secret fields.
    """

    def __init__(self, field: str, source: str, problem: str) -> None:
        self.field = field
        self.source = source
        self.problem = problem
        super().__init__(f"invalid config {field} (from {source}): {problem}")


class NatsConnectionError(TokenWorkerError):
    """The NATS connection cannot be used for what was asked."""


class NotConnected(NatsConnectionError):
    """The connection is down or reconnecting; nothing was sent."""


class ReconnectGaveUp(NatsConnectionError):
    """Every (re)connect attempt allowed by the config failed; the connection is closed."""


class IdpError(TokenWorkerError):
    """The identity provider did not issue a token.

    ``error_code`` is the machine-readable code sent to the requester.
    """

    error_code = "idp_error"

    def __init__(self, message: str, *, description: str = "", status: int | None = None,
                 retry_after: float | None = None) -> None:
        self.description = description
        self.status = status
        self.retry_after = retry_after
        """Seconds the IdP asked us to wait (a 429's or 503's ``Retry-After``)."""
        super().__init__(message)


class IdpRefused(IdpError):
    """The IdP answered with an OAuth2 error (``invalid_client``, ``invalid_scope``, ...)."""

    def __init__(
        self, error_code: str, *, description: str = "", status: int | None = None
    ) -> None:
        self.error_code = error_code
        text = f"identity provider refused the request: {error_code}"
        if description:
            text += f" ({description})"
        super().__init__(text, description=description, status=status)


class IdpUnavailable(IdpError):
    """The IdP could not be reached, failed (5xx, 429), or answered something unreadable."""

    error_code = "idp_unavailable"


class IdpTimeout(IdpError):
    """The IdP did not answer within the configured timeout."""

    error_code = "idp_timeout"


class TokenRequestFailed(TokenWorkerError):
    """Requester side: the worker answered with an error reply.

    ``error_code`` is the IdP's OAuth2 code when the IdP refused, else one of token-worker's
    codes (see the README).
    """

    def __init__(self, error_code: str, message: str, *, request_id: str = "") -> None:
        self.error_code = error_code
        self.request_id = request_id
        super().__init__(f"{error_code}: {message}")


class NoWorkerAnswered(TokenRequestFailed):
    """No worker answered: none is subscribed, or none answered within the timeout."""

    def __init__(self, message: str, *, request_id: str = "") -> None:
        super().__init__("no_worker", message, request_id=request_id)


class RequestTimedOut(TokenRequestFailed):
    """The request's overall time budget ran out (all retries included)."""

    def __init__(self, message: str, *, request_id: str = "") -> None:
        super().__init__("timeout", message, request_id=request_id)


class PayloadTooLarge(NatsConnectionError):
    """A message is larger than the server accepts (its ``max_payload``); nothing was sent,
    and the connection is kept."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message is {size} bytes, the NATS server accepts at most {limit}")


class InvalidRequest(TokenWorkerError):
    """A request body that cannot be served; ``request_id`` is set when one could be read.

    Answered with an ``invalid_request`` error reply, never raised to a requester."""

    def __init__(self, message: str, *, request_id: str = "") -> None:
        self.request_id = request_id
        super().__init__(message)


class InvalidReply(TokenWorkerError):
    """Requester side: a reply body that is not a well-formed token or error reply (the
    field and the problem are in the message; a token's value never is)."""
