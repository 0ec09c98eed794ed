"""The NATS connection: the one module that touches pynats2.

pynats2 0.9.0 is the required NATS client, and it has traps (measured against a real
server): it imports ``pkg_resources`` (gone from setuptools 82+); its reader thread spins a
core forever once the server goes away and tells nobody; any ``-ERR`` kills the reader
while the socket stays open (a deaf worker that looks alive); a late message for a removed
subscription kills it too; its ``close()`` can hang; callback exceptions vanish; its
callback queue is unbounded; it announces protocol 0, so servers never send it
asynchronous INFO.

So this module uses pynats2 for what it does well, the handshake (URL, socket, INFO, TLS
wrapping, CONNECT), and owns everything after it: one reader thread per connection that
blocks on the socket, parses the protocol from 64 KiB reads, answers PINGs, logs ``-ERR``
lines with their text and keeps serving through permission errors, follows a server's
lame-duck notice to the next server, and on any loss reconnects with tenacity
(``reconnectWait`` between rounds over the servers, at most ``maxReconnect`` rounds) and
re-creates every subscription; and one keep-alive thread that PINGs a quiet server and
shuts the socket when PONGs stop coming. What is published while reconnecting waits in a
bounded buffer and goes to the next server after the subscriptions, as in nats.go. The
rest of token-worker sees a connection that is either working or reconnecting, and is
told when it gives up.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.metadata
import json
import logging
import socket
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    stop_when_event_set,
    wait_fixed,
)

from token_worker.config import NatsConfig
from token_worker.errors import NatsConnectionError, NotConnected, ReconnectGaveUp

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
"""Bytes asked of the socket per read: many messages per system call under load."""
MAX_CONTROL_LINE = 64 * 1024
"""A protocol line longer than this is a broken stream, not a slow one."""
KEEPALIVE_TICK = 1.0
"""Longest the keep-alive thread sleeps between looks at its clock (no busy loop)."""


def _import_pynats2() -> types.ModuleType:
    """Import pynats2 even where setuptools no longer ships ``pkg_resources``.

    pynats2 only calls ``pkg_resources.get_distribution("pynats2").version``. Where the real
    module is missing, a stand-in answering that one call from ``importlib.metadata`` is
    put in ``sys.modules`` for the duration of the import and removed afterwards, so no
    other library in the process ever sees it.
    """
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        pass
    else:
        return importlib.import_module("pynats2")

    stand_in = types.ModuleType("pkg_resources")

    def get_distribution(name: str) -> Any:
        return types.SimpleNamespace(version=importlib.metadata.version(name))

    stand_in.get_distribution = get_distribution  # type: ignore[attr-defined]
    missing = object()
    previous = sys.modules.get("pkg_resources", missing)
    sys.modules["pkg_resources"] = stand_in
    try:
        return importlib.import_module("pynats2")
    finally:
        if previous is missing:
            sys.modules.pop("pkg_resources", None)
        else:
            sys.modules["pkg_resources"] = previous  # type: ignore[assignment]


pynats2 = _import_pynats2()


class State(enum.Enum):
    """Where the connection is in its life."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Message(NamedTuple):
    """One message delivered to a subscription (a tuple: built for every message)."""

    subject: str
    reply: str
    payload: bytes
    status: int = 0
    """A server status from a header block (503: no responders), else 0."""


MessageCallback = Callable[[Message], None]


@dataclass
class Subscription:
    """A subscription; kept so it can be re-created after every reconnect."""

    sid: int
    subject: str
    queue: str
    callback: MessageCallback


class _ProtocolError(NatsConnectionError):
    """The server sent something that is not the NATS protocol: the stream is broken."""


class _LeaveServer(_ProtocolError):
    """The server asked its clients to go elsewhere (lame duck mode)."""


class _HandshakeFailed(NatsConnectionError):
    """One attempt to connect to one server failed (retried by the reconnect policy)."""


