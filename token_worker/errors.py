"""The error tree of token-worker.

Each error says which part failed and carries what its caller needs: a config error names
the field and where its value came from, an identity-provider error keeps the OAuth2 code,
a requester error keeps the reply's ``error_code``. Catch the branch you mean::

    TokenWorkerError
    ├── ConfigError                 bad configuration (exit code 2)
    ├── NatsCredentialsError        a .creds or NKey seed file cannot be used (a ValueError too)
    ├── CredentialsDirError         the credentials directory cannot be used (a ValueError too)
    ├── InvalidCredentialName       a credential name outside [A-Za-z0-9_-]+ (a ValueError too)
    ├── NatsConnectionError         the NATS connection is not usable
    │   ├── NotConnected            publish while disconnected or reconnecting
    │   ├── PayloadTooLarge         a message larger than the server's max_payload
    │   ├── HandshakeFailed         one attempt at one server failed (the policy retries it)
    │   └── ReconnectGaveUp         every reconnect attempt failed (exit code 3)
    │       └── ConnectionClosed    close() was called before a connection was made
    ├── KvError                     a JetStream key-value call failed (the shared tier's)
    │   ├── KvTimeout               no answer within the call's timeout
    │   └── KvUnavailable           nobody answers JetStream's API, or nothing was sent
    ├── NoToken                     a request gets no token; its reply names the error_code
    │   ├── Overloaded              no room now (pool, waiters, deadline, IdP call ceiling)
    │   ├── RateLimited             the client's IdP call budget is spent
    │   ├── ShuttingDown            the worker stopped before serving it
    │   └── IdpError                the identity provider did not issue a token
    │       ├── IdpRefused          it answered with an OAuth2 error (never retried)
    │       ├── IdpUnavailable      unreachable, 5xx or 429: it may work on a retry
    │       │   ├── CircuitOpen     failing fast: the endpoint is failing, cooling down
    │       │   └── AskedToWait     failing fast: its Retry-After has not passed yet
    │       ├── IdpTimeout          no answer within ``idp.timeout`` / ``idp.deadline``
    │       ├── IdpBadResponse      an answer no retry can fix (not a token, a redirect)
    │       └── CannotAuthenticate  the worker cannot prove the client as asked: not sent
    ├── InvalidRequest              a request body the wire contract refuses
    ├── InvalidReply                requester side: a reply body the wire contract refuses
    ├── TokenRequestFailed          requester side: a worker answered with an error
    │   ├── NoWorkerAnswered        nobody is subscribed, or nobody answered in time
    │   ├── RequestTimedOut         the request's time budget ran out
    │   └── NatsUnavailable         the NATS connection was lost and not back in time
    └── ClientClosed                requester side: the TokenClient was closed

Two more are plain ``ValueError`` subclasses, for input no part of token-worker failed on::

    ValueError
    ├── BadSubject                  a subject or queue group that cannot be sent
    └── RefusedFile                 a file the bounded reader will not read: not a regular
                                    file, or larger than its limit (:mod:`token_worker.secret`)

Every public error class lives in this module, and nowhere else; the package's top level
exports them all (``from token_worker import ReconnectGaveUp``). The few exceptions defined
elsewhere are control flow that never reaches a user: a requester's attempt outcomes
(:mod:`token_worker.client.retries`), a sealed value that does not open
(:mod:`token_worker.tokens.sealing`), a credentials directory torn mid-read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


class NatsCredentialsError(TokenWorkerError, ValueError):
    """A creds or NKey seed file cannot be used.

    ``problem`` says what is wrong without the path; the message adds the path. Neither
    ever contains the seed or the JWT. The config loader turns it into a ConfigError that
    names the setting and its source.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CredentialsDirError(TokenWorkerError, ValueError):
    """The credentials directory cannot be used (config-load time); names the path."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InvalidCredentialName(TokenWorkerError, ValueError):
    """A requested name is not ``[A-Za-z0-9_-]+``: the caller answers ``invalid_request``."""


class NatsConnectionError(TokenWorkerError):
    """The NATS connection cannot be used for what was asked."""


class NotConnected(NatsConnectionError):
    """The connection is down or reconnecting; nothing was sent."""


class HandshakeFailed(NatsConnectionError):
    """One attempt to connect to one server failed (retried by the reconnect policy)."""


class ReconnectGaveUp(NatsConnectionError):
    """Every (re)connect attempt allowed by the config failed; the connection is closed."""


class ConnectionClosed(ReconnectGaveUp):
    """``close()`` was called (a stop, a signal) while ``connect()`` was still trying."""


class PayloadTooLarge(NatsConnectionError):
    """A message larger than the server's ``max_payload``: never sent, never buffered
    (the server would drop the connection over it). Not :class:`NotConnected`: retrying
    the same message cannot help."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the server's max_payload of "
                         f"{limit} bytes")


