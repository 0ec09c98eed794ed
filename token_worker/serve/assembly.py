"""Assembly: what a worker serves tokens with, built as the config says.

The one place that knows how the parts fit: the IdP client and its retry policy (the
:class:`~token_worker.tokens.model.Issuer` the broker asks), the token cache, the shared
tier over the worker's own NATS connection, the broker, and the
:class:`~token_worker.serve.token_handler.TokenHandler` in front of them; and the named
credentials of ``credentials.dir``. :class:`~token_worker.serve.worker.TokenWorker` calls
it when no handler of the caller's own is given.
"""

from __future__ import annotations

import time

from token_worker.config import Config
from token_worker.errors import ConfigError, CredentialsDirError
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import ResilientIdp
from token_worker.logs import redact_secrets
from token_worker.metrics import Metrics, NullMetrics
from token_worker.nats.kv import KeyValue
from token_worker.nats.replies import Connection as KvConnection
from token_worker.secret import load_key_file
from token_worker.serve.credentials import CredentialStore
from token_worker.serve.token_handler import TokenHandler
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.shared import SharedTier

__all__ = ["credential_store", "shared_tier", "token_handler"]


def token_handler(config: Config, metrics: Metrics | None = None, *,
                  connection: KvConnection | None = None,
                  credentials: CredentialStore | None = None) -> TokenHandler:
    """Wire IdP client, retry policy, cache, shared tier (with ``cache.shared.bucket``,
    over ``connection``, the worker's, which must announce headers) and broker as the
    config says; the handler closes them in :meth:`~TokenHandler.close` (``credentials``
    stays its owner's)."""
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

    return TokenHandler(broker, default_scope=config.idp.default_scope,
                        max_payload=config.max_payload, deadline=config.idp.deadline,
                        on_close=close, credentials=credentials,
                        inline_secrets=config.credentials.inline,
                        named_prefix=config.named_subject)


def shared_tier(config: Config, connection: KvConnection) -> SharedTier:
    """The shared tier ``cache.shared`` describes, over ``connection`` (not ensured yet:
    :meth:`TokenHandler.prepare
    <token_worker.serve.token_handler.TokenHandler.prepare>`)."""
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


def credential_store(config: Config) -> CredentialStore | None:
    """The named credentials of ``credentials.dir`` (read now, reloaded from start), or
    None without one. Every secret it reads is also handed to the log redaction, so that
    not even a mistake elsewhere could print one."""
    directory = config.credentials.directory
    if directory is None:
        return None
    made: list[CredentialStore] = []

    def redact(_event: str, name: str) -> None:
        credential = made[0].get(name) if made else None
        if credential is not None:
            redact_secrets([credential.client_secret.reveal()])

    try:
        store = CredentialStore(directory, start=False, on_change=redact)
    except CredentialsDirError as error:
        raise ConfigError("credentials.dir", f"directory {directory}", error.problem) from None
    made.append(store)
    for name in store.names():
        redact("added", name)
    return store
