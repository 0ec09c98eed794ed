"""The worker end to end: real nats-server, real IdP (oidc-provider), requests from nats-py."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import spy_on_signal_handlers, wait_until
from tests.integration.helpers import BASIC, DEMO, SCOPED, WorkerProcess, make_config, token_request
from tests.integration.processes import NatsServer, free_port
from token_worker import TokenClient, TokenWorker


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


def test_unknown_fields_are_ignored(nats_server, idp, start_worker, requester_factory):
    """README: "Unknown fields are ignored": a newer requester's fields, of any JSON type,
    neither fail the request nor change which token it gets."""
    start_worker(make_config(nats_server.url, idp.url))
    requester = requester_factory(nats_server.url)
    reply = requester.request(token_request(
        DEMO, "unknown-fields", scope="read", aud="https://api.example",
        grant_type="password", resources=["a", "b"], future={"nested": [1, None, True]},
        n=7, flag=False, nothing=None))
    assert "error" not in reply, reply
    assert (reply["request_id"], reply["scope"]) == ("unknown-fields", "read")
    plain = requester.request(token_request(DEMO, "plain", scope="read"))
    assert plain["access_token"] == reply["access_token"]  # the same request: cached


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
        (json.dumps({"request_id": 7, "client_id": "c", "client_secret": "s"}).encode(), "",
         "request_id must be a string"),
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


def test_a_request_without_request_id_is_served_as_the_original_served_it(
        nats_server, idp, start_worker, requester_factory):
    start_worker(make_config(nats_server.url, idp.url))
    body = {"client_id": DEMO[0], "client_secret": DEMO[1],
            "timestamp": "2026-11-29T12:00:00.123456789Z"}
    reply = requester_factory(nats_server.url).request(body)
    assert reply["request_id"] == ""
    assert reply["access_token"]
    assert "error" not in reply


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
    wait_until(lambda: "request without reply subject dropped" in caplog.text, timeout=5,
               what="the warning for a request without reply subject")
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

    worker = start_worker(make_config(nats_server.url, workers=1, backlog=1), slow)
    requester = requester_factory(nats_server.url)
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(requester.request, {"request_id": f"h{i}"}) for i in range(2)]
        wait_until(lambda: worker.metrics.registry.get_sample_value(
            "token_worker_in_flight") == 2, what="one request running, one in the backlog")
        # Answered while both others are held (released only after it): at once, not once
        # a slot freed.
        rejected = requester.request({"request_id": "third"})
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


# --- fixes proven by tests that failed on the code before them --------------------------

def test_the_signal_handler_takes_no_lock_and_run_stops(nats_server, monkeypatch):
    locks = spy_on_signal_handlers(monkeypatch)
    worker = TokenWorker(make_config(nats_server.url), lambda payload: payload)

    def signal_when_serving() -> None:
        wait_until(lambda: worker.is_ready, what="the worker serving")
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=signal_when_serving)
    sender.start()
    worker.run()  # on the main thread, as the CLI runs it
    sender.join(5)
    assert locks == []
    assert worker.connection_state.value == "closed"


def test_a_signal_during_the_first_connect_stops_the_worker_at_once():
    unreachable = f"nats://127.0.0.1:{free_port()}"
    worker = WorkerProcess(env={"NATS_URL": unreachable, "RECONNECT_WAIT": "30",
                                "MAX_RECONNECT": "5", "LOG_LEVEL": "info"})
    try:
        worker.wait_for_log("nats connect round failed, retrying")
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish(timeout=10) == 0  # the next round was 30 s away: at once
        messages = [record["message"] for record in worker.records()]
        assert "signal received" in messages
        assert "draining" not in messages
    finally:
        worker.stop()


def test_a_failed_first_connect_says_so_and_not_that_it_drained():
    unreachable = f"nats://127.0.0.1:{free_port()}"
    worker = WorkerProcess(env={"NATS_URL": unreachable, "RECONNECT_WAIT": "0.1",
                                "MAX_RECONNECT": "2", "LOG_LEVEL": "info"})
    try:
        assert worker.finish() == 3
        records = worker.records()
        messages = [record["message"] for record in records]
        assert "draining" not in messages
        assert not [r for r in records if r["message"] == "stopped" and r.get("drained")]
        assert messages[-1] == "exiting: NATS unreachable"
    finally:
        worker.stop()


def test_shutdown_answers_queued_requests_shutting_down_at_once(
        nats_server, start_worker, requester_factory):
    release = threading.Event()
    started = threading.Event()

    def slow(payload: bytes) -> bytes:
        started.set()
        release.wait(10)
        return b'{"ok": true}'

    worker = start_worker(make_config(nats_server.url, workers=1, backlog=4), slow)
    requester = requester_factory(nats_server.url)
    with ThreadPoolExecutor(5) as pool:  # four requesters and the stop
        running = pool.submit(requester.request, {"request_id": "running"}, timeout=10)
        assert started.wait(5)
        queued = [pool.submit(requester.request, {"request_id": f"q{i}"}, timeout=10)
                  for i in range(3)]
        wait_until(lambda: worker.metrics.registry.get_sample_value(
            "token_worker_in_flight") == 4, what="three requests queued")
        stopping = pool.submit(worker.stop, 10)
        answered = [future.result(3) for future in queued]  # while the first still runs
        assert not running.done()
        release.set()
        assert running.result(10) == {"ok": True}
        assert stopping.result(10) is True
    assert sorted(reply["request_id"] for reply in answered) == ["q0", "q1", "q2"]
    assert {reply["error_code"] for reply in answered} == {"shutting_down"}


def test_per_request_warnings_are_rate_limited(nats_server, idp, start_worker,
                                               requester_factory, caplog):
    start_worker(make_config(nats_server.url, idp.url))
    requester = requester_factory(nats_server.url)
    caplog.set_level("WARNING")
    for _ in range(200):
        requester.publish("token.request", json.dumps(token_request(DEMO)).encode())
        requester.request_raw(b"not json")
    assert requester.request(token_request(DEMO))["access_token"]  # all of them handled
    no_reply = [r for r in caplog.records
                if r.getMessage() == "request without reply subject dropped"]
    invalid = [r for r in caplog.records if r.getMessage() == "invalid request"]
    assert 1 <= len(no_reply) < 10
    assert 1 <= len(invalid) < 10


def test_a_reply_larger_than_the_servers_max_payload_is_token_too_large(
        requester_factory, start_worker, faulty, caplog):
    server = NatsServer(config_text="max_payload: 65536").start()
    huge_token = "t" * 100_000
    try:
        idp = faulty(body=json.dumps({"access_token": huge_token, "token_type": "Bearer",
                                      "expires_in": 300}).encode())
        worker = start_worker(make_config(server.url, idp.url))
        client_before = server.connz()[0]["cid"]
        requester = requester_factory(server.url)
        caplog.set_level("WARNING")
        for request_id in ("big-1", "big-2"):  # from the IdP, then from the cache
            reply = requester.request(token_request(DEMO, request_id))
            assert reply["error_code"] == "token_too_large"
            assert reply["request_id"] == request_id
            assert "65536" in reply["error"]
            assert "access_token" not in reply
        assert worker.is_ready and worker.reconnects == 0
        assert client_before in [c["cid"] for c in server.connz()]
        too_large = [r for r in caplog.records if r.getMessage().startswith("reply too large")]
        assert too_large and too_large[0].client_id == DEMO[0]
        assert huge_token not in caplog.text
    finally:
        server.cleanup()


def test_requests_still_running_when_the_drain_ends_are_answered_shutting_down(
        nats_server, start_worker, requester_factory):
    """Finding 16: a request still running when ``drainTimeout`` ends gets ``shutting_down``
    at once (its requester retries another replica), and never a late second reply."""
    release = threading.Event()
    started = threading.Event()

    def held(payload: bytes) -> bytes:  # an IdP that holds the request
        started.set()
        release.wait(10)
        return b'{"late": true}'

    worker = start_worker(make_config(nats_server.url, workers=2), held)
    requester = requester_factory(nats_server.url)
    inbox = requester.nc.new_inbox()
    replies = requester.run(requester.nc.subscribe(inbox, max_msgs=0))
    requester.publish("token.request", b'{"request_id": "held"}', reply=inbox)
    assert started.wait(5)
    assert worker.stop(timeout=0.2) is False
    reply = json.loads(requester.run(replies.next_msg(timeout=2)).data)  # handler still held
    assert (reply["request_id"], reply["error_code"]) == ("held", "shutting_down")
    release.set()
    with pytest.raises(Exception, match=r"(?i)timeout"):  # the late reply is dropped
        requester.run(replies.next_msg(timeout=0.5))


@pytest.mark.parametrize("token_bytes", [1_100_000, 5_000_000])
def test_the_issues_oversized_tokens_get_token_too_large_and_the_next_request_is_served(
        token_bytes, nats_server, requester_factory, start_worker, faulty):
    """Oversized tokens on a server with the default max_payload (1 MiB): with the IdP's
    answer cap raised so that such a token is read at all, its reply is token_too_large,
    the worker keeps its connection (same client in /connz) and serves the next request,
    a normal token, at once."""
    def answer(token: str) -> tuple[int, bytes, dict[str, str]]:
        return 200, json.dumps({"access_token": token, "token_type": "Bearer",
                                "expires_in": 300}).encode(), {}

    idp = faulty(script=[answer("t" * token_bytes), answer("normal-token")])
    worker = start_worker(make_config(nats_server.url, idp.url,
                                      idp={"max_response_bytes": 8 * 1024 * 1024}))
    client_before = nats_server.connz()[0]["cid"]
    requester = requester_factory(nats_server.url)
    reply = requester.request(token_request(DEMO, "huge"))
    assert reply["error_code"] == "token_too_large"
    assert "1048576" in reply["error"]
    assert requester.request(token_request(DEMO, "next"))["access_token"] == "normal-token"
    assert worker.is_ready and worker.reconnects == 0
    assert client_before in [c["cid"] for c in nats_server.connz()]


def test_a_token_is_never_published_to_a_reply_subject_outside_the_inboxes(
        nats_server, idp, start_worker, requester_factory):
    """A requester names where its reply goes. Asked to reply to a subject others read (a
    stream's, an audit log's), the worker drops the request before any work."""
    start_worker(make_config(nats_server.url, idp.url))
    requester = requester_factory(nats_server.url)
    leaked: list[bytes] = []

    async def collect(message) -> None:  # type: ignore[no-untyped-def]
        leaked.append(message.data)

    requester.run(requester.nc.subscribe("audit.log", cb=collect))
    calls = idp.token_calls()
    requester.publish("token.request", json.dumps(token_request(DEMO)).encode(),
                      reply="audit.log")
    assert "access_token" in requester.request(token_request(DEMO, "r-2"))  # served after it
    requester.run(requester.nc.flush())  # anything routed to audit.log before has arrived
    requester.run(requester.nc.flush())
    assert leaked == []
    assert idp.token_calls() == calls + 1  # the dropped request cost no IdP call
