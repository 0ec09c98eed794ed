"""The NATS connection: the socket's life, from connect to close.

One reader thread per connection blocks on the socket, feeds 64 KiB reads to the protocol
parser (:mod:`token_worker.protocol`) and hands messages to subscription callbacks; what
they publish while one read is handled goes out in one write. Any loss (the server
closing, a socket error, a protocol error, a lame-duck notice, a stale connection, even a
bug in a callback or the parser) ends in the same place: the reconnect policy (tenacity:
``reconnectWait`` between rounds over the servers, at most ``maxReconnect`` rounds), after
which every subscription is re-created and the reconnect buffer (:mod:`token_worker.pending`)
is sent. The handshake comes from pynats2 (:mod:`token_worker._pynats2`), keep-alive runs
on its own thread (:mod:`token_worker.keepalive`).

Locks: ``_send_lock`` serialises writes and is held across ``sendall``; ``_sock_lock``
guards which socket is current and is never held across I/O. Keep-alive and ``close()``
take only the second, so a write blocked on a peer that stopped reading can neither hide
a stale connection nor hang a close: they shut the socket, which wakes the writer.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    stop_when_event_set,
    wait_fixed,
)

from token_worker import protocol
from token_worker._pynats2 import connect_options, describe_connect_error, pynats2
from token_worker.config import NatsConfig
from token_worker.dial import Dialed, dial
from token_worker.errors import (
    ConnectionClosed,
    HandshakeFailed,
    NatsConnectionError,
    NotConnected,
    PayloadTooLarge,
    ReconnectGaveUp,
)
from token_worker.keepalive import KeepAlive
from token_worker.logs import RateLimitedLog
from token_worker.pending import PendingWrites
from token_worker.protocol import Control, Info, Message, ProtocolError, ServerError, Skipped
from token_worker.servers import ServerPool

__all__ = ["Message", "MessageCallback", "NatsConnection", "RefusedCallback", "ServerPool",
           "State", "Subscription", "pynats2", "refused_by"]

log = logging.getLogger(__name__)
_warn_skipped = RateLimitedLog(log, logging.WARNING, "nats message skipped unread")
"""A message whose line is longer than we read (a huge reply subject): skipped, stream kept."""

READ_SIZE = 64 * 1024
"""Bytes asked of the socket per read: many messages per system call under load."""
DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""nats-server's default ``max_payload``: assumed until a server says otherwise."""
RETIRE_WAIT = 5.0
"""Longest the reader waits for a writer (woken by the shut socket) before closing it."""
SERVER_ERROR_LOG_INTERVAL = 1.0
"""Seconds between two log lines of one kind of ``-ERR`` that keeps the connection (a
permissions violation may come once per request: each line counts what it suppressed)."""
_SUB_REFUSED = re.compile(
    r'Permissions Violation for Subscription to "(?P<subject>[^"]*)"'
    r'(?: using queue "(?P<queue>[^"]*)")?(?: \(sid "(?P<sid>[^"]*)"\))?', re.IGNORECASE)
"""nats-server's refusal of a SUB: at subscribe time, and after a config reload that took
the permission away (then with the ``sid``), e.g.
``Permissions Violation for Subscription to "token.request" using queue "q" (sid "1")``."""


class State(enum.Enum):
    """Where the connection is in its life."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


MessageCallback = Callable[[Message], None]


@dataclass
class Subscription:
    """A subscription; kept so it can be re-created after every reconnect."""

    sid: int
    subject: str
    queue: str
    callback: MessageCallback
    refused: bool = False
    """The server refused it (a ``-ERR`` permissions violation, at subscribe time or after
    a config reload): no message comes. Cleared when a reconnect re-subscribes and no
    refusal comes within a PING round trip."""
    refusals: int = 0
    """How many ``-ERR`` refusals named it so far."""


RefusedCallback = Callable[[Subscription, str], None]
"""Called (on the reader thread) with a subscription the server refused and its text."""


class _SubscribeCheck:
    """Waits, in the PONG queue, for the PONG after a reconnect's SUBs: a subscription not
    refused by then is served again."""

    def __init__(self, subscriptions: list[Subscription]) -> None:
        self.subscriptions = [(sub, sub.refusals) for sub in subscriptions]

    def confirmed(self) -> None:
        """The PONG came: every subscription refused no more since the SUBs is served."""
        for sub, refusals in self.subscriptions:
            if sub.refusals == refusals:
                sub.refused = False


class NatsConnection:
    """A NATS connection that is either working or reconnecting, until closed.

    ``on_state`` is called with every :class:`State` change; ``on_gave_up`` once, with the
    reason, when the reconnect policy is exhausted (the connection is then closed). The
    first connect follows the reconnect policy too (a worker may start before NATS), unless
    ``first_connect_rounds`` bounds it (a requester wants to know at once).
    Callbacks run on the reader thread: keep them short and hand work off.
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
    ) -> None:
        self._config = config
        self._name = name
        self._no_responders = no_responders
        self._first_connect_rounds = first_connect_rounds
        self._on_state = on_state
        self._on_gave_up = on_gave_up
        self._on_refused = on_refused
        self._refusals_log = RateLimitedLog(
            log, logging.ERROR, "nats server refused an operation (connection kept)",
            interval=SERVER_ERROR_LOG_INTERVAL)
        self._errors_log = RateLimitedLog(log, logging.ERROR, "nats server error",
                                          interval=SERVER_ERROR_LOG_INTERVAL)
        self._pool = ServerPool(config.urls, randomize=not config.no_randomize)
        self._subscriptions: dict[int, Subscription] = {}
        self._next_sid = 1
        self._send_lock = threading.Lock()
        self._sock_lock = threading.Lock()
        self._sock: socket.socket | None = None
        """The socket writes go to; None while there is none (or it was shut)."""
        self._installed: socket.socket | None = None
        """The socket the reader serves, until its file descriptor is closed."""
        self._handshake_sock: socket.socket | None = None
        self._parser = protocol.Parser()
        self._early_events: list[protocol.Event] = []
        self._pending_pongs: deque[threading.Event | _SubscribeCheck | None] = deque()
        self._closing = threading.Event()
        self._reader: threading.Thread | None = None
        self._reader_ident = 0
        self._serving = False
        self._outbox: list[bytes] | None = None
        self._outbox_largest = 0
        self._pending = PendingWrites(config.reconnect_buffer_size)
        self._keepalive = KeepAlive(config.ping_interval, config.max_pings_out)
        self._loss_reason = ""
        self._state = State.DISCONNECTED
        self._max_payload = DEFAULT_MAX_PAYLOAD
        self.server_url = ""
        self.server_info: dict[str, Any] = {}
        self.reconnects = 0
        self.gave_up_reason = ""

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

    @property
    def buffered_bytes(self) -> int:
        """Bytes published while reconnecting that wait for the next server."""
        return self._pending.size

    @property
    def max_payload(self) -> int:
        """The largest message the current server accepts (its INFO ``max_payload``,
        refreshed on every connect and asynchronous INFO; 1 MiB before the first)."""
        return self._max_payload

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
        """Subscribe; the subscription survives reconnects."""
        protocol.sub(subject, 1, queue)  # a bad subject or queue fails before it is kept
        with self._send_lock:
            sub = Subscription(self._next_sid, subject, queue, callback)
            self._next_sid += 1
            self._subscriptions[sub.sid] = sub
            sock = self._sock
            if sock is not None:
                self._sendall(sock, protocol.sub(subject, sub.sid, queue))
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

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        """Send one message; raises :class:`NotConnected` if it cannot go out now, and
        :class:`PayloadTooLarge` (never buffered) if the server would refuse it.

        Called from a subscription callback (the reader thread), the message joins the
        others published while handling the same read, and all go out in one write.
        """
        size = len(payload)
        if size > self._max_payload:
            raise PayloadTooLarge(size, self._max_payload)
        data = protocol.pub(subject, payload, reply)
        outbox = self._outbox
        if outbox is not None and threading.get_ident() == self._reader_ident:
            outbox.append(data)
            if size > self._outbox_largest:  # noqa: PLR1730 - cheaper than max() per reply
                self._outbox_largest = size
            return
        self._write(data, size)

    def send_raw(self, data: bytes) -> None:
        """Write already encoded protocol bytes (several PUBs at once, for instance).

        While reconnecting, the bytes wait in the reconnect buffer for the next server
        (``nats.reconnectBufSize``), so a reply finished during a short outage still
        reaches its requester; :class:`NotConnected` only when they cannot wait.
        :class:`PayloadTooLarge` when a message in ``data`` exceeds ``max_payload``.
        """
        largest = protocol.largest_payload(data) if len(data) > self._max_payload else 0
        if largest > self._max_payload:
            raise PayloadTooLarge(largest, self._max_payload)
        self._write(data, largest)

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

    def close(self, timeout: float = 5.0) -> None:
        """Close for good: stop the reader thread and the socket. Never hangs, never
        waits for a blocked write, and ends a ``connect()`` still trying."""
        self._closing.set()
        with self._sock_lock:
            sock, handshake_sock = self._sock, self._handshake_sock
        self._drop(sock, "closing")
        _shut(handshake_sock)
        reader = self._reader
        if reader is not None and reader.is_alive() and reader is not threading.current_thread():
            reader.join(timeout)
        if reader is None or not reader.is_alive():
            self._retire()
        self._set_state(State.CLOSED)
        self._discard_pending()

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

    # --- connecting -------------------------------------------------------------------

    def _connect_with_policy(self, *, first: bool) -> None:
        """Run connect rounds over the servers as the config allows, or raise ReconnectGaveUp."""
        config = self._config
        if not first and (not config.allow_reconnect or config.max_reconnect == 0):
            raise ReconnectGaveUp("reconnecting is disabled (allowReconnect/maxReconnect)")
        rounds = config.max_reconnect if config.max_reconnect > 0 else None
        if first and (not config.allow_reconnect or config.max_reconnect == 0):
            rounds = 1
        if first and self._first_connect_rounds is not None:
            rounds = self._first_connect_rounds
        retrying = Retrying(
            stop=(stop_after_attempt(rounds) if rounds else stop_never)
            | stop_when_event_set(self._closing),
            wait=wait_fixed(config.reconnect_wait),
            retry=retry_if_exception_type(HandshakeFailed),
            sleep=self._sleep_unless_closing,
            before_sleep=self._log_failed_round,
            reraise=True,
        )
        try:
            retrying(self._connect_round)
        except HandshakeFailed as error:
            if self._closing.is_set():
                raise ConnectionClosed("closed while connecting to NATS") from None
            attempts = retrying.statistics.get("attempt_number", 1)
            raise ReconnectGaveUp(
                f"no NATS server reachable after {attempts} round(s) over "
                f"{', '.join(self._pool.urls)}: {error}"
            ) from None

    def _sleep_unless_closing(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _log_failed_round(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        log.warning(
            "nats connect round failed, retrying",
            extra={"attempt": retry_state.attempt_number, "error": str(error),
                   "retry_in_s": self._config.reconnect_wait},
        )

    def _connect_round(self) -> None:
        """Try every server once, in the pool's order."""
        errors = []
        for url in self._pool.round():
            if self._closing.is_set():
                raise HandshakeFailed("connection is closing")
            self._pool.tried(url)
            try:
                self._connect_to(url)
                return
            except Exception as error:
                errors.append(f"{url}: {describe_connect_error(error)}")
        if self._closing.is_set():
            raise HandshakeFailed("connection is closing")
        raise HandshakeFailed("; ".join(errors))

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
        """Make the dialed socket the connection's: re-subscribe, send the reconnect
        buffer. Refused once ``close()`` was called, so a late handshake leaks no socket."""
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
            subscriptions = b"".join(protocol.sub(s.subject, s.sid, s.queue)
                                     for s in self._subscriptions.values())
            try:
                if subscriptions:
                    check = _SubscribeCheck([s for s in self._subscriptions.values()
                                             if s.refused])
                    if check.subscriptions:
                        with self._sock_lock:
                            self._pending_pongs.append(check)
                        subscriptions += b"PING\r\n"
                    self._sendall(sock, subscriptions)
                data, writes, dropped = self._pending.take(self._max_payload)
                if data:
                    self._sendall(sock, data)
            except NotConnected as error:
                with self._sock_lock:
                    self._installed = None if self._installed is sock else self._installed
                raise HandshakeFailed(str(error)) from None
        if dropped:
            log.warning("messages lost: larger than this server's max_payload",
                        extra={"writes": dropped, "max_payload": self._max_payload})
        if writes:
            log.info("sent messages published while reconnecting", extra={"writes": writes})

    def _learn(self, info: dict[str, Any]) -> None:
        """Take what an INFO says: the payload limit and the cluster's other servers."""
        limit = info.get("max_payload")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self._max_payload = limit
        for url in self._pool.learn(info.get("connect_urls"), self.server_url):
            log.info("nats server discovered", extra={"server": url})

    # --- reading ----------------------------------------------------------------------

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

    def _serve(self) -> str:
        """Serve the current socket; return why it was lost. Never raises."""
        sock = self._sock
        if sock is None:
            return self._loss_reason or "no socket"
        self._serving = True
        try:
            early, self._early_events = self._early_events, []
            problem = self._handle(early) if early else ""
            view = memoryview(bytearray(READ_SIZE))
            while not problem and not self._closing.is_set():
                problem = self._read_once(sock, view)
            return self._loss_reason or problem or "closing"
        except BaseException as error:  # even SystemExit from a callback: the reader lives
            log.exception("nats reader failed: the connection counts as lost")
            return f"reader failure: {type(error).__name__}: {error}"
        finally:
            self._serving = False

    def _read_once(self, sock: socket.socket, view: memoryview) -> str:
        """One read; return why the connection is lost, or ""."""
        try:
            count = sock.recv_into(view)
        except OSError as error:
            return f"socket error: {error}"
        if count == 0:
            return "server closed the connection"
        self._keepalive.heard(time.monotonic())
        return self._handle(self._parser.feed(view[:count]))

    def _handle(self, events: list[protocol.Event]) -> str:
        """Deliver messages and act on the rest; what callbacks publish meanwhile goes out
        in one write. Returns why the connection must be dropped, or ""."""
        self._outbox = []
        self._outbox_largest = 0
        subscriptions = self._subscriptions
        sid: int
        message: Message
        try:
            for event in events:
                if type(event) is tuple:  # a Delivery; the other events are subclasses
                    sid, message = event  # type: ignore[assignment,misc]
                    sub = subscriptions.get(sid)
                    if sub is None:
                        log.debug("message for a removed subscription dropped",
                                  extra={"sid": sid})
                        continue
                    try:
                        sub.callback(message)
                    except Exception:
                        log.exception("subscription callback failed",
                                      extra={"subject": sub.subject})
                else:
                    problem = self._act_on(event)
                    if problem:
                        return problem
            return ""
        finally:
            self._send_outbox()

    def _act_on(self, event: protocol.Event) -> str:
        if event is Control.PING:
            assert self._outbox is not None
            self._outbox.append(b"PONG\r\n")
        elif event is Control.PONG:
            with self._sock_lock:
                waiter = self._pending_pongs.popleft() if self._pending_pongs else None
            if isinstance(waiter, _SubscribeCheck):
                waiter.confirmed()
            elif waiter is not None:
                waiter.set()
        elif isinstance(event, ServerError):
            self._server_error(event.text)
        elif isinstance(event, Info):
            return self._async_info(event)
        elif isinstance(event, Skipped):
            _warn_skipped({"reason": event.reason, "bytes": event.size,
                           "server": self.server_url})
        elif isinstance(event, ProtocolError):
            log.error("nats protocol error: dropping the connection",
                      extra={"reason": event.reason, "server": self.server_url})
            return f"protocol error: {event.reason}"
        return ""  # +OK needs nothing (verbose is off)

    def _server_error(self, text: str) -> None:
        """A ``-ERR`` that keeps the connection (the parser ends it for the others): a
        refused subscription is marked and reported; each kind logs at most a line a
        second, counting what it suppressed."""
        if "permissions violation" not in text.lower():
            self._errors_log({"server_error": text, "server": self.server_url})
            return
        self._refusals_log({"server_error": text, "server": self.server_url})
        for sub in refused_by(text, list(self._subscriptions.values())):
            sub.refusals += 1
            if not sub.refused:
                sub.refused = True
                if self._on_refused is not None:
                    try:
                        self._on_refused(sub, text)
                    except Exception:
                        log.exception("subscription refusal listener failed")

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

    def _async_info(self, event: Info) -> str:
        info = event.info
        if info is None:
            log.warning("unreadable INFO from server", extra={"error": event.error})
            return ""
        self._learn(info)
        if info.get("ldm") and len(self._pool.urls) > 1:
            log.warning("nats server entering lame duck mode: moving to another server",
                        extra={"server": self.server_url})
            return "server entered lame duck mode"
        if info.get("ldm"):
            log.warning("nats server entering lame duck mode and no other server is known",
                        extra={"server": self.server_url})
        return ""

    # --- losing and giving up ---------------------------------------------------------

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
        _shut(sock)
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


def _shut(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def refused_by(text: str, subscriptions: list[Subscription]) -> list[Subscription]:
    """The subscriptions a ``-ERR`` text refuses: none unless it is a subscription
    permissions violation; by ``sid`` when it names one (after a reload), else every one
    with that subject (and queue, when it names one)."""
    match = _SUB_REFUSED.search(text)
    if match is None:
        return []
    sid = match["sid"]
    if sid is not None:
        return [s for s in subscriptions if str(s.sid) == sid]
    queue = match["queue"]
    return [s for s in subscriptions if s.subject == match["subject"]
            and (queue is None or s.queue == queue)]
