"""Readiness means subscribed: against a scripted NATS server (a socket speaking just
enough of the protocol), a worker is ready only once the server answered the PING sent
after its SUBs, at start and again after a reconnect; a socket that is back is not yet a
subscription that is back."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers import wait_until
from token_worker.config import Config, HealthConfig, NatsConfig
from token_worker.serve.worker import TokenWorker


class ScriptedServer:
    """Accepts connections one after the other: INFO, then a PONG for the handshake's PING;
    after that it counts SUBs and answers PINGs only while ``answering`` is set (held PINGs
    get their PONGs, in order, once it is set again). :meth:`drop` ends the connection."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.url = f"nats://127.0.0.1:{self._listener.getsockname()[1]}"
        self.answering = threading.Event()
        self.answering.set()
        self.connections = 0
        self.subs = 0
        """SUBs received on the current connection."""
        self.held = 0
        """PINGs received and not answered yet."""
        self._client: socket.socket | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._client = client
                self.connections += 1
                self.subs = self.held = 0
            threading.Thread(target=self._speak, args=(client,), daemon=True).start()

    def _speak(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            client.sendall(b'INFO {"server_id": "scripted", "max_payload": 1048576, '
                           b'"headers": true, "proto": 1}\r\n')
            buffered, handshake = b"", True
            while True:
                ready = self.answering.wait(0.05)
                if ready and self.held:
                    with self._lock:
                        pongs, self.held = self.held, 0
                    client.sendall(b"PONG\r\n" * pongs)
                client.settimeout(0.05)
                try:
                    data = client.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                buffered += data
                *lines, buffered = buffered.split(b"\r\n")
                for line in lines:
                    if line.startswith(b"SUB "):
                        self.subs += 1
                    elif line == b"PING":
                        if handshake or self.answering.is_set():
                            client.sendall(b"PONG\r\n")
                            handshake = False
                        else:
                            with self._lock:
                                self.held += 1

    def drop(self) -> None:
        """End the current connection, as a restarting server does."""
        with self._lock:
            client = self._client
        if client is not None:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.drop()


def readyz(port: int | None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def test_after_a_reconnect_ready_waits_for_the_pong_after_the_resent_subs(server):
    config = Config(name_suffix="ready", nats=NatsConfig(
        urls=(server.url,), reconnect_wait=0.05, max_reconnect=-1, ping_interval=60,
        connect_timeout=2), health=HealthConfig(port=0, host="127.0.0.1"))
    worker = TokenWorker(config, lambda payload: payload)
    worker.start()
    try:
        assert worker.is_ready  # start() waited for the server to confirm
        assert readyz(worker.health_port)[0] == 200
        subscribed = server.subs
        server.answering.clear()
        server.drop()
        wait_until(lambda: server.connections == 2 and server.subs == subscribed
                   and server.held, what="the SUBs and their PING re-sent after a reconnect")
        assert worker.connection_state.value == "connected"
        assert not worker.is_ready  # the socket is back, the subscriptions are not known
        status, body = readyz(worker.health_port)
        assert status == 503 and "token.request not confirmed by the server yet" in body
        server.answering.set()
        wait_until(lambda: worker.is_ready, what="ready once the PONG came")
        assert readyz(worker.health_port)[0] == 200
    finally:
        server.answering.set()
        worker.stop(timeout=2)
