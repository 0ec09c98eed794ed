"""The worker with a stub connection: no server, every path from message to reply."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

import orjson
import pytest

from tests.fakes import StubConnection
from tests.helpers import spy_on_signal_handlers, wait_until
from token_worker import wire
from token_worker.config import Config, CredentialsConfig, NatsConfig, Secret
from token_worker.errors import ReconnectGaveUp
from token_worker.logs import RedactSecrets
from token_worker.nats.link import State
from token_worker.serve.credentials import CredentialStore
from token_worker.serve.handler import Deferred, Reply, RequestHandler
from token_worker.serve.worker import TokenWorker

SUBJECT = "token.request"


class Scripted(RequestHandler):
    """Answers ``{"now": ...}`` requests at once; defers the rest to ``serve``, which waits
    for ``release`` (so tests can hold requests on pool threads)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.threads: set[str] = set()
        self.unsent_ids: list[str] = []

    def unsent(self, reply: Reply) -> None:
        self.unsent_ids.append(reply.request_id)

    def handle(self, payload: bytes) -> Reply | Deferred[Any]:
        body = json.loads(payload)
        self.threads.add(threading.current_thread().name)
        if "now" in body:
            return Reply(orjson.dumps({"request_id": body["request_id"], "now": body["now"]}),
                         body.get("code", ""), body["request_id"], body.get("client", ""))
        return Deferred(self.serve, body, body["request_id"])

    def serve(self, body: dict[str, Any]) -> Reply:
        self.started.release()
        self.release.wait(10)
        if body.get("crash"):
            raise RuntimeError("boom")
        return Reply(orjson.dumps({"request_id": body["request_id"], "served": True}),
                     "", body["request_id"])


def config(**overrides: Any) -> Config:
    """Replies may go anywhere here (short made-up reply subjects), unless a test says."""
    return Config(name_suffix="unit", **{"reply_subjects": (">",), **overrides})


@pytest.fixture
def made() -> Any:
    workers: list[TokenWorker] = []

    def make(handler: Any, *, connection: StubConnection | None = None, start: bool = True,
             **overrides: Any) -> tuple[TokenWorker, StubConnection]:
        connection = connection or StubConnection()
        worker = TokenWorker(config(**overrides), handler, connection=connection)
        workers.append(worker)
        if start:
            worker.start()
        return worker, connection

    yield make
    for worker in workers:
        worker.stop(timeout=2)


def ask(connection: StubConnection, reply_to: str, **body: Any) -> None:
    connection.deliver(SUBJECT, json.dumps(body).encode(), reply=reply_to)


