"""HTTP within a deadline: urllib3 pools whose responses read headers and body by one clock.

Each attempt is bounded as a whole: its timeout covers connect, headers and body, however
slowly the bytes trickle (each socket read waits only for the time left:
:class:`_DeadlineReader`), where urllib3's own read timeout is per read. The body is read
in chunks up to ``idp.maxResponseBytes`` (a larger ``Content-Length`` is refused unread),
and a redirect's body is not read at all (:func:`read_answer`).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["POOL_CLASSES", "Answer", "attempt_deadline", "read_answer"]

READ_CHUNK = 64 * 1024
"""Bytes read from a body at a time."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer read within its bounds; ``content`` is None when it was too large or
    not read (a redirect)."""

    status: int
    headers: urllib3.HTTPHeaderDict
    content: bytes | None


_attempt = threading.local()
"""``deadline``: the monotonic end of the HTTP attempt running on this thread, if any."""


@contextlib.contextmanager
def attempt_deadline(deadline: float) -> Iterator[None]:
    """Bound every HTTP response read on this thread in the block by ``deadline`` (a
    ``time.monotonic()`` value): headers and body alike."""
    _attempt.deadline = deadline
    try:
        yield
    finally:
        _attempt.deadline = None


class _DeadlineReader(io.RawIOBase):
    """A socket's reading end that gives up at a deadline however slowly bytes trickle:
    each read waits only for the time left (urllib3's read timeout is per read)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # holds the socket open, as makefile does
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the attempt's time is up")  # socket.timeout: urllib3 knows it
        self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client's response reads through: the socket, bounded by a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str, *_args: Any, **_kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _BoundedResponse(http.client.HTTPResponse):
    """http.client's response, reading headers and body within the attempt's deadline."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        deadline: float | None = getattr(_attempt, "deadline", None)
        if deadline is not None:
            sock = cast(socket.socket, _DeadlineSocket(sock, deadline))
        super().__init__(sock, *args, **kwargs)


class _BoundedConnection(HTTPConnection):
    response_class = _BoundedResponse


class _BoundedHttpsConnection(HTTPSConnection):
    response_class = _BoundedResponse


class BoundedPool(HTTPConnectionPool):
    ConnectionCls = _BoundedConnection


class BoundedHttpsPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHttpsConnection


POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {"http": BoundedPool,
                                                     "https": BoundedHttpsPool}
"""urllib3's pool classes for a ``PoolManager`` whose responses read within the deadline."""


def read_answer(response: urllib3.BaseHTTPResponse, max_bytes: int) -> Answer:
    """Read the body in chunks up to ``max_bytes``; a redirect's body is not read. The
    connection goes back to the pool only when the body was read to its end."""
    content: bytes | None = None
    try:
        if not 300 <= response.status < 400:
            content = _read_capped(response, max_bytes)
    finally:
        if content is None:
            response.close()  # unread bytes left: the connection cannot be reused
        response.release_conn()
    return Answer(response.status, response.headers, content)


def _read_capped(response: urllib3.BaseHTTPResponse, max_bytes: int) -> bytes | None:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and not response.headers.get("Content-Encoding"):
        if int(length) > max_bytes:
            return None  # refused without reading a byte of it
        return response.read()  # exactly Content-Length bytes, at most max_bytes
    chunks: list[bytes] = []
    total = 0
    while chunk := response.read(READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
