"""The dev IdP (dev/idp/server.mjs) in its optional modes: HTTPS with a private CA,
tls_client_auth, resource indicators, IPv6, a cap on client assertion lifetimes.

Standalone on purpose (standard library only, no import from the other test helpers), so
it works wherever the tests tree is moved. The IdP picks its own port (``IDP_PORT=0``) and
this reads the URL it prints, so there is no race for a free port and it works on ``::1``.

    with ModalIdp(clients=[...], tls=server_cert, ca_file=ca.cert_file,
                  client_ca=ca.cert_file,
                  resources="https://api.example") as idp:
        idp.token_url, idp.issuer, idp.stats()
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any, Protocol

TOKEN_ROUTE = "/protocol/openid-connect/token"


def _idp_dir() -> Path:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "dev" / "idp"
        if (candidate / "server.mjs").exists():
            return candidate
    raise RuntimeError("dev/idp/server.mjs not found above " + __file__)


IDP_DIR = _idp_dir()


class CertAndKey(Protocol):
    @property
    def cert_file(self) -> Path: ...

    @property
    def key_file(self) -> Path: ...


class ModalIdp:
    """One dev IdP process. ``tls`` (anything with ``cert_file`` and ``key_file``, e.g.
    ``tests.pki.Issued``) makes it HTTPS, and ``ca_file`` is the CA that signed it;
    ``client_ca`` (a PEM path) turns on
    tls_client_auth; ``resources`` is IDP_RESOURCES; ``host`` is IDP_HOST."""

    def __init__(self, *, clients: list[dict[str, Any]] | None = None,
                 host: str = "127.0.0.1", tls: CertAndKey | None = None,
                 ca_file: Path | str | None = None,
                 client_ca: Path | str | None = None, resources: str | None = None,
                 assertion_max_age: int | None = None, ttl: int = 300,
                 realm: str = "phoenix", extra_env: dict[str, str] | None = None) -> None:
        env = dict(os.environ, IDP_PORT="0", IDP_HOST=host, IDP_TOKEN_TTL=str(ttl),
                   IDP_REALM=realm)
        for name in ("IDP_CLIENTS", "IDP_TLS_CERT", "IDP_TLS_KEY", "IDP_TLS_CLIENT_CA",
                     "IDP_RESOURCES", "IDP_ASSERTION_MAX_AGE", "IDP_DELAY_MS"):
            env.pop(name, None)
        if clients is not None:
            env["IDP_CLIENTS"] = json.dumps(clients)
        if tls is not None:
            env["IDP_TLS_CERT"] = str(tls.cert_file)
            env["IDP_TLS_KEY"] = str(tls.key_file)
        if client_ca is not None:
            env["IDP_TLS_CLIENT_CA"] = str(client_ca)
        if resources is not None:
            env["IDP_RESOURCES"] = resources
        if assertion_max_age is not None:
            env["IDP_ASSERTION_MAX_AGE"] = str(assertion_max_age)
        env.update(extra_env or {})
        self._env = env
        self.ca_file = ca_file
        """The CA that signed ``tls`` (what ``stats`` and ``reset`` trust over HTTPS)."""
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        """``scheme://host:port`` (IPv6 hosts bracketed)."""
        self.issuer = ""
        self.token_path = ""
        self.output: list[str] = []
        """Everything the IdP printed (its warnings), for a failing test to show."""

    @property
    def token_url(self) -> str:
        return self.url + self.token_path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self, timeout: float = 20.0) -> ModalIdp:
        if not (IDP_DIR / "node_modules" / "oidc-provider").exists():
            raise RuntimeError("dev/idp is not installed: run `npm ci --prefix dev/idp`")
        self.process = subprocess.Popen(
            ["node", "server.mjs"], cwd=IDP_DIR, env=self._env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        ready = threading.Event()

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line.rstrip("\n"))
                if line.startswith("{") and not ready.is_set():
                    document = json.loads(line)
                    self.url = document["listening"]
                    self.issuer = document["issuer"]
                    self.token_path = document["token_path"]
                    ready.set()

        threading.Thread(target=read, daemon=True, name="idp-output").start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("the IdP did not start:\n" + "\n".join(self.output))
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

    def __enter__(self) -> ModalIdp:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _open(self, path: str, data: bytes | None) -> Any:
        context = None
        if self.url.startswith("https:"):
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None)
        request = urllib.request.Request(self.url + path, data=data)
        with urllib.request.urlopen(request, timeout=5, context=context) as answer:
            return json.load(answer)

    def stats(self) -> dict[str, Any]:
        """``/_test/stats``: token_calls, token_calls_by_auth_method,
        client_cert_token_calls, last_token_request, token_requests."""
        result: dict[str, Any] = self._open("/_test/stats", None)
        return result

    def reset(self) -> None:
        """Zero the counters and forget the recorded token requests."""
        self._open("/_test/reset", b"")