class KvError(TokenWorkerError):
    """A JetStream key-value call failed; ``code`` is the status (404, 503, ...), ``err_code``
    JetStream's own error code (10059: stream not found) when it sent one."""

    def __init__(self, code: int, description: str, *, err_code: int = 0) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        text = f"jetstream error {code}"
        if err_code:
            text += f" ({err_code})"
        super().__init__(f"{text}: {description}")


class KvTimeout(KvError):
    """No answer within the call's timeout (JetStream slow, quorum lost, connection down)."""

    def __init__(self, description: str) -> None:
        super().__init__(408, description)


class KvUnavailable(KvError):
    """Nobody answers JetStream's API here (503 no responders: JetStream is off), or the
    request could not be sent at all."""

    def __init__(self, description: str) -> None:
        super().__init__(503, description)


class NoToken(TokenWorkerError):
    """A request gets no token, for a reason its reply names: the base of everything a
    worker answers with an error code after a request was understood (the IdP's errors,
    and the worker's own refusals: ``overloaded``, ``rate_limited``, ``shutting_down``).

    ``error_code`` is the reply's ``error_code``; the message is one sentence that says
    why (the reply's ``error``); ``description`` the IdP's ``error_description`` if any;
    ``retry_after`` the seconds after which asking again may succeed, when known (the
    reply's ``retry_after``)."""

    error_code = "no_token"

    def __init__(self, message: str, *, description: str = "",
                 retry_after: float | None = None) -> None:
        self.description = description
        self.retry_after = retry_after
        super().__init__(message)

    def add_context(self, text: str) -> None:
        """Append what is known beyond the cause (attempts, time spent, a hold) to the
        message."""
        self.args = (f"{self.args[0]} ({text})",) if self.args else (text,)

    def __copy__(self) -> NoToken:
        """A copy with the same message and fields. ``copy.copy`` of an exception calls
        its class again with its ``args``: a subclass whose first argument is not the
        message (``IdpRefused(error_code)``) would say its cause twice."""
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.args = self.args
        return twin


class Overloaded(NoToken):
    """The worker has no room for the request now (its pool and backlog are full, too many
    requests wait for tokens, the request waited too long for a thread to leave the IdP
    the time it needs, or the replica's ceiling on IdP calls is reached): retry shortly,
    another replica may answer."""

    error_code = "overloaded"


class RateLimited(NoToken):
    """The client (a client id, or a named credential) asked the IdP more often than its
    budget allows (``idp.clientRate``, ``idp.clientBurst``), and no cached token could
    stand in: retry after ``retry_after`` seconds."""

    error_code = "rate_limited"


class ShuttingDown(NoToken):
    """The worker stopped before it could serve the request: retry at once, another
    replica answers."""

    error_code = "shutting_down"


class IdpError(NoToken):
    """The identity provider did not issue a token.

    ``reason`` is the short cause for the log line (``HTTP 503``, ``not JSON``,
    ``ConnectionRefusedError: ...``), ``status`` the HTTP status if there was an answer,
    and ``body`` the start of an error answer's body (never of a 2xx, which may hold a
    token). ``attempted`` is False for an error raised without calling the IdP (its
    circuit open, a ``Retry-After`` running, no time left); ``unreachable`` is True when the
    endpoint could not be reached at all (refused, reset, DNS, TLS, a connect timeout):
    evidence about the endpoint, whoever asked.
    """

    error_code = "idp_error"

    def __init__(self, message: str, *, description: str = "", status: int | None = None,
                 retry_after: float | None = None, reason: str = "", body: str = "",
                 attempted: bool = True, unreachable: bool = False) -> None:
        self.status = status
        self.reason = reason or message
        self.body = body
        self.attempted = attempted
        self.unreachable = unreachable
        super().__init__(message, description=description, retry_after=retry_after)


