"""Sealing the shared tier's entries: the keys a fleet derives from its key file.

From the key file (at least 32 bytes, the same Secret on every replica) HKDF derives three
keys: one names entries, one digests client secrets, one seals values. A KV key is an
HMAC-SHA256 of the token endpoint, client id, secret digest, sorted scope set and auth
method (hex), so no client id, secret or token appears in the bucket, its subjects or its
stream. A value is sealed with AES-256-GCM under a random 96-bit nonce, with its KV key as
associated data: a value copied to another key does not open.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from token_worker.secret import MIN_KEY_BYTES
from token_worker.tokens.grant import Grant

__all__ = ["NONCE_BYTES", "SEAL_VERSION", "FleetKey", "Unsealable"]


SEAL_VERSION = b"\x01"
"""First byte of a sealed value: the format (AES-256-GCM, 12-byte nonce, JSON inside)."""
NONCE_BYTES = 12


class Unsealable(Exception):
    """A sealed value that does not open under this key (or is not a sealed value)."""


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"token-worker/shared-cache/v1/" + label).derive(secret)


def _fields(*parts: bytes) -> bytes:
    """Length-prefixed fields: no two different key tuples encode alike."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


class FleetKey:
    """The keys derived from one key file: naming, secret digests and sealing."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ValueError(f"a fleet key needs at least {MIN_KEY_BYTES} bytes")
        self._name_key = _derive(secret, b"name")
        self._secret_key = _derive(secret, b"client-secret")
        self._aead = AESGCM(_derive(secret, b"seal"))

    def __repr__(self) -> str:
        return "FleetKey(********)"

    def name(self, token_url: str, client_id: str, client_secret: str,
             scopes: tuple[str, ...], auth_method: str) -> str:
        """The hex digest naming a key's entries in the bucket."""
        secret_digest = hmac.digest(self._secret_key, client_secret.encode(), hashlib.sha256)
        return self._name(token_url, client_id, secret_digest, scopes, auth_method)

    def name_for_grant(self, token_url: str, grant: Grant, scopes: tuple[str, ...]) -> str:
        """The name of a grant's entries: its proof (secret, key or certificate), resources
        and audience enter only the grant's digest under this fleet's key."""
        return self._name(token_url, grant.client_id, grant.digest(key=self._secret_key),
                          scopes, grant.auth.method)

    def _name(self, token_url: str, client_id: str, proof: bytes, scopes: tuple[str, ...],
              auth_method: str) -> str:
        data = _fields(token_url.encode(), client_id.encode(), proof,
                       " ".join(scopes).encode(), auth_method.encode())
        return hmac.digest(self._name_key, data, hashlib.sha256).hex()

    def seal(self, kv_key: str, plaintext: bytes) -> bytes:
        """``plaintext`` encrypted and bound to ``kv_key`` (its associated data)."""
        nonce = os.urandom(NONCE_BYTES)
        return SEAL_VERSION + nonce + self._aead.encrypt(nonce, plaintext, _aad(kv_key))

    def open(self, kv_key: str, sealed: bytes) -> bytes:
        """The plaintext of a value sealed for ``kv_key``; :class:`Unsealable` otherwise."""
        if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != SEAL_VERSION:
            raise Unsealable("not a sealed value")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], _aad(kv_key))
        except InvalidTag:
            raise Unsealable("the value does not open under this key") from None


def _aad(kv_key: str) -> bytes:
    return b"token-worker/shared-cache/v1\x00" + kv_key.encode()
