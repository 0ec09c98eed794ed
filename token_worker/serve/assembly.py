"""Assembly: what a worker serves tokens with, built as the config says.

The one place that knows how the parts fit: the IdP client and its resilience (the
:class:`~token_worker.tokens.model.Issuer` the broker asks), the per-key and per-client
bulkheads, the token cache, the shared tier over the worker's own NATS connection, the
broker (which runs its IdP work on the worker's pool), and the handlers of the token and
named-credential endpoints in front of them; and the named credentials of
``credentials.dir``. :class:`~token_worker.serve.worker.TokenWorker` calls
:func:`token_service` when no handler of the caller's own is given.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from token_worker.config import Config
from token_worker.errors import ConfigError, CredentialsDirError
from token_worker.idp.circuit import CircuitState
from token_worker.idp.client import IdpClient
from token_worker.idp.resilience import Endpoints
from token_worker.logs import redact_secrets
from token_worker.metrics import Metrics
from token_worker.nats.kv import KeyValue
from token_worker.nats.replies import Connection as KvConnection
from token_worker.secret import load_key_file
from token_worker.serve.credentials import CredentialStore
from token_worker.serve.dispatch import Route
from token_worker.serve.pool import BoundedPool
from token_worker.serve.token_handler import NamedTokenHandler, TokenHandler
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.bulkheads import GUARD_CAPACITY, Guards
from token_worker.tokens.cache import TokenCache
from token_worker.tokens.guards import Backoffs, Budgets, Known, Refusals
from token_worker.tokens.shared import SharedTier

__all__ = ["TokenService", "credential_store", "shared_tier", "token_service"]

CIRCUIT_STATES = {CircuitState.CLOSED: 0.0, CircuitState.OPEN: 1.0,
                  CircuitState.HALF_OPEN: 2.0}


@dataclass
class TokenService:
    """What serves tokens: the routes a worker subscribes, and the parts it starts and
    closes with them."""

    routes: list[Route]
    broker: TokenBroker
    client: IdpClient
    credentials: CredentialStore | None = None
    closed: bool = field(default=False, init=False)

    def prepare(self) -> None:
        """Make the shared tier's bucket ready on a thread of its own (created when
        missing): never in the way of serving, which goes without the tier meanwhile."""
        shared = self.broker.shared
        if shared is not None:
            threading.Thread(target=shared.prepare, name="shared-cache-prepare",
                             daemon=True).start()

    @property
    def shared_available(self) -> bool | None:
        """Whether the shared tier answers now; None without a shared tier."""
        shared = self.broker.shared
        return None if shared is None else shared.available

    def close(self) -> None:
        """Stop background refreshes, end fetches still under way, release the IdP's
        connections (the credentials are the worker's to close)."""
        if not self.closed:
            self.closed = True
            self.broker.close()
            self.client.close()


def token_service(config: Config, metrics: Metrics, pool: BoundedPool, *,
                  connection: KvConnection | None = None,
                  credentials: CredentialStore | None = None) -> TokenService:
    """Wire IdP client, resilience, bulkheads, cache, shared tier (with
    ``cache.shared.bucket``, over ``connection``, the worker's, which must announce headers)
    and broker as the config says, and the handlers of the token subject and, with
    ``credentials``, of the named subjects."""
    client = IdpClient(config.idp, pool_size=config.workers + 2)
    endpoints = Endpoints(client, config.idp, metrics)
    idp = endpoints.default
    metrics.circuit_open.set_function(lambda: 1.0 if idp.circuit_open else 0.0)
    metrics.circuit_state.set_function(lambda: CIRCUIT_STATES[idp.circuit.state])
    cache = None
    if config.cache.enabled:
        cache = TokenCache(max_entries=config.cache.max_entries,
                           per_client=config.cache.max_entries_per_client,
                           expiry_margin=config.cache.expiry_margin,
                           refresh_ahead=config.cache.refresh_ahead, now=time.time,
                           max_ttl=config.cache.max_ttl)
        metrics.track_cache(lambda: cache.evictions if cache is not None else {})
    shared = None
    if cache is not None and connection is not None and config.cache.shared.bucket:
        shared = tier = shared_tier(config, connection)
        metrics.track_shared(lambda: tier.counts)
    guards = bulkheads(config, metrics)
    broker = TokenBroker(idp, cache, auth_method=config.idp.auth_method, guards=guards,
                         work=pool, max_waiters_per_key=config.max_waiters_per_key,
                         max_waiting=config.max_waiting, lease_ttl=config.idp.deadline,
                         metrics=metrics, shared=shared, endpoints=endpoints)
    metrics.waiting.set_function(lambda: broker.waiting)
    common = {"default_scope": config.idp.default_scope, "max_payload": config.max_payload,
              "deadline": config.idp.deadline, "named_prefix": config.named_subject,
              "default_method": config.idp.auth_method}
    routes = [Route("token", config.subject, TokenHandler(
        broker, inline_secrets=config.credentials.inline, **common))]  # type: ignore[arg-type]
    if credentials is not None:
        def forget(_event: str, name: str) -> None:
            broker.forget_refusals(name)
        credentials.listen(forget)
        routes.append(Route("named", f"{config.named_subject}.*", NamedTokenHandler(
            broker, credentials, **common)))  # type: ignore[arg-type]
    return TokenService(routes, broker, client, credentials)


def bulkheads(config: Config, metrics: Metrics) -> Guards:
    """The per-key back-offs, remembered refusals and per-client call budgets."""
    idp = config.idp
    guards = Guards(
        backoffs=Backoffs(first=idp.client_backoff, longest=idp.client_backoff_max,
                          capacity=GUARD_CAPACITY),
        refusals=Refusals(ttl=idp.refusal_memory, capacity=GUARD_CAPACITY),
        budgets=Budgets(rate=idp.client_rate, burst=idp.client_burst,
                        capacity=GUARD_CAPACITY),
        proven=Known(GUARD_CAPACITY))
    metrics.client_backoffs.set_function(lambda: len(guards.backoffs))
    metrics.refusals_remembered.set_function(lambda: len(guards.refusals))
    return guards


def shared_tier(config: Config, connection: KvConnection) -> SharedTier:
    """The shared tier ``cache.shared`` describes, over ``connection`` (not ensured yet:
    :meth:`TokenService.prepare`)."""
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
        if credential is not None:  # the secret, or the key's and certificate key's PEM
            redact_secrets(credential.secret_values())

    try:
        store = CredentialStore(directory, start=False, on_change=redact)
    except CredentialsDirError as error:
        raise ConfigError("credentials.dir", f"directory {directory}", error.problem) from None
    made.append(store)
    for name in store.names():
        redact("added", name)
    return store
