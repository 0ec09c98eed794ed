"""NATS authentication with NKeys: a ``.creds`` file (user JWT plus seed) or an NKey seed file.

A server that uses NKeys or JWTs (operator mode, Synadia Cloud, ``authorization { users =
[{nkey: U...}] }``) puts a ``nonce`` in its INFO and wants the CONNECT to prove the
client holds the user's seed: ``sig`` is the Ed25519 signature of the nonce (base64url,
as nats.go sends it), with ``jwt`` (creds file) or ``nkey`` (the public key, seed file).
Signing is the ``nkeys`` library's job; nothing here does Ed25519 by hand.

The file is read again at every connect, so a rotated file is used on the next
reconnect; :func:`load_creds_file` / :func:`load_nkey_file` read it once at config-load
time to fail early (exit 2) on a malformed file. The seed lives in a ``bytearray`` only
for the moment of signing and is zeroed after; the JWT and the seed never appear in an
error message, ``repr`` or ``str``. Files are read through the bounded, non-blocking
reader of :mod:`token_worker.secret` (a FIFO or a device is refused, never waited on).

A foundation module: the config's parsers check these files at load time (exit 2, naming
the setting), and the NATS handshake signs with them at every connect.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nkeys  # type: ignore[import-untyped]

from token_worker.errors import NatsCredentialsError, RefusedFile
from token_worker.logs import redact_secrets
from token_worker.secret import read_regular_file, wipe

MAX_FILE_BYTES = 64 * 1024
"""A creds file is about 1 KiB; anything far bigger is not one (and is not read whole)."""

_BLOCK = re.compile(
    rb"-{3,}[^\n]*BEGIN ([A-Z ]+?)-{3,}[ \t]*\r?\n\s*([A-Za-z0-9_.=-]+)\s*\r?\n[ \t]*-{3,}[^\n]*END"
)
"""One armoured block of a creds file, as nsc writes it (and nats.go parses it)."""


class NatsAuth(Protocol):
    """What the handshake's CONNECT builder needs from an NKey-based credential."""

    def connect_auth_fields(self, server_info: Mapping[str, Any]) -> dict[str, str]:
        """The CONNECT fields that answer this INFO's nonce."""
        ...  # pragma: no cover

    def describe(self) -> str:
        """A line for logs: the file and the public identity, no secret."""
        ...  # pragma: no cover


class AuthFields(dict[str, str]):
    """CONNECT fields (``jwt``, ``nkey``, ``sig``) whose ``repr`` hides the JWT and the
    signature, in case the dict itself ends up in a log line or a traceback."""

    def __repr__(self) -> str:
        shown = {key: (value if key == "nkey" else "********") for key, value in self.items()}
        return f"AuthFields({shown!r})"

    __str__ = __repr__


def _read_bytes(path: Path) -> bytearray:
    """The file's bytes in a bytearray (so the seed can be zeroed), or a typed error. Read
    through the bounded, non-blocking reader: a FIFO or device never hangs a connect."""
    try:
        return read_regular_file(path, MAX_FILE_BYTES, wipeable=True)
    except RefusedFile as error:
        if error.directory:
            raise NatsCredentialsError(path, "is a directory, not a file") from None
        if error.size is not None:
            raise NatsCredentialsError(
                path, f"file is {error.size} bytes, not a credentials file") from None
        raise NatsCredentialsError(path, "is not a regular file") from None
    except FileNotFoundError:
        raise NatsCredentialsError(path, "file does not exist") from None
    except IsADirectoryError:
        raise NatsCredentialsError(path, "is a directory, not a file") from None
    except PermissionError:
        raise NatsCredentialsError(path, "file is not readable (permission denied)") from None
    except OSError as error:
        raise NatsCredentialsError(path, f"cannot read the file ({error.strerror})") from None


def _b64url_json(part: bytes) -> Any:
    padded = part + b"=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded))


