"""The broker's bulkheads, decided in one place: why a key is not asked for now, and what a
failed fetch costs it.

:class:`Guards` holds the per-key back-offs, the remembered refusals and the per-client
call budgets (:mod:`token_worker.tokens.guards`, generic) for the broker
(:class:`~token_worker.tokens.broker.TokenBroker`), and applies the rules to them: a
refusal the IdP gave a key moments ago is given again from memory, a key backed off after
its own failures is answered with its last error, an endpoint that refuses the client
(its circuit, a ``Retry-After``) is not asked; after a failure, a refusal is remembered and
the client's own 5xx and timeouts back its key off, while failures that are no evidence
against the client (an attempt the request's own deadline cut short, a 429, which holds
the whole client id at the issuer) do not.

Call budgets are per client id, so wrong secrets cannot drive the IdP; and a secret that
has obtained a token here (proven) spends the budget of the id's proven secrets, so a
requester who knows only a client id (not a secret) and floods it with guesses spends the
guesses' budget, not the calls of the service that holds the real secret. What is proven
is this replica's memory (bounded): a new replica, or a rotated secret, shares the id's
budget until its first token.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import NamedTuple

from token_worker import defaults
from token_worker.errors import AskedToWait, IdpError, IdpRefused, IdpTimeout, NoToken
from token_worker.metrics import Metrics
from token_worker.tokens.cache import CacheKey
from token_worker.tokens.guards import REMEMBERED_CODES, Backoffs, Budgets, Known, Refusals
from token_worker.tokens.model import Issuer, TokenQuery

__all__ = ["GUARD_CAPACITY", "Guards"]

log = logging.getLogger(__name__)

GUARD_CAPACITY = 100_000
"""Keys and clients whose back-off, remembered refusal or budget is kept at once (least
recently used forgotten first): a flood of distinct ids costs bounded memory."""
TOO_MANY_REQUESTS = 429


class Guards(NamedTuple):
    """The per-key and per-client bulkheads (:mod:`token_worker.tokens.guards`)."""

    backoffs: Backoffs[CacheKey, NoToken]
    refusals: Refusals[CacheKey, NoToken]
    budgets: Budgets[str]
    proven: Known[tuple[str, str, bytes, str]]
    """(token endpoint, client id, secret digest, auth method) of secrets that obtained a
    token: they spend a budget of their own."""

    @classmethod
    def from_defaults(cls, *, capacity: int = GUARD_CAPACITY,
                      clock: Callable[[], float] = time.monotonic) -> Guards:
        """The bulkheads as the worker's defaults set them, on ``clock``."""
        return cls(
            backoffs=Backoffs(first=defaults.IDP_CLIENT_BACKOFF,
                              longest=defaults.IDP_CLIENT_BACKOFF_MAX, capacity=capacity,
                              clock=clock),
            refusals=Refusals(ttl=defaults.IDP_REFUSAL_MEMORY, capacity=capacity, clock=clock),
            budgets=Budgets(rate=defaults.IDP_CLIENT_RATE, burst=defaults.IDP_CLIENT_BURST,
                            capacity=capacity, clock=clock),
            proven=Known(capacity))

    def placed(self, query: TokenQuery, key: CacheKey | None) -> TokenQuery:
        """``query`` marked ``proven`` when its secret has obtained a token before (a
        named credential's budget is its own already)."""
        if query.credential or key is None or _secret_of(key) not in self.proven:
            return query
        return query._replace(proven=True)

    def proved(self, key: CacheKey, spent: TokenQuery | None = None) -> None:
        """A token was obtained for ``key``: its secret is proven. ``spent``: the query
        whose budget paid the call; a call an unproven secret paid is moved to the proven
        budget, so proving a secret grants no extra call."""
        self.proven.add(_secret_of(key))
        if spent is not None and not spent.proven and not spent.credential:
            self.budgets.give_back(spent.budget_key)
            self.budgets.take(spent._replace(proven=True).budget_key)

    def held(self, key: CacheKey, issuer: Issuer, client_id: str, metrics: Metrics
             ) -> NoToken | None:
        """Why the IdP is not asked for ``key`` now, or None: a remembered refusal, the
        key's back-off, the endpoint's circuit or the client's ``Retry-After``."""
        remembered = self.refusals.recall(key)
        if remembered is not None:
            metrics.bulkhead("refusal_remembered")
            return again(remembered.error, remembered.retry_after,
                         "remembered: not asked again")
        backed_off = self.backoffs.held(key)
        if backed_off is not None:
            metrics.bulkhead("backoff")
            return again(backed_off.error, backed_off.retry_after,
                         f"{backed_off.failures} failed fetches for this client: not asked "
                         "again")
        refused = issuer.refusal(client_id)
        if refused is not None:
            metrics.bulkhead("client_retry_after" if isinstance(refused, AskedToWait)
                             else "circuit_open")
        return refused

    def after_failure(self, key: CacheKey, error: NoToken, *, client_id: str,
                      credential: str | None) -> None:
        """Remember a refusal; back the key off after its own failure. Refusals made before
        any call (the circuit, a Retry-After running, the pool) and attempts the request's
        own deadline cut short are no evidence against the client; a 429 holds the whole
        client id at the issuer, for as long as it asked."""
        if isinstance(error, IdpRefused) and error.error_code in REMEMBERED_CODES:
            self.refusals.remember(key, error, tag=credential)
        elif isinstance(error, IdpError) and error.attempted and not (
                isinstance(error, IdpTimeout) and error.cut_short) and (
                error.status != TOO_MANY_REQUESTS):  # a 429 holds its client at the issuer
            pause = self.backoffs.failed(key, error, error.retry_after)
            log.info("client backed off after a failed fetch",
                     extra={"client_id": client_id, "error_code": error.error_code,
                            "backoff_s": round(pause, 2)})


def _secret_of(key: CacheKey) -> tuple[str, str, bytes, str]:
    """What identifies a secret (any scope) in a cache key."""
    return key.token_url, key.client_id, key.secret_digest, key.auth_method


def again(error: NoToken, seconds: float, how: str) -> NoToken:
    """A copy of a held error for one more request, saying for how long it is held."""
    held = copy.copy(error)
    held.retry_after = seconds
    held.add_context(f"{how} for {max(1, math.ceil(seconds))} s")  # as retry_after says
    return held
