"""The NATS connection against a real nats-server: the pynats2 traps, contained.

Each test here is one of the measured failures of pynats2 alone (spinning reader, deaf
after ``-ERR``, late messages, hanging close) turned into behaviour that must hold.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time

import pytest

from tests.conftest import make_config, remember_secret, report_figure
from tests.helpers import wait_until
from tests.servers import NatsServer
from token_worker.config import Secret, TlsConfig
from token_worker.connection import Message, NatsConnection, State
from token_worker.errors import NotConnected, ReconnectGaveUp

ECHO = lambda payload: payload  # noqa: E731 - the smallest handler there is


def answers(requester_factory, url: str, *, subject: str = "token.request") -> bool:
    requester = requester_factory(url)
    try:
        return requester.request_raw(b'{"ping": 1}', subject=subject, timeout=2) == b'{"ping": 1}'
    finally:
        requester.close()


class Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> None:
        self.messages.append(message)


def connect(url: str, **nats) -> NatsConnection:
    connection = NatsConnection(make_config(url, nats=nats).nats, "conn-test")
    connection.connect()
    return connection


def test_subscribe_publish_and_late_messages_for_removed_subscriptions(nats_server):
    connection = connect(nats_server.url)
    try:
        kept, removed = Collector(), Collector()
        connection.subscribe("a.kept", kept)
        gone = connection.subscribe("a.gone", removed)
        connection.flush(2)
        for i in range(50):  # the server may still route these after the UNSUB is sent
            connection.publish("a.gone", b"late %d" % i)
        connection.unsubscribe(gone)
        connection.publish("a.kept", b"x" * 200_000, reply="r.1")
        connection.flush(2)
        wait_until(lambda: len(kept.messages) == 1, what="the big message")
        assert kept.messages[0].payload == b"x" * 200_000
        assert kept.messages[0].reply == "r.1"
        connection.publish("a.kept", b"after")  # the reader survived the late messages
        wait_until(lambda: len(kept.messages) == 2, what="a message after the late ones")
    finally:
        connection.close()


def test_permission_error_is_logged_and_does_not_silence_the_worker(start_worker,
                                                                     requester_factory, caplog):
    remember_secret("worker-pass-123", "requester-pass-456")
    server = NatsServer(config_text="""
        authorization {
          users = [
            {user: worker, password: "worker-pass-123",
             permissions: {publish: {allow: ["_INBOX.>"]},
                           subscribe: {allow: ["token.request"]}}}
            {user: requester, password: "requester-pass-456"}
          ]
        }
    """).start()
    try:
        config = make_config(server.url, nats={"username": "worker",
                                               "password": Secret("worker-pass-123")})
        start_worker(config, ECHO)
        requester = requester_factory(
            f"nats://requester:requester-pass-456@127.0.0.1:{server.port}")
        caplog.set_level(logging.ERROR, logger="token_worker")

        # A requester names a reply subject the worker may not publish to...
        for _ in range(3):
            requester.publish("token.request", b"{}", reply="forbidden.reply")
        wait_until(lambda: "Permissions Violation" in caplog.text, what="the -ERR log line")
        # ...and the worker keeps answering everybody else.
        assert requester.request_raw(b"still here", timeout=2) == b"still here"
        assert "worker-pass-123" not in caplog.text
    finally:
        server.cleanup()


def test_token_auth_and_wrong_credentials_name_the_servers_reason():
    remember_secret("s3cret-token-value")
    server = NatsServer(config_text='authorization { token: "s3cret-token-value" }').start()
    try:
        good = NatsConnection(
            make_config(server.url, nats={"token": Secret("s3cret-token-value")}).nats, "ok")
        good.connect()
        assert good.is_connected
        good.close()

        bad = NatsConnection(
            make_config(server.url, nats={"token": Secret("wrong-token"), "max_reconnect": 2,
                                          "reconnect_wait": 0.05}).nats, "bad")
        with pytest.raises(ReconnectGaveUp, match="Authorization Violation") as caught:
            bad.connect()
        assert "wrong-token" not in str(caught.value)
    finally:
        server.cleanup()


def test_killed_server_is_detected_at_once_and_restart_reconnects_and_resubscribes(
        nats_server, start_worker, requester_factory, caplog):
    caplog.set_level(logging.INFO, logger="token_worker")
    worker = start_worker(make_config(nats_server.url, nats={"reconnect_wait": 0.1}), ECHO)
    assert answers(requester_factory, nats_server.url)

    killed_at = time.monotonic()
    nats_server.kill()
    wait_until(lambda: worker.connection_state is State.RECONNECTING, timeout=5,
               what="loss detection")
    detect_s = time.monotonic() - killed_at
    assert not worker.is_ready

    nats_server.start()  # same port
    reconnect_s = wait_until(lambda: worker.is_ready, timeout=10, what="reconnect")
    assert answers(requester_factory, nats_server.url)  # resubscribed in the queue group
    assert worker.reconnects == 1
    assert "reconnected" in caplog.messages
    report_figure(f"dead server detected in {detect_s * 1000:.0f} ms; "
          f"reconnected {reconnect_s * 1000:.0f} ms after restart")


def test_little_cpu_while_the_server_is_down(nats_server, start_worker):
    worker = start_worker(make_config(nats_server.url, nats={"reconnect_wait": 0.5}), ECHO)
    nats_server.kill()
    wait_until(lambda: worker.connection_state is State.RECONNECTING, what="loss detection")

    cpu_before, wall_before = time.process_time(), time.monotonic()
    time.sleep(3)
    cpu_share = (time.process_time() - cpu_before) / (time.monotonic() - wall_before)

    report_figure(f"CPU while the server is down: {cpu_share * 100:.2f}% of one core")
    assert cpu_share < 0.05  # pynats2's reader alone burns 100% here


def test_stale_connection_is_detected_by_missing_pongs(nats_server, start_worker):
    worker = start_worker(
        make_config(nats_server.url, nats={"ping_interval": 0.5, "max_pings_out": 2}), ECHO)
    os.kill(nats_server.process.pid, signal.SIGSTOP)  # socket open, server silent
    try:
        stale_s = wait_until(lambda: worker.connection_state is State.RECONNECTING,
                             timeout=10, what="stale detection")
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)
    report_figure(f"silent server detected as stale in {stale_s:.2f} s")
    assert 0.9 < stale_s < 4.0
    wait_until(lambda: worker.is_ready, what="reconnect after the server woke up")


def test_reconnect_gives_up_after_max_reconnect_rounds(nats_server, start_worker):
    worker = start_worker(make_config(nats_server.url,
                                      nats={"max_reconnect": 3, "reconnect_wait": 0.2}), ECHO)
    nats_server.kill()
    gave_up_s = wait_until(lambda: worker.failure != "", timeout=10, what="giving up")
    assert worker.connection_state is State.CLOSED
    assert "after 3 round(s)" in worker.failure
    assert worker.wait(0)  # run() would now return and the CLI exit non-zero
    assert 0.3 < gave_up_s < 3.0


def test_allow_reconnect_false_gives_up_at_once(nats_server, start_worker):
    worker = start_worker(make_config(nats_server.url, nats={"allow_reconnect": False}), ECHO)
    nats_server.kill()
    wait_until(lambda: worker.failure != "", timeout=3, what="giving up")
    assert "disabled" in worker.failure


def test_several_servers_are_tried_in_turn(start_worker, requester_factory):
    first, second = NatsServer().start(), NatsServer().start()
    try:
        worker = start_worker(make_config(f"{first.url},{second.url}",
                                          nats={"no_randomize": True}), ECHO)
        assert worker.server_url == first.url
        first.kill()
        wait_until(lambda: worker.is_ready and worker.server_url == second.url,
                   what="fail-over to the second server")
        assert answers(requester_factory, second.url)
    finally:
        first.cleanup()
        second.cleanup()


def test_first_connect_retries_until_the_server_comes(start_worker):
    server = NatsServer()
    try:
        starter = threading.Timer(0.6, server.start)
        starter.start()
        worker = start_worker(make_config(server.url, nats={"reconnect_wait": 0.2}), ECHO)
        assert worker.is_ready
        starter.join()
    finally:
        server.cleanup()


def test_close_never_hangs_even_while_reconnecting(nats_server):
    connection = connect(nats_server.url, reconnect_wait=30)
    nats_server.kill()
    wait_until(lambda: connection.state is State.RECONNECTING, what="loss detection")
    started = time.monotonic()
    connection.close()
    assert time.monotonic() - started < 1.0
    assert connection.state is State.CLOSED
    with pytest.raises(NotConnected):
        connection.publish("x", b"y")


def test_what_is_published_while_reconnecting_goes_out_after_resubscribing(nats_server,
                                                                           caplog):
    caplog.set_level(logging.INFO, logger="token_worker")
    connection = connect(nats_server.url, reconnect_wait=0.1)
    try:
        seen = Collector()
        connection.subscribe("held", seen)  # NATS echoes our own messages back to us
        connection.flush(2)
        nats_server.kill()
        wait_until(lambda: connection.state is State.RECONNECTING, what="loss detection")
        for i in range(3):
            connection.publish("held", b"during outage %d" % i)
        nats_server.start()
        # The SUB goes out before the buffered PUBs, so all three come back, in order.
        wait_until(lambda: len(seen.messages) == 3, what="the buffered messages")
        assert [m.payload for m in seen.messages] == [b"during outage %d" % i for i in range(3)]
        assert "sent messages published while reconnecting" in caplog.messages
    finally:
        connection.close()


def test_reconnect_buffer_is_bounded_and_can_be_turned_off(nats_server):
    bounded = connect(nats_server.url, reconnect_wait=30, reconnect_buffer_size=100)
    unbuffered = connect(nats_server.url, reconnect_wait=30, reconnect_buffer_size=0)
    try:
        nats_server.kill()
        wait_until(lambda: bounded.state is State.RECONNECTING
                   and unbuffered.state is State.RECONNECTING, what="loss detection")
        bounded.publish("s", b"x" * 40)  # 52 bytes with its PUB line: kept
        with pytest.raises(NotConnected, match=r"reconnect buffer \(100 bytes\) is full"):
            bounded.publish("s", b"x" * 40)
        with pytest.raises(NotConnected):
            unbuffered.publish("s", b"x")
    finally:
        bounded.close()
        unbuffered.close()


def test_nothing_is_buffered_when_the_connection_will_not_come_back(nats_server):
    connection = connect(nats_server.url, allow_reconnect=False)
    nats_server.kill()
    wait_until(lambda: connection.state is State.CLOSED, what="giving up")
    with pytest.raises(NotConnected):
        connection.publish("s", b"x")


def test_callback_exceptions_are_logged_not_lost(nats_server, caplog):
    connection = connect(nats_server.url)
    try:
        seen = Collector()

        def explode(message: Message) -> None:
            seen(message)
            raise ValueError("callback bug")

        connection.subscribe("boom", explode)
        connection.flush(2)
        connection.publish("boom", b"1")
        connection.publish("boom", b"2")
        wait_until(lambda: len(seen.messages) == 2, what="both messages despite the error")
        # The log line follows the callback's return on the reader thread: wait for it too.
        wait_until(lambda: caplog.text.count("ValueError: callback bug") == 2,
                   timeout=2, what="one traceback per failed callback")
        assert connection.is_connected
    finally:
        connection.close()


def test_client_name_is_what_the_server_shows(nats_server):
    connection = NatsConnection(make_config(nats_server.url).nats, "Token Worker-pod-7")
    connection.connect()
    try:
        names = nats_server.client_names()
        assert names == ["Token Worker-pod-7"]
        info = nats_server.connz()[0]
        assert info["lang"] == "python"
        assert json.dumps(info).count("pod-7") >= 1
    finally:
        connection.close()


def _openssl(directory, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _issue_certificate(directory, name: str, subject: str, *extensions: str) -> None:
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


@pytest.fixture
def tls_files(tmp_path):
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    _openssl(tmp_path, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=test-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", "ca.key", "-out", "ca.pem")
    _issue_certificate(tmp_path, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1",
                       "extendedKeyUsage=serverAuth")
    return tmp_path


def test_tls_with_the_configured_ca(tls_files, requester_factory):
    server = NatsServer(config_text=f"""
        tls {{ cert_file: "{tls_files / 'server.pem'}", key_file: "{tls_files / 'server.key'}" }}
    """).start()
    try:
        tls_url = f"tls://127.0.0.1:{server.port}"
        good = NatsConnection(make_config(tls_url, nats={
            "tls": TlsConfig(ca_file=str(tls_files / "ca.pem")), "max_reconnect": 1}).nats,
            "tls-ok")
        good.connect()
        try:
            seen = Collector()
            good.subscribe("over.tls", seen)
            good.publish("over.tls", b"secret payload")
            wait_until(lambda: len(seen.messages) == 1, what="a message over TLS")
        finally:
            good.close()

        untrusted = NatsConnection(make_config(tls_url, nats={"max_reconnect": 1}).nats, "x")
        with pytest.raises(ReconnectGaveUp, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.connect()
        plain = NatsConnection(make_config(server.url, nats={"max_reconnect": 1}).nats, "y")
        with pytest.raises(ReconnectGaveUp, match=server.url):
            plain.connect()
    finally:
        server.cleanup()


def test_lame_duck_mode_moves_the_worker_to_another_server(start_worker, requester_factory):
    first, second = NatsServer().start(), NatsServer().start()
    try:
        worker = start_worker(make_config(f"{first.url},{second.url}",
                                          nats={"no_randomize": True}), ECHO)
        assert worker.server_url == first.url
        first.process.send_signal(signal.SIGUSR2)  # nats-server: enter lame duck mode
        moved_s = wait_until(lambda: worker.is_ready and worker.server_url == second.url,
                             timeout=10, what="the move away from the lame duck")
        assert first.process.poll() is None  # it was still up: the worker left on its own
        assert answers(requester_factory, second.url)
        report_figure(f"left a lame-duck server for the next one in {moved_s * 1000:.0f} ms")
    finally:
        first.kill()  # a lame duck takes minutes to finish on SIGTERM
        first.cleanup()
        second.cleanup()


def test_mutual_tls_with_a_client_certificate(tls_files):
    _issue_certificate(tls_files, "client", "/CN=token-worker", "extendedKeyUsage=clientAuth")
    server = NatsServer(config_text=f"""
        tls {{
          cert_file: "{tls_files / 'server.pem'}", key_file: "{tls_files / 'server.key'}"
          ca_file: "{tls_files / 'ca.pem'}", verify: true
        }}
    """).start()
    try:
        tls_url = f"tls://127.0.0.1:{server.port}"
        ca = str(tls_files / "ca.pem")
        with_cert = NatsConnection(make_config(tls_url, nats={"max_reconnect": 1, "tls": TlsConfig(
            ca_file=ca, cert_file=str(tls_files / "client.pem"),
            key_file=str(tls_files / "client.key"))}).nats, "mtls-ok")
        with_cert.connect()
        assert with_cert.is_connected
        with_cert.close()
        without_cert = NatsConnection(make_config(tls_url, nats={
            "max_reconnect": 1, "tls": TlsConfig(ca_file=ca)}).nats, "mtls-missing")
        with pytest.raises(ReconnectGaveUp):
            without_cert.connect()
    finally:
        server.cleanup()
