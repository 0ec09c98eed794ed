"""The shared tier on the in-memory bucket: sealing, names, expiry, leases, waiting and
degrading, with injected clocks (no sleeping for tokens to age)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes import Clock, ManualTimers, MemoryKeyValue
from tests.helpers import wait_until
from token_worker.errors import ConfigError, KvTimeout, KvUnavailable
from token_worker.nats.kv import BucketInfo
from token_worker.secret import load_key_file
from token_worker.tokens.model import IssuedToken
from token_worker.tokens.sealing import FleetKey, Unsealable
from token_worker.tokens.shared import Lease, SharedTier

KEY = b"k" * 32
OTHER_KEY = b"o" * 40
URL = "https://idp.example/realms/r/protocol/openid-connect/token"
CLIENT_ID = "billing-service-7f3a"
SECRET = "s3cret-value-of-billing-7f3a"
ACCESS_TOKEN = "eyJhbGciOi.access-token-body-7f3a.signature"
MARGIN = 30.0




def make_tier(kv: MemoryKeyValue, clock: Clock, key: bytes = KEY, **kwargs: object
              ) -> SharedTier:
    options: dict[str, object] = {"expiry_margin": MARGIN, "max_age": 3600.0,
                                  "now": clock.time, "monotonic": clock.monotonic}
    options.update(kwargs)
    return SharedTier(kv, key, **options)  # type: ignore[arg-type]


def issued(clock: Clock, expires_in: int = 300, access_token: str = ACCESS_TOKEN
           ) -> IssuedToken:
    return IssuedToken(access_token=access_token, token_type="Bearer", expires_in=expires_in,
                       scope="read write", issued_at=clock.wall)


@pytest.fixture
def tier(kv: MemoryKeyValue, clock: Clock) -> SharedTier:
    return make_tier(kv, clock)


# --- sealing and names ------------------------------------------------------------------


def test_a_stored_token_comes_back_with_its_life_counted_on_the_clock(
        tier: SharedTier, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "write read", "client_secret_post")
    tier.store(key, issued(clock, expires_in=300))
    clock.advance(100)

    token = tier.lookup(tier.key(URL, CLIENT_ID, SECRET, "read write read",
                                 "client_secret_post"))

    assert token is not None
    assert (token.access_token, token.token_type, token.scope) == (
        ACCESS_TOKEN, "Bearer", "read write")
    assert (token.issued_at, token.expires_in) == (clock.wall - 100, 300)  # as issued
    assert tier.counts["hits"] == 1


def test_every_part_of_a_request_changes_its_name(tier: SharedTier) -> None:
    base = (URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    names = {tier.key(*base).names[0]}
    for index, other in enumerate(("https://other/token", "other-client", "other-secret",
                                   "read admin", "client_secret_basic")):
        parts = list(base)
        parts[index] = other
        names.add(tier.key(*parts).names[0])  # type: ignore[arg-type]
    assert len(names) == 6


def test_nothing_readable_in_any_stored_key_or_value(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    assert tier.lease(key, ttl=5) is Lease.TAKEN
    tier.store(key, issued(clock))

    stored = [(name, kv.raw(name)) for name in kv.stored_keys()]
    assert len(stored) == 2  # the value and the lease
    for name, entry in stored:
        assert entry is not None
        for clear in (CLIENT_ID, SECRET, ACCESS_TOKEN, "idp.example", "read", "Bearer"):
            assert clear.encode() not in name.encode() + entry.value
    assert "7f3a" not in repr(key)


def test_a_value_copied_to_another_key_does_not_open(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    mine = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    theirs = tier.key(URL, "another-client", "another-secret", "read", "client_secret_post")
    tier.store(mine, issued(clock))
    entry = kv.get(mine.value_key())
    assert entry is not None
    kv.put(theirs.value_key(), entry.value)

    with caplog.at_level(logging.WARNING, "token_worker.tokens.shared"):
        assert tier.lookup(theirs) is None
        assert tier.lookup(theirs) is None
    assert [r.getMessage() for r in caplog.records].count(
        "shared token cache: a value does not open; treated as a miss, the next store "
        "overwrites it") == 1
    assert tier.counts["misses"] == 2
    assert tier.lookup(mine) is not None


def test_a_value_that_does_not_open_is_overwritten_by_the_next_store(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    kv.put(key.value_key(), b"\x01" + b"garbage" * 10)
    assert tier.lookup(key) is None

    tier.store(key, issued(clock))

    assert tier.lookup(key) is not None


def test_another_fleet_key_neither_finds_nor_opens_the_value(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, issued(clock))
    stranger = make_tier(kv, clock, key=OTHER_KEY)

    assert stranger.lookup(stranger.key(URL, CLIENT_ID, SECRET, "read",
                                        "client_secret_post")) is None
    entry = kv.get(key.value_key())
    assert entry is not None
    assert FleetKey(KEY).open(key.value_key(), entry.value)
    with pytest.raises(Unsealable):
        FleetKey(OTHER_KEY).open(key.value_key(), entry.value)


def test_rotation_reads_old_values_with_the_previous_key_and_moves_them(
        kv: MemoryKeyValue, clock: Clock) -> None:
    old = make_tier(kv, clock, key=OTHER_KEY)
    old.store(old.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post"), issued(clock))

    rotating = make_tier(kv, clock, key=KEY, previous_key=OTHER_KEY)
    token = rotating.lookup(rotating.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post"))
    assert token is not None
    assert token.access_token == ACCESS_TOKEN

    rotated = make_tier(kv, clock, key=KEY)  # the previous key is gone now
    assert rotated.lookup(rotated.key(URL, CLIENT_ID, SECRET, "read",
                                      "client_secret_post")) is not None


def test_key_files_shorter_than_32_bytes_are_refused(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "short").write_bytes(b"x" * 31)
    (folder / "good").write_bytes(b"x" * 32)
    with pytest.raises(ConfigError, match="31 bytes"):
        load_key_file(folder / "short")
    with pytest.raises(ConfigError, match="cannot read"):
        load_key_file(folder / "missing")
    assert load_key_file(folder / "good") == b"x" * 32
    with pytest.raises(ValueError, match="32 bytes"):
        FleetKey(b"x" * 31)


def test_a_fifo_device_or_huge_key_file_is_a_config_error_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "huge").write_bytes(b"k" * 4097)
    (tmp_path / "largest").write_bytes(b"k" * 4096)
    outcome: list[object] = []

    def load(path: Path) -> None:
        try:
            outcome.append(load_key_file(path, field="cache.shared.keyFile"))
        except ConfigError as error:
            outcome.append(error)
    for path, problem in ((tmp_path / "fifo", "not a regular file"),
                          (Path("/dev/zero"), "not a regular file"),
                          (tmp_path / "huge", "larger than 4096 bytes")):
        outcome.clear()
        loader = threading.Thread(target=load, args=(path,), daemon=True)
        loader.start()
        loader.join(5)
        assert outcome, f"loading {path} did not return"
        assert isinstance(outcome[0], ConfigError)
        assert "cache.shared.keyFile" in str(outcome[0]) and problem in str(outcome[0])
    assert load_key_file(tmp_path / "largest") == b"k" * 4096


# --- expiry --------------------------------------------------------------------------------


def test_tokens_within_the_expiry_margin_are_never_served(
        tier: SharedTier, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, issued(clock, expires_in=100))

    clock.advance(100 - MARGIN - 1)
    assert tier.lookup(key) is not None
    clock.advance(2)
    assert tier.lookup(key) is None


def test_a_token_too_short_lived_to_serve_is_not_stored(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, issued(clock, expires_in=int(MARGIN)))
    assert kv.stored_keys() == []


def test_the_stored_value_expires_with_its_token(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, issued(clock, expires_in=300))
    clock.advance(301)
    assert kv.stored_keys() == []


# --- leases and waiting ------------------------------------------------------------------


def test_one_lease_per_key_until_released_or_expired(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    other = make_tier(kv, clock)  # another replica

    assert tier.lease(key, ttl=5) is Lease.TAKEN
    assert other.lease(key, ttl=5) is Lease.HELD_ELSEWHERE
    tier.release(key)
    assert other.lease(key, ttl=5) is Lease.TAKEN
    clock.advance(5)
    assert tier.lease(key, ttl=5) is Lease.TAKEN  # expired by its TTL


def test_a_release_after_the_lease_passed_on_leaves_the_new_holder_alone(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    other = make_tier(kv, clock)
    assert tier.lease(key, ttl=5) is Lease.TAKEN
    clock.advance(5)
    assert other.lease(key, ttl=5) is Lease.TAKEN

    tier.release(key)  # too late: the lease is the other replica's now

    assert make_tier(kv, clock).lease(key, ttl=5) is Lease.HELD_ELSEWHERE


@pytest.fixture
def background() -> Iterator[list[threading.Thread]]:
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(5)


def test_a_waiter_gets_the_value_the_lease_holder_stores(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock,
        background: list[threading.Thread]) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    leader = make_tier(kv, clock)
    assert leader.lease(key, ttl=5) is Lease.TAKEN

    def lead() -> None:
        wait_until(lambda: kv.watching, what="the waiter's watch")
        leader.store(key, issued(clock))
        leader.release(key)

    background.append(threading.Thread(target=lead))
    background[0].start()
    token = tier.wait(key, timeout=5)

    assert token is not None
    assert token.access_token == ACCESS_TOKEN
    assert tier.counts["lease_waits"] == 1
    assert tier.counts["lease_takeovers"] == 0


def test_a_value_stored_before_the_wait_is_served_at_once(
        tier: SharedTier, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, issued(clock))
    assert tier.wait(key, timeout=0.01) is not None


def test_a_released_lease_without_a_value_ends_the_wait_early(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock,
        background: list[threading.Thread]) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    leader = make_tier(kv, clock)
    assert leader.lease(key, ttl=5) is Lease.TAKEN

    def fail_and_release() -> None:
        wait_until(lambda: kv.watching, what="the waiter's watch")
        leader.release(key)  # the IdP call failed

    background.append(threading.Thread(target=fail_and_release))
    background[0].start()

    assert tier.wait(key, timeout=30) is None  # the test's timeout would catch a full wait
    assert tier.counts["lease_takeovers"] == 1


def test_a_wait_ends_after_its_timeout(tier: SharedTier) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    assert tier.wait(key, timeout=0.05) is None
    assert tier.counts["lease_takeovers"] == 1


# --- degrading ---------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [KvUnavailable("no responders"), KvTimeout("slow")])
def test_a_broken_bucket_reads_as_misses_with_one_warning_and_a_count(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock,
        caplog: pytest.LogCaptureFixture, failure: Exception) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    kv.fail = failure  # type: ignore[assignment]

    with caplog.at_level(logging.WARNING, "token_worker.tokens.shared"):
        for _ in range(3):
            assert tier.lookup(key) is None
            tier.store(key, issued(clock))
            assert tier.lease(key, ttl=5) is Lease.NO_TIER
            assert tier.wait(key, timeout=5) is None
            tier.release(key)
            clock.advance(10)  # past every rest: each round asks the bucket again

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("shared token cache unavailable")
    assert tier.counts["errors"] == 3


def test_after_a_failure_the_tier_rests_then_recovers(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, issued(clock))
    kv.fail = KvTimeout("quorum lost")
    assert tier.lookup(key) is None
    kv.fail = None

    calls = kv.calls
    assert tier.lookup(key) is None  # resting: not even asked
    assert kv.calls == calls
    assert not tier.available

    clock.advance(5)
    assert tier.lookup(key) is not None
    assert tier.counts == {"hits": 1, "misses": 0, "leases": 0, "lease_waits": 0,
                           "lease_takeovers": 0, "errors": 1, "squats_taken_over": 0,
                           "recreated": 0}


class SlowBucket(MemoryKeyValue):
    """A bucket whose creation hangs until released, as JetStream without a leader does."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go_on = threading.Event()
        self.ensures = 0

    def ensure_bucket(self, **options: object) -> BucketInfo:  # type: ignore[override]
        self.ensures += 1
        self.entered.set()
        self.go_on.wait(10)
        return super().ensure_bucket(**options)  # type: ignore[arg-type]