def _signed_nonce(seed: bytearray, nonce: str) -> str:
    """base64url (no padding) Ed25519 signature of the nonce, by the nkeys library."""
    pair = nkeys.from_seed(seed)
    try:
        signature: bytes = pair.sign(nonce.encode())
    finally:
        pair.wipe()
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def _checksum_ok(seed: bytearray) -> bool:
    """The seed's CRC16 (which ``nkeys.from_seed`` does not check) matches its bytes, so a
    mistyped or truncated seed fails here, not as an Authorization Violation later."""
    try:
        raw = bytearray(base64.b32decode(bytes(seed) + b"=" * (-len(seed) % 8)))
    except (binascii.Error, ValueError):
        return False
    try:
        return len(raw) > 2 and bytes(nkeys.crc16_checksum(raw[:-2])) == bytes(raw[-2:])
    finally:
        wipe(raw)


def _seed_public_key(path: Path, seed: bytearray, *, role: str) -> str:
    """The seed's public key (``U...`` for a user), or why the seed is not usable."""
    if not _checksum_ok(seed):
        raise NatsCredentialsError(path, f"the {role} is not a valid NKey seed (checksum)")
    try:
        pair = nkeys.from_seed(seed)
        public = bytes(pair.public_key).decode()
        pair.wipe()
    except (nkeys.NkeysError, binascii.Error, ValueError, TypeError):
        raise NatsCredentialsError(path, f"the {role} is not a valid NKey seed") from None
    if not public.startswith("U"):
        raise NatsCredentialsError(path, f"the {role} is not a user seed (it must start 'SU')")
    return public


@dataclass(frozen=True)
class UserJwtInfo:
    """What a user JWT says about itself; public values only."""

    user: str
    """The user's public NKey (``U...``), the JWT's ``sub``."""
    issuer: str
    """The account (``A...``) or account signing key that signed it."""
    name: str
    expires_at: int | None
    """Unix time of the ``exp`` claim, or None when it never expires."""