def replied(connection: StubConnection, reply_to: str, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(connection.wait_for_reply(reply_to, timeout))


def outcomes(worker: TokenWorker) -> dict[str, float]:
    sample = worker.metrics.registry.get_sample_value
    return {label: value for label in ("ok", "overloaded", "shutting_down", "token_too_large",
                                       "internal_error", "idp_refused")
            if (value := sample("token_worker_requests_total", {"outcome": label}))}


def test_an_immediate_reply_is_sent_on_the_delivering_thread(made):
    handler = Scripted()
    worker, connection = made(handler)
    ask(connection, "in.1", request_id="r1", now=1)
    assert connection.replies_to("in.1") == [b'{"request_id":"r1","now":1}']  # already sent
    assert handler.threads == {threading.current_thread().name}
    assert outcomes(worker) == {"ok": 1.0}


def test_a_deferred_request_is_served_on_a_pool_thread(made):
    handler = Scripted()
    handler.release.set()
    worker, connection = made(handler)
    ask(connection, "in.2", request_id="r2")
    assert replied(connection, "in.2") == {"request_id": "r2", "served": True}
    assert outcomes(worker) == {"ok": 1.0}


def test_a_full_pool_answers_overloaded_at_once(made):
    handler = Scripted()
    _, connection = made(handler, workers=1, backlog=0)
    ask(connection, "in.held", request_id="held")
    assert handler.started.acquire(timeout=5)
    ask(connection, "in.over", request_id="over")
    reply = json.loads(connection.replies_to("in.over")[0])
    assert (reply["request_id"], reply["error_code"]) == ("over", wire.OVERLOADED)
    handler.release.set()
    assert replied(connection, "in.held")["served"]


def test_stop_answers_queued_requests_shutting_down_and_lets_the_running_one_finish(made):
    handler = Scripted()
    worker, connection = made(handler, workers=1, backlog=3)
    ask(connection, "in.run", request_id="run")
    assert handler.started.acquire(timeout=5)
    for i in range(2):
        ask(connection, f"in.q{i}", request_id=f"q{i}")
    stopping = threading.Thread(target=worker.stop, args=(5,))
    stopping.start()
    for i in range(2):
        reply = replied(connection, f"in.q{i}")
        assert (reply["request_id"], reply["error_code"]) == (f"q{i}", wire.SHUTTING_DOWN)
    assert not connection.replies_to("in.run")  # still running
    handler.release.set()
    stopping.join(5)
    assert replied(connection, "in.run")["served"]
    assert outcomes(worker) == {"ok": 1.0, "shutting_down": 2.0}
    assert connection.closed.is_set()


def test_a_reply_over_max_payload_becomes_token_too_large_and_keeps_the_connection(
        made, caplog):
    caplog.set_level(logging.WARNING)
    handler = Scripted()
    worker, connection = made(handler, connection=StubConnection(max_payload=300))
    secret_token = "x" * 400
    ask(connection, "in.big", request_id="big", now=secret_token, client="svc-a")
    reply = replied(connection, "in.big")
    assert reply["error_code"] == wire.TOKEN_TOO_LARGE
    assert reply["request_id"] == "big"
    assert "larger than the 300 bytes" in reply["error"]
    assert secret_token not in json.dumps(reply)
    assert not connection.closed.is_set() and worker.is_ready
    [record] = [r for r in caplog.records if r.getMessage().startswith("reply too large")]
    assert (record.client_id, record.request_id, record.max_payload) == ("svc-a", "big", 300)
    assert secret_token not in caplog.text
    assert outcomes(worker) == {"token_too_large": 1.0}
    assert handler.unsent_ids == ["big"]  # so the token handler drops what it cached
    ask(connection, "in.next", request_id="next", now=1)  # and the next one is served
    assert replied(connection, "in.next")["now"] == 1


def test_a_crashing_handler_is_an_internal_error_with_the_request_id(made, caplog):
    def crash(payload: bytes) -> bytes:
        raise RuntimeError("boom")

    _, connection = made(crash)
    ask(connection, "in.c", request_id="c1")
    reply = replied(connection, "in.c")
    assert (reply["request_id"], reply["error_code"]) == ("c1", wire.INTERNAL_ERROR)
    wait_until(lambda: "handler failed" in caplog.messages, what="the logged crash")


def test_per_request_warnings_are_one_line_a_second_with_a_count(made, caplog):
    caplog.set_level(logging.WARNING)
    _, connection = made(Scripted())
    for _ in range(100):
        connection.deliver(SUBJECT, b'{"request_id": "x", "now": 1}', reply="")
    lines = [r for r in caplog.records
             if r.getMessage() == "request without reply subject dropped"]
    assert len(lines) == 1
    assert lines[0].suppressed == 0
    assert connection.published == []


@pytest.mark.parametrize("reply_to", ["audit.log", "$JS.API.STREAM.PURGE.EVENTS",
                                      "_INBOXES.x", "_INBOX", "_INBOX.>", "_INBOX.*",
                                      "_INBOX.billing.*", "_INBOX..a", "_INBOX.a.",
                                      "_INBOX.a\rb", "_INBOX.a\tevil", "_INBOX.a\nb"])
def test_a_reply_subject_outside_reply_subjects_gets_no_reply_and_no_work(made, caplog,
                                                                         reply_to):
    """A requester names where its reply goes: outside the inboxes, a token would land in
    a stream or another service's subject. The request is dropped before any work."""
    caplog.set_level(logging.WARNING)
    handler = Scripted()
    worker, connection = made(handler, reply_subjects=("_INBOX.>",))
    ask(connection, reply_to, request_id="r1", now=1)
    ask(connection, "_INBOX.ok.1", request_id="r2", now=1)
    assert connection.replies_to(reply_to) == []
    assert replied(connection, "_INBOX.ok.1")["request_id"] == "r2"
    assert outcomes(worker) == {"ok": 1.0}  # r1 was never handled
    connection.deliver("$SRV.PING", b"", reply=reply_to)  # discovery answers alike
    connection.deliver("$SRV.PING", b"", reply="_INBOX.ok.2")
    assert connection.replies_to(reply_to) == []
    assert json.loads(connection.wait_for_reply("_INBOX.ok.2", 5))["type"].endswith("ping_response")
    [line] = [r for r in caplog.records
              if r.getMessage() == ("request dropped: its reply subject is outside "
                                   "replySubjects or not literal")]
    assert line.reply_subject == reply_to  # type: ignore[attr-defined]


def test_a_failed_first_connect_releases_everything_and_claims_no_drain(made, caplog):
    caplog.set_level(logging.INFO)
    connection = StubConnection()

    def unreachable() -> None:
        raise ReconnectGaveUp("no NATS server reachable after 2 round(s)")

    connection.on_connect = unreachable
    worker, _ = made(Scripted(), connection=connection, start=False)
    with pytest.raises(ReconnectGaveUp):
        worker.start()
    assert connection.closed.is_set()
    assert "draining" not in caplog.messages and "stopped" not in caplog.messages
    assert worker.stop() is True
    assert caplog.messages[-1] == "stopped before serving"


def test_a_signal_during_the_first_connect_stops_run_at_once(made, caplog):
    caplog.set_level(logging.INFO)
    connection = StubConnection()

    def never_reachable() -> None:  # as a connect against an unreachable server: until closed
        connection.closed.wait(30)
        raise ReconnectGaveUp("closed while connecting")

    connection.on_connect = never_reachable
    worker, _ = made(Scripted(), connection=connection, start=False)
    killer = threading.Thread(target=lambda: (
        wait_until(lambda: connection.connect_calls == 1, what="the first connect"),
        os.kill(os.getpid(), signal.SIGTERM)))
    killer.start()
    started = time.monotonic()
    worker.run()  # returns, without raising: the stop was asked for
    assert time.monotonic() - started < 2
    killer.join(5)
    assert "signal received" in caplog.messages
    stopped = next(r for r in caplog.records if r.getMessage() == "stopped before serving")
    assert "SIGTERM" in stopped.reason
    assert "draining" not in caplog.messages


def test_signals_take_no_lock_and_the_second_one_stops_a_drain_at_once(made, monkeypatch,
                                                                       caplog):
    caplog.set_level(logging.INFO)
    locks = spy_on_signal_handlers(monkeypatch)
    handler = Scripted()
    worker, connection = made(handler, start=False, drain_timeout=30.0)

    def signal_twice() -> None:
        wait_until(lambda: worker.is_ready, what="the worker serving")
        ask(connection, "in.slow", request_id="slow")  # held until released: never
        assert handler.started.acquire(timeout=5)
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: "draining" in caplog.messages, what="the drain")
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=signal_twice)
    sender.start()
    started = time.monotonic()
    worker.run()
    assert time.monotonic() - started < 10  # not the 30 s drain timeout
    sender.join(5)
    assert locks == []
    assert "signal received again: stopping at once" in caplog.messages
    assert worker.connection_state is State.CLOSED
    handler.release.set()


