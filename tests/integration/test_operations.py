"""What operators rely on: health and readiness, Prometheus metrics, NATS service discovery
with a client nobody here wrote (nats.js), and deploy/ matching the config it ships."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from tests import ROOT
from tests.helpers import wait_until
from tests.integration.helpers import DEMO, make_config, token_request
from tests.integration.processes import NatsServer
from token_worker.config import HealthConfig, Secret

SVC_CLIENT = ROOT / "dev" / "svc-client"
PROMTOOL = ROOT / ".tools" / "bin" / "promtool"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def with_health(config):
    return replace(config, health=HealthConfig(port=0, host="127.0.0.1"))


def test_readiness_follows_the_connection_and_the_drain(nats_server, start_worker,
                                                        requester_factory):
    release = threading.Event()

    def held(payload: bytes) -> bytes:
        release.wait(10)
        return b"{}"

    worker = start_worker(with_health(make_config(nats_server.url, nats={
        "reconnect_wait": 0.1})), held)
    port = worker.health_port
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/readyz") == (200, '{"status":"ok","reason":"serving"}')

    nats_server.kill()
    wait_until(lambda: get(port, "/readyz")[0] == 503, what="not ready while reconnecting")
    assert "reconnecting" in get(port, "/readyz")[1]
    assert get(port, "/healthz")[0] == 200  # alive: restarting would not bring NATS back

    nats_server.start()
    wait_until(lambda: get(port, "/readyz")[0] == 200, what="ready after reconnecting")
    requester = requester_factory(nats_server.url)
    with ThreadPoolExecutor(2) as pool:
        asked = pool.submit(requester.request_raw, b"held", timeout=10)
        wait_until(lambda: worker.metrics.registry.get_sample_value(
            "token_worker_in_flight") == 1, what="the request in the handler")
        stopping = pool.submit(worker.stop, 10)
        wait_until(lambda: get(port, "/readyz")[0] == 503, what="not ready while draining")
        assert get(port, "/readyz") == (503, '{"status":"unavailable","reason":"draining"}')
        assert get(port, "/healthz")[0] == 200  # draining is not dying
        release.set()
        assert asked.result(10) == b"{}"
        assert stopping.result(10) is True


def test_metrics_count_what_happened(nats_server, idp, start_worker, requester_factory):
    worker = start_worker(with_health(make_config(nats_server.url, idp.url, nats={
        "reconnect_wait": 0.1})))
    requester = requester_factory(nats_server.url)
    requester.request(token_request(DEMO))
    requester.request(token_request(DEMO))
    requester.request(token_request((DEMO[0], "wrong")))
    requester.request(b"not json")
    requester.close()
    nats_server.restart()
    # ``reconnects`` is counted after the state change and its listeners: wait for it.
    wait_until(lambda: worker.reconnects == 1 and worker.is_ready, what="reconnect")

    status, text = get(worker.health_port, "/metrics")
    assert status == 200
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line and not line.startswith("#")}
    assert samples['token_worker_requests_total{outcome="ok"}'] == 2
    assert samples['token_worker_requests_total{outcome="idp_refused"}'] == 1
    assert samples['token_worker_requests_total{outcome="invalid_request"}'] == 1
    assert samples["token_worker_reply_seconds_count"] == 4
    assert samples['token_worker_cache_events_total{event="hit"}'] == 1
    assert samples['token_worker_idp_calls_total{outcome="ok"}'] == 1
    assert samples['token_worker_idp_calls_total{outcome="idp_refused"}'] == 1
    assert samples["token_worker_nats_reconnects_total"] == 1
    assert samples['token_worker_nats_connection{token_worker_nats_connection="connected"}'] == 1
    assert samples["token_worker_in_flight"] == 0
    assert samples["token_worker_capacity"] == 32 + 256
    assert samples["token_worker_idp_circuit_open"] == 0
    assert samples["token_worker_nats_reconnect_buffer_bytes"] == 0


def test_metrics_name_no_client_and_no_credential(nats_server, idp, start_worker,
                                                  requester_factory, tmp_path):
    """docs/security.md: metrics are counts by outcome and cache event; no client id, no
    credential name, no secret. Requests with distinctive ids and names (served, refused,
    unknown) leave none of them in /metrics, nor any label beside the documented ones."""
    from tests.kubelet_volume import KubeletVolume, credential_files
    from token_worker.config import CredentialsConfig

    volume = KubeletVolume(tmp_path / "credentials")
    volume.write(credential_files("zq-credential-name-4b1", *DEMO))
    worker = start_worker(with_health(replace(
        make_config(nats_server.url, idp.url),
        credentials=CredentialsConfig(directory=str(volume.root)))))
    requester = requester_factory(nats_server.url)
    served = requester.request(token_request(DEMO, "zq-request-id-ok"))
    refused = requester.request(token_request(("zq-client-id-unknown-7f", "zq-secret-9d2e"),
                                              "zq-request-id-refused"))
    named = requester.request({"request_id": "zq-request-id-named"},
                              subject="token.named.zq-credential-name-4b1")
    unknown = requester.request({"request_id": "zq-request-id-unknown"},
                                subject="token.named.zq-unknown-name-c3")
    assert served["access_token"] and named["credential"] == "zq-credential-name-4b1"
    assert refused["error_code"] == "invalid_client"
    assert unknown["error_code"] == "unknown_credential"

    status, text = get(worker.health_port, "/metrics")
    assert status == 200
    for value in ("zq-", DEMO[0], DEMO[1], served["access_token"], named["access_token"]):
        assert value not in text, value
    label_names = {name for line in text.splitlines() if line and not line.startswith("#")
                   for name in re.findall(r'[{,]([a-zA-Z_]+)="', line)}
    assert label_names == {"outcome", "event", "le", "reason", "token_worker_nats_connection"}


def test_metrics_pass_the_prometheus_linter(nats_server, idp, start_worker, requester_factory):
    """``promtool check metrics``: names, units, suffixes and help texts as Prometheus
    expects them, on what a real worker serves."""
    if not PROMTOOL.exists():
        pytest.fail("promtool is not installed: run `scripts/fetch-promtool`")
    worker = start_worker(with_health(make_config(nats_server.url, idp.url)))
    requester_factory(nats_server.url).request(token_request(DEMO))
    status, text = get(worker.health_port, "/metrics")
    assert status == 200 and "token_worker_requests_total" in text
    result = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, check=False,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def discover(url: str, *selector: str) -> dict:
    result = subprocess.run(["node", str(SVC_CLIENT / "discover.mjs"), url, *selector],
                            capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout)


def test_nats_js_services_client_lists_three_replicas(nats_server, idp, start_worker,
                                                      requester_factory):
    if not (SVC_CLIENT / "node_modules" / "nats").exists():
        pytest.fail("dev/svc-client is not installed: run `npm ci --prefix dev/svc-client`")
    workers = [start_worker(make_config(nats_server.url, idp.url, name_suffix=f"r{i}"))
               for i in range(3)]
    requester = requester_factory(nats_server.url)
    for i in range(6):
        requester.request(token_request(DEMO, f"s{i}"))
    requester.request(b"{}")

    found = discover(nats_server.url)
    ids = {worker.instance_id for worker in workers}
    assert {p["id"] for p in found["ping"]} == ids
    assert len(ids) == 3
    for ping in found["ping"]:
        assert ping["type"] == "io.nats.micro.v1.ping_response"
        assert (ping["name"], ping["version"]) == ("token-worker", "0.1.0")
    for info in found["info"]:
        assert info["type"] == "io.nats.micro.v1.info_response"
        assert info["endpoints"][0]["subject"] == "token.request"
        assert info["endpoints"][0]["queue_group"] == "token-workers"
    stats = found["stats"]
    assert {s["type"] for s in stats} == {"io.nats.micro.v1.stats_response"}
    assert sum(s["endpoints"][0]["num_requests"] for s in stats) == 7
    assert sum(s["endpoints"][0]["num_errors"] for s in stats) == 1
    assert all(s["endpoints"][0]["processing_time"] > 0 for s in stats
               if s["endpoints"][0]["num_requests"])

    by_name = discover(nats_server.url, "token-worker")
    assert {p["id"] for p in by_name["ping"]} == ids
    one = workers[1].instance_id
    by_id = discover(nats_server.url, "token-worker", one)
    assert [p["id"] for p in by_id["ping"]] == [one]
    assert discover(nats_server.url, "other-service")["ping"] == []


def test_one_miss_then_one_hit_count_exactly_one_of_each(nats_server, idp, start_worker,
                                                         requester_factory):
    worker = start_worker(with_health(make_config(nats_server.url, idp.url)))
    requester = requester_factory(nats_server.url)
    assert requester.request(token_request(DEMO, "miss"))["token_source"] == "idp"
    assert requester.request(token_request(DEMO, "hit"))["token_source"] == "cache"

    status, text = get(worker.health_port, "/metrics")
    assert status == 200
    assert 'token_worker_cache_events_total{event="miss"} 1.0' in text
    assert 'token_worker_cache_events_total{event="hit"} 1.0' in text


WORK_ACL = """
    authorization {
      users = [
        {user: worker, password: "worker-pass-acl",
         permissions: {publish: {allow: ["_INBOX.>", "$SRV.>"]},
                       subscribe: {allow: [%s"$SRV.>"]}}}
        {user: requester, password: "requester-pass-acl"}
      ]
    }
