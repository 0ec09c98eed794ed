"""A TCP proxy on loopback that a test can cut and restore: a network partition between
one client and a real nats-server, while every other client stays connected."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.integration.processes import free_port


class PartitionProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``.

    ``cut()`` closes every forwarded connection and refuses new ones until ``restore()``;
    the server behind it never notices anything but a client that went away. ``stall()``
    is the silent kind of partition: connections stay open but nothing is read or
    forwarded either way (send buffers fill up) until ``resume()``.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> PartitionProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Drop every connection and refuse new ones."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in ([listener] if listener else []) + sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        self.start()

    def stall(self) -> None:
        """Stop reading and forwarding, both ways, without closing anything."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink, self._flowing),
                                 daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket, flowing: threading.Event) -> None:
    """Copy bytes one way until either side ends, then end both; while ``flowing`` is
    clear, read nothing (at most the read already under way gets through)."""
    with contextlib.suppress(OSError):
        while flowing.wait() and (data := source.recv(65536)):
            if not flowing.is_set():
                flowing.wait()
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
