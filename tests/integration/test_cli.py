"""bin/token-worker as a pod runs it: real processes, signals, exit codes and log lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import ROOT
from tests.conftest import remember_secret
from tests.helpers import wait_until
from tests.integration.helpers import DEMO, TEST_CLIENTS, WorkerProcess, token_request
from tests.integration.processes import IdpServer, NatsServer

SCRIPT = ROOT / "bin" / "token-worker"


@pytest.fixture
def run_worker():
    started: list[WorkerProcess] = []

    def run(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(*args, env=env)
        started.append(worker)
        return worker

    yield run
    for worker in started:
        worker.stop()


def fast_env(nats: NatsServer, idp_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    return {"NATS_URL": nats.url, "IDP_URL": idp_url, "RECONNECT_WAIT": "0.2",
            "LOG_LEVEL": "debug"}


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["-reconnect"], {}, "unrecognized arguments"),
        ([], {"RECONNECT_WAIT": "-3"}, "nats.reconnectWait (from env RECONNECT_WAIT)"),
        ([], {"IDP_TIMEOUT": "1e10"}, "idp.timeout (from env IDP_TIMEOUT): must be at most"),
        (["--idp-url", "idp.example.com"], {}, "idp.url (from flag -idp-url)"),
        ([], {"NATS_URL": "nats://admin:pa55word-xyz@h:4222"}, "nats.url (from env NATS_URL)"),
        (["-config", "/nonexistent/app.json"], {}, "config (from flag -config"),
    ],
)
def test_bad_config_exits_2_with_one_line_naming_field_and_source(args, env, expected,
                                                                  run_worker):
    worker = run_worker(*args, env=env)
    assert worker.finish() == 2
    assert expected in "\n".join(worker.lines)
    problem = [line for line in worker.lines if "token-worker:" in line or "error:" in line]
    assert len(problem) == 1, worker.lines
    assert "pa55word-xyz" not in "\n".join(worker.lines)


def test_bad_config_file_names_the_file(tmp_path, run_worker):
    path = tmp_path / "app.json"
    path.write_text(json.dumps({"nats": {"reconnectWait": -1}}))
    worker = run_worker("-config", str(path))
    assert worker.finish() == 2
    assert f"nats.reconnectWait (from file {path})" in worker.lines[-1]


def test_a_config_file_giving_a_key_twice_exits_2_naming_the_key_and_the_file(tmp_path,
                                                                              run_worker):
    path = tmp_path / "app.json"
    path.write_text('{"idp": {"url": "https://idp.internal"}, "idp": {"timeout": 4}}')
    worker = run_worker("-config", str(path))
    assert worker.finish() == 2
    assert f"invalid config idp (from file {path}): given more than once" in worker.lines[-1]


def test_unique_client_names_in_connz_for_flag_env_pod_name_and_host(nats_server, run_worker):
    env = fast_env(nats_server)
    workers = [
        run_worker("-name-suffix", "from-flag", env={**env, "POD_NAME": "ignored"}),
        run_worker(env={**env, "WORKER_NAME_SUFFIX": "from-env", "POD_NAME": "ignored"}),
        run_worker(env={**env, "POD_NAME": "token-worker-5d4f9b8c7d"}),
        run_worker(env=env),
    ]
    for worker in workers:
        worker.wait_for_log("serving")
    names = nats_server.client_names()
    host = os.uname().nodename
    assert names == sorted(["Token Worker-from-flag", "Token Worker-from-env",
                            "Token Worker-token-worker-5d4f9b8c7d", f"Token Worker-{host}"])
    token_subscriptions = [sub for conn in nats_server.connz()
                           for sub in conn.get("subscriptions_list_detail", [])
                           if sub["subject"] == "token.request"]
    assert len(token_subscriptions) == 4
    assert {sub["qgroup"] for sub in token_subscriptions} == {"token-workers"}
    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish() == 0


def test_sigterm_during_a_slow_request_still_delivers_its_reply(nats_server, run_worker,
                                                                requester_factory):
    slow_idp = IdpServer(clients=TEST_CLIENTS, delay_ms=1500).start()
    try:
        worker = run_worker("-name-suffix", "slow", env=fast_env(nats_server, slow_idp.url))
        worker.wait_for_log("serving")
        requester = requester_factory(nats_server.url)
        reply: dict = {}
        asking = threading.Thread(target=lambda: reply.update(
            requester.request(token_request(DEMO, "in-flight"), timeout=10)))
        asking.start()
        wait_until(lambda: slow_idp.token_calls() == 1,  # counted on arrival, then 1.5 s
                   what="the request to wait on the slow IdP")
        worker.process.send_signal(signal.SIGTERM)
        asking.join(15)
        assert worker.finish() == 0
        assert reply["request_id"] == "in-flight"
        assert reply["access_token"]
        messages = [r["message"] for r in worker.records()]
        assert messages.index("draining") < messages.index("token issued") < messages.index(
            "stopped")
    finally:
        slow_idp.stop()


def test_sighup_with_a_request_in_flight_is_logged_and_the_reply_arrives(nats_server,
                                                                       run_worker,
                                                                       requester_factory):
    slow_idp = IdpServer(clients=TEST_CLIENTS, delay_ms=1000).start()
    try:
        worker = run_worker("-name-suffix", "hup", env=fast_env(nats_server, slow_idp.url))
        worker.wait_for_log("serving")
        requester = requester_factory(nats_server.url)
        reply: dict = {}
        asking = threading.Thread(target=lambda: reply.update(
            requester.request(token_request(DEMO, "in-flight"), timeout=10)))
        asking.start()
        wait_until(lambda: slow_idp.token_calls() == 1, what="the request at the slow IdP")
        worker.process.send_signal(signal.SIGHUP)
        hangup = worker.wait_for_log("signal received")
        asking.join(15)
        assert (hangup["signal"], reply["request_id"]) == ("SIGHUP", "in-flight")
        assert reply["access_token"]
        assert worker.process.poll() is None  # still serving
        again = requester.request(token_request(DEMO, "after"), timeout=10)
        assert again["request_id"] == "after" and again["token_source"] == "cache"
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish() == 0
        messages = [r["message"] for r in worker.records()]
        assert messages.count("draining") == 1
        assert messages.index("signal received") < messages.index("token issued")
    finally:
        slow_idp.stop()


def test_server_gone_for_good_exits_3_after_the_configured_attempts(nats_server, run_worker):
    worker = run_worker(env={**fast_env(nats_server), "MAX_RECONNECT": "3"})
    worker.wait_for_log("serving")
    nats_server.kill()
    assert worker.finish() == 3
    assert "NATS unreachable, giving up" in worker.lines[-1]
    assert "after 3 round(s)" in worker.lines[-1]
    failed_rounds = [r for r in worker.records()
                     if r.get("message") == "nats connect round failed, retrying"]
    assert len(failed_rounds) == 2  # 3 rounds, a wait between each


def test_no_server_at_start_exits_3(run_worker):
    server = NatsServer()  # never started: nothing listens on its port
    worker = run_worker(env={**fast_env(server), "MAX_RECONNECT": "2"})
    assert worker.finish() == 3
    assert "NATS unreachable" in worker.lines[-1]


def test_anything_unexpected_exits_1_and_the_last_line_says_why(nats_server, run_worker):
    """README: exit 1 for anything unexpected, the last line on stderr saying why; here the
    health port is taken by another process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = run_worker(env={**fast_env(nats_server), "HEALTH_HOST": "127.0.0.1",
                                 "HEALTH_PORT": str(taken.getsockname()[1])})
        assert worker.finish() == 1
    last = json.loads(worker.lines[-1])
    assert last["message"] == "exiting: unexpected error"
    assert "Address already in use" in last["exc_info"]