"""
ALLOWED = WORK_ACL % '"token.request", '
DENIED = WORK_ACL % ""


def test_readiness_is_false_while_the_server_refuses_the_work_subscription(
        start_worker, caplog):
    """Finding 3: an ACL that denies ``sub token.request`` (after a reload, or at start)
    leaves the worker connected but deaf: it must not look ready."""
    server = NatsServer(config_text=ALLOWED).start()
    try:
        config = with_health(make_config(server.url, nats={
            "username": "worker", "password": Secret("worker-pass-acl")}))
        worker = start_worker(config, lambda payload: payload)
        assert get(worker.health_port, "/readyz")[0] == 200
        caplog.set_level(logging.ERROR, logger="token_worker")

        server.reload(DENIED)  # the operator tightens the ACL
        wait_until(lambda: get(worker.health_port, "/readyz")[0] == 503,
                   what="not ready once the subscription is refused")
        assert "subscription to token.request refused by the server" in get(
            worker.health_port, "/readyz")[1]
        refused = [r for r in caplog.records if r.getMessage().startswith(
            "subscription refused by the server")]
        assert len(refused) == 1

        # the ACL is fixed; the server does not give the subscription back by itself, but a
        # reconnect re-subscribes, and no refusal comes: ready again
        server.reload(ALLOWED)
        server.restart()
        wait_until(lambda: get(worker.health_port, "/readyz")[0] == 200 and worker.reconnects,
                   what="ready again after a reconnect that re-subscribed")

        # a fresh start under the denied ACL is never ready
        server.reload(DENIED)
        wait_until(lambda: get(worker.health_port, "/readyz")[0] == 503,
                   what="refused again")
        fresh = start_worker(replace(config, name_suffix="fresh"), lambda payload: payload)
        status, text = get(fresh.health_port, "/readyz")
        assert (status, "refused by the server" in text) == (503, True)
        assert not fresh.is_ready
    finally:
        server.cleanup()
