"""Helpers of the real-server suite: the test IdP's clients, configs, requests, a
requester built on nats-py, worker processes and TLS certificates."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats as nats_py
import pytest

from tests import ROOT
from tests.conftest import CAPTURED_LOG_LINES, remember_secret
from tests.integration.processes import TOKEN_PATH
from token_worker.config import Config, IdpConfig, NatsConfig

DEMO = ("demo-service", "demo-secret-for-tests")
BASIC = ("basic-service", "basic-secret-for-tests")
SCOPED = ("scoped-service", "scoped-secret-for-tests")
TEST_CLIENTS = [
    {"client_id": DEMO[0], "client_secret": DEMO[1],
     "token_endpoint_auth_method": "client_secret_post"},
    {"client_id": BASIC[0], "client_secret": BASIC[1],
     "token_endpoint_auth_method": "client_secret_basic"},
    {"client_id": SCOPED[0], "client_secret": SCOPED[1],
     "token_endpoint_auth_method": "client_secret_post", "scope": "read"},
]
"""The clients the test IdP knows (its secrets are scanned for in every log line)."""
remember_secret(*(client["client_secret"] for client in TEST_CLIENTS))

SCRIPT = ROOT / "bin" / "token-worker"
SHIPPED_AUTHORIZATION = ROOT / "deploy" / "nats" / "authorization.conf"
"""The NATS authorization the deployment guide ships."""
SHIPPED_PASSWORDS = {"token-worker": "worker-pass-for-tests",
                     "orders": "orders-pass-for-tests",
                     "billing": "billing-pass-for-tests",
                     "monitor": "monitor-pass-for-tests"}
"""Each user of the shipped authorization and its password in these tests."""
SHIPPED_ENV = {"TOKEN_WORKER_PASSWORD": SHIPPED_PASSWORDS["token-worker"],
               "ORDERS_PASSWORD": SHIPPED_PASSWORDS["orders"],
               "BILLING_PASSWORD": SHIPPED_PASSWORDS["billing"],
               "MONITOR_PASSWORD": SHIPPED_PASSWORDS["monitor"]}
"""The environment the shipped authorization reads its passwords from."""
remember_secret(*SHIPPED_PASSWORDS.values())


def make_config(nats_url: str, idp_url: str = "http://127.0.0.1:9", **overrides: Any) -> Config:
    """A config for tests: fast reconnects and pings; overrides by Config field name, or
    ``nats=dict(...)`` / ``idp=dict(...)`` for the nested parts."""
    nats_overrides = overrides.pop("nats", {})
    idp_overrides = overrides.pop("idp", {})
    nats = NatsConfig(urls=tuple(nats_url.split(",")), reconnect_wait=0.2, max_reconnect=-1,
                      connect_timeout=1.0, ping_interval=1.0, max_pings_out=2)
    idp = IdpConfig(url=idp_url, token_path=TOKEN_PATH, timeout=2.0)
    return Config(name_suffix=overrides.pop("name_suffix", "test"),
                  nats=replace(nats, **nats_overrides), idp=replace(idp, **idp_overrides),
                  **overrides)


def token_request(client: tuple[str, str], request_id: str = "r-1", **extra: Any) -> dict[str, Any]:
    return {"request_id": request_id, "client_id": client[0], "client_secret": client[1],
            "timestamp": "2026-11-29T12:00:00Z", **extra}


class Requester:
    """A requester built on nats-py, an independent client: it proves the wire contract
    the way third-party requesters see it. Synchronous, for tests."""

    def __init__(self, url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._nc = self.run(nats_py.connect(url, allow_reconnect=False))

    @property
    def nc(self) -> Any:
        """The nats-py connection, for a test that drives nats-py itself (with :meth:`run`)."""
        return self._nc

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on this requester's event loop and return its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def request_raw(self, payload: bytes, *, subject: str = "token.request",
                    timeout: float = 5.0) -> bytes:
        message = self.run(self._nc.request(subject, payload, timeout=timeout), timeout + 5)
        return bytes(message.data)

    def request(self, body: Any, **kwargs: Any) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if isinstance(body, dict) and isinstance(body.get("client_secret"), str):
            remember_secret(body["client_secret"])
        reply = json.loads(self.request_raw(raw, **kwargs))
        assert isinstance(reply, dict)
        if isinstance(reply.get("access_token"), str):
            remember_secret(reply["access_token"])
        return reply

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.run(self._nc.publish(subject, payload, reply=reply))
        self.run(self._nc.flush())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self.run(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


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


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def issue_certificate(directory: Path, name: str, subject: str, *extensions: str) -> None:
    """``<name>.key`` and ``<name>.pem``, signed by the test CA in ``directory``. Python
    3.13 verifies strictly (VERIFY_X509_STRICT): the extensions a real CA sets."""
    _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
             "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (directory / f"{name}.ext").write_text("\n".join((
        "basicConstraints=CA:FALSE", "authorityKeyIdentifier=keyid,issuer",
        "subjectKeyIdentifier=hash", "keyUsage=critical,digitalSignature,keyEncipherment",
        *extensions)) + "\n")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem",
             "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem")


def tls_certificates(directory: Path) -> Path:
    """``ca.pem`` (with ``ca.key``) and a ``server.pem``/``server.key`` for 127.0.0.1 in
    ``directory``, made with the openssl CLI; :func:`issue_certificate` adds more."""
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.pem")
    issue_certificate(directory, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1",
                      "extendedKeyUsage=serverAuth")
    return directory
