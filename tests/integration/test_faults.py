"""Faults and bad input cost nothing: fuzzed payloads, NATS outages under load, a failing
IdP and a flood past capacity, all against real servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import report_figure
from tests.helpers import wait_until
from tests.integration.helpers import DEMO, TEST_CLIENTS, WorkerProcess, make_config, token_request
from tests.integration.processes import IdpServer, free_port
from tests.integration.proxy import PartitionProxy
from token_worker import NoWorkerAnswered, TokenClient
from token_worker.config import NatsConfig
from token_worker.nats.link import State

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10000"))

VALID = token_request(DEMO, "fuzz")
_text = st.text(max_size=24)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children,
                                                                      max_size=4),
    max_leaves=6,
)


def _truncated(body: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(body) - 1).map(lambda cut: body[:cut])


def _nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "[":
        return ("[" * depth + "]" * depth).encode()
    return ('{"a":' * depth + "1" + closer * depth).encode()


PAYLOADS = st.one_of(
    st.binary(max_size=512),                                                 # random bytes
    _truncated(json.dumps(VALID).encode()),                                  # truncated JSON
    st.builds(_nested, st.integers(1, 5000), st.sampled_from(["[", "{"])),   # deep nesting
    st.fixed_dictionaries({"request_id": _json_value, "client_id": _json_value,
                           "client_secret": _json_value, "scope": _json_value,
                           "skip_cache": _json_value}).map(
                               lambda d: json.dumps(d).encode()),            # wrong types
    st.builds(lambda size, char, field: json.dumps({field: char * size, "client_id": "x"}
                                                   ).encode(),
              st.integers(4000, 20000), st.characters(),
              st.sampled_from(["request_id", "client_secret", "scope"])),    # huge strings
    st.dictionaries(st.text(), st.text(), max_size=6).map(
        lambda d: json.dumps(d, ensure_ascii=False).encode()),               # unicode
    _json_value.map(lambda v: json.dumps(v).encode()),                       # any JSON
)


@pytest.mark.timeout(600)  # 10,000 round trips: about 45 s here, minutes on a loaded machine
def test_fuzzed_payloads_all_get_well_formed_error_replies(nats_server, faulty,
                                                          requester_factory):
    refusing_idp = faulty(status=401, body=b'{"error": "invalid_client"}')
    worker = WorkerProcess(env={"NATS_URL": nats_server.url, "IDP_URL": refusing_idp.url,
                                "MAX_PAYLOAD": "16384", "LOG_LEVEL": "info"})
    try:
        _fuzz(worker, requester_factory(nats_server.url))
    finally:
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish() == 0


def _fuzz(worker: WorkerProcess, requester) -> None:
    worker.wait_for_log("serving")
    process = psutil.Process(worker.process.pid)
    threads_before = process.num_threads()
    seen = {"count": 0, "codes": set()}
    rss_after_warmup: list[float] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck), database=None)
    @given(PAYLOADS)
    def check(payload: bytes) -> None:
        raw = requester.request_raw(payload, timeout=5)
        reply = json.loads(raw)
        assert isinstance(reply, dict)
        assert isinstance(reply["request_id"], str)
        assert isinstance(reply["error"], str) and reply["error"]
        assert reply["error_code"] in ("invalid_request", "invalid_client")
        assert "access_token" not in reply
        seen["count"] += 1
        seen["codes"].add(reply["error_code"])
        if seen["count"] == min(500, FUZZ_EXAMPLES // 5):
            rss_after_warmup.append(process.memory_info().rss)

    check()
    growth_mib = (process.memory_info().rss - rss_after_warmup[0]) / 2**20
    threads_after = process.num_threads()
    report_figure(f"fuzz: {seen['count']} payloads, all answered with error replies "
          f"{sorted(seen['codes'])}; worker RSS growth after warm-up {growth_mib:+.1f} MiB; "
          f"worker threads {threads_before} -> {threads_after}")
    assert seen["count"] == FUZZ_EXAMPLES
    assert threads_after <= threads_before + 32  # at most the handler pool filled up
    assert growth_mib < 10
    assert requester.request(token_request(DEMO))["error_code"] == "invalid_client"


def test_three_nats_restarts_under_load_cost_no_caller_a_failure(nats_server, idp,
                                                                 start_worker):
    worker = start_worker(make_config(nats_server.url, idp.url, nats={"reconnect_wait": 0.1}))
    client_nats = NatsConfig(urls=(nats_server.url,), reconnect_wait=0.1, max_reconnect=-1,
                             connect_timeout=1.0, ping_interval=1.0)
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]
    slowest = [0.0]
    readiness_during_outage: list[bool] = []

    with TokenClient(client_nats, timeout=0.5, retries=20, cache=False) as client:
        def ask() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.get_token(*DEMO, budget=10.0)
                    answered[0] += 1
                except Exception as error:
                    failures.append(repr(error))
                slowest[0] = max(slowest[0], time.monotonic() - started)

        with ThreadPoolExecutor(8) as pool:
            for _ in range(8):
                pool.submit(ask)
            time.sleep(0.5)  # the scenario: half a second of steady load first
            for _ in range(3):
                nats_server.kill()
                wait_until(lambda: not worker.is_ready, what="not ready during the outage")
                readiness_during_outage.append(worker.is_ready)
                time.sleep(0.5)  # the scenario: an outage of half a second
                nats_server.start()
                wait_until(lambda: worker.is_ready, what="ready again")
                time.sleep(0.5)  # the scenario: steady load again, for half a second
            stop.set()
        unanswered = client.attempts_unanswered
    report_figure(f"3 NATS restarts under 8 requester threads: {answered[0]} tokens, "
          f"{len(failures)} caller failures, {unanswered} attempts timed out and retried "
          f"({unanswered / 3:.1f} per outage), slowest call {slowest[0]:.2f} s "
          f"(outage 0.5 s + reconnect)")
    assert failures == []
    assert readiness_during_outage == [False, False, False]
    assert answered[0] > 100
    assert worker.reconnects == 3


def test_a_reply_finished_during_a_partition_reaches_its_waiting_requester(
        nats_server, start_worker, requester_factory):
    """The worker is cut off from NATS while it serves a request; the requester is not.
    The reply waits in the reconnect buffer and arrives once the partition heals."""
    proxy = PartitionProxy(nats_server.port).start()
    release = threading.Event()

    def slow_echo(payload: bytes) -> bytes:
        release.wait(10)
        return payload

    try:
        worker = start_worker(make_config(proxy.url, nats={"reconnect_wait": 0.1}), slow_echo)
        gauge = worker.metrics.registry.get_sample_value
        requester = requester_factory(nats_server.url)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requester.request_raw, b"held across the partition",
                                  timeout=10)
            wait_until(lambda: gauge("token_worker_in_flight") == 1,
                       what="the request in the handler")
            proxy.cut()
            wait_until(lambda: worker.connection_state is State.RECONNECTING,
                       what="the worker to see the partition")
            release.set()
            wait_until(lambda: (gauge("token_worker_nats_reconnect_buffer_bytes") or 0) > 0,
                       what="the reply in the reconnect buffer")
            assert not pending.done()
            proxy.restore()
            assert pending.result(10) == b"held across the partition"
        # The reply can reach the requester before the worker's reader thread finishes
        # its reconnect bookkeeping: wait for that instead of racing it.
        wait_until(lambda: worker.reconnects == 1, what="the reconnect counted")
        assert gauge("token_worker_nats_reconnect_buffer_bytes") == 0
    finally:
        release.set()
        proxy.close()


def test_idp_stopped_slow_and_garbage_give_bounded_errors_then_recovery(nats_server, faulty,
                                                                        start_worker,
                                                                        requester_factory):
    port = free_port()
    config = make_config(nats_server.url, f"http://127.0.0.1:{port}",
                         idp={"timeout": 0.3, "deadline": 0.8, "failure_threshold": 3,
                              "cool_down": 1.0})
    worker = start_worker(config)
    requester = requester_factory(nats_server.url)
    threads_before = threading.active_count()

    def burst(tag: str) -> list[dict]:
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda i: requester.request(
                token_request(DEMO, f"{tag}-{i}", skip_cache=True), timeout=5), range(32)))

    started = time.monotonic()
    stopped = burst("stopped")  # nothing listens on the IdP's port
    assert {r["error_code"] for r in stopped} == {"idp_unavailable"}
    assert time.monotonic() - started < 4

    wait_until(lambda: worker.metrics.registry.get_sample_value(
        "token_worker_idp_circuit_open") == 0, what="the cool-down to end")
    slow = faulty(body=b"{}", delay=5)
    hanging = replace(config, idp=replace(config.idp, url=slow.url))
    worker_slow = start_worker(replace(hanging, subject="token.slow"))
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        slow_replies = list(pool.map(lambda i: requester.request(
            token_request(DEMO, f"slow-{i}"), subject="token.slow", timeout=5), range(16)))
    assert {r["error_code"] for r in slow_replies} <= {"idp_timeout", "idp_unavailable"}
    assert time.monotonic() - started < 4

    garbage = faulty(body=b"\x00<html>not a token</html>")
    worker_garbage = start_worker(replace(replace(config, idp=replace(
        config.idp, url=garbage.url)), subject="token.garbage"))
    garbage_reply = requester.request(token_request(DEMO, "g"), subject="token.garbage")
    assert garbage_reply["error_code"] == "idp_bad_response"

    assert threading.active_count() <= threads_before + 2 * (32 + 4)  # two more workers' pools
    real = IdpServer(clients=TEST_CLIENTS, port=port)  # back where the first worker looks
    real.start()
    try:  # answered idp_unavailable at once while the circuit cools down, then served
        wait_until(lambda: "access_token" in requester.request(token_request(DEMO, "back")),
                   timeout=10, what="recovery once the IdP is back")
    finally:
        real.stop()
    assert worker.is_ready and worker_slow.is_ready and worker_garbage.is_ready


def test_a_flood_past_capacity_is_bounded_and_never_a_slow_consumer(nats_server, faulty,
                                                                    requester_factory):
    slow_idp = faulty(body=b'{"access_token": "flood-token-value", "expires_in": 300}',
                      delay=0.005)
    # Every request a cache miss of its own (a scope of its own), so each needs IdP work:
    # 2 threads, 50 queued, the rest answered overloaded at once. The client's call budget
    # and the replica's ceiling are lifted: this is about the pool's bound.
    worker = WorkerProcess(env={"NATS_URL": nats_server.url, "IDP_URL": slow_idp.url,
                                "WORKERS": "2", "BACKLOG": "50", "LOG_LEVEL": "info",
                                "IDP_CLIENT_RATE": "100000", "IDP_CLIENT_BURST": "1000000",
                                "IDP_MAX_CALLS_PER_SECOND": "100000",
                                "WORKER_NAME_SUFFIX": "flood"})
    try:
        worker.wait_for_log("serving")
        _flood(worker, nats_server, requester_factory(nats_server.url))
    finally:
        worker.process.send_signal(signal.SIGTERM)
        assert worker.finish() == 0


def _flood(worker: WorkerProcess, nats_server, requester) -> None:
    process = psutil.Process(worker.process.pid)
    flood = 20_000
    bodies = [json.dumps(token_request(DEMO, f"flood-{n}", scope=f"scope-{n}")).encode()
              for n in range(flood)]

    async def blast(count: int) -> dict[str, int]:
        nc = requester.nc
        inbox = nc.new_inbox()
        counts = {"ok": 0, "overloaded": 0, "other": 0}
        done = asyncio.Event()

        async def on_reply(msg) -> None:
            if b'"access_token"' in msg.data:
                counts["ok"] += 1
            elif b"overloaded" in msg.data:
                counts["overloaded"] += 1
            else:
                counts["other"] += 1
            if sum(counts.values()) == count:
                done.set()

        sub = await nc.subscribe(inbox + ".*", cb=on_reply, pending_msgs_limit=count * 2)
        for i in range(count):
            await nc.publish("token.request", bodies[i], reply=f"{inbox}.{i}")
        await nc.flush()
        await asyncio.wait_for(done.wait(), 60)
        await sub.unsubscribe()
        return counts

    first = requester.run(blast(flood // 4), 90)
    rss_before = process.memory_info().rss
    second = requester.run(blast(flood), 90)
    growth_mib = (process.memory_info().rss - rss_before) / 2**20
    slow_consumers = _slow_consumers(nats_server)
    overload_lines = [r for r in worker.records() if r["message"] == "token not issued"
                      and r.get("error_code") == "overloaded"]
    report_figure(f"flood of {flood} requests at capacity 52: {second['ok']} served, "
          f"{second['overloaded']} answered overloaded, worker RSS growth {growth_mib:+.1f} "
          f"MiB, slow consumers {slow_consumers}, {len(overload_lines)} overload log lines")
    assert sum(first.values()) == flood // 4
    assert second["other"] == 0
    assert second["ok"] + second["overloaded"] == flood  # every request answered
    assert second["overloaded"] > flood // 2
    assert growth_mib < 5
    assert slow_consumers == 0
    assert 1 <= len(overload_lines) < 30  # rate-limited, not one per rejected request
    assert "Token Worker-flood" in nats_server.client_names()


def _slow_consumers(nats_server) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{nats_server.monitor_port}/varz",
                                timeout=5) as response:
        return int(json.load(response).get("slow_consumers", 0))


def test_no_worker_at_all_fails_fast_not_after_the_budget(nats_server):
    with TokenClient(nats_server.url, timeout=2, retries=2, cache=False) as client:
        started = time.monotonic()
        with pytest.raises(NoWorkerAnswered, match="no worker is subscribed"):
            client.get_token(*DEMO)
        assert time.monotonic() - started < 2.5  # the retries' back-off, not 3 x 2 s