def test_while_one_caller_probes_the_others_go_on_without_the_tier(
        clock: Clock, background: list[threading.Thread]) -> None:
    kv = SlowBucket()
    tier = make_tier(kv, clock)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    background.append(threading.Thread(target=tier.prepare))
    background[0].start()
    assert kv.entered.wait(5)

    assert tier.lookup(key) is None  # at once: not waiting for the probe
    assert tier.lease(key, ttl=5) is Lease.NO_TIER
    assert kv.ensures == 1
    kv.go_on.set()
    background[0].join(5)

    assert tier.available
    assert tier.lease(key, ttl=5) is Lease.TAKEN


def test_prepare_says_whether_the_bucket_is_there(kv: MemoryKeyValue, clock: Clock) -> None:
    assert make_tier(kv, clock).prepare()
    kv.fail = KvUnavailable("no responders")
    tier = make_tier(kv, clock)
    assert not tier.prepare()
    assert not tier.available


def test_a_lease_taken_after_the_value_arrived_is_given_back(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    """The race that would cost a second IdP call: a replica misses, the leader stores and
    releases, then the replica's lease succeeds."""
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    leader = make_tier(kv, clock)
    assert leader.lease(key, ttl=5) is Lease.TAKEN
    assert tier.lookup(key) is None  # missed while the leader was at the IdP
    leader.store(key, issued(clock))
    leader.release(key)

    assert tier.lease(key, ttl=5) is Lease.HELD_ELSEWHERE  # a value is there: wait
    assert kv.get(key.lease_key) is None  # given back
    assert tier.wait(key, timeout=5) is not None


def test_refresh_ahead_takes_the_lease_only_while_no_newer_token_is_stored(
        tier: SharedTier, kv: MemoryKeyValue, clock: Clock) -> None:
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    first = issued(clock, expires_in=300)
    tier.store(key, first)
    local_expires_at = first.issued_at + first.expires_in
    clock.advance(250)  # into the refresh-ahead part of its life
    other = make_tier(kv, clock)

    assert other.lease(key, ttl=5, newer_than=local_expires_at) is Lease.TAKEN  # refresh
    other.store(key, issued(clock, expires_in=300, access_token="refreshed-token-7f3a"))
    other.release(key)

    assert tier.lease(key, ttl=5, newer_than=local_expires_at) is Lease.HELD_ELSEWHERE
    token = tier.lookup(key)
    assert token is not None
    assert token.access_token == "refreshed-token-7f3a"


def test_a_token_living_longer_than_the_max_age_is_kept_and_served_for_the_max_age(
        kv: MemoryKeyValue, clock: Clock) -> None:
    """As the local tier caps a token at cache.maxTtl, so does the bucket: the fleet agrees
    on when it expires (else a refresh would find the bucket's copy "newer" for ever)."""
    tier = make_tier(kv, clock, max_age=600.0)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    tier.store(key, issued(clock, expires_in=86_400))
    token = tier.lookup(key)
    assert token is not None
    assert token.expires_in == 600
    clock.advance(600 - MARGIN)
    assert tier.lookup(key) is None


def test_a_wait_for_a_refresh_takes_only_a_token_that_expires_later(
        kv: MemoryKeyValue, clock: Clock) -> None:
    tier = make_tier(kv, clock)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    old = issued(clock, expires_in=300)
    tier.store(key, old)
    old_expires_at = old.issued_at + old.expires_in
    assert tier.wait(key, timeout=0.05, newer_than=old_expires_at) is None  # only the old
    clock.advance(10)
    tier.store(key, issued(clock, expires_in=300, access_token="refreshed-token-9c1e"))
    found = tier.wait(key, timeout=5, newer_than=old_expires_at)
    assert found is not None and found.access_token == "refreshed-token-9c1e"


# --- waiting without a thread, squatted leases, a bucket that comes back ------------------


def test_a_wait_without_a_thread_ends_with_the_value_the_watch_sees(
        kv: MemoryKeyValue, clock: Clock) -> None:
    timers = ManualTimers()
    tier = make_tier(kv, clock, timers=timers)
    leader = make_tier(kv, clock)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    assert leader.lease(key, ttl=5) is Lease.TAKEN
    got: list[IssuedToken | None] = []
    tier.wait_then(key, 5, got.append)
    assert got == [] and kv.watching == 1 and len(timers.pending) == 1
    leader.store(key, issued(clock))  # seen on the watch, on the thread that stored
    assert [token.access_token for token in got if token] == [ACCESS_TOKEN]
    assert kv.watching == 0 and timers.pending == []  # watch closed, timer cancelled
    leader.release(key)
    assert len(got) == 1  # once


def test_a_wait_without_a_thread_ends_with_none_on_release_or_at_its_timeout(
        kv: MemoryKeyValue, clock: Clock) -> None:
    timers = ManualTimers()
    tier = make_tier(kv, clock, timers=timers)
    leader = make_tier(kv, clock)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    assert leader.lease(key, ttl=5) is Lease.TAKEN
    released: list[IssuedToken | None] = []
    tier.wait_then(key, 5, released.append)
    leader.release(key)  # the leader's IdP call failed
    assert released == [None] and kv.watching == 0

    assert leader.lease(key, ttl=5) is Lease.TAKEN
    timed_out: list[IssuedToken | None] = []
    tier.wait_then(key, 5, timed_out.append)
    assert timers.fire_due(clock.mono + 4.9) == 0 and timed_out == []
    assert timers.fire_due(clock.mono + 5) == 1
    assert timed_out == [None] and kv.watching == 0
    assert tier.latest(key) is None  # the last read before a takeover: counted as one
    assert tier.counts["lease_takeovers"] == 1


def test_a_wait_on_a_broken_tier_ends_at_once(kv: MemoryKeyValue, clock: Clock) -> None:
    tier = make_tier(kv, clock, timers=ManualTimers())
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    kv.fail = KvTimeout("quorum lost")
    got: list[IssuedToken | None] = []
    tier.wait_then(key, 5, got.append)
    assert got == [None]


@pytest.mark.parametrize(("ttl", "age", "taken_over"), [
    (None, 0.0, True),      # no TTL: nobody's lease, it would last the bucket's max age
    (3600, 30.0, True),     # older than this worker's lease lives
    (5, 3.0, False),        # a live lease of a peer
])
def test_a_squatted_lease_is_taken_over_at_once(kv: MemoryKeyValue, clock: Clock,
                                               ttl: float | None, age: float,
                                               taken_over: bool) -> None:
    tier = make_tier(kv, clock)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    kv.plant(key.lease_key, b"mine", ttl=ttl, stored_at=clock.wall - age)
    lease = tier.lease(key, ttl=8)
    assert lease is (Lease.TAKEN if taken_over else Lease.HELD_ELSEWHERE)
    assert tier.counts["squats_taken_over"] == int(taken_over)
    if taken_over:
        held = kv.raw(key.lease_key)
        assert held is not None and held.ttl == "8s"
        tier.release(key)
        assert kv.get(key.lease_key) is None


def test_a_lost_bucket_is_made_again_and_the_broker_is_told(
        kv: MemoryKeyValue, clock: Clock) -> None:
    tier = make_tier(kv, clock)
    told: list[bool] = []
    tier.on_recreated = lambda: told.append(True)
    key = tier.key(URL, CLIENT_ID, SECRET, "read", "client_secret_post")
    assert tier.prepare() and kv.created == 1
    tier.store(key, issued(clock))
    kv.drop_bucket()  # the stream deleted: no responders, at once
    calls = kv.calls
    assert tier.lookup(key) is None
    assert kv.calls == calls + 1  # one call failed fast; the tier rests
    assert tier.lookup(key) is None and kv.calls == calls + 1
    clock.advance(5)
    assert tier.lookup(key) is None  # the probe made the bucket again; the value is gone
    assert kv.created == 2 and tier.counts["recreated"] == 1 and told == [True]
    tier.store(key, issued(clock))
    assert tier.lookup(key) is not None


def test_a_grants_name_is_the_fleets_and_says_nothing_of_its_proof(
        kv: MemoryKeyValue, clock: Clock) -> None:
    from token_worker.secret import Secret
    from token_worker.tokens.grant import ClientAuth, Grant

    def grant(secret: str, resource: str = "https://api.example") -> Grant:
        return Grant(CLIENT_ID, ClientAuth("client_secret_post", Secret(secret)), "read",
                     resources=(resource,))

    one, another = make_tier(kv, clock), make_tier(kv, clock)  # two replicas
    name = one.key_for_grant(URL, grant(SECRET), ("read",)).names[0]
    assert another.key_for_grant(URL, grant(SECRET), ("read",)).names[0] == name
    assert one.key_for_grant(URL, grant("other-secret"), ("read",)).names[0] != name
    assert one.key_for_grant(URL, grant(SECRET, "https://b.example"), ("read",)
                             ).names[0] != name
    assert make_tier(kv, clock, key=OTHER_KEY).key_for_grant(
        URL, grant(SECRET), ("read",)).names[0] != name
    assert SECRET not in name and CLIENT_ID not in name
