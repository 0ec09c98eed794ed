"""Client assertions for ``private_key_jwt`` (RFC 7523 2.2, OpenID Connect Core 9).

One assertion per token call, signed by PyJWT with the credential's key (RS256 for RSA,
ES256 for EC P-256): ``iss`` = ``sub`` = the client id, ``aud`` the audience the caller
names (the token endpoint exactly as it is called, or the issuer where the endpoint came
from its discovery), a random ``jti`` (so the IdP can refuse a replay), ``iat`` now and
``exp`` :data:`LIFETIME` seconds later. An assertion is never kept, logged or cached: it is
made for one request and dropped with it; errors from signing name the key's kind only.
"""

from __future__ import annotations

import secrets
import time

import jwt

from token_worker.tokens.keys import PrivateKey

__all__ = ["ASSERTION_TYPE", "LIFETIME", "client_assertion"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""The ``client_assertion_type`` of a JWT assertion (RFC 7523 2.2)."""
LIFETIME = 60
"""Seconds from ``iat`` to ``exp``: at most a minute, so a captured assertion is soon
worthless, and time enough for a slow IdP round trip."""


def client_assertion(client_id: str, audience: str, key: PrivateKey, *,
                     key_id: str | None = None, now: float | None = None) -> str:
    """A signed client assertion for one token request (compact JWS). ``now`` (a
    ``time.time()`` value) is injectable for tests. Raises ValueError for a key that
    cannot sign assertions (naming its kind, never its bytes)."""
    if key.algorithm is None:
        raise ValueError(f"an {key.kind} key cannot sign a client assertion")
    issued = int(time.time() if now is None else now)
    claims = {"iss": client_id, "sub": client_id, "aud": audience,
              "jti": secrets.token_urlsafe(24), "iat": issued, "exp": issued + LIFETIME}
    headers = {"kid": key_id} if key_id else None
    return jwt.encode(claims, key.reveal(), algorithm=key.algorithm, headers=headers)