class _Handshake(pynats2.NATSNoSubscribeClient):  # type: ignore[misc,name-defined]
    """pynats2's connection set-up with three fixes.

    It keeps the server's INFO (pynats2 drops it), sends our CONNECT (protocol 1, so the
    server sends asynchronous INFO; credentials from the config rather than from the URL),
    and fails on a closed socket instead of spinning on empty reads.
    """

    _socket_buffer: bytes

    def __init__(self, url: str, options: dict[str, Any], tls: Any, timeout: float) -> None:
        super().__init__(
            url,
            name=options["name"],
            tls_cacert=tls.ca_file,
            tls_client_cert=tls.cert_file,
            tls_client_key=tls.key_file,
            tls_verify=tls.verify,
            socket_timeout=timeout,
        )
        self.connect_options = options
        self.server_info: dict[str, Any] = {}

    def _recv(self, *commands: Any) -> Any:
        command, match = super()._recv(*commands)
        if match is not None and command is pynats2.client.INFO_RE:
            self.server_info = json.loads(match.group(1))
        return command, match

    def _readline(self, *, size: int | None = None) -> bytes:
        buffer: bytes = self._socket_buffer
        while b"\r\n" not in buffer:
            chunk = self._socket.recv(4096)
            if not chunk:
                raise _HandshakeFailed("server closed the connection during the handshake")
            buffer += chunk
        end = buffer.index(b"\r\n") + 2
        self._socket_buffer = buffer[end:]
        return buffer[:end]

    def _send_connect_command(self) -> None:
        self._send(pynats2.client.CONNECT_OP, json.dumps(self.connect_options))


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
    ) -> None:
        self._config = config
        self._name = name
        self._no_responders = no_responders
        self._first_connect_rounds = first_connect_rounds
        self._on_state = on_state
        self._on_gave_up = on_gave_up
        self._servers: deque[str] = deque(config.urls)
        self._subscriptions: dict[int, Subscription] = {}
        self._next_sid = 1
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buffer = bytearray()
        self._pending_pongs: deque[threading.Event | None] = deque()
        self._closing = threading.Event()
        self._reader: threading.Thread | None = None
        self._reader_ident = 0
        self._outbox: list[bytes] | None = None
        self._reconnect_buffer: list[bytes] = []
        self._reconnect_buffered = 0
        self._last_heard = 0.0
        self._pings_out = 0
        self._loss_reason = ""
        self._state = State.DISCONNECTED
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
    def buffered_bytes(self) -> int:
        """Bytes published while reconnecting that wait for the next server."""
        return self._reconnect_buffered

    def connect(self) -> None:
        """Connect (retrying as the reconnect policy allows) and start the reader thread.

        Raises :class:`ReconnectGaveUp` when no server could be reached.
        """
        if self._reader is not None:
            raise NatsConnectionError("connect() was already called")
        self._connect_with_policy(first=True)
        self._reader = threading.Thread(
            target=self._read_forever, name=f"nats-reader[{self._name}]", daemon=True
        )
        self._reader.start()
        threading.Thread(target=self._keep_alive_forever, name=f"nats-keepalive[{self._name}]",
                         daemon=True).start()

    def subscribe(self, subject: str, callback: MessageCallback, queue: str = "") -> Subscription:
        """Subscribe; the subscription survives reconnects."""
        with self._send_lock:
            sub = Subscription(self._next_sid, subject, queue, callback)
            self._next_sid += 1
            self._subscriptions[sub.sid] = sub
            if self._sock is not None:
                self._send_locked(_sub_line(sub))
        return sub

    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None:
        """Stop the server sending to ``sub``.

        With ``drain_timeout``, messages the server sent before it saw the UNSUB are still
        delivered: the local callback stays until a PING round-trip proves the server has
        processed the UNSUB.
        """
        with self._send_lock:
            if self._sock is not None:
                with contextlib.suppress(NatsConnectionError):
                    self._send_locked(b"UNSUB %d\r\n" % sub.sid)
        if drain_timeout > 0:
            with contextlib.suppress(NatsConnectionError):
                self.flush(drain_timeout)
        with self._send_lock:
            self._subscriptions.pop(sub.sid, None)

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        """Send one message; raises :class:`NotConnected` if it cannot go out now.

        Called from a subscription callback (the reader thread), the message joins the
        others published while handling the same read, and all go out in one write.
        """
        head = f"PUB {subject} {reply} {len(payload)}\r\n" if reply else (
            f"PUB {subject} {len(payload)}\r\n"
        )
        data = head.encode() + payload + b"\r\n"
        outbox = self._outbox
        if outbox is not None and threading.get_ident() == self._reader_ident:
            outbox.append(data)
            return
        self.send_raw(data)

    def send_raw(self, data: bytes) -> None:
        """Write already encoded protocol bytes (several PUBs at once, for instance).

        While reconnecting, the bytes wait in the reconnect buffer for the next server
        (``nats.reconnectBufSize``), so a reply finished during a short outage still
        reaches its requester; :class:`NotConnected` only when they cannot wait.
        """
        with self._send_lock:
            if self._sock is not None:
                try:
                    self._send_locked(data)
                    return
                except NotConnected:
                    if not self._will_reconnect():
                        raise
            self._keep_for_reconnect(data)

    def _will_reconnect(self) -> bool:
        config = self._config
        return (not self._closing.is_set() and config.allow_reconnect
                and config.max_reconnect != 0
                and self._state in (State.CONNECTED, State.RECONNECTING))

    def _keep_for_reconnect(self, data: bytes) -> None:
        """Hold ``data`` for the next server (call with the send lock), or refuse it."""
        if not self._will_reconnect():
            raise NotConnected(f"not connected (state {self._state.value})")
        limit = self._config.reconnect_buffer_size
        if self._reconnect_buffered + len(data) > limit:
            raise NotConnected(f"not connected, and the reconnect buffer ({limit} bytes) "
                               "is full")
        self._reconnect_buffer.append(data)
        self._reconnect_buffered += len(data)

    def _send_reconnect_buffer_locked(self) -> int:
        """After re-subscribing: send what was published while reconnecting, in one write,
        and return how many writes it held (call with the send lock)."""
        held = len(self._reconnect_buffer)
        if held:
            self._send_locked(b"".join(self._reconnect_buffer))
            self._reconnect_buffer.clear()
            self._reconnect_buffered = 0
        return held

    def _discard_reconnect_buffer(self) -> None:
        with self._send_lock:
            held, self._reconnect_buffer = self._reconnect_buffer, []
            self._reconnect_buffered = 0
        if held:
            log.warning("messages lost: published while reconnecting, never sent",
                        extra={"writes": len(held), "bytes": sum(map(len, held))})

    def flush(self, timeout: float) -> None:
        """Wait until the server has processed everything sent so far (a PING round-trip)."""
        pong = threading.Event()
        with self._send_lock:
            if self._sock is None:
                raise NotConnected(f"not connected (state {self._state.value})")
            self._pending_pongs.append(pong)
            self._send_locked(b"PING\r\n")
        if not pong.wait(timeout):
            raise NatsConnectionError(f"no PONG within {timeout:g} s")

    def close(self, timeout: float = 5.0) -> None:
        """Close for good: stop the reader thread and the socket. Never hangs."""
        self._closing.set()
        with self._send_lock:
            self._drop_socket()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout)
        self._set_state(State.CLOSED)
        self._discard_reconnect_buffer()

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
            retry=retry_if_exception_type(_HandshakeFailed),
            sleep=self._sleep_unless_closing,
            before_sleep=self._log_failed_round,
            reraise=True,
        )
        try:
            retrying(self._connect_round)
        except _HandshakeFailed as error:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise ReconnectGaveUp(
                f"no NATS server reachable after {attempts} round(s) over "
                f"{', '.join(config.urls)}: {error}"
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
        """Try every server once, starting with the next in turn."""
        if self._closing.is_set():
            raise _HandshakeFailed("connection is closing")
        errors = []
        for _ in range(len(self._servers)):
            url = self._servers[0]
            self._servers.rotate(-1)
            try:
                self._connect_to(url)
                return
            except (OSError, NatsConnectionError, pynats2.NATSError, ValueError) as error:
                errors.append(f"{url}: {error or type(error).__name__}")
        raise _HandshakeFailed("; ".join(errors))

    def _connect_to(self, url: str) -> None:
        handshake = _Handshake(url, self._connect_options(), self._config.tls,
                               self._config.connect_timeout)
        try:
            handshake.connect()
            sock: socket.socket = handshake._socket
            leftover = bytearray(handshake._socket_buffer)
            self._await_first_pong(sock, leftover)
        except BaseException:
            with contextlib.suppress(Exception):
                handshake._socket.close()
            raise
        # Blocking from here on: a socket with a timeout costs a poll() before every recv
        # and send. Keep-alive and stale detection run on their own thread instead.
        sock.settimeout(None)
        with self._send_lock:
            self._last_heard = time.monotonic()
            self._pings_out = 0
            self._loss_reason = ""
            self._sock = sock
            self._buffer = leftover
            self._pending_pongs.clear()
            self.server_url = url
            self.server_info = handshake.server_info
            self._add_discovered_servers(handshake.server_info)
            for sub in self._subscriptions.values():
                self._send_locked(_sub_line(sub))
            sent_from_buffer = self._send_reconnect_buffer_locked()
        self._set_state(State.CONNECTED)
        log.info("nats connected", extra={"server": url,
                                           "server_id": handshake.server_info.get("server_id")})
        if sent_from_buffer:
            log.info("sent messages published while reconnecting",
                     extra={"writes": sent_from_buffer})

    def _connect_options(self) -> dict[str, Any]:
        config = self._config
        options: dict[str, Any] = {
            "name": self._name,
            "lang": "python",
            "version": importlib.metadata.version("pynats2"),
            "protocol": 1,
            "verbose": False,
            "pedantic": False,
            "echo": True,
            # Requesters ask for headers so the server tells them at once (a 503 status)
            # when nobody listens on the subject; workers need neither.
            "headers": self._no_responders,
            "no_responders": self._no_responders,
        }
        if config.username:
            options["user"] = config.username
            options["pass"] = config.password.reveal() if config.password else ""
        if config.token:
            options["auth_token"] = config.token.reveal()
        return options

    def _await_first_pong(self, sock: socket.socket, buffer: bytearray) -> None:
        """Prove the server accepted CONNECT: PING must come back as PONG, not as -ERR."""
        sock.sendall(b"PING\r\n")
        deadline = time.monotonic() + self._config.connect_timeout
        while True:
            end = buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if line.startswith(b"PONG"):
                    return
                if line.startswith(b"-ERR"):
                    raise _HandshakeFailed(f"server refused the connection: {_err_text(line)}")
                continue  # +OK, INFO or PING before our PONG
            if time.monotonic() > deadline:
                raise _HandshakeFailed("no PONG after CONNECT")
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                raise _HandshakeFailed("server closed the connection after CONNECT")
            buffer += chunk

    def _add_discovered_servers(self, info: dict[str, Any]) -> None:
        for address in info.get("connect_urls") or ():
            url = address if "://" in address else f"nats://{address}"
            if url not in self._servers:
                self._servers.append(url)
                log.info("nats server discovered", extra={"server": url})

    # --- reading ----------------------------------------------------------------------

    def _read_forever(self) -> None:
        """The reader thread: read until lost, then reconnect; until closed or given up."""
        self._reader_ident = threading.get_ident()
        while not self._closing.is_set():
            reason = self._read_until_lost()
            if self._closing.is_set():
                break
            self._lose_connection(reason)
            try:
                self._connect_with_policy(first=False)
            except ReconnectGaveUp as error:
                if not self._closing.is_set():
                    self._give_up(str(error))
                return
            self.reconnects += 1
            log.info("reconnected", extra={"server": self.server_url,
                                             "reconnects": self.reconnects})

    def _read_until_lost(self) -> str:
        """Serve the current socket; return why it was lost."""
        sock = self._sock
        if sock is None:
            return "no socket"
        view = memoryview(bytearray(READ_SIZE))
        while not self._closing.is_set():
            problem = self._read_once(sock, view)
            if problem:
                return self._loss_reason or problem
        return "closing"

    def _read_once(self, sock: socket.socket, view: memoryview) -> str:
        """One read; return why the connection is lost, or ""."""
        try:
            count = sock.recv_into(view)
        except OSError as error:
            return f"socket error: {error}"
        if count == 0:
            return "server closed the connection"
        self._last_heard = time.monotonic()
        self._pings_out = 0
        self._buffer += view[:count]
        self._outbox = []
        try:
            return self._parse_buffer()
        finally:
            self._send_outbox()

    def _send_outbox(self) -> None:
        """Write what callbacks published while one read was handled, in one write."""
        outbox, self._outbox = self._outbox, None
        if not outbox:
            return
        try:
            self.send_raw(b"".join(outbox))
        except NotConnected as error:
            log.warning("messages lost: connection down", extra={"messages": len(outbox),
                                                                 "error": str(error)})

    def _keep_alive_forever(self) -> None:
        """The keep-alive thread: PING a quiet server; after ``maxPingsOut`` unanswered
        PINGs, shut the socket so the blocked reader wakes up and reconnects."""
        tick = min(KEEPALIVE_TICK, self._config.ping_interval)
        while not self._closing.wait(tick):
            with self._send_lock:
                if self._sock is None:
                    continue
                now = time.monotonic()
                if now - self._last_heard < self._config.ping_interval:
                    continue
                if self._pings_out >= self._config.max_pings_out:
                    self._loss_reason = f"stale connection: {self._pings_out} PINGs unanswered"
                    self._drop_socket()
                    continue
                self._pings_out += 1
                self._last_heard = now
                with contextlib.suppress(NatsConnectionError):
                    self._send_locked(b"PING\r\n")
                    self._pending_pongs.append(None)

    def _parse_buffer(self) -> str:
        """Handle every complete protocol line in the buffer; return a problem or ""."""
        data = bytes(self._buffer)  # one copy per read; slicing bytes is cheap
        pos = 0
        size = len(data)
        try:
            while pos < size:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > MAX_CONTROL_LINE:
                        return "protocol line too long"
                    break
                op = data[pos : pos + 4]
                if op in (b"MSG ", b"HMSG"):
                    after = self._take_message(data, pos + 4 + (op == b"HMSG"), end, op)
                    if after < 0:
                        break  # payload not complete yet
                    pos = after
                else:
                    self._handle_line(op.upper(), data[pos:end])
                    pos = end + 2
        except _ProtocolError as error:
            return str(error)
        finally:
            del self._buffer[:pos]
        return ""

    def _take_message(self, data: bytes, start: int, end: int, op: bytes) -> int:
        """Deliver the MSG/HMSG whose control line is ``data[start:end]``; return where the
        next line starts, or -1 when the payload has not fully arrived yet."""
        header = data[start:end].split()
        counts = 2 if op == b"HMSG" else 1
        if len(header) - counts not in (2, 3) or not all(
                part.isdigit() for part in header[-counts:]):
            raise _ProtocolError(f"bad message line: {data[start:end][:200]!r}")
        length = int(header[-1])
        if end + 2 + length + 2 > len(data):
            return -1
        self._deliver(header, counts, data[end + 2 : end + 2 + length])
        return end + 2 + length + 2

    def _handle_line(self, op: bytes, line: bytes) -> None:
        if op == b"PING":
            with self._send_lock, contextlib.suppress(NatsConnectionError):
                self._send_locked(b"PONG\r\n")
        elif op == b"PONG":
            with self._send_lock:
                waiter = self._pending_pongs.popleft() if self._pending_pongs else None
            if waiter is not None:
                waiter.set()
        elif op == b"-ERR":
            self._log_server_error(line)
        elif op == b"INFO":
            self._handle_async_info(line)
        # +OK needs nothing (verbose is off)

    def _deliver(self, header: list[bytes], counts: int, body: bytes) -> None:
        """Hand one MSG (counts=1) or HMSG (counts=2) to its subscription's callback."""
        sid = int(header[1])
        sub = self._subscriptions.get(sid)
        if sub is None:
            log.debug("message for a removed subscription dropped", extra={"sid": sid})
            return
        reply = header[2].decode() if len(header) - counts == 3 else ""
        status = 0
        payload = body
        if counts == 2:
            header_length = int(header[-2])
            status = _status_of(body[:header_length])
            payload = body[header_length:]
        try:
            sub.callback(Message(header[0].decode(), reply, payload, status))
        except Exception:
            log.exception("subscription callback failed", extra={"subject": sub.subject})

    def _log_server_error(self, line: bytes) -> None:
        text = _err_text(line)
        if "permissions violation" in text.lower():
            log.error("nats server refused an operation (connection kept): %s", text,
                      extra={"server_error": text})
        else:
            log.error("nats server error: %s", text, extra={"server_error": text})

    def _handle_async_info(self, line: bytes) -> None:
        try:
            info = json.loads(line[5:])
        except ValueError:
            log.warning("unreadable INFO from server")
            return
        self._add_discovered_servers(info)
        if info.get("ldm") and len(self._servers) > 1:
            log.warning("nats server entering lame duck mode: moving to another server",
                        extra={"server": self.server_url})
            raise _LeaveServer("server entered lame duck mode")
        if info.get("ldm"):
            log.warning("nats server entering lame duck mode and no other server is known",
                        extra={"server": self.server_url})

    # --- losing and giving up -----------------------------------------------------------

    def _send_locked(self, data: bytes) -> None:
        """Write with the send lock held; a failed write marks the connection lost."""
        sock = self._sock
        if sock is None:
            raise NotConnected("not connected")
        try:
            sock.sendall(data)
        except OSError as error:
            self._drop_socket()
            raise NotConnected(f"connection lost while sending: {error}") from None

    def _drop_socket(self) -> None:
        """Shut the socket so a blocked reader wakes at once (call with the send lock)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for waiter in self._pending_pongs:
            if waiter is not None:
                waiter.set()
        self._pending_pongs.clear()

    def _lose_connection(self, reason: str) -> None:
        with self._send_lock:
            self._drop_socket()
        log.warning("nats disconnected", extra={"server": self.server_url, "reason": reason})
        self._set_state(State.RECONNECTING)

    def _give_up(self, reason: str) -> None:
        self.gave_up_reason = reason
        log.error("nats reconnect gave up", extra={"reason": reason})
        self._set_state(State.CLOSED)
        self._discard_reconnect_buffer()
        if self._on_gave_up is not None:
            self._on_gave_up(reason)

    def _set_state(self, state: State) -> None:
        if state is self._state:
            return
        self._state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                log.exception("state listener failed")

    @property
    def max_payload(self) -> int:
        """The largest message payload the server accepts (its INFO ``max_payload``)."""
        return int(self.server_info.get("max_payload", 1048576))


def _sub_line(sub: Subscription) -> bytes:
    if sub.queue:
        return f"SUB {sub.subject} {sub.queue} {sub.sid}\r\n".encode()
    return f"SUB {sub.subject} {sub.sid}\r\n".encode()


def _status_of(headers: bytes) -> int:
    """The status code of a ``NATS/1.0 503`` header block, else 0."""
    first = headers.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) > 1 and first[1].isdigit() else 0


def _err_text(line: bytes) -> str:
    text = line[4:].decode("utf-8", "replace").strip()
    return text.strip("'") or "(no text)"

