"""token-request and token-worker as a user runs them: processes, a terminal (a pty), pipes,
the environment, exit codes, help and versions."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.integration.helpers import DEMO, make_config
from token_worker import __version__

REQUEST = ("import sys\nfrom token_worker.cli import request_main\n"
           "sys.exit(request_main())")
"""token-request, run as its console script runs it."""
IN_A_TERMINAL = ("import os, pty, sys\nstatus = pty.spawn(sys.argv[1:])\n"
                 "sys.exit(os.waitstatus_to_exitcode(status))")
"""Runs a command with a pseudo-terminal as its controlling terminal; what the terminal
shows (prompts, echoed keys) comes out on standard output."""


def request_command(*args: str) -> list[str]:
    return [sys.executable, "-c", REQUEST, *args]


def run_request(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("NATS_URL", "TW_SECRET")}
    environment.update(env or {})
    return subprocess.run(request_command(*args), input=stdin, capture_output=True,
                          text=True, env=environment, timeout=timeout, check=False)


@pytest.fixture
def serving(nats_server: Any, idp: Any, start_worker: Any) -> str:
    start_worker(make_config(nats_server.url, idp.url))
    return str(nats_server.url)


def test_token_request_reads_nats_url_from_the_environment(serving):
    done = run_request("--client-id", DEMO[0], "--client-secret-env", "TW_SECRET",
                       env={"NATS_URL": serving, "TW_SECRET": DEMO[1]})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["token_type"] == "Bearer"


def test_a_secret_typed_at_a_terminal_is_asked_for_and_never_echoed(serving):
    environment = {**os.environ, "NATS_URL": serving}
    process = subprocess.Popen(
        [sys.executable, "-c", IN_A_TERMINAL, *request_command("--client-id", DEMO[0])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=environment)
    assert process.stdin is not None and process.stdout is not None
    shown = read_until(process.stdout.fileno(), b"client secret for demo-service: ")
    process.stdin.write(DEMO[1].encode() + b"\n")
    process.stdin.flush()
    rest = process.stdout.read()
    assert process.wait(30) == 0, (shown + rest).decode(errors="replace")
    terminal = (shown + rest).decode(errors="replace")
    assert DEMO[1] not in terminal  # no echo
    assert '"token_type": "Bearer"' in terminal


def read_until(fd: int, wanted: bytes, timeout: float = 20.0) -> bytes:
    """What ``fd`` gives until ``wanted`` has been seen."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {wanted!r} on the terminal; it showed {seen!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                pytest.fail(f"the terminal closed; it showed {seen!r}")
            seen += chunk
    return seen


def test_a_secret_from_a_pipe_is_read_without_a_prompt(serving):
    done = run_request("--nats-url", serving, "--client-id", DEMO[0], stdin=DEMO[1] + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["access_token"].endswith("…")


def test_an_unset_or_empty_secret_variable_exits_2_naming_it():
    unset = run_request("--client-id", DEMO[0], "--client-secret-env", "TW_SECRET")
    assert unset.returncode == 2
    assert unset.stderr.strip() == ("token-request: environment variable TW_SECRET "
                                    "(--client-secret-env) is not set")
    empty = run_request("--client-id", DEMO[0], "--client-secret-env", "TW_SECRET",
                        env={"TW_SECRET": ""})
    assert empty.returncode == 2 and "TW_SECRET is empty" in empty.stderr
    piped_nothing = run_request("--client-id", DEMO[0], stdin="")
    assert piped_nothing.returncode == 2 and "standard input is empty" in piped_nothing.stderr


def test_no_worker_is_reported_when_the_timeout_ends_not_later(nats_server):
    started = time.monotonic()
    done = run_request("--nats-url", nats_server.url, "--credential", "orders",
                       "--timeout", "1")
    took = time.monotonic() - started
    assert done.returncode == 4
    asked = re.search(r"no worker is subscribed to token\.named\.orders \(asked for "
                      r"([0-9.]+) s\)", done.stderr)
    assert asked is not None, done.stderr
    assert 0.5 <= float(asked.group(1)) <= 1.0  # asked again until --timeout, not longer
    assert took < 5.0  # the rest is the interpreter starting


def test_every_option_has_help_with_its_default_and_no_markup():
    for command in (request_command("--help"),
                    [sys.executable, "-m", "token_worker", "--help"]):
        shown = subprocess.run(command, capture_output=True, text=True, timeout=60,
                               check=True).stdout
        assert "``" not in shown
        options = re.split(r"\n(?=  -)", shown.split("options:", 1)[1])[1:]
        for option in options:
            if option.lstrip().startswith(("-h,", "--version", "-version")):
                continue
            assert "default" in option, option
    request_help = " ".join(subprocess.run(request_command("--help"), capture_output=True,
                                           text=True, timeout=60, check=True).stdout.split())
    for variable in ("NATS_URL", "NATS_CREDS", "NATS_NKEY", "TOKEN_SUBJECT", "NAMED_SUBJECT"):
        assert f"env {variable}" in request_help


def test_both_commands_tell_their_version_and_python_dash_m_runs_the_worker():
    request = subprocess.run(request_command("--version"), capture_output=True, text=True,
                             timeout=60, check=True)
    assert request.stdout.strip() == f"token-request {__version__}"
    worker = subprocess.run([sys.executable, "-m", "token_worker", "--version"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert worker.stdout.strip() == f"token-worker {__version__}"
    bad = subprocess.run([sys.executable, "-m", "token_worker", "-config", "/nonexistent"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "token-worker: invalid config config" in bad.stderr
