"""The token model: a token as the IdP issued it, what a request asks the broker for and
what it answers, what the broker needs of an issuer, and where it runs the work that needs
a thread.

:class:`IssuedToken` is what every tier holds (the local cache, the shared tier, the
requester's cache) and what the IdP client returns. :class:`Issuer` is the broker's view of
whoever issues tokens (:class:`~token_worker.idp.resilience.ResilientIdp` in a worker, a
fake in tests): the broker depends on this protocol, never on the IdP client.
:class:`WorkQueue` is the broker's view of the worker's pool
(:class:`~token_worker.serve.pool.BoundedPool`): bounded, refusing at once when full;
:class:`InlineWork` the one for callers outside a worker. :class:`TokenQuery` is what a
request asks for, :class:`Answer` the token the broker gives back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from token_worker.errors import NoToken

if TYPE_CHECKING:
    from token_worker.tokens.grant import Grant

__all__ = ["FROM_CACHE", "FROM_IDP", "Answer", "InlineWork", "IssuedToken", "Issuer", "Outcome",
           "TokenQuery", "WorkQueue"]


@dataclass(frozen=True)
class IssuedToken:
    """An access token as the IdP issued it, with the moment it was issued."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str
    issued_at: float
    """``time.time()`` when the IdP's answer arrived."""

    def __repr__(self) -> str:
        return (f"IssuedToken(token_type={self.token_type!r}, expires_in={self.expires_in}, "
                f"scope={self.scope!r}, access_token='********')")


class Issuer(Protocol):
    """What :class:`~token_worker.tokens.broker.TokenBroker` asks of the token issuer."""

    @property
    def token_url(self) -> str:
        """The token endpoint (after discovery, when configured: may do I/O once)."""
        ...  # pragma: no cover

    @property
    def known_token_url(self) -> str:
        """The token endpoint if known without I/O, else "" (discovery still to come)."""
        ...  # pragma: no cover

    @property
    def failing_fast(self) -> bool:
        """True while every fetch would fail at once, without a call (no refresh then)."""
        ...  # pragma: no cover

    def refusal(self, client_id: str) -> NoToken | None:
        """Why a fetch for ``client_id`` would fail without a call now (the endpoint's
        circuit open, the client's ``Retry-After`` running), or None. No I/O."""
        ...  # pragma: no cover

    def time_needed(self) -> float:
        """The least time, in seconds, a fetch should start with to have a fair chance."""
        ...  # pragma: no cover

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    deadline: float | None = None, auth_method: str | None = None,
                    grant: Grant | None = None) -> IssuedToken:
        """A token for this client (sending ``grant`` when one is given: a key or a
        certificate, resources, an audience, a token endpoint of its own), by ``deadline``
        (a ``time.monotonic()`` value) if one is given; raises a
        :class:`~token_worker.errors.NoToken` (an :class:`~token_worker.errors.IdpError`,
        or ``overloaded`` at the call ceiling)."""
        ...  # pragma: no cover


class WorkQueue(Protocol):
    """Where the broker runs what needs a thread (IdP calls, shared-tier reads)."""

    @property
    def closed(self) -> bool:
        """True once the worker stops: nothing more is admitted."""
        ...  # pragma: no cover

    @property
    def workers(self) -> int:
        """Threads that run the work."""
        ...  # pragma: no cover

    def try_submit(self, run: Callable[[], None], drop: Callable[[], None]) -> bool:
        """Queue ``run`` for a thread; False, and nothing queued, when full or closed.
        ``drop`` is called instead of ``run`` if the queue closes before it starts."""
        ...  # pragma: no cover


FROM_CACHE = "cache"
FROM_IDP = "idp"
"""Where an :class:`Answer`'s token came from (a reply's ``token_source``)."""


class Answer(NamedTuple):
    """A token for a requester: what to send and where it came from."""

    token: IssuedToken
    expires_in: int
    """Seconds left now (recomputed for cached tokens)."""
    source: str
    """``cache`` or ``idp`` (the reply's ``token_source``)."""
    fetch_refused: str = ""
    """Why a fresh token asked for (``skip_cache``) was not fetched and this cached one is
    served instead (``rate_limited``), else ""."""


class TokenQuery(NamedTuple):
    """What a request asks for."""

    client_id: str
    client_secret: str
    scope: str
    auth_method: str | None = None
    """A named credential's own ``client_secret_post``/``_basic``; None: the worker's."""
    credential: str | None = None
    """The named credential asked for (its budget and remembered refusals are its own);
    None for a request that carries its own secret."""
    grant: Grant | None = None
    """Everything the call must send when a secret is not all (a key or a certificate,
    resources, an audience, a token endpoint or CA of its own); None: a secret method."""
    proven: bool = False
    """The request's secret has obtained a token before (set by the broker's bulkheads):
    it spends the budget of the client id's proven secrets, apart from unproven ones."""

    def __repr__(self) -> str:
        return f"TokenQuery(client_id={self.client_id!r}, scope={self.scope!r})"

    @property
    def budget_key(self) -> str:
        """Whose call budget a fetch spends: the credential's, or the client id's (the one
        its proven secrets share, or the one its unproven secrets share)."""
        if self.credential:
            return f"credential:{self.credential}"
        return f"proven:{self.client_id}" if self.proven else f"client:{self.client_id}"


Outcome = Callable[["Answer | None", "BaseException | None"], None]
"""Called once with a flight's outcome: an answer, or the error (a :class:`NoToken`, or
anything a bug raised)."""


class InlineWork:
    """Runs each task at once on the thread that submits it: the broker's work queue for
    callers outside a worker (no pool, no bound)."""

    closed = False
    workers = 1

    def try_submit(self, run: Callable[[], None], drop: Callable[[], None]) -> bool:
        run()
        return True
