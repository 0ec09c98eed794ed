"""The NATS connection: the socket's life, from connect to close.

One reader thread per connection blocks on the socket and serves it
(:mod:`token_worker.nats.reader`); any loss (the server closing, a socket error, a protocol
error, a lame-duck notice, a stale connection, even a bug in a callback or the parser)
ends in the same place: the reconnect policy (:mod:`token_worker.nats.reconnect`), after
which every subscription is re-created and the reconnect buffer is sent
(:meth:`NatsConnection._install`). The handshake comes from pynats2
(:mod:`token_worker.nats.handshake`, through :mod:`token_worker.nats.dial`), keep-alive
runs on its own thread (:mod:`token_worker.nats.keepalive`).

:class:`NatsConnection` is the last of three layers, one module each: the link (the
socket of the moment, the send path, :mod:`token_worker.nats.link`), the reader (what the
reader thread does with that socket) and this one: connecting, reconnecting and closing,
and the public API.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from token_worker.config import NatsConfig
from token_worker.errors import (
    HandshakeFailed,
    NatsConnectionError,
    NotConnected,
    ReconnectGaveUp,
)
from token_worker.nats import protocol
from token_worker.nats.dial import Dialed, dial
from token_worker.nats.handshake import connect_options
from token_worker.nats.link import State, shut
from token_worker.nats.protocol import Message
from token_worker.nats.reader import SocketReader
from token_worker.nats.reconnect import ReconnectPolicy
from token_worker.nats.replies import INBOX_PREFIX, ReplyMux
from token_worker.nats.subscriptions import (
    MessageCallback,
    RefusedCallback,
    SubscribeCheck,
    Subscription,
)

__all__ = ["NatsConnection"]

log = logging.getLogger(__name__)


class NatsConnection(SocketReader):
    """A NATS connection that is either working or reconnecting, until closed.

    ``on_state`` is called with every :class:`~token_worker.nats.link.State` change;
    ``on_gave_up`` once, with the reason, when the reconnect policy is exhausted (the
    connection is then closed). The first connect follows the reconnect policy too (a
    worker may start before NATS), unless ``first_connect_rounds`` bounds it (a requester
    wants to know at once). Callbacks run on the reader thread: keep them short and hand
    work off. Requests' replies are awaited under ``inbox_prefix`` (:attr:`replies`).
    """

    def __init__(
        self,
        config: NatsConfig,
        name: str,
        *,
        on_state: Callable[[State], None] | None = None,
        on_gave_up: Callable[[str], None] | None = None,
        no_responders: bool = False,
        first_connect_rounds: int | None = None,
        on_refused: RefusedCallback | None = None,
        inbox_prefix: str = INBOX_PREFIX,
    ) -> None:
        super().__init__(config, on_refused=on_refused)
        self._name = name
        self._no_responders = no_responders
        self._on_state = on_state
        self._on_gave_up = on_gave_up
        self._policy = ReconnectPolicy(config, self._pool, self._closing,
                                       first_connect_rounds=first_connect_rounds)
        self._next_sid = 1
        self._reader: threading.Thread | None = None
        self.reconnects = 0
        self.gave_up_reason = ""
        self._pid = os.getpid()
        """The process that owns the socket: in a forked child, the parent's."""
        self.replies = ReplyMux(self, inbox_prefix)
        """This connection's reply space (one wildcard inbox under ``inbox_prefix``),
        subscribed on first use: :meth:`request` and the requester's attempts go through it."""

    # --- public API -------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def is_connected(self) -> bool:
        """True while publishes can go out."""
        return self._state is State.CONNECTED

    @property
    def is_serving(self) -> bool:
        """True only while the reader thread is alive and reading a connected socket:
        what readiness should ask (a connection can't be ready with a dead reader)."""
        reader = self._reader
        return (self._serving and self._state is State.CONNECTED and reader is not None
                and reader.is_alive())

    @property
    def refused_subscriptions(self) -> list[Subscription]:
        """The subscriptions the server refused (and has not accepted since)."""
        return [sub for sub in list(self._subscriptions.values()) if sub.refused]

    def on_reader_thread(self) -> bool:
        """True when called from this connection's reader thread (a subscription callback):
        a call that waits for a reply must not run there, as the reply would wait behind it."""
        return threading.get_ident() == self._reader_ident

    def connect(self) -> None:
        """Connect (retrying as the reconnect policy allows) and start the reader thread.

        Raises :class:`ReconnectGaveUp` when no server could be reached, and its subclass
        :class:`ConnectionClosed` when ``close()`` was called meanwhile (from another
        thread: a stop requested while NATS is unreachable ends the wait at once).
        """
        if self._reader is not None:
            raise NatsConnectionError("connect() was already called")
        self._reader = threading.Thread(
            target=self._read_forever, name=f"nats-reader[{self._name}]", daemon=True
        )
        self._connect_with_policy(first=True)
        self._reader.start()
        threading.Thread(
            target=self._keepalive.run, name=f"nats-keepalive[{self._name}]", daemon=True,
            args=(self._closing, lambda: self._sock is not None, self._ping_if_free,
                  self._lose_current),
        ).start()

    def subscribe(self, subject: str, callback: MessageCallback, queue: str = "") -> Subscription:
        """Subscribe; the subscription survives reconnects. It is ``confirmed`` once the
        server answered the PING sent after its SUB."""
        protocol.sub(subject, 1, queue)  # a bad subject or queue fails before it is kept
        with self._send_lock:
            sub = Subscription(self._next_sid, subject, queue, callback)
            self._next_sid += 1
            self._subscriptions[sub.sid] = sub
            sock = self._sock
            if sock is not None:
                with self._sock_lock:
                    self._pending_pongs.append(SubscribeCheck([sub]))
                self._sendall(sock, protocol.sub(subject, sub.sid, queue) + b"PING\r\n")
        return sub

    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None:
        """Stop the server sending to ``sub``.

        With ``drain_timeout``, messages the server sent before it saw the UNSUB are still
        delivered: the local callback stays until a PING round-trip proves the server has
        processed the UNSUB.
        """
        with self._send_lock:
            sock = self._sock
            if sock is not None:
                with contextlib.suppress(NatsConnectionError):
                    self._sendall(sock, protocol.unsub(sub.sid))
        if drain_timeout > 0:
            with contextlib.suppress(NatsConnectionError):
                self.flush(drain_timeout)
        with self._send_lock:
            self._subscriptions.pop(sub.sid, None)

    def request(self, subject: str, payload: bytes, timeout: float, *,
                headers: Mapping[str, str] | None = None) -> Message | None:
        """Send and return the one reply, or None after ``timeout`` seconds
        (:meth:`ReplyMux.request <token_worker.nats.replies.ReplyMux.request>`)."""
        return self.replies.request(subject, payload, timeout, headers=headers)

    def close(self, timeout: float = 5.0) -> None:
        """Close for good: stop the reader thread and the socket. Never hangs, never
        waits for a blocked write, and ends a ``connect()`` still trying. In a forked
        child the connection is the parent's: it is only let go (:meth:`abandon`)."""
        if os.getpid() != self._pid:
            self.abandon()
            return
        self._closing.set()
        with self._sock_lock:
            sock, handshake_sock = self._sock, self._handshake_sock
        self._drop(sock, "closing")
        shut(handshake_sock)
        reader = self._reader
        if reader is not None and reader.is_alive() and reader is not threading.current_thread():
            reader.join(timeout)
        if reader is None or not reader.is_alive():
            self._retire()
        self._set_state(State.CLOSED)
        self._discard_pending()

    def abandon(self) -> None:
        """In a process forked from the one that connected: let go of this connection,
        which is still the parent's, without touching it. Nothing is written, read or shut
        down, and no lock is taken (a thread of the parent may have held one at the fork,
        and none of its threads runs here); only this process's copies of the sockets are
        closed, which the parent's connection does not notice. Nothing here uses the
        object afterwards."""
        self._state = State.CLOSED  # no listener: they belong to the parent's objects too
        for sock in {self._sock, self._installed, self._handshake_sock}:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._sock = self._installed = self._handshake_sock = None

    # --- connecting -------------------------------------------------------------------

    def _connect_with_policy(self, *, first: bool) -> None:
        """Run connect rounds over the servers as the config allows, or raise ReconnectGaveUp."""
        self._policy.connect(self._connect_to, first=first)

    def _connect_to(self, url: str) -> None:
        try:
            dialed = dial(url, self._config, self._options_for, self._show_handshake_socket)
            try:
                self._install(dialed)
            except BaseException:
                with contextlib.suppress(Exception):
                    dialed.sock.close()
                raise
        finally:
            with self._sock_lock:
                self._handshake_sock = None
        self._set_state(State.CONNECTED)
        log.info("nats connected", extra={"server": url,
                                           "server_id": self.server_info.get("server_id")})

    def _options_for(self, server_info: dict[str, Any]) -> dict[str, Any]:
        return connect_options(self._config, self._name, no_responders=self._no_responders,
                               server_info=server_info)

    def _show_handshake_socket(self, sock: socket.socket) -> None:
        """Called by the handshake before it blocks: ``close()`` can then cut it."""
        with self._sock_lock:
            if self._closing.is_set():
                raise HandshakeFailed("connection is closing")
            self._handshake_sock = sock

    def _install(self, dialed: Dialed) -> None:
        """Make the dialed socket the connection's: re-subscribe (with a PING after the
        SUBs: their PONG confirms them), send the reconnect buffer. Refused once ``close()``
        was called, so a late handshake leaks no socket."""
        sock = dialed.sock
        with self._send_lock:
            with self._sock_lock:
                if self._closing.is_set():
                    raise HandshakeFailed("connection is closing")
                self._sock = self._installed = sock
                self._pending_pongs.clear()
            self._loss_reason = ""
            self._parser = dialed.parser
            self._early_events = dialed.early
            self._keepalive.reset()
            self.server_url = dialed.url
            self.server_info = dialed.info
            self._learn(dialed.info)
            kept = list(self._subscriptions.values())
            for sub in kept:
                sub.confirmed = False  # until the server answers the PING after the SUBs
            try:
                if kept:
                    with self._sock_lock:
                        self._pending_pongs.append(SubscribeCheck(kept))
                    self._sendall(sock, b"".join(protocol.sub(s.subject, s.sid, s.queue)
                                                 for s in kept) + b"PING\r\n")
                data, writes, dropped = self._pending.take(self.max_payload)
                if data:
                    self._sendall(sock, data)
            except NotConnected as error:
                with self._sock_lock:
                    self._installed = None if self._installed is sock else self._installed
                raise HandshakeFailed(str(error)) from None
        if dropped:
            log.warning("messages lost: larger than this server's max_payload",
                        extra={"writes": dropped, "max_payload": self.max_payload})
        if writes:
            log.info("sent messages published while reconnecting", extra={"writes": writes})

    # --- the reader thread: serve, lose, reconnect ------------------------------------

    def _read_forever(self) -> None:
        """The reader thread: serve until lost, then reconnect; until closed or given up.
        Nothing that happens while serving can end this thread but ``close()`` or the
        reconnect policy giving up."""
        self._reader_ident = threading.get_ident()
        try:
            while True:
                reason = self._serve()
                self._retire()
                if self._closing.is_set():
                    return
                self._lose_connection(reason)
                if not self._reconnect():
                    return
        except BaseException:  # pragma: no cover - the last line of defence
            log.critical("nats reader thread ended unexpectedly", exc_info=True)
            raise

    def _reconnect(self) -> bool:
        """Reconnect as the policy allows; False when given up (or closing)."""
        while not self._closing.is_set():
            try:
                self._connect_with_policy(first=False)
            except ReconnectGaveUp as error:
                if not self._closing.is_set():
                    self._give_up(str(error))
                return False
            except Exception:
                log.exception("nats reconnect failed unexpectedly; trying again")
                self._closing.wait(self._config.reconnect_wait)
                continue
            self.reconnects += 1
            log.info("reconnected", extra={"server": self.server_url,
                                             "reconnects": self.reconnects})
            return True
        return False

    # --- losing and giving up ---------------------------------------------------------

    def _lose_connection(self, reason: str) -> None:
        log.warning("nats disconnected", extra={"server": self.server_url, "reason": reason})
        self._set_state(State.RECONNECTING)

    def _give_up(self, reason: str) -> None:
        self.gave_up_reason = reason
        log.error("nats reconnect gave up", extra={"reason": reason})
        self._set_state(State.CLOSED)
        self._discard_pending()
        if self._on_gave_up is not None:
            self._on_gave_up(reason)

    def _set_state(self, state: State) -> None:
        if state is self._state or self._state is State.CLOSED:
            return  # closed is final: a late handshake or loss does not reopen it
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("state listener failed")
