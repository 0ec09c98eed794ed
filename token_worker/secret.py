"""Secrets and the files they come from: the :class:`Secret` type and one bounded reader.

Three kinds of secret file are read: a named credential's values (a mounted Kubernetes
Secret, :mod:`token_worker.serve.credentials`), the shared tier's key file
(:func:`load_key_file`) and a NATS ``.creds`` or NKey seed file
(:mod:`token_worker.nkey_auth`). All of them go through :func:`read_regular_file`: opened
non-blocking, so a FIFO or a device never hangs the reader, then checked with ``fstat``,
so anything but a regular file, or a file larger than the caller's limit, is refused
unread (:class:`~token_worker.errors.RefusedFile`, naming the file, never its content).

This module is part of the foundation: it imports nothing of token-worker but its errors,
so the config (which checks key and seed files at load time, exit 2 naming the setting)
and every layer above it can use it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal, overload

from token_worker.errors import ConfigError, RefusedFile

MIN_KEY_BYTES = 32
"""Shortest key file accepted: 256 bits of secret for the derived keys."""
MAX_KEY_FILE_BYTES = 4096
"""A key file is a few dozen bytes; a bigger one (or ``/dev/zero``) is refused unread."""


class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@overload
def read_regular_file(path: Path | str, limit: int, *, label: str | None = None,
                      wipeable: Literal[False] = False) -> bytes: ...


@overload
def read_regular_file(path: Path | str, limit: int, *, label: str | None = None,
                      wipeable: Literal[True]) -> bytearray: ...


def read_regular_file(path: Path | str, limit: int, *, label: str | None = None,
                      wipeable: bool = False) -> bytes | bytearray:
    """At most ``limit`` bytes of a regular file. Opened non-blocking, so a FIFO or device
    can never hang the caller, then checked with fstat: anything but a regular file, or a
    file larger than ``limit``, raises :class:`~token_worker.errors.RefusedFile` (a
    ValueError naming the file, never its content) without being read (``label`` names
    it, default its file name). FileNotFoundError and other OSErrors pass through.

    ``wipeable`` returns a ``bytearray`` read straight from the file into memory the
    caller can zero after use (a seed, a key): no immutable copy of the content is made.
    """
    name = label or Path(path).name
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile(f"{name} is not a regular file",
                              directory=stat.S_ISDIR(info.st_mode))
        if info.st_size > limit:
            raise RefusedFile(f"{name} is larger than {limit} bytes", size=info.st_size)
        if wipeable:
            return _read_into(descriptor, min(info.st_size, limit), limit, name)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(descriptor, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > limit:
        raise RefusedFile(f"{name} is larger than {limit} bytes", size=size)
    return b"".join(chunks)


def _read_into(descriptor: int, expected: int, limit: int, name: str) -> bytearray:
    """The file's bytes read into one bytearray (one byte of room more than ``expected``,
    to see a file that grew). Memory given up on the way is zeroed first."""
    buffer = bytearray(expected + 1)
    size = 0
    while True:
        if size == len(buffer):
            if size > limit:
                wipe(buffer)
                raise RefusedFile(f"{name} is larger than {limit} bytes", size=size)
            bigger = bytearray(min(2 * size, limit + 1))
            bigger[:size] = buffer
            wipe(buffer)
            buffer = bigger
        read = os.readv(descriptor, [memoryview(buffer)[size:]])
        if not read:
            break
        size += read
    if 2 * size < len(buffer):  # the file shrank: a big shrink may move the bytes
        exact = bytearray(size)
        exact[:] = memoryview(buffer)[:size]
        wipe(buffer)
        return exact
    del buffer[size:]  # shrinks in place (a byte or a few): nothing is copied
    return buffer


def wipe(buffer: bytearray) -> None:
    """Overwrite ``buffer`` with zeros (a seed or key held only for a moment)."""
    buffer[:] = bytes(len(buffer))


def load_key_file(path: str | Path, *, field: str = "cache.shared.keyFile") -> bytes:
    """The shared tier's key file's bytes, as they are (every replica mounts the same
    Secret). Only a regular file of at most :data:`MAX_KEY_FILE_BYTES` is read, opened
    non-blocking: a FIFO or device is a ConfigError, never a hang or an endless read. A
    file shorter than :data:`MIN_KEY_BYTES` is a ConfigError too (naming the setting,
    never the bytes)."""
    try:
        data = read_regular_file(path, MAX_KEY_FILE_BYTES, label="the key file")
    except OSError as error:
        raise ConfigError(field, str(path), f"cannot read the key file: {error.strerror}"
                          ) from None
    except ValueError as error:
        raise ConfigError(field, str(path), str(error)) from None
    if len(data) < MIN_KEY_BYTES:
        raise ConfigError(field, str(path), f"the key file holds {len(data)} bytes; at "
                          f"least {MIN_KEY_BYTES} are needed")
    return data
