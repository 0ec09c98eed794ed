"""The link to one server: the current socket, the connection's state, and the send path.

:class:`SocketLink` is the first of the three layers of a
:class:`~token_worker.nats.connection.NatsConnection`: what any thread may do with the
socket of the moment (publish, flush, ping, shut it) and how a socket ends. The second,
:mod:`token_worker.nats.reader`, is the reader thread's work on that socket; the third,
:mod:`token_worker.nats.connection`, its life from connect to close, and the public API.

Locks: ``_send_lock`` serialises writes and is held across ``sendall``; ``_sock_lock``
guards which socket is current and is never held across I/O. Keep-alive and ``close()``
take only the second, so a write blocked on a peer that stopped reading can neither hide
a stale connection nor hang a close: they shut the socket, which wakes the writer. What is
published while reconnecting waits in the reconnect buffer
(:mod:`token_worker.nats.reconnect_buffer`) for the next server.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping

from token_worker.config import NatsConfig
from token_worker.errors import NatsConnectionError, NotConnected, PayloadTooLarge
from token_worker.nats import protocol
from token_worker.nats.keepalive import KeepAlive
from token_worker.nats.reconnect_buffer import PendingWrites
from token_worker.nats.subscriptions import SubscribeCheck

__all__ = ["SocketLink", "State", "shut"]

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``: assumed until a server says otherwise."""
RETIRE_WAIT = 5.0
"""Longest the reader waits for a writer (woken by the shut socket) before closing it."""


class State(enum.Enum):
    """Where the connection is in its life."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class SocketLink:
    """The socket of the moment and the send path (see the module docstring)."""

    def __init__(self, config: NatsConfig) -> None:
        self._config = config
        self._send_lock = threading.Lock()
        self._sock_lock = threading.Lock()
        self._sock: socket.socket | None = None
        """The socket writes go to; None while there is none (or it was shut)."""
        self._installed: socket.socket | None = None
        """The socket the reader serves, until its file descriptor is closed."""
        self._handshake_sock: socket.socket | None = None
        self._pending_pongs: deque[threading.Event | SubscribeCheck | None] = deque()
        self._closing = threading.Event()
        self._reader_ident = 0
        self._outbox: list[bytes] | None = None
        self._outbox_largest = 0
        self._pending = PendingWrites(config.reconnect_buffer_size)
        self._keepalive = KeepAlive(config.ping_interval, config.max_pings_out)
        self._loss_reason = ""
        self._state = State.DISCONNECTED
        self.max_payload = DEFAULT_MAX_PAYLOAD
        """The largest message the current server accepts (its INFO ``max_payload``,
        refreshed on every connect and asynchronous INFO; 1 MiB before the first). A plain
        attribute: the hot path reads it for every reply."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes published while reconnecting that wait for the next server."""
        return self._pending.size

    def publish(self, subject: str, payload: bytes, reply: str = "", *,
                headers: Mapping[str, str] | None = None) -> None:
        """Send one message (with ``headers``, an HPUB: the connection announced headers).

        Raises :class:`PayloadTooLarge` (never buffered) if the server would refuse it
        (headers count towards its ``max_payload``). While reconnecting, the message waits
        in the reconnect buffer for the next server (``nats.reconnectBufSize``), so a reply
        finished during a short outage still reaches its requester;
        :class:`NotConnected` only when it cannot wait.

        Called from a subscription callback (the reader thread), the message joins the
        others published while handling the same read, and all go out in one write.
        """
        block = protocol.encode_headers(headers) if headers else b""
        size = len(block) + len(payload)
        if size > self.max_payload:
            raise PayloadTooLarge(size, self.max_payload)
        self._send(protocol.hpub(subject, block, payload, reply) if headers
                   else protocol.pub(subject, payload, reply), size)

    def publish_reply(self, subject: str, payload: bytes) -> None:
        """:meth:`publish` (no headers, no reply subject) of a reply to a message this
        connection received, to that message's reply subject (not empty: the caller
        checked). The hot path's publish: only what would split the PUB line is looked for
        (a server may pass a bare CR or LF on in the MSG line's token) and refused with
        :class:`BadSubject`."""
        if protocol.holds_separator(subject):
            protocol.encode_subject(subject, "reply subject")  # raises, saying why
        size = len(payload)
        if size > self.max_payload:
            raise PayloadTooLarge(size, self.max_payload)
        self._send(protocol.PUB_FORMAT % (subject.encode("utf-8", "surrogateescape"), size,
                                          payload), size)

    def _send(self, data: bytes, size: int) -> None:
        """Join the reader thread's outbox when called from it (the callback of a message
        being handled), else write now; ``size`` is the payload's, for the reconnect
        buffer's bound."""
        outbox = self._outbox
        if outbox is not None and threading.get_ident() == self._reader_ident:
            outbox.append(data)
            if size > self._outbox_largest:  # noqa: PLR1730 - cheaper than max() per reply
                self._outbox_largest = size
            return
        self._write(data, size)

    def flush(self, timeout: float) -> None:
        """Wait until the server has processed everything sent so far (a PING round-trip)."""
        pong = threading.Event()
        if not self._send_lock.acquire(timeout=timeout):
            raise NatsConnectionError(f"a write is blocked: no PING sent within {timeout:g} s")
        try:
            sock = self._sock
            if sock is None:
                raise NotConnected(f"not connected (state {self._state.value})")
            with self._sock_lock:
                self._pending_pongs.append(pong)
            self._sendall(sock, b"PING\r\n")
        finally:
            self._send_lock.release()
        if not pong.wait(timeout):
            raise NatsConnectionError(f"no PONG within {timeout:g} s")

    # --- writing ----------------------------------------------------------------------

    def _write(self, data: bytes, largest: int) -> None:
        with self._send_lock:
            sock = self._sock
            if sock is not None:
                try:
                    self._sendall(sock, data)
                    return
                except NotConnected:
                    if not self._will_reconnect():
                        raise
            if not self._will_reconnect():
                raise NotConnected(f"not connected (state {self._state.value})")
            self._pending.add(data, largest)

    def _sendall(self, sock: socket.socket, data: bytes) -> None:
        """Write (with the send lock held); a failed write marks the connection lost. The
        keep-alive thread sees how long the write has been blocked."""
        keepalive = self._keepalive
        keepalive.write_started = time.monotonic()
        try:
            sock.sendall(data)
        except OSError as error:
            self._drop(sock, f"connection lost while sending: {error}")
            raise NotConnected(f"connection lost while sending: {error}") from None
        finally:
            keepalive.write_started = 0.0

    def _will_reconnect(self) -> bool:
        config = self._config
        return (not self._closing.is_set() and config.allow_reconnect
                and config.max_reconnect != 0
                and self._state in (State.CONNECTED, State.RECONNECTING))

    def _discard_pending(self) -> None:
        with self._send_lock:
            writes, size = self._pending.discard()
        if writes:
            log.warning("messages lost: published while reconnecting, never sent",
                        extra={"writes": writes, "bytes": size})

    def _ping_if_free(self) -> bool:
        """The keep-alive PING; skipped (False) when a write holds the send lock."""
        if not self._send_lock.acquire(timeout=0.1):
            return False
        try:
            sock = self._sock
            if sock is None:
                return False
            with self._sock_lock:
                self._pending_pongs.append(None)
            self._sendall(sock, b"PING\r\n")
            return True
        except NotConnected:
            return False
        finally:
            self._send_lock.release()

    def _send_outbox(self) -> None:
        """Write what callbacks published while one read was handled, in one write."""
        outbox, self._outbox = self._outbox, None
        if not outbox:
            return
        try:
            self._write(b"".join(outbox), self._outbox_largest)
        except NotConnected as error:
            log.warning("messages lost: connection down", extra={"messages": len(outbox),
                                                                 "error": str(error)})

    # --- how a socket ends ---------------------------------------------------------------

    def _drop(self, sock: socket.socket | None, reason: str) -> None:
        """Shut ``sock`` (if it is still current, it no longer is) so a blocked reader and
        a blocked writer wake at once. Needs no send lock; the reader closes the file."""
        if sock is None:
            return
        with self._sock_lock:
            if self._sock is sock:
                self._sock = None
                self._loss_reason = self._loss_reason or reason
            waiters = list(self._pending_pongs)
            self._pending_pongs.clear()
        shut(sock)
        for waiter in waiters:
            if isinstance(waiter, threading.Event):
                waiter.set()

    def _lose_current(self, reason: str) -> None:
        """Keep-alive's verdict: the current connection is stale."""
        self._drop(self._sock, reason)

    def _retire(self) -> None:
        """Shut and close the served socket, once no write uses it any more."""
        with self._sock_lock:
            sock, self._installed = self._installed, None
        if sock is None:
            return
        self._drop(sock, "retired")
        if self._send_lock.acquire(timeout=RETIRE_WAIT):
            try:
                with contextlib.suppress(OSError):
                    sock.close()
            finally:
                self._send_lock.release()
        else:  # a write still blocked on a shut socket: leave the file to the collector
            log.warning("nats socket left open: a write did not end after shutdown")


def shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
