"""The handshake's greeting read against servers that do not play by the rules: one that
trickles bytes, one whose greeting never ends, one whose line end is split between reads.
A rogue or broken server costs a connect attempt its connect timeout, never more, and
bounded memory; then the next server is tried."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.fakes import trickling_server
from tests.helpers import wait_until
from token_worker.config import NatsConfig
from token_worker.errors import HandshakeFailed
from token_worker.nats import protocol
from token_worker.nats.dial import await_first_pong, dial
from token_worker.nats.handshake import GREETING_LIMIT, Handshake


class ScriptedSocket:
    """What a server sends, one recv at a time; ``then`` runs before each recv (a test's
    way of letting time pass for the handshake's deadline)."""

    def __init__(self, chunks: Iterator[bytes], then: object = None) -> None:
        self.chunks = chunks
        self.reads = 0
        self.timeouts: list[float] = []
        self.then = then

    def settimeout(self, seconds: float) -> None:
        self.timeouts.append(seconds)

    def recv(self, _size: int) -> bytes:
        self.reads += 1
        if callable(self.then):
            self.then(self.reads)
        return next(self.chunks, b"")


def handshake(chunks: Iterator[bytes], then: object = None) -> tuple[Handshake, ScriptedSocket]:
    config = NatsConfig(urls=("nats://127.0.0.1:4222",), connect_timeout=2.0)
    shake = Handshake("nats://127.0.0.1:4222", config, lambda info: {}, lambda sock: None)
    sock = ScriptedSocket(chunks, then)
    shake._socket = sock
    shake.due = float("inf")
    return shake, sock


def test_a_line_end_split_between_two_reads_ends_the_line_there():
    shake, _ = handshake(iter([b'INFO {"server_id": "a"}\r', b"\nPING\r\n"]))
    assert shake._readline() == b'INFO {"server_id": "a"}\r\n'
    assert shake.leftover == b"PING\r\n"


def test_a_greeting_that_never_ends_its_line_is_refused_at_the_limit():
    endless = iter(lambda: b"x" * 65536, None)
    shake, sock = handshake(endless)
    with pytest.raises(HandshakeFailed, match=f"over {GREETING_LIMIT} bytes"):
        shake._readline()
    assert sock.reads == GREETING_LIMIT // 65536 + 1  # read no further than the limit


def test_a_trickled_greeting_gets_the_connect_timeout_not_one_per_byte():
    """Each byte would restart a per-read timeout; the deadline is the whole greeting's."""
    shake, sock = handshake(iter(lambda: b"I", None))

    def time_passes(reads: int) -> None:
        if reads == 50:  # the connect timeout is over after the 50th byte
            shake.due = 0.0

    sock.then = time_passes
    with pytest.raises(TimeoutError):
        shake._readline()
    assert sock.reads == 50
    assert all(0 < timeout <= 2.0 or timeout == float("inf") for timeout in sock.timeouts)


def test_a_server_that_trickles_its_greeting_is_given_up_and_its_socket_closed():
    with trickling_server() as (port, hung_up):
        config = NatsConfig(urls=(f"nats://127.0.0.1:{port}",), connect_timeout=0.3)
        with pytest.raises(HandshakeFailed, match="no NATS greeting"):
            dial(f"nats://127.0.0.1:{port}", config, lambda info: {}, lambda sock: None)
        wait_until(hung_up.is_set, what="the server sees the client's socket closed")


def test_the_pong_gets_what_is_left_of_the_attempts_deadline_not_a_new_timeout():
    """The greeting, TLS and the PONG share one connect timeout: with none of it left the
    wait for the PONG ends at once, even on a socket where nothing will ever arrive."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with pytest.raises(HandshakeFailed, match="no PONG after CONNECT"):
            await_first_pong(ours, protocol.Parser(), b"", time.monotonic() - 0.001)
        assert theirs.recv(16) == b"PING\r\n"
