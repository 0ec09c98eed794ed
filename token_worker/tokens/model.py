"""The token model: a token as the IdP issued it, and what the broker needs of an issuer.

:class:`IssuedToken` is what every tier holds (the local cache, the shared tier, the
requester's cache) and what the IdP client returns. :class:`Issuer` is the broker's view of
whoever issues tokens (:class:`~token_worker.idp.resilience.ResilientIdp` in a worker, a
fake in tests): the broker depends on this protocol, never on the IdP client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["IssuedToken", "Issuer"]


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

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    deadline: float | None = None,
                    auth_method: str | None = None) -> IssuedToken:
        """A token for this client, by ``deadline`` (a ``time.monotonic()`` value) if one
        is given; raises :class:`~token_worker.errors.IdpError`."""
        ...  # pragma: no cover
