"""The worker's spans with no server: a worker on a stub connection, its default handler and
broker, and a local IdP that fails on demand. One span per request (a child of the
requester's when the headers carry it), the IdP attempts under the span of the request
that led the fetch (on a pool thread), none of it when tracing is off. Skipped without the
OpenTelemetry SDK."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import remember_secret
from tests.fakes import StubConnection
from tests.helpers import wait_until
from token_worker import tracing
from token_worker.config import Config, IdpConfig
from token_worker.nats.protocol import Message, encode_headers
from token_worker.serve import dispatch, telemetry
from token_worker.serve.worker import TokenWorker

pytest.importorskip("opentelemetry.sdk")

SECRET = "tracing-unit-secret"
TOKEN = "tracing-unit-token-0123456789"
remember_secret(SECRET, TOKEN)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TOKEN_ANSWER = (200, json.dumps({"access_token": TOKEN, "expires_in": 300}).encode(), {})


@pytest.fixture
def worker_on(faulty: Any) -> Iterator[Any]:
    """Start a worker (default handler) on a stub connection against a scripted IdP."""
    started: list[TokenWorker] = []

    def start(**idp: Any) -> tuple[TokenWorker, StubConnection, Any]:
        server = faulty(**idp)
        connection = StubConnection()
        worker = TokenWorker(Config(name_suffix="unit", idp=IdpConfig(url=server.url,
                                                                      timeout=2.0)),
                             connection=connection)
        worker.start()
        started.append(worker)
        return worker, connection, server

    yield start
    for worker in started:
        worker.stop(timeout=2)


def deliver(connection: StubConnection, reply_to: str, request_id: str,
            headers: dict[str, str] | None = None, scope: str = "openid") -> None:
    """A token request from the server, with NATS headers when given (an HMSG)."""
    body = json.dumps({"request_id": request_id, "client_id": "svc", "client_secret": SECRET,
                       "scope": scope}).encode()
    block = encode_headers(headers) if headers else b""
    for subscription in list(connection.subscriptions.values()):
        if subscription.subject == "token.request":
            subscription.callback(Message("token.request", reply_to, body, 0, block))


def finished(spans: Any, name: str) -> list[Any]:
    return [span for span in spans.get_finished_spans() if span.name == name]


def test_a_miss_is_traced_from_the_requesters_span_to_each_idp_attempt(worker_on, spans):
    _worker, connection, server = worker_on(script=[(503, b"", {}), TOKEN_ANSWER])
    deliver(connection, "_INBOX.in.1", "r-1", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert b"access_token" in connection.wait_for_reply("_INBOX.in.1")
    wait_until(lambda: finished(spans, "process token.request"), what="the request's span")
    [served] = finished(spans, "process token.request")
    assert f"{served.context.trace_id:032x}" == TRACE_ID
    assert f"{served.parent.span_id:016x}" == PARENT_ID and served.parent.is_remote
    attempts = sorted(finished(spans, "idp token call"),
                      key=lambda span: span.attributes["token_worker.idp.attempt"])
    assert [span.attributes["token_worker.idp.attempt"] for span in attempts] == [1, 2]
    assert [span.attributes["http.response.status_code"] for span in attempts] == [503, 200]
    assert attempts[0].attributes["token_worker.error_code"] == "idp_unavailable"
    assert attempts[0].status.description == "idp_unavailable"
    for attempt in attempts:  # on a pool thread, still under the request's span
        assert attempt.parent.span_id == served.context.span_id
        assert attempt.attributes["server.address"] == "127.0.0.1"
        assert attempt.attributes["server.port"] == server.server_address[1]
    assert server.calls == 2
    every = "\n".join(f"{span.name} {dict(span.attributes)} {span.status.description}"
                      for span in spans.get_finished_spans())
    assert SECRET not in every and TOKEN not in every


def test_a_cache_hit_has_its_span_and_no_child_and_a_request_without_context_a_root(
        worker_on, spans):
    _worker, connection, _server = worker_on(script=[TOKEN_ANSWER])
    deliver(connection, "_INBOX.in.1", "r-1")
    connection.wait_for_reply("_INBOX.in.1")
    wait_until(lambda: finished(spans, "idp token call"), what="the IdP call's span")
    spans.clear()
    deliver(connection, "_INBOX.in.2", "r-2", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert json.loads(connection.wait_for_reply("_INBOX.in.2"))["token_source"] == "cache"
    [hit] = spans.get_finished_spans()  # ended with the reply, on the delivering thread
    assert hit.name == "process token.request" and hit.attributes[
        "token_worker.request_id"] == "r-2"
    spans.clear()
    deliver(connection, "_INBOX.in.3", "r-3")
    connection.wait_for_reply("_INBOX.in.3")
    [root] = spans.get_finished_spans()
    assert root.parent is None


def test_each_waiter_of_a_flight_has_a_span_of_its_own_and_the_leader_the_idp_call(
        worker_on, spans):
    _worker, connection, server = worker_on(script=[TOKEN_ANSWER], delay=5.0)
    deliver(connection, "_INBOX.in.1", "r-lead", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    wait_until(lambda: server.calls == 1, what="the leader's IdP call")
    deliver(connection, "_INBOX.in.2", "r-wait")  # joins the flight: no thread, no call
    server.release.set()
    connection.wait_for_reply("_INBOX.in.1")
    connection.wait_for_reply("_INBOX.in.2")
    wait_until(lambda: len(finished(spans, "process token.request")) == 2, what="both spans")
    by_id = {span.attributes["token_worker.request_id"]: span
             for span in finished(spans, "process token.request")}
    [call] = finished(spans, "idp token call")
    assert call.parent.span_id == by_id["r-lead"].context.span_id
    assert by_id["r-wait"].context.trace_id != by_id["r-lead"].context.trace_id
    assert server.calls == 1


def test_with_tracing_off_the_headers_are_not_even_read(worker_on, monkeypatch):
    worker, connection, _server = worker_on(script=[TOKEN_ANSWER])
    assert worker._dispatch.tracer is None

    def unread(_block: bytes) -> Any:
        raise AssertionError("headers parsed with tracing off")

    monkeypatch.setattr(dispatch, "parse_headers", unread)
    deliver(connection, "_INBOX.in.1", "r-1", {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert b"access_token" in connection.wait_for_reply("_INBOX.in.1")
    with tracing.requesting("token.request", "r-2") as headers:  # no app span: nothing sent
        assert headers is None


def test_the_sdk_is_set_up_only_when_an_exporter_is_named():
    assert telemetry.configure_from_environment({}) is None
    assert telemetry.configure_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None


def test_a_named_exporter_sets_the_provider_and_unknown_ones_are_said_and_left_out(
        spans, caplog):
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()  # the spans fixture's provider makes way
    trace._TRACER_PROVIDER = None
    provider = telemetry.configure_from_environment({
        "OTEL_TRACES_EXPORTER": "console,zipkin,otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"})
    try:
        assert provider is not None and trace.get_tracer_provider() is provider
        assert provider.resource.attributes["service.name"] == "token-worker"
        messages = [record.getMessage() for record in caplog.records]
        assert "unknown OTEL_TRACES_EXPORTER left out (console, otlp or none)" in messages
        assert "unknown OTLP protocol: otlp exporter left out (http/protobuf or grpc)" in messages
    finally:
        telemetry.shut_down(provider)


def test_a_flight_carries_its_leaders_context_to_the_thread_that_runs_it(spans):
    from opentelemetry import trace

    tracing.request_tracer()
    seen: list[Any] = []
    with trace.get_tracer("test").start_as_current_span("leader") as leader:
        from token_worker.tokens.flight import Flight

        flight: Flight[str, str] = Flight("k", started=0.0, deadline=None, max_waiters=1)
    work = tracing.carried(flight.trace, lambda: seen.append(trace.get_current_span()))
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(5)
    assert seen == [leader]
