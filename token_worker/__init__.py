"""token-worker: OAuth2 client-credentials tokens for services that talk over NATS.

A :class:`TokenWorker` joins a NATS queue group, exchanges each request's client credentials
for an access token at an OpenID Connect identity provider and answers over request-reply.
:class:`TokenClient` is the requester side (:class:`AsyncTokenClient` over an asyncio app's
nats-py connection; :mod:`token_worker.auth` plugs either into requests and httpx).

Every name in ``__all__`` is importable from here and loaded on first use (PEP 562), so a
requester pays only for the requester: ``from token_worker import TokenClient`` loads the
NATS client and the wire contract, never the worker, the IdP client, urllib3,
prometheus-client, PyJWT or cryptography (and ``AsyncTokenClient`` not even the threaded
NATS connection). The package, layer by layer (each imports only the
layers below it; ``lint-imports`` checks it):

- :mod:`token_worker.cli`: the command lines;
- :mod:`token_worker.serve`: the worker, its handler contract, pool, health, ``$SRV``;
  :mod:`token_worker.client`: the requester;
- :mod:`token_worker.idp`: the token endpoint's client and its resilience;
- :mod:`token_worker.tokens`: the token model, the caches, the broker;
- :mod:`token_worker.nats`: the NATS transport and JetStream KV;
- :mod:`token_worker.config`: the typed config;
- the foundation: :mod:`~token_worker.errors` (every public error),
  :mod:`~token_worker.defaults`, :mod:`~token_worker.wire` (the token contract),
  :mod:`~token_worker.micro` (the ``$SRV`` bodies), :mod:`~token_worker.secret`,
  :mod:`~token_worker.nkey_auth`, :mod:`~token_worker.logs`, :mod:`~token_worker.metrics`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from token_worker.version import __version__

if TYPE_CHECKING:
    from token_worker.client.async_client import AsyncTokenClient
    from token_worker.client.client import TokenClient
    from token_worker.client.exchange import Token
    from token_worker.config import Config, load_config
    from token_worker.errors import (
        AskedToWait,
        BadSubject,
        CannotAuthenticate,
        CircuitOpen,
        ClientClosed,
        ConfigError,
        ConnectionClosed,
        CredentialsDirError,
        HandshakeFailed,
        IdpBadResponse,
        IdpError,
        IdpRefused,
        IdpTimeout,
        IdpUnavailable,
        InvalidCredentialName,
        InvalidReply,
        InvalidRequest,
        KvError,
        KvTimeout,
        KvUnavailable,
        NatsConnectionError,
        NatsCredentialsError,
        NatsUnavailable,
        NotConnected,
        NoWorkerAnswered,
        PayloadTooLarge,
        ReconnectGaveUp,
        RefusedFile,
        RequestTimedOut,
        TokenRequestFailed,
        TokenWorkerError,
    )
    from token_worker.serve.handler import BytesHandler, Deferred, Reply, RequestHandler
    from token_worker.serve.naming import client_name
    from token_worker.serve.worker import TokenWorker

_ERRORS = (
    "AskedToWait", "BadSubject", "CannotAuthenticate", "CircuitOpen", "ClientClosed",
    "ConfigError", "ConnectionClosed", "CredentialsDirError", "HandshakeFailed",
    "IdpBadResponse", "IdpError", "IdpRefused", "IdpTimeout", "IdpUnavailable",
    "InvalidCredentialName", "InvalidReply", "InvalidRequest", "KvError", "KvTimeout",
    "KvUnavailable", "NatsConnectionError", "NatsCredentialsError", "NatsUnavailable",
    "NoWorkerAnswered", "NotConnected", "PayloadTooLarge", "ReconnectGaveUp", "RefusedFile",
    "RequestTimedOut", "TokenRequestFailed", "TokenWorkerError",
)

_EXPORTS: dict[str, str] = {
    "Token": "token_worker.client.exchange",
    "TokenClient": "token_worker.client.client",
    "AsyncTokenClient": "token_worker.client.async_client",
    "TokenWorker": "token_worker.serve.worker",
    "Config": "token_worker.config",
    "load_config": "token_worker.config",
    "client_name": "token_worker.serve.naming",
    "BytesHandler": "token_worker.serve.handler",
    "Deferred": "token_worker.serve.handler",
    "Reply": "token_worker.serve.handler",
    "RequestHandler": "token_worker.serve.handler",
    **dict.fromkeys(_ERRORS, "token_worker.errors"),
}
"""Each exported name and the module it lives in (imported when the name is first used)."""

__all__ = [
    "AskedToWait", "AsyncTokenClient", "BadSubject", "BytesHandler", "CannotAuthenticate",
    "CircuitOpen",
    "ClientClosed", "Config", "ConfigError", "ConnectionClosed", "CredentialsDirError",
    "Deferred", "HandshakeFailed",
    "IdpBadResponse", "IdpError", "IdpRefused", "IdpTimeout", "IdpUnavailable",
    "InvalidCredentialName", "InvalidReply", "InvalidRequest", "KvError", "KvTimeout",
    "KvUnavailable", "NatsConnectionError", "NatsCredentialsError", "NatsUnavailable",
    "NoWorkerAnswered", "NotConnected", "PayloadTooLarge", "ReconnectGaveUp", "RefusedFile",
    "Reply", "RequestHandler", "RequestTimedOut", "Token", "TokenClient", "TokenRequestFailed",
    "TokenWorker", "TokenWorkerError", "__version__", "client_name", "load_config",
]
"""Everything importable from the package's top level (each name is loaded on first use)."""


def __getattr__(name: str) -> Any:
    """Load an exported name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