def test_sighup_is_logged_never_stops_and_loses_no_reply(made, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    locks = spy_on_signal_handlers(monkeypatch)
    handler = Scripted()
    worker, connection = made(handler, start=False)
    seen: dict[str, Any] = {}

    def hang_up() -> None:
        wait_until(lambda: worker.is_ready, what="the worker serving")
        ask(connection, "in.slow", request_id="slow")  # in flight on a pool thread
        assert handler.started.acquire(timeout=5)
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: "signal received" in caplog.messages, what="the SIGHUP logged")
        handler.release.set()
        seen["in_flight"] = replied(connection, "in.slow")
        ask(connection, "in.after", request_id="after", now=2)
        seen["after"] = replied(connection, "in.after")
        seen["still_serving"] = worker.is_ready and not worker.wait(0)
        worker.request_stop()

    sender = threading.Thread(target=hang_up)
    sender.start()
    worker.run()
    sender.join(5)
    assert seen == {"in_flight": {"request_id": "slow", "served": True},
                    "after": {"request_id": "after", "now": 2}, "still_serving": True}
    assert locks == []
    hangup = next(r for r in caplog.records if r.getMessage() == "signal received")
    assert (hangup.signal, hangup.action) == ("SIGHUP",
                                              "nothing to reload (settings are read at start)")
    assert caplog.messages.count("draining") == 1  # the stop asked for afterwards, only


