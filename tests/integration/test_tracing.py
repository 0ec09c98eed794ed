"""One trace from a service's span through the worker to the IdP: the requester's span and
its NATS headers, the worker process's spans (its console exporter), and what they never
hold."""

from __future__ import annotations

import json
import signal
import uuid
from typing import Any

import pytest

from tests.conftest import KNOWN_SECRETS, remember_secret
from tests.integration.helpers import DEMO, Requester, WorkerProcess, token_request
from tests.integration.processes import IdpServer, NatsServer
from tests.otel import attribute_values, console_spans, hex_id
from token_worker import TokenClient

pytest.importorskip("opentelemetry.sdk")


def traced_worker(nats: NatsServer, idp: IdpServer) -> WorkerProcess:
    """``bin/token-worker`` with the console exporter: its spans go to standard output."""
    worker = WorkerProcess(env={"NATS_URL": nats.url, "IDP_URL": idp.url,
                                "OTEL_TRACES_EXPORTER": "console",
                                "OTEL_SERVICE_NAME": "token-worker-test"})
    worker.wait_for_log("serving")
    return worker


def stopped(worker: WorkerProcess) -> list[dict[str, Any]]:
    """Stop the worker (SIGTERM) and return the spans it printed: flushed at its stop."""
    worker.process.send_signal(signal.SIGTERM)
    assert worker.finish() == 0
    assert worker.process.stdout is not None
    return console_spans(worker.process.stdout.read())


def no_secret_in(values: list[str]) -> None:
    text = "\n".join(values)
    leaked = [secret[:4] for secret in KNOWN_SECRETS if secret in text]
    assert leaked == [], f"span attributes hold secrets or tokens starting {leaked}"


def test_a_token_client_in_an_app_span_joins_its_trace_down_to_the_idp_call(nats_server, idp,
                                                                            spans):
    from opentelemetry import trace

    worker = traced_worker(nats_server, idp)
    try:
        scope = f"openid trace-{uuid.uuid4().hex[:8]}"  # a miss: the worker calls the IdP
        with trace.get_tracer("app").start_as_current_span("checkout") as app_span, \
                TokenClient(nats_server.url) as client:
            token = client.get_token(DEMO[0], DEMO[1], scope=scope)
            remember_secret(token.access_token)
    finally:
        printed = stopped(worker) if worker.process.poll() is None else []
        worker.stop()
    app = app_span.get_span_context()
    [requested] = [s for s in spans.get_finished_spans() if s.name == "request token.request"]
    assert requested.context.trace_id == app.trace_id
    assert requested.parent is not None and requested.parent.span_id == app.span_id
    assert requested.kind is trace.SpanKind.CLIENT

    trace_id = hex_id(app.trace_id, 32)
    mine = [s for s in printed if s["context"]["trace_id"] == trace_id]
    [served] = [s for s in mine if s["name"] == "process token.request"]
    assert served["kind"] == "SpanKind.SERVER"
    assert served["parent_id"] == hex_id(requested.context.span_id, 16)
    assert served["resource"]["attributes"]["service.name"] == "token-worker-test"
    assert served["attributes"]["token_worker.client_id"] == DEMO[0]
    [called] = [s for s in mine if s["name"] == "idp token call"]
    assert called["parent_id"] == served["context"]["span_id"]
    assert called["attributes"]["token_worker.idp.attempt"] == 1
    assert called["attributes"]["http.response.status_code"] == 200
    assert called["attributes"]["server.address"] == "127.0.0.1"
    assert called["attributes"]["server.port"] == idp.port

    recorded = [{"name": s.name, "attributes": dict(s.attributes or {}),
                 "status": {"description": s.status.description}}
                for s in spans.get_finished_spans()]
    no_secret_in(attribute_values(printed) + attribute_values(recorded))


def test_a_request_carrying_a_traceparent_gets_a_worker_span_and_a_reply_without_headers(
        nats_server, idp):
    worker = traced_worker(nats_server, idp)
    requester = Requester(nats_server.url)
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    try:
        body = token_request(DEMO, "r-traced", scope="openid traced-raw")
        headers = {"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "app=1"}
        traced = requester.run(requester.nc.request(
            "token.request", json.dumps(body).encode(), timeout=5,
            headers=headers))
        plain = requester.run(requester.nc.request(
            "token.request", json.dumps(token_request(DEMO, "r-plain")).encode(),
            timeout=5))
    finally:
        requester.close()
        printed = stopped(worker) if worker.process.poll() is None else []
        worker.stop()
    assert traced.headers is None and plain.headers is None  # nothing added to a reply
    assert b"access_token" in traced.data
    [served] = [s for s in printed if s["context"]["trace_id"] == f"0x{trace_id}"
                and s["name"] == "process token.request"]
    assert served["parent_id"] == f"0x{parent_id}"
    assert "key=app, value=1" in served["context"]["trace_state"]  # tracestate kept
    assert served["attributes"]["token_worker.request_id"] == "r-traced"
    [plain_span] = [s for s in printed if s["attributes"].get("token_worker.request_id")
                    == "r-plain"]
    assert plain_span["parent_id"] is None  # no context came: a trace of its own
