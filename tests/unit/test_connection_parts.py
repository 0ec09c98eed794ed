"""The connection's parts that need no server: server order, the reconnect buffer,
keep-alive verdicts, refusals; and close() ending a connect that has no server to reach."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from typing import Any

import pytest

from tests import free_port
from tests.conftest import report_figure
from tests.helpers import wait_until
from token_worker.config import NatsConfig
from token_worker.errors import ConnectionClosed, NotConnected, ReconnectGaveUp
from token_worker.nats.connection import NatsConnection
from token_worker.nats.keepalive import Verdict, judge
from token_worker.nats.link import State
from token_worker.nats.reconnect_buffer import PendingWrites
from token_worker.nats.server_pool import ServerPool
from token_worker.nats.subscriptions import Subscription, refused_by

URLS = ("nats://a:1", "nats://b:1", "nats://c:1")


def test_no_randomize_keeps_the_order_and_tries_the_lost_server_last():
    pool = ServerPool(URLS, randomize=False)
    assert pool.round() == list(URLS)
    pool.tried("nats://a:1")  # connected to a, which is then lost
    assert pool.round() == ["nats://b:1", "nats://c:1", "nats://a:1"]


def test_shuffled_rounds_vary_and_put_the_last_server_last():
    pool = ServerPool(URLS, randomize=True, rng=random.Random(7))
    firsts = set()
    for _ in range(30):
        order = pool.round()
        assert sorted(order) == sorted(URLS)
        firsts.add(order[0])
        pool.tried(order[0])
        assert pool.round()[-1] == order[0]
    assert firsts == set(URLS)


def test_discovered_servers_join_the_shuffle():
    pool = ServerPool(URLS[:1], randomize=True, rng=random.Random(1))
    assert pool.add("nats://d:1") and not pool.add("nats://d:1")
    assert {tuple(pool.round()) for _ in range(20)} == {("nats://a:1", "nats://d:1"),
                                                       ("nats://d:1", "nats://a:1")}


def test_pending_writes_are_bounded_and_dropped_when_too_large_for_the_next_server():
    pending = PendingWrites(100)
    pending.add(b"x" * 40, 30)
    pending.add(b"y" * 50, 45)
    with pytest.raises(NotConnected, match=r"reconnect buffer \(100 bytes\) is full"):
        pending.add(b"z" * 20, 10)
    assert pending.size == 90 and len(pending) == 2
    data, writes, dropped = pending.take(max_payload=40)
    assert (data, writes, dropped) == (b"x" * 40, 1, 1)
    assert pending.size == 0
    pending.add(b"a", 1)
    assert pending.discard() == (1, 1)


@pytest.mark.parametrize(("now", "last_heard", "pings_out", "write_started", "verdict"), [
    (10.0, 9.8, 0, 0.0, Verdict.WAIT),    # heard from recently
    (10.0, 9.0, 0, 0.0, Verdict.PING),    # quiet for an interval
    (10.0, 9.0, 2, 0.0, Verdict.STALE),   # PINGs unanswered
    (10.0, 9.9, 0, 9.0, Verdict.STALE),   # a write blocked longer than the interval
    (10.0, 9.9, 0, 9.8, Verdict.WAIT),    # a write in progress, not yet suspicious
])
def test_keepalive_verdicts(now, last_heard, pings_out, write_started, verdict):
    got, reason = judge(now, last_heard=last_heard, pings_out=pings_out,
                        write_started=write_started, ping_interval=0.5, max_pings_out=2)
    assert got is verdict
    assert bool(reason) == (verdict is Verdict.STALE)


def test_a_subscription_refusal_names_its_subscription_by_sid_or_subject_and_queue():
    """The texts nats-server 2.15 sends: at subscribe time (with the queue group, if any)
    and after a config reload took the permission away (with the sid)."""
    work = Subscription(1, "token.request", "token-workers", lambda _m: None)
    plain = Subscription(2, "token.request", "", lambda _m: None)
    other = Subscription(3, "$SRV.PING", "", lambda _m: None)
    subs = [work, plain, other]
    assert refused_by('Permissions Violation for Subscription to "token.request" using '
                      'queue "token-workers"', subs) == [work]
    assert refused_by('Permissions Violation for Subscription to "token.request"',
                      subs) == [work, plain]
    assert refused_by('Permissions Violation for Subscription to "token.request" using '
                      'queue "token-workers" (sid "1")', subs) == [work]
    assert refused_by('Permissions Violation for Subscription to "token.request" (sid "2")',
                      subs) == [plain]
    assert refused_by('Permissions Violation for Publish to "evil.1"', subs) == []
    assert refused_by("Slow Consumer", subs) == []


# --- a connection without a server: close() during connect --------------------------------


def nats_config(url: str, **overrides: Any) -> NatsConfig:
    """Fast reconnects and pings, as the real-server suite's configs have them."""
    return NatsConfig(urls=(url,), **{"reconnect_wait": 0.2, "max_reconnect": -1,
                                      "connect_timeout": 1.0, "ping_interval": 1.0,
                                      "max_pings_out": 2, **overrides})


