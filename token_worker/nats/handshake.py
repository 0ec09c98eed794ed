"""pynats2, imported safely, and the handshake token-worker keeps from it.

Why pynats2 0.9.0 at all: it is the NATS client the project is required to build on (the
service token-worker re-creates used it), and the pin is to the one release whose
internals the subclass below overrides (``_recv``, ``_readline``, ``_send_connect_command``,
``_connect_tls``). It has traps, measured against a real server: it imports
``pkg_resources`` (gone from setuptools 82+); its reader spins a core once the server goes
away; any ``-ERR`` or a late message kills its reader while the socket stays open; its
``close()`` can hang; it announces protocol 0, so servers never send asynchronous INFO.
So token-worker takes only the handshake from it (URL, socket, INFO, TLS, CONNECT) and
does everything after it itself (:mod:`token_worker.nats.connection`).

The CONNECT options are built by one function, :func:`connect_options`, which receives
the server's INFO: authentication that signs the server's ``nonce`` (``nats.credsFile``,
``nats.nkeyFile``, through :mod:`token_worker.nkey_auth`) is added there, for every
connect and reconnect, ``tls://`` included. The CONNECT dict holds passwords, JWTs and
signatures: it is sent and never logged.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import socket
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from token_worker.config import NatsConfig
from token_worker.errors import HandshakeFailed, NatsConnectionError

GREETING_LIMIT = 1 << 20
"""Bytes of a server's greeting (its INFO line) read at most: a real INFO, even a large
cluster's with every ``connect_urls``, is a small fraction of it."""


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
PYNATS2_VERSION = importlib.metadata.version("pynats2")

OptionsBuilder = Callable[[dict[str, Any]], dict[str, Any]]
"""Builds the CONNECT options from the server's INFO."""


def connect_options(config: NatsConfig, name: str, *, no_responders: bool,
                    server_info: dict[str, Any]) -> dict[str, Any]:
    """The CONNECT options for one server; ``server_info`` is its INFO (``nonce``,
    ``auth_required``, ...), for authentication that must sign the nonce."""
    options: dict[str, Any] = {
        "name": name,
        "lang": "python",
        "version": PYNATS2_VERSION,
        "protocol": 1,  # the server sends asynchronous INFO (cluster changes, lame duck)
        "verbose": False,
        "pedantic": False,
        "echo": True,
        # Headers for everyone: the shared tier's JetStream calls send HPUB and read
        # header replies. With no_responders (requesters, and the worker for its JetStream
        # calls) the server says at once (a 503 status) when nobody listens on a subject.
        "headers": True,
        "no_responders": no_responders,
    }
    if config.username:
        options["user"] = config.username
        options["pass"] = config.password.reveal() if config.password else ""
    if config.token:
        options["auth_token"] = config.token.reveal()
    auth = config.auth()
    if auth is not None:  # read and signed at every connect: a rotated file is picked up
        options.update(auth.connect_auth_fields(server_info))
    return options


