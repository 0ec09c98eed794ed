"""The one reply space of a connection (nats/replies.py), without a server: one wildcard
subscription, a fresh unguessable subject per request, replies routed to their caller, and
everything else dropped and counted."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import pytest

from token_worker.errors import NatsConnectionError, NotConnected
from token_worker.nats.protocol import Message
from token_worker.nats.replies import INBOX_PREFIX, ReplyMux

Answer = Callable[[str, bytes], list[Message]]


class Echo:
    """A connection whose server answers each publish at once, through the subscription's
    callback (the reader thread's role), with what ``answer`` returns."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer or (lambda reply, payload: [Message(reply, "", payload)])
        self.subscriptions: list[str] = []
        self.published: list[tuple[str, bytes, str, Mapping[str, str] | None]] = []
        self.reader_thread = False
        self.refuse: Exception | None = None
        self._deliver: Callable[[Message], None] | None = None

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> None:
        self.subscriptions.append(subject)
        self._deliver = callback

    def publish(self, subject: str, payload: bytes, reply: str = "", *,
                headers: Mapping[str, str] | None = None) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.published.append((subject, payload, reply, headers))
        for message in self.answer(reply, payload):
            self.deliver(message)

    def deliver(self, message: Message) -> None:
        assert self._deliver is not None
        self._deliver(message)

    def on_reader_thread(self) -> bool:
        return self.reader_thread


def test_requests_share_one_wildcard_subscription_each_with_its_own_unguessable_subject():
    wire = Echo()
    mux = ReplyMux(wire)
    assert wire.subscriptions == []  # made on first use
    answers = [mux.request("svc", b"%d" % n, timeout=1.0) for n in range(50)]
    assert [a.payload if a else None for a in answers] == [b"%d" % n for n in range(50)]
    assert wire.subscriptions == [mux.prefix + ".*"]
    assert re.fullmatch(re.escape(INBOX_PREFIX) + r"\.[A-Za-z0-9_-]{22}", mux.prefix)
    replies = [reply for _, _, reply, _ in wire.published]
    assert len(set(replies)) == 50
    assert all(re.fullmatch(re.escape(mux.prefix) + r"\.[A-Za-z0-9_-]{22}", r) for r in replies)
    assert ReplyMux(wire).prefix != mux.prefix
    assert mux.dropped == 0


def test_headers_go_out_with_the_request():
    wire = Echo()
    ReplyMux(wire, "_INBOX.kv").request("$KV.b.k", b"v", 1.0, headers={"Nats-TTL": "5s"})
    assert wire.published[0][3] == {"Nats-TTL": "5s"}
    assert wire.published[0][2].startswith("_INBOX.kv.")


def test_no_reply_within_the_timeout_is_none_and_a_late_one_is_dropped_and_counted():
    wire = Echo(answer=lambda reply, payload: [])
    mux = ReplyMux(wire)
    assert mux.request("svc", b"x", timeout=0.0) is None
    late = wire.published[0][2]
    wire.deliver(Message(late, "", b"too late"))
    wire.deliver(Message(mux.prefix + ".guessed", "", b"forged"))
    assert mux.dropped == 2


def test_only_the_reply_on_the_requests_own_subject_is_taken():
    wire = Echo(answer=lambda reply, payload: [
        Message(reply.rsplit(".", 1)[0] + ".other", "", b"elsewhere"),
        Message(reply, "", b"mine"), Message(reply, "", b"a second one")])
    mux = ReplyMux(wire)
    reply = mux.request("svc", b"x", timeout=1.0)
    assert reply is not None and reply.payload == b"mine"
    assert mux.dropped == 1  # "elsewhere"; the second one waits in a queue nobody reads
    wire.deliver(Message(wire.published[0][2], "", b"after the call"))
    assert mux.dropped == 2


def test_routes_have_their_own_size_caps():
    wire = Echo(answer=lambda reply, payload: [])
    mux = ReplyMux(wire)
    seen: list[bytes] = []
    capped = mux.route(lambda message: seen.append(message.payload), max_size=4)
    free = mux.route(lambda message: seen.append(message.payload))
    for subject, payload in ((capped, b"1234"), (capped, b"12345"), (free, b"x" * 10_000)):
        wire.deliver(Message(subject, "", payload))
    assert seen == [b"1234", b"x" * 10_000]
    assert mux.dropped == 1
    mux.forget([capped, free])
    wire.deliver(Message(free, "", b"late"))
    assert mux.dropped == 2


def test_a_request_on_the_reader_thread_is_refused_unsent():
    wire = Echo()
    wire.reader_thread = True
    with pytest.raises(NatsConnectionError, match="reader thread"):
        ReplyMux(wire).request("svc", b"x", timeout=5.0)
    assert wire.published == []


def test_a_request_that_cannot_be_sent_raises_and_leaves_no_route():
    wire = Echo()
    wire.refuse = NotConnected("not connected (state reconnecting)")
    mux = ReplyMux(wire)
    with pytest.raises(NotConnected):
        mux.request("svc", b"x", timeout=5.0)
    wire.refuse = None
    assert mux.request("svc", b"y", timeout=1.0) is not None
    wire.deliver(Message(wire.published[0][2], "", b"late, for the one sent"))
    assert mux.dropped == 1
