"""kv.py and the shared tier against a real ``nats-server -js`` (store under tmp_path)."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import report_figure
from tests.helpers import wait_until
from tests.integration.processes import NatsServer, jetstream_cluster
from token_worker.config import NatsConfig, Secret
from token_worker.errors import KvError, KvTimeout, KvUnavailable
from token_worker.nats.connection import NatsConnection
from token_worker.nats.kv import BucketInfo, KeyValue
from token_worker.tokens.model import IssuedToken
from token_worker.tokens.shared import Lease, SharedTier

BUCKET = "tokens"
FLEET_KEY = b"fleet-key-from-a-kubernetes-secret-0123456789"
CLIENT_ID = "kv-test-client-5d1e"
SECRET = "kv-test-secret-5d1e-do-not-store"
ACCESS_TOKEN = "kv-test-access-token-5d1e-body"
URL = "http://127.0.0.1:9/token"


@pytest.fixture
def js_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(extra_args=("-js", "-sd", str(tmp_path / "jetstream"))).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def connect() -> Iterator[Callable[[str], NatsConnection]]:
    """Connections as the shared tier needs them (announcing headers); all closed after."""
    made: list[NatsConnection] = []

    def make(url: str) -> NatsConnection:
        connection = NatsConnection(
            NatsConfig(urls=(url,), connect_timeout=1.0, reconnect_wait=0.2), "kv-test",
            no_responders=True, first_connect_rounds=1)
        connection.connect()
        made.append(connection)
        return connection

    yield make
    for connection in made:
        connection.close()


@pytest.fixture
def kv(js_server: NatsServer, connect: Callable[[str], NatsConnection]) -> KeyValue:
    bucket = KeyValue(connect(js_server.url), BUCKET, timeout=2.0)
    bucket.ensure_bucket(history=1, max_age=600)
    return bucket


def token(expires_in: int = 300) -> IssuedToken:
    return IssuedToken(access_token=ACCESS_TOKEN, token_type="Bearer", expires_in=expires_in,
                       scope="read", issued_at=time.time())


def test_a_missing_bucket_is_created_with_history_1_and_the_max_age(
        js_server: NatsServer, connect: Callable[[str], NatsConnection]) -> None:
    bucket = KeyValue(connect(js_server.url), BUCKET)
    assert bucket.info() is None

    created = bucket.ensure_bucket(history=1, max_age=900, replicas=1)
    again = KeyValue(connect(js_server.url), BUCKET).ensure_bucket(history=1, max_age=900)

    assert (created.history, created.max_age, created.replicas) == (1, 900.0, 1)
    assert created.allow_msg_ttl
    assert created.allow_direct
    assert (again.history, again.max_age, again.allow_msg_ttl) == (1, 900.0, True)


def test_put_get_and_delete(kv: KeyValue) -> None:
    assert kv.get("a.tok") is None
    first = kv.put("a.tok", b"one")
    second = kv.put("a.tok", b"two")
    entry = kv.get("a.tok")

    assert second > first
    assert entry is not None
    assert (entry.value, entry.revision) == (b"two", second)
    kv.delete("a.tok")
    assert kv.get("a.tok") is None
    info = kv.info()
    assert info is not None
    assert info.messages == 1  # history 1: only the deletion marker is left


def race_creates(buckets: list[KeyValue], key: str) -> list[int | None]:
    """Every bucket creates ``key`` at the same moment; their results."""
    start = threading.Barrier(len(buckets))
    results: list[int | None] = []

    def create(bucket: KeyValue) -> None:
        start.wait(5)
        results.append(bucket.create(key, b"", ttl=30))

    threads = [threading.Thread(target=create, args=(bucket,)) for bucket in buckets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == len(buckets)
    return results


def test_of_concurrent_creates_exactly_one_wins(
        js_server: NatsServer, kv: KeyValue, connect: Callable[[str], NatsConnection]) -> None:
    buckets = [KeyValue(connect(js_server.url), BUCKET) for _ in range(4)]
    for round_number in range(10):
        results = race_creates(buckets, f"race{round_number}.lease")
        assert sum(result is not None for result in results) == 1, results


def test_a_lease_expires_by_its_ttl_and_can_be_taken_again(kv: KeyValue) -> None:
    assert kv.create("k.lease", b"", ttl=1) is not None
    assert kv.create("k.lease", b"", ttl=1) is None

    took = wait_until(lambda: kv.get("k.lease") is None, timeout=5, what="the lease's TTL")

    assert 0.5 < took < 4  # the behaviour under test: the 1 s TTL, with room for load
    assert kv.create("k.lease", b"", ttl=1) is not None


def test_a_deleted_key_can_be_created_again_and_a_stale_delete_is_refused(
        kv: KeyValue) -> None:
    first = kv.create("d.lease", b"", ttl=30)
    assert first is not None
    assert kv.delete("d.lease", last_revision=first) is not None
    second = kv.create("d.lease", b"", ttl=30)
    assert second is not None

    assert kv.delete("d.lease", last_revision=first) is None  # not ours any more
    assert kv.get("d.lease") is not None


def test_wait_for_returns_the_value_another_connection_puts(
        js_server: NatsServer, kv: KeyValue, connect: Callable[[str], NatsConnection]) -> None:
    other = KeyValue(connect(js_server.url), BUCKET)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(kv.wait_for("w.tok", timeout=10)))
    waiter.start()
    wait_until(lambda: any(sub["subject"] == f"$KV.{BUCKET}.w.tok"
                           for conn in js_server.connz()
                           for sub in conn.get("subscriptions_list_detail") or ()),
               what="the waiter's subscription")
    other.put("w.tok", b"value")
    waiter.join(10)  # woken by the put: its own 10 s timeout would have given None

    assert len(got) == 1
    entry = got[0]
    assert entry is not None
    assert entry.value == b"value"  # type: ignore[attr-defined]


def test_wait_for_times_out_without_a_put(kv: KeyValue) -> None:
    started = time.monotonic()
    assert kv.wait_for("nobody.tok", timeout=0.3) is None
    assert 0.3 <= time.monotonic() - started < 2  # the behaviour: its 0.3 s timeout


def test_a_server_without_jetstream_answers_no_responders_at_once(
        nats_server: NatsServer, connect: Callable[[str], NatsConnection]) -> None:
    bucket = KeyValue(connect(nats_server.url), BUCKET, timeout=5)
    started = time.monotonic()
    with pytest.raises(KvUnavailable, match="JetStream is off"):
        bucket.ensure_bucket(max_age=60)
    assert time.monotonic() - started < 2.5  # at once: well inside the call's 5 s timeout


def test_a_stopped_server_gives_a_timeout_not_a_hang(
        js_server: NatsServer, kv: KeyValue) -> None:
    js_server.kill()
    started = time.monotonic()
    with pytest.raises((KvTimeout, KvUnavailable)):
        kv.get("a.tok")
    assert time.monotonic() - started < 6  # a hang would not end; the call's timeout is 2 s


# --- the shared tier on the real bucket ----------------------------------------------------


def tier_on(kv: KeyValue) -> SharedTier:
    return SharedTier(kv, FLEET_KEY, expiry_margin=30, max_age=600)


def test_one_replica_leads_and_another_waits_for_its_token(
        js_server: NatsServer, kv: KeyValue, connect: Callable[[str], NatsConnection]) -> None:
    leader = tier_on(kv)
    follower = tier_on(KeyValue(connect(js_server.url), BUCKET))
    key = leader.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    assert leader.lease(key, ttl=10) is Lease.TAKEN
    assert follower.lease(key, ttl=10) is Lease.HELD_ELSEWHERE

    got: list[IssuedToken | None] = []
    waiter = threading.Thread(target=lambda: got.append(follower.wait(key, timeout=10)))
    waiter.start()
    wait_until(lambda: follower.counts["lease_waits"] == 1, what="the follower waiting")
    leader.store(key, token())
    leader.release(key)
    waiter.join(10)

    assert got and got[0] is not None
    assert got[0].access_token == ACCESS_TOKEN
    assert follower.counts["lease_takeovers"] == 0
    assert follower.lease(key, ttl=10,
                          newer_than=time.time() + 3600) is Lease.TAKEN  # released: a
    # refresh may take it


def test_nothing_readable_is_written_to_the_store_directory(
        js_server: NatsServer, kv: KeyValue, tmp_path: Path) -> None:
    tier = tier_on(kv)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    assert tier.lease(key, ttl=30) is Lease.TAKEN
    tier.store(key, token())
    assert tier.lookup(key) is not None
    js_server.stop()  # a clean stop writes everything out

    files = [path for path in (tmp_path / "jetstream").rglob("*") if path.is_file()]
    everything = b"".join(path.read_bytes() for path in files)
    assert f"$KV.{BUCKET}.{key.names[0]}.tok".encode() in everything  # we did look there
    for clear in (CLIENT_ID, SECRET, ACCESS_TOKEN, "read", "Bearer"):
        assert clear.encode() not in everything, clear


def test_without_jetstream_the_tier_degrades_to_misses_with_one_warning(
        nats_server: NatsServer, connect: Callable[[str], NatsConnection],
        caplog: pytest.LogCaptureFixture) -> None:
    tier = SharedTier(KeyValue(connect(nats_server.url), BUCKET), FLEET_KEY, expiry_margin=30,
                      max_age=600, retry_after=0.0)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "token_worker.tokens.shared"):
        for _ in range(5):
            assert tier.lookup(key) is None
            tier.store(key, token())
            assert tier.lease(key, ttl=5) is Lease.NO_TIER
            assert tier.wait(key, timeout=5) is None
            tier.release(key)

    assert time.monotonic() - started < 5  # no call waited: five waits would take 25 s
    warnings = [r for r in caplog.records if r.name == "token_worker.tokens.shared"]
    assert len(warnings) == 1
    assert tier.counts["errors"] >= 5
    assert tier.counts["hits"] == 0


def test_shared_get_round_trip(kv: KeyValue) -> None:
    """The figure: a shared hit costs one KV round trip (direct get + open) on loopback."""
    tier = tier_on(kv)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, token())
    for _ in range(200):  # warm up
        tier.lookup(key)
    samples = []
    for _ in range(3000):
        started = time.perf_counter()
        found = tier.lookup(key)
        samples.append(time.perf_counter() - started)
        assert found is not None
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p99 = samples[int(len(samples) * 0.99)] * 1000
    report_figure(f"shared tier hit (direct get + AES-GCM open), loopback, 3000 gets: "
                  f"p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    assert p50 < 50


# --- a three-node JetStream cluster, R3 bucket -------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = jetstream_cluster(tmp_path / "cluster")
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.cleanup()


def ensure_when_ready(bucket: KeyValue, **options: object) -> BucketInfo:
    """ensure_bucket once the cluster has elected its JetStream meta leader."""
    made: list[BucketInfo] = []

    def attempt() -> bool:
        try:
            made.append(bucket.ensure_bucket(**options))  # type: ignore[arg-type]
        except KvError:
            return False
        return True

    wait_until(attempt, timeout=30, what="JetStream in the cluster")
    return made[0]


def test_an_r3_bucket_keeps_serving_and_leasing_with_a_node_killed(
        cluster: list[NatsServer], connect: Callable[[str], NatsConnection]) -> None:
    buckets = [KeyValue(connect(server.url), BUCKET, timeout=2.0) for server in cluster]
    info = ensure_when_ready(buckets[0], history=1, max_age=600, replicas=3)
    assert info.replicas == 3

    for round_number in range(3):
        results = race_creates(buckets, f"r3race{round_number}.lease")
        assert sum(result is not None for result in results) == 1, results

    tiers = [SharedTier(bucket, FLEET_KEY, expiry_margin=30, max_age=600, replicas=3,
                        retry_after=0.2) for bucket in buckets]
    assert all(tier.prepare() for tier in tiers)  # as a worker does when it starts
    key = tiers[0].key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tiers[0].store(key, token())
    assert tiers[2].lookup(key) is not None

    leader = buckets[0].info()
    assert leader is not None
    assert leader.leader.startswith("n")
    dead = int(leader.leader[1:])  # the worst node to lose: the stream's leader
    alive = [index for index in range(3) if index != dead]
    cluster[dead].kill()

    hit = wait_until(lambda: tiers[alive[0]].lookup(key) is not None, timeout=20,
                     what="the shared tier after losing a node")
    refresh_all = time.time() + 3600  # every stored token counts as due for refresh
    lease = wait_until(lambda: tiers[alive[1]].lease(key, ttl=10, newer_than=refresh_all)
                       is Lease.TAKEN,
                       timeout=20, what="a lease on two nodes")
    assert tiers[alive[0]].lease(key, ttl=10, newer_than=refresh_all) is Lease.HELD_ELSEWHERE
    report_figure(f"R3 bucket, stream leader killed: shared hits again after {hit:.2f} s, "
                  f"leases again after a further {lease:.2f} s")


def test_three_replicas_in_a_cold_burst_call_the_idp_once_per_key(
        js_server: NatsServer, kv: KeyValue, connect: Callable[[str], NatsConnection]) -> None:
    """The miss path as a broker runs it (lookup, lease or wait, store, release), with an
    IdP that answers in 200 ms: 300 requests for 50 cold clients over three replicas."""
    # 5 s per call: on a loaded CI machine a JetStream answer can take over the 1 s default,
    # and a timeout (rightly) sends that request to the IdP, blurring the figure proved here.
    replicas = [tier_on(KeyValue(connect(js_server.url), BUCKET, timeout=5.0))
                for _ in range(3)]
    for replica in replicas:
        assert replica.prepare()
    calls: list[str] = []
    calls_lock = threading.Lock()

    def idp(client_id: str) -> IssuedToken:
        with calls_lock:
            calls.append(client_id)
        time.sleep(0.2)  # the IdP's latency, not a wait for a condition
        return token()

    def serve(replica: SharedTier, client_id: str) -> IssuedToken:
        key = replica.key(URL, client_id, SECRET, "read", "client_secret_post")
        found = replica.lookup(key)
        if found is not None:
            return found
        if replica.lease(key, ttl=5) is Lease.TAKEN:
            try:
                found = idp(client_id)
                replica.store(key, found)
            finally:
                replica.release(key)
            return found
        return replica.wait(key, timeout=5) or idp(client_id)

    clients = [f"burst-client-{n}" for n in range(50)]
    jobs = [(replicas[n % 3], clients[n % 50]) for n in range(300)]
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(lambda job: serve(*job), jobs))

    assert all(answer.access_token == ACCESS_TOKEN for answer in answers)
    assert sorted(calls) == sorted(clients)  # one IdP call per key, none twice
    waits = sum(replica.counts["lease_waits"] for replica in replicas)
    takeovers = sum(replica.counts["lease_takeovers"] for replica in replicas)
    report_figure(f"cold burst, 3 replicas on one bucket, 300 requests / 50 keys, IdP 200 ms: "
                  f"{len(calls)} IdP calls, {waits} lease waits, {takeovers} takeovers")
    assert takeovers == 0


def test_a_call_from_a_subscription_callback_fails_at_once_instead_of_waiting(
        kv: KeyValue, js_server: NatsServer, connect: Callable[[str], NatsConnection]) -> None:
    connection = connect(js_server.url)
    bucket = KeyValue(connection, BUCKET)
    outcome: list[BaseException | None] = []

    def on_message(_message: object) -> None:
        try:
            bucket.get("a.tok")
        except KvError as error:
            outcome.append(error)
        else:
            outcome.append(None)

    connection.subscribe("poke", on_message)
    connection.publish("poke", b"")
    wait_until(lambda: outcome, timeout=5, what="the callback")
    assert isinstance(outcome[0], KvError)
    assert "reader thread" in str(outcome[0])


# --- the permissions docs/operations.md gives the worker's NATS user ---------------------


SHARED_PERMISSIONS = """
authorization {
  users = [
    { user = "token-worker", password = "tw-password-5d1e",
      permissions = {
        publish = { allow = ["$KV.tokens.>", "$JS.API.STREAM.INFO.KV_tokens",
                             "$JS.API.STREAM.CREATE.KV_tokens",
                             "$JS.API.STREAM.MSG.GET.KV_tokens",
                             "$JS.API.DIRECT.GET.KV_tokens.>"] }
        subscribe = { allow = ["token.request", "$SRV.>", "$KV.tokens.>",
                               "_INBOX.token-worker.>"] }
        allow_responses = true
      } }
  ]
}
"""


def test_the_documented_permissions_are_all_the_shared_tier_needs(tmp_path: Path) -> None:
    server = NatsServer(config_text=SHARED_PERMISSIONS,
                        extra_args=("-js", "-sd", str(tmp_path / "jetstream"))).start()
    connections = []
    try:
        def tier() -> SharedTier:
            connection = NatsConnection(
                NatsConfig(urls=(server.url,), connect_timeout=1.0, username="token-worker",
                           password=Secret("tw-password-5d1e")), "kv-perm-test",
                first_connect_rounds=1)
            connection.connect()
            connections.append(connection)
            return SharedTier(KeyValue(connection, BUCKET, timeout=2.0), FLEET_KEY,
                              expiry_margin=30, max_age=600)

        leader, follower = tier(), tier()
        assert leader.prepare()  # creates the bucket
        key = leader.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
        assert leader.lease(key, ttl=10) is Lease.TAKEN
        assert follower.lease(key, ttl=10) is Lease.HELD_ELSEWHERE
        leader.store(key, token())
        leader.release(key)
        assert follower.wait(key, timeout=5) is not None
        assert follower.lookup(key) is not None
        assert leader.counts["errors"] == follower.counts["errors"] == 0
    finally:
        for connection in connections:
            connection.close()
        server.cleanup()
