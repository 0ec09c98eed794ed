"""The reader's work on one socket: bytes to events, messages to callbacks.

:class:`SocketReader` is the second of the three layers of a
:class:`~token_worker.nats.connection.NatsConnection` (after :mod:`token_worker.nats.link`):
what the reader thread does with the socket of the moment. It feeds 64 KiB reads to the
protocol parser (:mod:`token_worker.nats.protocol`), hands each message to its
subscription's callback, and acts on the rest: a PING is answered, a PONG wakes its
waiter, a ``-ERR`` that keeps the connection is logged (a refused subscription is marked),
an INFO teaches the server's limit and the cluster's other servers (lame duck mode moves
to another server). What callbacks publish while one read is handled goes out in one
write. Nothing that happens while serving escapes: it ends as the reason the socket is
lost, and the connection's life cycle takes it from there.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from token_worker.config import NatsConfig
from token_worker.logs import RateLimitedLog
from token_worker.nats import protocol
from token_worker.nats.link import SocketLink
from token_worker.nats.protocol import Control, Info, Message, ProtocolError, ServerError, Skipped
from token_worker.nats.server_pool import ServerPool
from token_worker.nats.subscriptions import (
    RefusedCallback,
    SubscribeCheck,
    Subscription,
    refused_by,
)

__all__ = ["SocketReader"]

log = logging.getLogger(__name__)
_warn_skipped = RateLimitedLog(log, logging.WARNING, "nats message skipped unread")
"""A message whose line is longer than we read (a huge reply subject): skipped, stream kept."""

READ_SIZE = 64 * 1024
"""Bytes asked of the socket per read: many messages per system call under load."""
SERVER_ERROR_LOG_INTERVAL = 1.0
"""Seconds between two log lines of one kind of ``-ERR`` that keeps the connection (a
permissions violation may come once per request: each line counts what it suppressed)."""


class SocketReader(SocketLink):
    """The reader thread's side of a connection (see the module docstring)."""

    def __init__(self, config: NatsConfig, *, on_refused: RefusedCallback | None = None
                 ) -> None:
        super().__init__(config)
        self._on_refused = on_refused
        self._refusals_log = RateLimitedLog(
            log, logging.ERROR, "nats server refused an operation (connection kept)",
            interval=SERVER_ERROR_LOG_INTERVAL)
        self._errors_log = RateLimitedLog(log, logging.ERROR, "nats server error",
                                          interval=SERVER_ERROR_LOG_INTERVAL)
        self._pool = ServerPool(config.urls, randomize=not config.no_randomize)
        self._subscriptions: dict[int, Subscription] = {}
        self._parser = protocol.Parser()
        self._early_events: list[protocol.Event] = []
        self._serving = False
        self.server_url = ""
        self.server_info: dict[str, Any] = {}

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
            if isinstance(waiter, SubscribeCheck):
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

    def _learn(self, info: dict[str, Any]) -> None:
        """Take what an INFO says: the payload limit and the cluster's other servers."""
        limit = info.get("max_payload")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            self.max_payload = limit
        for url in self._pool.learn(info.get("connect_urls"), self.server_url):
            log.info("nats server discovered", extra={"server": url})
