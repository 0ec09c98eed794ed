"""Operator, account and user JWTs and ``.creds`` files for NATS operator mode, made with
``nkeys`` alone.

``nats-jwt`` from PyPI writes an account's ``signing_keys`` as an object where
nats-server wants a list, and the server rejects the account; a JWT is small enough to
build here: header, claims, Ed25519 signature (by nkeys) over ``header.claims``, all
base64url without padding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys

NO_LIMITS = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
             "wildcards": True, "conn": -1, "leaf": -1}


@dataclass(frozen=True)
class Identity:
    """An NKey pair as strings: ``seed`` (``S...``) and ``public`` (``O.../A.../U...``)."""

    seed: str
    public: str

    @classmethod
    def new(cls, prefix: int) -> Identity:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        pair = nkeys.from_seed(bytearray(seed))
        return cls(seed=seed.decode(), public=pair.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed.encode())).sign(data))


def new_operator() -> Identity:
    return Identity.new(nkeys.PREFIX_BYTE_OPERATOR)


def new_account() -> Identity:
    return Identity.new(nkeys.PREFIX_BYTE_ACCOUNT)


def new_user() -> Identity:
    return Identity.new(nkeys.PREFIX_BYTE_USER)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode_jwt(claims: dict[str, Any], issuer: Identity) -> str:
    """Sign ``claims`` (``jti``, ``iat`` and ``iss`` filled in) as ``issuer``."""
    body = {"iat": int(time.time()), "iss": issuer.public, **claims}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


def operator_jwt(operator: Identity, name: str = "test-operator") -> str:
    return encode_jwt({"sub": operator.public, "name": name,
                       "nats": {"type": "operator", "version": 2}}, operator)


def account_jwt(account: Identity, operator: Identity, name: str = "TOKENS", *,
                revoked: tuple[str, ...] = ()) -> str:
    """``revoked``: public keys of users whose JWTs issued until now (and a minute on) the
    server must refuse, as ``nsc revocations add-user`` records them."""
    nats: dict[str, Any] = {"limits": NO_LIMITS, "default_permissions": {"pub": {}, "sub": {}},
                            "type": "account", "version": 2}
    if revoked:
        nats["revocations"] = {user: int(time.time()) + 60 for user in revoked}
    return encode_jwt({"sub": account.public, "name": name, "nats": nats}, operator)


def user_jwt(user: Identity, account: Identity, name: str = "user", *,
             pub: dict[str, list[str]] | None = None, sub: dict[str, list[str]] | None = None,
             resp: dict[str, int] | None = None, expires: int | None = None) -> str:
    """A user of ``account``; ``pub``/``sub`` are ``{"allow": [...], "deny": [...]}``,
    ``resp`` is ``{"max": 1}`` (nsc's ``--allow-pub-response``)."""
    nats: dict[str, Any] = {"pub": pub or {}, "sub": sub or {}, "subs": -1, "data": -1,
                            "payload": -1, "type": "user", "version": 2}
    if resp is not None:
        nats["resp"] = resp
    claims: dict[str, Any] = {"sub": user.public, "name": name, "nats": nats}
    if expires is not None:
        claims["exp"] = expires
    return encode_jwt(claims, account)


def creds_text(jwt: str, seed: str) -> str:
    """A ``.creds`` file exactly as ``nsc generate creds`` writes it."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass
class OperatorMode:
    """One operator with one account, ready to write a nats-server config and user creds."""

    operator: Identity = field(default_factory=new_operator)
    account: Identity = field(default_factory=new_account)

    def server_config(self, *, revoked: tuple[str, ...] = ()) -> str:
        """Operator mode with the in-memory resolver: no nsc, no account server."""
        account = account_jwt(self.account, self.operator, revoked=revoked)
        return (f"operator: {operator_jwt(self.operator)}\n"
                "resolver: MEMORY\n"
                f"resolver_preload: {{\n  {self.account.public}: {account}\n}}\n")

    def user_creds(self, directory: Path, name: str, **permissions: Any) -> tuple[Path, Identity]:
        """Write ``<directory>/<name>.creds`` for a new user of this account."""
        user = new_user()
        path = directory / f"{name}.creds"
        path.write_text(creds_text(user_jwt(user, self.account, name, **permissions), user.seed))
        return path, user