def _jwt_info(path: Path, jwt: bytes) -> UserJwtInfo:
    parts = jwt.split(b".")
    if len(parts) != 3:
        raise NatsCredentialsError(path, "the user JWT is not a JWT (expected three parts)")
    try:
        header, claims = _b64url_json(parts[0]), _b64url_json(parts[1])
    except (ValueError, binascii.Error):
        raise NatsCredentialsError(path, "the user JWT does not decode (base64url JSON)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise NatsCredentialsError(path, "the user JWT does not decode (base64url JSON)")
    if str(header.get("alg", "")).lower() not in ("ed25519-nkey", "ed25519"):
        raise NatsCredentialsError(path, "the user JWT is not signed with an NKey (alg)")
    nats = claims.get("nats") if isinstance(claims.get("nats"), dict) else {}
    kind = nats.get("type", "user") if isinstance(nats, dict) else "user"
    subject = claims.get("sub")
    if kind != "user" or not isinstance(subject, str) or not subject.startswith("U"):
        raise NatsCredentialsError(path, "the JWT is not a user JWT")
    expires = claims.get("exp")
    return UserJwtInfo(user=subject, issuer=str(claims.get("iss", "")),
                       name=str(claims.get("name", "")),
                       expires_at=int(expires) if isinstance(expires, (int, float)) else None)


def _creds_blocks(path: Path, content: bytearray) -> tuple[bytearray, bytearray]:
    """The JWT and the seed blocks of a creds file, each in its own bytearray."""
    if not content.strip():
        raise NatsCredentialsError(path, "file is empty")
    jwt: bytearray | None = None
    seed: bytearray | None = None
    for match in _BLOCK.finditer(content):
        label = match.group(1).strip()
        if label.endswith(b"JWT") and jwt is None:
            jwt = content[match.start(2):match.end(2)]
        elif label.endswith(b"SEED") and seed is None:
            seed = content[match.start(2):match.end(2)]
    if jwt is None:
        raise NatsCredentialsError(path, "no 'BEGIN NATS USER JWT' block (not a .creds file)")
    if seed is None:
        raise NatsCredentialsError(path, "no 'BEGIN USER NKEY SEED' block (not a .creds file)")
    return jwt, seed


class CredsFileAuth:
    """A ``.creds`` file (``nsc generate creds``): sends ``jwt`` and the nonce's ``sig``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def read(self) -> UserJwtInfo:
        """Read and check the file: both blocks present, the JWT a user JWT, the seed a
        user seed whose public key is the JWT's subject. Returns the JWT's public facts."""
        info, _ = self._read_and_sign(None)
        return info

    def connect_auth_fields(self, server_info: Mapping[str, Any]) -> dict[str, str]:
        """``{"jwt", "sig"}`` for this INFO, from the file as it is now (checked as
        :meth:`read` checks it, so a bad rotated file fails this connect attempt clearly).

        A server that asks no nonce uses neither NKeys nor JWTs: the JWT then stays off the
        wire and the result is empty.
        """
        nonce = server_info.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            return AuthFields()
        _, fields = self._read_and_sign(nonce)
        return fields

    def _read_and_sign(self, nonce: str | None) -> tuple[UserJwtInfo, AuthFields]:
        content = _read_bytes(self.path)
        try:
            jwt, seed = _creds_blocks(self.path, content)
            try:
                info = _jwt_info(self.path, bytes(jwt))
                public = _seed_public_key(self.path, seed, role="seed")
                if public != info.user:
                    raise NatsCredentialsError(
                        self.path, f"the seed is for user {public}, the JWT for user {info.user}")
                if nonce is None:
                    return info, AuthFields()
                signature = _signed_nonce(seed, nonce)
            finally:
                wipe(seed)
        finally:
            wipe(content)
        text = jwt.decode("ascii")
        redact_secrets([text])
        return info, AuthFields(jwt=text, sig=signature)

    def describe(self) -> str:
        return f"creds file {self.path}"

    def __repr__(self) -> str:
        return f"CredsFileAuth(path={str(self.path)!r})"

    __str__ = __repr__


class NkeySeedFileAuth:
    """A file holding only a user NKey seed: sends ``nkey`` (public key) and ``sig``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _seed(self) -> bytearray:
        content = _read_bytes(self.path)
        try:
            if not content.strip():
                raise NatsCredentialsError(self.path, "file is empty")
            if b"BEGIN" in content:
                for match in _BLOCK.finditer(content):
                    if match.group(1).strip().endswith(b"SEED"):
                        return content[match.start(2):match.end(2)]
                raise NatsCredentialsError(self.path, "no NKey seed block in the file")
            words = content.split()
            try:
                if len(words) != 1:
                    raise NatsCredentialsError(self.path, "expected one NKey seed on one line")
                return bytearray(words[0])
            finally:
                for word in words:
                    wipe(word)
        finally:
            wipe(content)

    def read(self) -> str:
        """Read and check the file; return the user's public NKey (``U...``)."""
        seed = self._seed()
        try:
            return _seed_public_key(self.path, seed, role="file's content")
        finally:
            wipe(seed)

    def connect_auth_fields(self, server_info: Mapping[str, Any]) -> dict[str, str]:
        """``{"nkey", "sig"}`` for this INFO, from the file as it is now (empty without a
        nonce: such a server does not use NKeys)."""
        nonce = server_info.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            return AuthFields()
        seed = self._seed()
        try:
            public = _seed_public_key(self.path, seed, role="file's content")
            signature = _signed_nonce(seed, nonce)
        finally:
            wipe(seed)
        return AuthFields(nkey=public, sig=signature)

    def describe(self) -> str:
        return f"NKey seed file {self.path}"

    def __repr__(self) -> str:
        return f"NkeySeedFileAuth(path={str(self.path)!r})"

    __str__ = __repr__


def load_creds_file(path: Path | str) -> CredsFileAuth:
    """A checked :class:`CredsFileAuth` (config-load time); raises NatsCredentialsError."""
    auth = CredsFileAuth(path)
    auth.read()
    return auth


def load_nkey_file(path: Path | str) -> NkeySeedFileAuth:
    """A checked :class:`NkeySeedFileAuth` (config-load time); raises NatsCredentialsError."""
    auth = NkeySeedFileAuth(path)
    auth.read()
    return auth