class Handshake(pynats2.NATSNoSubscribeClient):  # type: ignore[misc,name-defined]
    """pynats2's connection set-up with five fixes.

    It tries every address of the host, IPv6 included (pynats2 dials IPv4 only), shows
    each socket before connecting (``on_socket``: so ``close()`` can cut a connect that
    hangs), keeps the server's INFO (pynats2 drops it), sends the CONNECT built from that
    INFO, and fails on a closed socket instead of spinning on empty reads.
    """

    _socket_buffer: bytes

    def __init__(self, url: str, config: NatsConfig, build_options: OptionsBuilder,
                 on_socket: Callable[[socket.socket], None]) -> None:
        tls = config.tls
        super().__init__(
            url,
            name="token-worker",
            tls_cacert=tls.ca_file,
            tls_client_cert=tls.cert_file,
            tls_client_key=tls.key_file,
            tls_verify=tls.verify,
            socket_timeout=config.connect_timeout,
        )
        self._build_options = build_options
        self._on_socket = on_socket
        self.server_info: dict[str, Any] = {}
        self.due = float("inf")
        """When the connect attempt must be done (``time.monotonic()``): one
        ``nats.connectTimeout`` from the TCP connect for the greeting, TLS and the PONG."""

    @property
    def socket(self) -> socket.socket:
        """The connected socket (TLS-wrapped for ``tls://``)."""
        sock: socket.socket = self._socket
        return sock

    @property
    def leftover(self) -> bytes:
        """What the server sent after the lines the handshake read."""
        return self._socket_buffer

    def connect(self) -> None:
        """pynats2's ``connect()``, with every address of the host tried in turn (IPv6
        too), each socket shown to ``on_socket`` before its blocking TCP connect, and
        errors that say what went wrong."""
        options = self._conn_options
        timeout = self._socket_options["timeout"]
        self._socket = open_socket(options["hostname"], options["port"], timeout,
                                   self._on_socket)
        self.due = time.monotonic() + timeout
        _command, result = self._recv(pynats2.client.INFO_RE)
        left = self.due - time.monotonic()
        if result is None or left <= 0:
            raise HandshakeFailed("no NATS greeting (INFO) within the connect timeout: not a NATS "
                                  "server, or it does not answer")
        if bool(self.server_info.get("tls_required", False)) != options["tls"]:
            raise HandshakeFailed("server requires TLS: use a tls:// URL" if not options["tls"]
                                  else "server does not offer TLS: use a nats:// URL")
        self._socket.settimeout(left)  # the TLS handshake gets what is left, no more
        if options["tls"]:
            self._connect_tls()
            self._on_socket(self._socket)
        self._send(pynats2.client.CONNECT_OP, json.dumps(self._build_options(self.server_info)))

    def _recv(self, *commands: Any) -> Any:
        command, match = super()._recv(*commands)
        if match is not None and command is pynats2.client.INFO_RE:
            self.server_info = json.loads(match.group(1))
        return command, match

    def _readline(self, *, size: int | None = None) -> bytes:
        """The greeting's line, whole within the connect timeout (a server that trickles
        bytes or never ends its line times out like one that says nothing) and at most
        :data:`GREETING_LIMIT` long; each read is searched once, not the whole buffer."""
        buffer = bytearray(self._socket_buffer)
        searched = 0
        while (end := buffer.find(b"\r\n", searched)) < 0:
            if len(buffer) > GREETING_LIMIT:
                raise HandshakeFailed(f"the server's greeting is over {GREETING_LIMIT} bytes "
                                      "without a line end: not a NATS server")
            left = self.due - time.monotonic()
            if left <= 0:  # pynats2 reads a timeout as "no greeting"
                raise TimeoutError("no complete greeting within the connect timeout")
            self._socket.settimeout(left)
            chunk = self._socket.recv(65536)
            if not chunk:
                raise HandshakeFailed("server closed the connection during the handshake")
            searched = max(0, len(buffer) - 1)  # a "\r" that ended the last read
            buffer += chunk
        self._socket_buffer = bytes(buffer[end + 2:])
        return bytes(buffer[:end + 2])


def open_socket(host: str, port: int, timeout: float,
                on_socket: Callable[[socket.socket], None]) -> socket.socket:
    """A TCP connection to ``host`` (a name or an address, IPv6 without brackets): every
    address ``getaddrinfo`` gives is tried in its order, each with a socket of its own
    family and the whole connect timeout, as ``socket.create_connection`` does (pynats2
    made an ``AF_INET`` socket, which cannot reach ``::1``). Each socket is shown to
    ``on_socket`` before its blocking connect (closed if that raises); the last failure
    is raised when no address answers."""
    last: OSError | None = None
    for family, kind, proto, _name, address in socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            on_socket(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as error:
            sock.close()
            last = error
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(f"no address for {host!r}")


def describe_connect_error(error: BaseException) -> str:
    """Why one connect attempt failed. pynats2's exceptions have empty messages (their text
    sits in ``.line``, and "connection failed" means no INFO came), so ``str()`` alone
    said nothing."""
    if isinstance(error, NatsConnectionError) and str(error):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__} [errno {error.errno}]: {error.strerror}"
    line = getattr(error, "line", None)
    if line == "connection failed":
        return ("no NATS greeting (INFO) within the connect timeout: "
                "not a NATS server, or it does not answer")
    if isinstance(line, bytes):
        return f"unexpected answer {line[:80]!r}: not a NATS server"
    return f"{type(error).__name__}: {str(error) or line or repr(error)}"