def _record(call, outcome: list) -> None:
    try:
        call()
    except BaseException as error:
        outcome.append(error)


def test_close_ends_a_first_connect_that_is_still_retrying(caplog):
    unreachable = f"nats://127.0.0.1:{free_port()}"
    connection = NatsConnection(nats_config(unreachable, reconnect_wait=30), "x")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            connection.connect()
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: "nats connect round failed, retrying" in caplog.messages,
               what="the first failed round (the next is 30 s away)")
    started = time.monotonic()
    connection.close()
    thread.join(10)  # the next round is 30 s away: only close() can end connect() by then
    took = time.monotonic() - started
    assert not thread.is_alive() and isinstance(outcome[0], ConnectionClosed)
    assert isinstance(outcome[0], ReconnectGaveUp)  # what callers already catch
    report_figure(f"close() ended a retrying first connect in {took * 1000:.0f} ms")


def test_a_handshake_finishing_after_close_leaves_no_socket_open():
    """A server that answers the handshake only after close(): the client's socket must
    end (the server sees it closed), and connect() must not report a connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    closed = threading.Event()
    accepted = threading.Event()
    peer_saw_eof = threading.Event()

    def slow_server() -> None:
        client, _ = listener.accept()
        accepted.set()
        closed.wait(5)
        with contextlib.suppress(OSError):
            client.sendall(b'INFO {"server_id": "slow", "max_payload": 1048576}\r\n')
            client.settimeout(5)
            while data := client.recv(4096):
                if b"PING" in data:
                    client.sendall(b"PONG\r\n")
            peer_saw_eof.set()
        client.close()

    threading.Thread(target=slow_server, daemon=True).start()
    connection = NatsConnection(nats_config(f"nats://127.0.0.1:{port}", connect_timeout=5,
                                            max_reconnect=1), "late")
    outcome: list[BaseException] = []
    thread = threading.Thread(target=lambda: _record(connection.connect, outcome))
    thread.start()
    assert accepted.wait(5)  # connect() now waits for INFO
    connection.close()
    closed.set()
    thread.join(5)
    assert isinstance(outcome[0], ConnectionClosed)
    assert peer_saw_eof.wait(5), "the handshake's socket was left open"
    assert connection.state is State.CLOSED
    listener.close()


def test_close_in_a_forked_child_shuts_nothing_and_takes_no_lock(monkeypatch):
    """A forked child shares the parent's socket (one file description, two descriptors):
    close() there must not shut it down (the parent would lose its connection) nor wait
    for a lock a parent thread held at the fork; it closes the child's descriptor only."""
    parents_end, server_end = socket.socketpair()
    childs_copy = socket.socket(fileno=os.dup(parents_end.fileno()))  # what fork hands down
    connection = NatsConnection(nats_config("nats://127.0.0.1:9"), "forked")
    connection._sock = connection._installed = childs_copy
    assert connection._send_lock.acquire() and connection._sock_lock.acquire()  # at the fork
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)
    closer = threading.Thread(target=connection.close, daemon=True)
    closer.start()
    closer.join(5)
    assert not closer.is_alive()
    assert childs_copy.fileno() == -1 and connection.state is State.CLOSED
    parents_end.sendall(b"PING\r\n")  # the parent's connection works both ways
    assert server_end.recv(16) == b"PING\r\n"
    server_end.sendall(b"PONG\r\n")
    assert parents_end.recv(16) == b"PONG\r\n"
    parents_end.close()
    server_end.close()