class IdpRefused(IdpError):
    """The IdP answered with an OAuth2 error (``invalid_client``, ``invalid_scope``, ...)."""

    def __init__(self, error_code: str, *, description: str = "", status: int | None = None,
                 body: str = "") -> None:
        self.error_code = error_code
        text = f"identity provider refused the request: {error_code}"
        if description:
            text += f" ({description})"
        reason = f"HTTP {status} {error_code}" if status else error_code
        super().__init__(text, description=description, status=status, reason=reason,
                         body=body)


class IdpUnavailable(IdpError):
    """The IdP could not be reached or said it is failing (5xx, 429): worth a retry."""

    error_code = "idp_unavailable"


class CircuitOpen(IdpUnavailable):
    """The token endpoint is failing (failures for several clients, or it cannot be
    reached); it is not asked until the cool-down has passed."""


class AskedToWait(IdpUnavailable):
    """The IdP asked (``Retry-After``) not to be called before a moment still to come."""


class IdpTimeout(IdpError):
    """The IdP did not answer within the attempt's timeout or the fetch's deadline.

    ``cut_short`` is True when the attempt had less than half the time a fresh request gets
    (the request had waited, or spent its deadline on earlier attempts): such a timeout is
    the request's, no evidence against the client or the endpoint."""

    error_code = "idp_timeout"

    def __init__(self, message: str, *, cut_short: bool = False, **kwargs: Any) -> None:
        self.cut_short = cut_short
        super().__init__(message, **kwargs)


class IdpBadResponse(IdpError):
    """The IdP answered something no retry can turn into a token: a 2xx that is not a usable
    token response, a redirect (never followed: the secret stays with the configured host),
    an answer larger than ``idp.maxResponseBytes``. Not retried; it does not count towards
    failing fast, since the IdP is evidently up."""

    error_code = "idp_bad_response"

    def __init__(self, reason: str, *, status: int | None = None, body: str = "") -> None:
        where = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"unusable answer from the identity provider{where}: {reason}",
                         status=status, reason=reason, body=body)


class CannotAuthenticate(IdpError):
    """The worker cannot authenticate the client the way it was asked to, so nothing was
    sent: ``private_key_jwt`` or ``tls_client_auth`` without the key or certificate it
    needs, a client certificate for a plain ``http`` token endpoint, a certificate or CA
    that TLS cannot load. A fault of the worker's set-up, not of the requester nor the
    IdP: never retried, never counted towards failing fast, answered ``internal_error``;
    the message names the method and the problem, never a key."""

    error_code = "internal_error"

    def __init__(self, problem: str) -> None:
        super().__init__(f"cannot authenticate the client: {problem}", reason=problem,
                         attempted=False)


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


class InvalidRequest(TokenWorkerError):
    """A request body that cannot be served; ``request_id`` is set when one could be read.

    Answered with an ``invalid_request`` error reply, never raised to a requester."""

    def __init__(self, message: str, *, request_id: str = "") -> None:
        self.request_id = request_id
        super().__init__(message)


class InvalidReply(TokenWorkerError):
    """Requester side: a reply body that is not a well-formed token or error reply (the
    field and the problem are in the message; a token's value never is)."""


class BadSubject(ValueError):
    """A subject (or queue group) that cannot be sent: empty, or holding a separator."""


class RefusedFile(ValueError):
    """A file the bounded reader (:func:`token_worker.secret.read_regular_file`) refused
    unread: not a regular file (``directory`` says whether it is a directory), or larger
    than its limit (``size`` is then its size). The message names the file, never its
    content."""

    def __init__(self, message: str, *, directory: bool = False, size: int | None = None
                 ) -> None:
        self.directory = directory
        self.size = size
        super().__init__(message)
