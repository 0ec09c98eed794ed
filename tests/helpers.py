"""Helpers shared by test modules (test modules never import each other)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CAPTURED_LOG_LINES
from tests.servers import ROOT
from token_worker.errors import NotConnected, PayloadTooLarge
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.nats.subscriptions import Subscription

SCRIPT = ROOT / "bin" / "token-worker"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               what: str = "condition") -> float:
    """Poll ``predicate``; return the seconds it took, fail the test after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


class WorkerProcess:
    """``bin/token-worker`` in a child process; its stderr (JSON logs) is collected."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("POD_NAME", "WORKER_NAME_SUFFIX")}
        full_env.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args], env=full_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            CAPTURED_LOG_LINES.append(line.rstrip("\n"))

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def wait_for_log(self, message: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("message") == message:
                    return record
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        pytest.fail(f"no log line {message!r}; got: {self.lines[-10:]}")

    def finish(self, timeout: float = 15) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class StubConnection:
    """A NATS connection with no server, for unit tests of the worker (it has what
    ``token_worker.serve.replying.Connection`` asks for).

    :meth:`deliver` plays a message arriving from the server; ``published`` lists what was
    sent. ``on_connect``, if set, runs inside :meth:`connect` (to block or fail there).
    """

    def __init__(self, *, max_payload: int = 1024 * 1024) -> None:
        self.max_payload = max_payload
        self.state = State.DISCONNECTED
        self.server_url = "nats://stub:4222"
        self.reconnects = 0
        self.buffered_bytes = 0
        self.published: list[tuple[str, bytes]] = []
        self.subscriptions: dict[int, Subscription] = {}
        self.on_connect: Callable[[], None] | None = None
        self.connect_calls = 0
        self.closed = threading.Event()
        self._sent = threading.Condition()
        self._next_sid = 1

    @property
    def is_connected(self) -> bool:
        return self.state is State.CONNECTED

    def connect(self) -> None:
        self.connect_calls += 1
        if self.on_connect is not None:
            self.on_connect()
        self.state = State.CONNECTED

    def close(self, timeout: float = 5.0) -> None:
        self.state = State.CLOSED
        self.closed.set()

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Subscription:
        subscription = Subscription(self._next_sid, subject, queue, callback)
        self._next_sid += 1
        self.subscriptions[subscription.sid] = subscription
        return subscription

    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None:
        self.subscriptions.pop(sub.sid, None)

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        if not self.is_connected:
            raise NotConnected("stub: not connected")
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(len(payload), self.max_payload)
        with self._sent:
            self.published.append((subject, payload))
            self._sent.notify_all()

    def flush(self, timeout: float) -> None:
        if not self.is_connected:
            raise NotConnected("stub: not connected")

    def deliver(self, subject: str, payload: bytes, reply: str = "") -> None:
        """A message from the server, on the calling thread (the reader thread's role)."""
        for subscription in list(self.subscriptions.values()):
            if subscription.subject == subject:
                subscription.callback(Message(subject, reply, payload))

    def replies_to(self, subject: str) -> list[bytes]:
        with self._sent:
            return [payload for sent_to, payload in self.published if sent_to == subject]

    def wait_for_reply(self, subject: str, timeout: float = 5.0) -> bytes:
        with self._sent:
            if not self._sent.wait_for(lambda: any(to == subject for to, _ in self.published),
                                       timeout):
                pytest.fail(f"no reply published to {subject} within {timeout} s")
            return next(payload for to, payload in self.published if to == subject)


def spy_on_signal_handlers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wrap every signal handler installed from now on, and return the list where each
    lock it takes (and each call into ``threading`` or ``logging``) is recorded: a handler
    that takes a lock the interrupted main thread holds deadlocks the process."""
    taken: list[str] = []

    def profiler(frame: Any, event: str, arg: Any) -> None:
        filename = frame.f_code.co_filename
        if event == "c_call" and getattr(arg, "__name__", "") in ("acquire", "__enter__"):
            taken.append(repr(arg))
        elif event == "call" and (filename.endswith("threading.py")
                                  or filename.endswith(os.path.join("logging", "__init__.py"))):
            taken.append(f"{filename}:{frame.f_code.co_name}")

    def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
        def spy(signum: int, frame: Any) -> None:
            sys.setprofile(profiler)
            try:
                handler(signum, frame)
            finally:
                sys.setprofile(None)
        return spy

    real_signal = signal.signal
    monkeypatch.setattr(signal, "signal", lambda sig, handler: real_signal(
        sig, wrap(handler) if callable(handler) else handler))
    return taken


def tls_certificates(directory: Path) -> Path:
    """``ca.pem`` and a ``server.pem``/``server.key`` for 127.0.0.1 in ``directory``, made
    with the openssl CLI, with the extensions Python 3.13's strict verification wants."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (directory / "server.ext").write_text("\n".join((
        "basicConstraints=CA:FALSE", "authorityKeyIdentifier=keyid,issuer",
        "subjectKeyIdentifier=hash", "keyUsage=critical,digitalSignature,keyEncipherment",
        "subjectAltName=IP:127.0.0.1", "extendedKeyUsage=serverAuth")) + "\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "server.ext", "-out", "server.pem")
    return directory


class TwoClocks:
    """The wall clock tokens expire on and the monotonic one leases and retries wait on,
    both moved by hand (for the shared tier and the broker's unit tests: no sleeping)."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1000.0

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds
