"""``token-request`` as a person runs it (the installed console script, a process of its
own) against a real worker, nats-server and IdP: the README's exit codes (0 a token, 1
anything unexpected, 2 a usage error, 3 NATS unreachable, 4 no token), the token shortened
unless ``--show-token``, and the secret read from an environment variable or stdin, never
from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import free_port
from tests.conftest import CAPTURED_LOG_LINES, remember_secret
from tests.integration.helpers import DEMO, make_config
from tests.integration.processes import IdpServer, NatsServer
from token_worker import TokenWorker

TOKEN_REQUEST = Path(sys.executable).parent / "token-request"
SHOWN = 8
"""Characters of the token printed without ``--show-token`` (then an ellipsis)."""


def token_request(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
                  timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The console script, with ``env`` added to this process's environment."""
    result = subprocess.run([str(TOKEN_REQUEST), *args], input=stdin or "", text=True,
                            capture_output=True, timeout=timeout, check=False,
                            env={**os.environ, **(env or {})})
    CAPTURED_LOG_LINES.extend(result.stderr.splitlines())  # scanned for secrets at the end
    if "--show-token" not in args:  # asked to print the token: its output is the token
        CAPTURED_LOG_LINES.extend(result.stdout.splitlines())
    return result


@pytest.fixture
def serving(nats_server: NatsServer, idp: IdpServer,
            start_worker: Callable[..., TokenWorker]) -> str:
    start_worker(make_config(nats_server.url, idp.url))
    return nats_server.url


def test_0_a_token_printed_shortened(serving: str, idp: IdpServer) -> None:
    result = token_request("--nats-url", serving, "--client-id", DEMO[0],
                           "--client-secret-env", "TW_SECRET", env={"TW_SECRET": DEMO[1]})
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["token_type"] == "Bearer" and reply["expires_in"] > 0
    shown = reply["access_token"]
    assert len(shown) == SHOWN + 1 and shown.endswith("…")
    full = json.loads(token_request(
        "--nats-url", serving, "--client-id", DEMO[0], "--client-secret-env", "TW_SECRET",
        "--show-token", env={"TW_SECRET": DEMO[1]}).stdout)["access_token"]
    remember_secret(full)
    assert full.startswith(shown[:SHOWN]) and len(full) > SHOWN + 1
    assert full not in result.stdout + result.stderr


def test_show_token_prints_a_token_the_idp_issued(serving: str, idp: IdpServer) -> None:
    result = token_request("--nats-url", serving, "--client-id", DEMO[0],
                           "--client-secret-env", "TW_SECRET", "--show-token",
                           env={"TW_SECRET": DEMO[1]})
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["access_token"]
    remember_secret(token)
    assert "…" not in token
    assert idp.introspect(token, *DEMO)["client_id"] == DEMO[0]


def test_the_secret_is_read_from_stdin(serving: str, idp: IdpServer) -> None:
    """Without --client-secret-env, the first line of stdin is the secret."""
    result = token_request("--nats-url", serving, "--client-id", DEMO[0], "--show-token",
                           stdin=DEMO[1] + "\n")
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["access_token"]
    remember_secret(token)
    assert idp.introspect(token, *DEMO)["client_id"] == DEMO[0]
    refused = token_request("--nats-url", serving, "--client-id", DEMO[0],
                            stdin="not-the-secret\n")
    assert refused.returncode == 4
    assert json.loads(refused.stdout)["error_code"] == "invalid_client"
    assert "not-the-secret" not in refused.stdout + refused.stderr


@pytest.mark.parametrize("args", [
    ["--nats-url", "nats://127.0.0.1:9"],                                 # neither id nor name
    ["--client-id", "a", "--credential", "b"],                            # both
    ["--client-id", "a", "--no-such-flag"],                               # unknown flag
    ["--client-id", "a", "--timeout", "soon"],                            # a bad value
    ["--credential", "orders", "--inbox-prefix", "a b"],                  # a bad inbox prefix
    ["--credential", "orders", "--nats-url", "http://127.0.0.1:4222"],    # not a NATS URL
])
def test_2_a_usage_error(args: list[str]) -> None:
    result = token_request(*args, stdin="s3cret-on-stdin\n")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""


def test_3_nats_unreachable() -> None:
    result = token_request("--nats-url", f"nats://127.0.0.1:{free_port()}", "--credential",
                           "orders")
    assert result.returncode == 3, result.stderr
    assert "NATS unreachable" in result.stderr


def test_4_an_error_reply_is_printed_with_its_code(serving: str) -> None:
    result = token_request("--nats-url", serving, "--client-id", DEMO[0],
                           "--client-secret-env", "TW_SECRET", env={"TW_SECRET": "wrong-one"})
    assert result.returncode == 4
    reply = json.loads(result.stdout)
    assert reply["error_code"] == "invalid_client" and "access_token" not in reply


def test_4_no_worker_answered(nats_server: NatsServer) -> None:
    result = token_request("--nats-url", nats_server.url, "--credential", "orders")
    assert result.returncode == 4
    assert "no worker is subscribed" in result.stderr and result.stdout == ""


@pytest.fixture
def silent_worker(nats_server: NatsServer,
                  start_worker: Callable[..., TokenWorker]) -> Iterator[str]:
    """A worker whose handler never answers in time (released after the test)."""
    release = threading.Event()
    start_worker(make_config(nats_server.url), lambda payload: (release.wait(10), b"{}")[1])
    try:
        yield nats_server.url
    finally:
        release.set()


def test_4_the_request_timed_out(silent_worker: str) -> None:
    result = token_request("--nats-url", silent_worker, "--client-id", DEMO[0],
                           "--timeout", "0.5", stdin=DEMO[1] + "\n")
    assert result.returncode == 4
    assert "no reply within the 0.5 s budget" in result.stderr


def test_1_anything_unexpected(serving: str) -> None:
    """A failure no code path expects (here: the client itself breaks) ends the process
    with 1, and the traceback does not show the secret."""
    script = (
        "import sys\n"
        "from token_worker import cli\n"
        "from token_worker.client.client import TokenClient\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('the client broke')\n"
        "TokenClient.request = broken\n"
        "sys.exit(cli.request_main(sys.argv[1:]))\n")
    result = subprocess.run(
        [sys.executable, "-c", script, "--nats-url", serving, "--client-id", DEMO[0],
         "--client-secret-env", "TW_SECRET"], text=True, capture_output=True, timeout=30,
        check=False, env={**os.environ, "TW_SECRET": DEMO[1]})
    assert result.returncode == 1
    assert "RuntimeError: the client broke" in result.stderr
    assert DEMO[1] not in result.stdout + result.stderr
