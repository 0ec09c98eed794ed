"""Dialing one NATS server: pynats2's handshake, then proof that CONNECT was accepted.

A server that refuses the credentials answers the first PING with ``-ERR``, not ``PONG``,
and may only then close the socket; a connection counts as made once that PING came back
as PONG. What the server sent after the PONG in the same read is handed on, so the reader
loses nothing. The reconnect policy (which servers, how often) is the connection's
(:mod:`token_worker.nats.reconnect`, :mod:`token_worker.nats.server_pool`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from token_worker.config import NatsConfig
from token_worker.errors import HandshakeFailed
from token_worker.nats import protocol
from token_worker.nats.handshake import Handshake, OptionsBuilder
from token_worker.nats.protocol import Control, ProtocolError, ServerError

__all__ = ["Dialed", "await_first_pong", "dial"]

FIRST_READ_SIZE = 64 * 1024
"""Bytes asked of the socket per read while waiting for the first PONG."""


@dataclass
class Dialed:
    """A server that accepted CONNECT: a blocking socket, ready for the reader."""

    url: str
    sock: socket.socket
    parser: protocol.Parser
    """The parser that read the handshake, holding any partial line after the PONG."""
    early: list[protocol.Event]
    """Events that came after the first PONG in the same read, for the reader."""
    info: dict[str, Any]
    """The server's INFO."""


def dial(url: str, config: NatsConfig, build_options: OptionsBuilder,
         on_socket: Callable[[socket.socket], None]) -> Dialed:
    """Connect to ``url`` and prove the server accepted CONNECT. ``on_socket`` sees the
    socket before any blocking call (so a close can cut a hanging connect); on failure the
    socket is closed and the error raised."""
    handshake = Handshake(url, config, build_options, on_socket)
    parser = protocol.Parser()
    try:
        handshake.connect()
        sock = handshake.socket
        early = await_first_pong(sock, parser, handshake.leftover, handshake.due)
        sock.settimeout(None)  # blocking: a timeout costs a poll() per recv and send
    except BaseException:
        with contextlib.suppress(Exception):
            handshake.socket.close()
        raise
    return Dialed(url, sock, parser, early, handshake.server_info)


def await_first_pong(sock: socket.socket, parser: protocol.Parser, leftover: bytes,
                     deadline: float) -> list[protocol.Event]:
    """Prove the server accepted CONNECT: PING must come back as PONG, not as -ERR, by
    ``deadline`` (``time.monotonic()``: the connect attempt's, greeting included).
    Returns what came after the PONG in the same read, for the reader."""
    sock.sendall(b"PING\r\n")
    events = parser.feed(leftover)
    while True:
        for index, event in enumerate(events):
            if event is Control.PONG:
                return events[index + 1:]
            if isinstance(event, ServerError):
                raise HandshakeFailed(f"server refused the connection: {event.text}")
            if isinstance(event, ProtocolError):
                raise HandshakeFailed(f"not the NATS protocol: {event.reason}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise HandshakeFailed("no PONG after CONNECT")
        sock.settimeout(left)  # a server that trickles bytes gets no more than the timeout
        try:
            chunk = sock.recv(FIRST_READ_SIZE)
        except TimeoutError:
            raise HandshakeFailed("no PONG after CONNECT") from None
        if not chunk:
            raise HandshakeFailed("server closed the connection after CONNECT")
        events = parser.feed(chunk)
