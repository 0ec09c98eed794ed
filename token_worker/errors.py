"""The error tree of token-worker.

Each error says which part failed and carries what its caller needs: a config error names
the field and where its value came from, an identity-provider error keeps the OAuth2 code,
a requester error keeps the reply's ``error_code``. Catch the branch you mean::

    TokenWorkerError
    ├── ConfigError                 bad configuration (exit code 2)
    ├── NatsConnectionError         the NATS connection is not usable
    │   ├── NotConnected            publish while disconnected or reconnecting
    │   └── ReconnectGaveUp         every reconnect attempt failed (exit code 3)
    ├── IdpError                    the identity provider did not issue a token
    │   ├── IdpRefused              it answered with an OAuth2 error (never retried)
    │   ├── IdpUnavailable          unreachable, 5xx, 429 or an unreadable answer
    │   └── IdpTimeout              no answer within ``idp.timeout``
    ├── TokenRequestFailed          requester side: a worker answered with an error
    │   ├── NoWorkerAnswered        nobody is subscribed, or nobody answered in time
    │   ├── RequestTimedOut         the request's time budget ran out
    │   └── NatsUnavailable         the NATS connection was lost and not back in time
    └── ClientClosed                requester side: the TokenClient was closed
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


class NatsUnavailable(TokenRequestFailed):
    """Requester side: the NATS connection was lost (or gave up) and did not come back
    within the request's budget; nothing says the workers are at fault."""

    def __init__(self, message: str, *, request_id: str = "") -> None:
        super().__init__("nats_unavailable", message, request_id=request_id)


class ClientClosed(TokenWorkerError):
    """Requester side: the :class:`~token_worker.TokenClient` was closed; it sends nothing
    more (raised at once, never retried)."""