def test_logs_are_json_with_context_and_never_carry_secrets(nats_server, idp, run_worker,
                                                            requester_factory):
    remember_secret("nats-pa55-secret", "pa55word-xyz")
    nats_secret_server = NatsServer(
        config_text='authorization { user: tw, password: "nats-pa55-secret" }').start()
    try:
        env = {**fast_env(nats_secret_server, idp.url), "NATS_USER": "tw",
               "NATS_PASS": "nats-pa55-secret", "APP_ENV": "test"}
        worker = run_worker("-name-suffix", "logs", env=env)
        worker.wait_for_log("serving")
        requester = requester_factory(f"nats://tw:nats-pa55-secret@127.0.0.1:"
                                      f"{nats_secret_server.port}")
        good = requester.request(token_request(DEMO, "log-1"))
        bad = requester.request(token_request((DEMO[0], "wrong-client-secret"), "log-2"))
        requester.request(b'{"request_id": "log-3", "client_secret": "lonely-secret"}')
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish() == 0
    finally:
        nats_secret_server.cleanup()

    records = worker.records()
    assert len(records) == len(worker.lines)  # every line is JSON
    for record in records:
        assert {"time", "level", "logger", "message", "client_name"} <= set(record)
        assert record["client_name"] == "Token Worker-logs"
    issued = next(r for r in records if r["message"] == "token issued")
    assert (issued["request_id"], issued["client_id"]) == ("log-1", DEMO[0])
    refused = next(r for r in records if r["message"] == "token not issued")
    assert refused["request_id"] == "log-2"
    everything = "\n".join(worker.lines)
    for secret in (DEMO[1], "wrong-client-secret", "lonely-secret", "nats-pa55-secret",
                   good["access_token"]):
        assert secret not in everything
    assert bad["error_code"] == "invalid_client"


def test_console_script_and_bin_script_run_the_same_main():
    installed = Path(sys.executable).parent / "token-worker"
    assert installed.exists()
    for command in ([str(installed), "--help"], [sys.executable, str(SCRIPT), "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=30,
                                check=False)
        assert result.returncode == 0
        assert "-name-suffix" in result.stdout