def test_sighup_reloads_the_credentials_directory_at_once(made, monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.INFO)

    def credential(name: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "client_id").write_text(f"{name}-id")
        (tmp_path / name / "client_secret").write_text(f"{name}-secret-5d1e")

    credential("orders")
    monkeypatch.setattr(CredentialStore, "start", lambda self: None)  # SIGHUP alone reads
    worker, _ = made(None, start=False,
                     credentials=CredentialsConfig(directory=str(tmp_path)))

    def rotate_and_hang_up() -> None:
        wait_until(lambda: worker.is_ready, what="the worker serving")
        credential("billing")
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: "credentials reloaded" in caplog.messages, what="the reload")
        worker.request_stop()

    sender = threading.Thread(target=rotate_and_hang_up)
    sender.start()
    worker.run()
    sender.join(5)
    hangup = next(r for r in caplog.records if r.getMessage() == "signal received")
    assert (hangup.signal, hangup.action) == ("SIGHUP", "reloading the credentials directory")
    reloaded = next(r for r in caplog.records if r.getMessage() == "credentials reloaded")
    assert (reloaded.changed, reloaded.credentials) == (True, ["billing", "orders"])


def test_the_workers_nats_secrets_are_given_to_the_log_filter(made):
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage() + json.dumps(record.__dict__, default=str))

    keep = Keep()
    keep.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.addHandler(keep)
    try:
        made(Scripted(), start=False, nats=NatsConfig(username="tw",
                                                       password=Secret("nats-pa55-unit")))
        logging.getLogger("token_worker.unit").warning("leaked nats-pa55-unit here",
                                                       extra={"url": "x:nats-pa55-unit@h"})
    finally:
        root.removeHandler(keep)
    assert records and all("nats-pa55-unit" not in line for line in records)
    assert "********" in records[-1]


def test_a_stop_requested_during_the_first_connect_returns_from_run_without_error(made):
    connection = StubConnection()

    def never_reachable() -> None:
        connection.closed.wait(30)
        raise ReconnectGaveUp("closed while connecting")

    connection.on_connect = never_reachable
    worker, _ = made(Scripted(), connection=connection, start=False)
    stopper = threading.Thread(target=lambda: (
        wait_until(lambda: connection.connect_calls == 1, what="the first connect"),
        worker.request_stop()))
    stopper.start()
    started = time.monotonic()
    worker.run(handle_signals=False)
    assert time.monotonic() - started < 2
    stopper.join(5)
    assert connection.closed.is_set()


def test_run_raises_when_the_first_connect_gives_up_on_its_own(made):
    connection = StubConnection()

    def unreachable() -> None:
        raise ReconnectGaveUp("no NATS server reachable after 2 round(s)")

    connection.on_connect = unreachable
    worker, _ = made(Scripted(), connection=connection, start=False)
    with pytest.raises(ReconnectGaveUp, match="after 2 round"):
        worker.run(handle_signals=False)
