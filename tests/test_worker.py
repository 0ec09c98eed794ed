"""The worker end to end: real nats-server, real IdP (oidc-provider), requests from nats-py."""

from __future__ import annotations

import collections
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import BASIC, DEMO, SCOPED, make_config, token_request
from token_worker import TokenClient


def test_good_client_gets_a_token_the_idp_accepts(nats_server, idp, start_worker,
                                                   requester_factory):
    start_worker(make_config(nats_server.url, idp.url))
    reply = requester_factory(nats_server.url).request(token_request(DEMO, "req-42"))

    assert reply["request_id"] == "req-42"
    assert reply["token_type"] == "Bearer"
    assert reply["expires_in"] == 300
    assert reply["scope"] == "openid profile"  # the original's default scope
    assert len(reply["access_token"]) >= 32
    assert "error" not in reply
    assert reply["timestamp"].endswith("Z")


def test_bad_secret_is_refused_with_the_idps_oauth2_code(nats_server, idp, start_worker,
                                                          requester_factory):
    start_worker(make_config(nats_server.url, idp.url))
    reply = requester_factory(nats_server.url).request(
        token_request((DEMO[0], "wrong-secret"), "req-bad"))

    assert reply["request_id"] == "req-bad"
    assert reply["error_code"] == "invalid_client"
    assert "invalid_client" in reply["error"]
    assert "access_token" not in reply


def test_client_secret_basic_and_requested_scope(nats_server, idp, start_worker,
                                                  requester_factory):
    start_worker(make_config(nats_server.url, idp.url,
                             idp={"auth_method": "client_secret_basic"}))
    reply = requester_factory(nats_server.url).request(token_request(BASIC, scope="read write"))
    assert reply["scope"] == "read write"
    assert reply["access_token"]


def test_scope_the_client_may_not_have_is_invalid_scope(nats_server, idp, start_worker,
                                                         requester_factory):
    start_worker(make_config(nats_server.url, idp.url))
    requester = requester_factory(nats_server.url)
    assert requester.request(token_request(SCOPED, scope="read"))["scope"] == "read"
    refused = requester.request(token_request(SCOPED, scope="admin"))
    assert refused["error_code"] == "invalid_scope"


@pytest.mark.parametrize(
    ("payload", "request_id", "fragment"),
    [
        (b"{not json", "", "Invalid request format"),
        (b"[1, 2]", "", "Invalid request format"),
        (b"", "", "Invalid request format"),
        (b"\xff\xfe\x00garbage", "", "Invalid request format"),
        (json.dumps({"request_id": "m1", "client_secret": "s"}).encode(), "m1",
         "missing field client_id"),
        (json.dumps({"request_id": "m2", "client_id": "", "client_secret": "s"}).encode(), "m2",
         "client_id must not be empty"),
        (json.dumps({"request_id": "m3", "client_id": 7, "client_secret": "s"}).encode(), "m3",
         "client_id must be a string"),
        (json.dumps({"request_id": "m4", "client_id": "c", "client_secret": ["s"]}).encode(),
         "m4", "client_secret must be a string"),
        (json.dumps({"request_id": "m5", "client_id": "c", "client_secret": "s",
                     "scope": 5}).encode(), "m5", "scope"),
        (json.dumps({"client_id": "c", "client_secret": "s"}).encode(), "",
         "missing field request_id"),
        (b"[" * 100_000, "", "Invalid request format"),
    ],
)
def test_bad_requests_get_an_error_reply_and_the_worker_keeps_serving(
        payload, request_id, fragment, nats_server, idp, start_worker, requester_factory):
    start_worker(make_config(nats_server.url, idp.url, max_payload=256 * 1024))
    requester = requester_factory(nats_server.url)

    reply = requester.request(payload)

    assert reply["error_code"] == "invalid_request"
    assert reply["request_id"] == request_id
    assert fragment in reply["error"]
    assert requester.request(token_request(DEMO))["access_token"]  # still serving


def test_oversize_payload_is_refused_without_parsing(nats_server, idp, start_worker,
                                                     requester_factory):
    start_worker(make_config(nats_server.url, idp.url, max_payload=1024))
    body = token_request(DEMO, "big", padding="x" * 2000)
    reply = requester_factory(nats_server.url).request(body)
    assert reply["error_code"] == "invalid_request"
    assert "limit is 1024" in reply["error"]


def test_request_without_reply_subject_is_logged_and_dropped(nats_server, idp, start_worker,
                                                             requester_factory, caplog):
    start_worker(make_config(nats_server.url, idp.url))
    requester = requester_factory(nats_server.url)
    caplog.set_level("WARNING")

    calls_before = idp.token_calls()
    requester.publish("token.request", json.dumps(token_request(DEMO)).encode())
    deadline = time.monotonic() + 5
    while "request without reply subject dropped" not in caplog.text:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert idp.token_calls() == calls_before  # dropped before any IdP work
    assert requester.request(token_request(DEMO))["access_token"]  # and still serving
    assert idp.token_calls() == calls_before + 1


def test_custom_handler_replaces_the_exchange_and_its_crash_is_an_internal_error(
        nats_server, start_worker, requester_factory):
    def handler(payload: bytes) -> bytes:
        body = json.loads(payload)
        if body.get("crash"):
            raise RuntimeError("boom")
        return json.dumps({"echo": body["request_id"]}).encode()

    start_worker(make_config(nats_server.url), handler)
    requester = requester_factory(nats_server.url)
    assert requester.request({"request_id": "e1"}) == {"echo": "e1"}
    crashed = requester.request({"request_id": "e2", "crash": True})
    assert crashed["error_code"] == "internal_error"
    assert crashed["request_id"] == "e2"
    assert requester.request({"request_id": "e3"}) == {"echo": "e3"}


def test_full_pool_answers_overloaded_at_once(nats_server, start_worker, requester_factory):
    release = threading.Event()

    def slow(payload: bytes) -> bytes:
        release.wait(10)
        return b'{"ok": true}'

    start_worker(make_config(nats_server.url, workers=1, backlog=1), slow)
    requester = requester_factory(nats_server.url)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(requester.request, {"request_id": f"h{i}"}) for i in range(2)]
        time.sleep(0.3)
        started = time.monotonic()
        rejected = requester.request({"request_id": "third"})
        assert time.monotonic() - started < 1.0
        release.set()
        assert [f.result(10) for f in held] == [{"ok": True}, {"ok": True}]
    assert rejected["error_code"] == "overloaded"
    assert rejected["request_id"] == "third"


def test_load_spreads_over_the_queue_group_and_each_request_is_answered_once(
        nats_server, start_worker):
    served_by: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def handler_for(name: str):
        def handler(payload: bytes) -> bytes:
            with lock:
                served_by[name] += 1
            body = json.loads(payload)
            return json.dumps({"request_id": body["request_id"], "access_token": name,
                               "token_type": "Bearer", "expires_in": 60}).encode()
        return handler

    for name in ("a", "b", "c"):
        start_worker(make_config(nats_server.url, name_suffix=name), handler_for(name))

    with TokenClient(nats_server.url, timeout=5) as client, ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(lambda i: client.get_token(f"c{i}", "s"), range(300)))

    assert len(tokens) == 300
    assert sum(served_by.values()) == 300  # nobody answered twice, nobody was skipped
    assert set(served_by) == {"a", "b", "c"}
    assert min(served_by.values()) >= 30, served_by
