"""The NATS connection against a real nats-server: the pynats2 traps, contained.

Each test here is one of the measured failures of pynats2 alone (spinning reader, deaf
after ``-ERR``, late messages, hanging close) turned into behaviour that must hold.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time

import pytest

from tests.conftest import remember_secret, report_figure
from tests.fakes import trickling_server
from tests.helpers import wait_until
from tests.integration.helpers import DEMO, issue_certificate, make_config, tls_certificates
from tests.integration.processes import NatsServer
from tests.integration.proxy import PartitionProxy
from token_worker import TokenClient
from token_worker.config import NatsConfig, Secret, TlsConfig
from token_worker.errors import NotConnected, PayloadTooLarge, ReconnectGaveUp
from token_worker.nats import protocol
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.nats.protocol import Message

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

        # A requester names a reply subject the worker may not publish to, 200 times...
        for _ in range(200):
            requester.publish("token.request", b"{}", reply="forbidden.reply")

        def refusals() -> list[logging.LogRecord]:
            return [r for r in caplog.records
                    if "Permissions Violation" in str(getattr(r, "server_error", ""))]
        wait_until(refusals, what="the -ERR log line")
        assert requester.request_raw(b"after the flood", timeout=2) == b"after the flood"
        # ...which logs a line a second, not a line a refusal (finding 13)
        assert 1 <= len(refusals()) <= 3, len(refusals())
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
    time.sleep(3)  # the scenario: CPU used over three idle seconds of reconnecting
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


def test_a_server_that_trickles_its_greeting_costs_one_connect_timeout(start_worker, idp):
    """First in the list, a server that greets one byte at a time: the worker and a
    TokenClient each give it the connect timeout and go on to the next server."""
    healthy = NatsServer().start()
    try:
        with trickling_server() as (port, _):
            urls = f"nats://127.0.0.1:{port},{healthy.url}"
            worker = start_worker(make_config(urls, idp.url, nats={"no_randomize": True,
                                                                   "connect_timeout": 0.5}))
            assert worker.server_url == healthy.url
            config = NatsConfig(urls=tuple(urls.split(",")), no_randomize=True,
                                connect_timeout=0.5, max_reconnect=-1, reconnect_wait=0.2)
            with TokenClient(config, timeout=5) as client:
                assert client.get_token(*DEMO).access_token
    finally:
        healthy.cleanup()


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
    # The behaviour under test is the time: far below the 30 s reconnect wait it would sit out.
    assert time.monotonic() - started < 10
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


@pytest.fixture
def tls_files(tmp_path):
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    return tls_certificates(tmp_path)


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
    issue_certificate(tls_files, "client", "/CN=token-worker", "extendedKeyUsage=clientAuth")
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


# --- the reader can't die, writes can't block, close() always wins --------------------


def echo_on(connection: NatsConnection, subject: str = "token.request") -> None:
    """Subscribe a callback answering every message with its own payload."""
    connection.subscribe(subject, lambda m: connection.publish(m.reply, m.payload) if m.reply
                         else None, queue="q")


def raw_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.settimeout(5)
    sock.recv(4096)  # INFO
    sock.sendall(b'CONNECT {"verbose": false, "headers": true, "protocol": 1}\r\n')
    return sock


def read_until(sock: socket.socket, needle: bytes) -> bytes:
    data = b""
    while needle not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_odd_messages_from_a_raw_client_are_served_and_the_next_request_too(
        nats_server, requester_factory):
    connection = connect(nats_server.url)
    try:
        echo_on(connection)
        connection.flush(2)
        raw = raw_client(nats_server.port)
        odd_reply = b"_INBOX.\xff\xfe\xc3(.1"  # not UTF-8: killed the reader before
        long_reply = b"_INBOX." + b"r" * 3000
        garbage = b"NATS/1.0 503\r\nStatus: 503\r\n\x00\xff: \xfe\r\n\r\n"
        raw.sendall(b"SUB %s 1\r\nSUB %s 2\r\n" % (odd_reply, long_reply)
                    + b"PUB token.request %s 3\r\nodd\r\n" % odd_reply
                    + b"HPUB token.request %s %d %d\r\n%sspoofed\r\n" % (
                        long_reply, len(garbage), len(garbage) + 7, garbage)
                    + b"PING\r\n")
        answers_seen = read_until(raw, b"spoofed\r\n")
        assert b"MSG %s 1 3\r\nodd\r\n" % odd_reply in answers_seen  # the same bytes back
        assert b"MSG %s 2 7\r\nspoofed\r\n" % long_reply in answers_seen
        requester = requester_factory(nats_server.url)
        assert requester.request_raw(b"normal", timeout=3) == b"normal"
        assert connection.is_serving and connection.reconnects == 0
        raw.close()
    finally:
        connection.close()


@pytest.mark.parametrize("failure", [RuntimeError("parser bug"), SystemExit("exit in parser")])
def test_a_parser_or_reader_failure_is_a_lost_connection_not_a_dead_reader(
        nats_server, requester_factory, monkeypatch, caplog, failure):
    connection = connect(nats_server.url, reconnect_wait=0.05)
    try:
        echo_on(connection)
        connection.flush(2)
        assert connection.is_serving
        feed = protocol.Parser.feed
        failures = iter([failure])

        def failing_feed(self, data):
            raised = next(failures, None)
            if raised is not None:
                raise raised
            return feed(self, data)

        monkeypatch.setattr(protocol.Parser, "feed", failing_feed)
        requester = requester_factory(nats_server.url)
        requester.publish("token.request", b"trigger")
        wait_until(lambda: connection.reconnects == 1 and connection.is_serving,
                   what="the reconnect after the reader failure")
        assert str(failure) in caplog.text
        connection.flush(2)  # the server has the re-sent SUB before the next request
        assert requester.request_raw(b"again", timeout=3) == b"again"
    finally:
        connection.close()
    assert not connection.is_serving


def _publish_until_blocked(connection: NatsConnection) -> tuple[threading.Thread, list]:
    """A thread publishing 100 KB messages until a write fails; its last success time."""
    last = [time.monotonic(), None]

    def run() -> None:
        try:
            while True:
                connection.publish("fill", b"x" * 100_000)
                last[0] = time.monotonic()
        except Exception as error:
            last[1] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, last


def test_a_peer_that_stops_reading_is_stale_even_while_a_write_blocks(nats_server):
    connection = connect(nats_server.url, ping_interval=0.5, max_pings_out=2,
                         reconnect_wait=0.1, reconnect_buffer_size=0)
    os.kill(nats_server.process.pid, signal.SIGSTOP)  # socket open, server neither reads nor talks
    stopped = time.monotonic()
    try:
        publisher, last = _publish_until_blocked(connection)
        wait_until(lambda: time.monotonic() - last[0] > 0.3 or last[1] is not None,
                   what="the send buffers to fill")
        detect_s = wait_until(lambda: connection.state is State.RECONNECTING, timeout=10,
                              what="stale detection with a blocked write")
        publisher.join(5)
        assert not publisher.is_alive()  # the blocked write was woken, not left hanging
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)
    total_s = time.monotonic() - stopped
    report_figure(f"peer that stopped reading, send buffers full: stale in {total_s:.2f} s "
                  f"after SIGSTOP ({detect_s:.2f} s after the write blocked; pingInterval 0.5)")
    # The time is the behaviour: keep-alive's pingInterval x (maxPingsOut + 1) = 1.5 s, not
    # the kernel's TCP timeout (minutes); 4 s leaves room for a loaded machine.
    assert total_s < 4.0
    wait_until(lambda: connection.is_serving, what="reconnect after the server woke up")
    connection.close()


def test_close_does_not_wait_for_a_blocked_write(nats_server):
    connection = connect(nats_server.url, ping_interval=60, reconnect_buffer_size=0)
    os.kill(nats_server.process.pid, signal.SIGSTOP)
    try:
        publisher, last = _publish_until_blocked(connection)
        wait_until(lambda: time.monotonic() - last[0] > 0.3, what="a blocked write")
        started = time.monotonic()
        connection.close()
        close_s = time.monotonic() - started
        publisher.join(5)
        assert not publisher.is_alive() and isinstance(last[1], NotConnected)
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)
    report_figure(f"close() with a write blocked on full buffers: {close_s * 1000:.0f} ms")
    assert close_s < 5  # waiting for the write would be forever: the server is stopped


def test_max_payload_comes_from_the_server_and_oversized_messages_are_refused():
    server = NatsServer(config_text="max_payload: 2000").start()
    try:
        connection = connect(server.url, reconnect_wait=30)
        assert connection.max_payload == 2000
        with pytest.raises(PayloadTooLarge, match=r"2001 bytes exceeds .* 2000") as caught:
            connection.publish("s", b"x" * 2001)
        assert not isinstance(caught.value, NotConnected)
        with pytest.raises(PayloadTooLarge, match=r"2001 bytes"):  # headers count too
            connection.publish("s", b"x" * (2001 - 26), headers={"Nats-TTL": "5s"})
        connection.publish("s", b"x" * (2000 - 26), headers={"Nats-TTL": "5s"})  # 26: the block
        connection.flush(2)
        assert connection.is_connected and len(server.connz()) == 1  # the server kept us
        server.kill()
        wait_until(lambda: connection.state is State.RECONNECTING, what="loss detection")
        with pytest.raises(PayloadTooLarge):
            connection.publish("s", b"x" * 2001)
        assert connection.buffered_bytes == 0  # never held for the next server
        connection.close()
    finally:
        server.cleanup()


def test_server_lists_are_shuffled_unless_no_randomize():
    servers = [NatsServer().start() for _ in range(3)]
    urls = ",".join(server.url for server in servers)
    try:
        used = []
        for randomize in (True, False):
            chosen = []
            for _ in range(60):  # P(one server never chosen when shuffled) < 1e-10
                connection = connect(urls, no_randomize=not randomize)
                chosen.append(connection.server_url)
                connection.close()
            used.append(chosen)
        assert set(used[0]) == {server.url for server in servers}
        assert set(used[1]) == {servers[0].url}
    finally:
        for server in servers:
            server.cleanup()


def test_a_silent_partition_of_one_client_with_full_buffers_is_detected(nats_server):
    """The proxy stops reading both ways (no FIN, no RST) while the client publishes:
    only keep-alive can tell, and the blocked write must not stop it."""
    proxy = PartitionProxy(nats_server.port).start()
    connection = connect(proxy.url, ping_interval=1.0, max_pings_out=2, reconnect_wait=0.1,
                         reconnect_buffer_size=0)
    bystander = connect(nats_server.url)
    try:
        proxy.stall()
        stalled = time.monotonic()
        publisher, last = _publish_until_blocked(connection)
        wait_until(lambda: time.monotonic() - last[0] > 0.3 or last[1] is not None,
                   what="the send buffers to fill")
        wait_until(lambda: connection.state is State.RECONNECTING, timeout=10,
                   what="stale detection behind a stalled proxy")
        detect_s = time.monotonic() - stalled
        publisher.join(5)
        assert not publisher.is_alive()
        assert bystander.is_serving  # the server and everyone else were fine all along
        proxy.resume()
        wait_until(lambda: connection.is_serving, what="reconnect through the proxy")
        report_figure(f"silent one-client partition (proxy stopped reading), send buffers "
                      f"full: stale in {detect_s:.2f} s with pingInterval 1 s")
        assert detect_s < 5.0  # keep-alive's 3 s (pingInterval 1 s x 3), not TCP's minutes
    finally:
        connection.close()
        bystander.close()
        proxy.close()


def test_a_message_longer_than_a_read_line_is_skipped_without_losing_the_connection(
        requester_factory, caplog):
    """A server whose max_control_line is raised can deliver a reply subject longer than the
    parser keeps (64 KiB): that one message is skipped, with one line said, and the
    connection and the next request are served as before (it used to reconnect)."""
    server = NatsServer(config_text="max_control_line: 262144\n").start()
    connection = connect(server.url)
    try:
        echo_on(connection)
        connection.flush(2)
        raw = raw_client(server.port)
        huge_reply = b"_INBOX." + b"r" * 70_000
        raw.sendall(b"PUB token.request %s 4\r\nhuge\r\nPING\r\n" % huge_reply)
        read_until(raw, b"PONG\r\n")
        wait_until(lambda: "nats message skipped unread" in caplog.text,
                   what="the skipped message's log line")
        requester = requester_factory(server.url)
        assert requester.request_raw(b"normal", timeout=3) == b"normal"
        assert connection.is_serving and connection.reconnects == 0
        raw.close()
    finally:
        connection.close()
        server.cleanup()
