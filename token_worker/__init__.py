"""token-worker: OAuth2 client-credentials tokens for services that talk over NATS.

A :class:`TokenWorker` joins a NATS queue group, exchanges each request's client credentials
for an access token at an OpenID Connect identity provider and answers over request-reply.
:class:`TokenClient` is the requester side.
"""

from token_worker.client import Token, TokenClient
from token_worker.config import Config, load_config
from token_worker.errors import (
    ConfigError,
    IdpBadResponse,
    IdpError,
    IdpRefused,
    IdpTimeout,
    IdpUnavailable,
    NatsConnectionError,
    NoWorkerAnswered,
    RequestTimedOut,
    TokenRequestFailed,
    TokenWorkerError,
)
from token_worker.serve.naming import client_name
from token_worker.serve.worker import TokenWorker
from token_worker.version import __version__

__all__ = [
    "Config",
    "ConfigError",
    "IdpBadResponse",
    "IdpError",
    "IdpRefused",
    "IdpTimeout",
    "IdpUnavailable",
    "NatsConnectionError",
    "NoWorkerAnswered",
    "RequestTimedOut",
    "Token",
    "TokenClient",
    "TokenRequestFailed",
    "TokenWorker",
    "TokenWorkerError",
    "__version__",
    "client_name",
    "load_config",
]
