"""The shared token tier: one sealed cache and one lease per key for a whole fleet.

Each replica keeps its local LRU (:mod:`token_worker.tokens.cache`) as the first tier.
Behind it, this tier keeps tokens in a JetStream KV bucket (:mod:`token_worker.nats.kv`)
that every replica reads, so a fleet asks the IdP once per key, and a new pod starts warm.

Entries are named by keyed digests and sealed under the fleet's key file
(:mod:`token_worker.tokens.sealing`): no client id, secret or token shows in the bucket. A
value holds an allow-list of token fields (``access_token``, ``token_type``, ``scope``,
``issued_at``, ``expires_at``), never the secret, and comes back as it was issued, so a
replica that takes it counts its life and refresh point as the one that got it from the
IdP does. A value that does not open (another key file, corruption, moved) is a miss,
warned about and overwritten by the next store. With a previous key file (a rotation), a
miss under the new names is looked up under the old ones, opened with the old key and
copied under the new name.

Single flight across the fleet: :meth:`SharedTier.lease` takes a short lease on the key
(KV's atomic create, a per-message TTL): one replica calls the IdP for a cold key while
the others wait for its value, watching the key's subjects, without a thread
(:meth:`SharedTier.wait_then`: a callback when the value comes, the lease is released or
the wait ends); a released lease (the leader's call failed) or the end of the wait sends
them to the IdP themselves. A lease someone wrote without a TTL, or older than this
worker's own lease TTL, is a squat: it is taken over at once (its revision replaced), so
no writer can stall a key for the bucket's max age.

This tier never takes a request down: no JetStream, a bucket that cannot be created,
timeouts, a lost quorum all end as a miss (or :data:`Lease.NO_TIER`), one rate-limited
warning, a count in :attr:`SharedTier.counts`, a short rest; then one caller probes while
the others go on without the tier, so an outage never costs every request a timeout. The
worker's connection asks for ``no_responders``, so a call to a stream that is gone fails at
once; the probe after the rest then makes the bucket again (counted as ``recreated``, and
``on_recreated`` lets the broker store the tokens it holds back into it).

How a broker uses it, after a local miss (never on the reader thread: these are I/O)::

    key = tier.key(token_url, client_id, client_secret, scope, auth_method)
    token = tier.lookup(key)                  # a shared hit: put it in the local tier
    if token is None:
        lease = tier.lease(key, ttl=idp_deadline)
        if lease is Lease.HELD_ELSEWHERE:          # another replica calls the IdP
            tier.wait_then(key, budget, on_token)  # no thread held; None: take over
        else:                                      # TAKEN, or NO_TIER
            token = idp.fetch_token(...)
            tier.store(key, token)                 # before release: waiters see the value
            if lease is Lease.TAKEN:
                tier.release(key)

Refresh-ahead takes the same lease, with ``newer_than`` the local token's ``expires_at``:
only the replica whose lease is taken refreshes (and stores, and releases); the others keep
serving their valid local token, and may take the refreshed one with ``lookup`` (it expires
later than theirs).

The module is longer than 400 lines because the tier is one object: its reads, writes,
leases and waits share the bucket's state, its counts and its rest after a failure.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import orjson

from token_worker.errors import KvError, KvUnavailable
from token_worker.nats.kv import ERR_STREAM_NOT_FOUND, PUT, Closeable, Entry, KeyValueStore
from token_worker.tokens.cache import CachedToken
from token_worker.tokens.grant import Grant
from token_worker.tokens.model import IssuedToken
from token_worker.tokens.sealing import FleetKey, Unsealable
from token_worker.tokens.timers import Cancellable, Timers, TimerService

log = logging.getLogger(__name__)

TOKEN_FIELDS = ("access_token", "token_type", "scope", "issued_at", "expires_at")
"""All a sealed value holds: the allow-list."""
VALUE_SUFFIX = "tok"
LEASE_SUFFIX = "lease"
PROBE_KEY = "probe"
"""Read (and never written) to learn whether the bucket answers again after a failure."""
RETRY_AFTER = 5.0
"""Seconds the tier rests after a failure before JetStream is asked again."""
WARN_EVERY = 60.0
"""Seconds between two warnings of one kind (a broken tier must not flood the log)."""


@dataclass(frozen=True)
class SharedKey:
    """Where one token lives in the bucket: digests only, safe to keep and to log a part of.

    ``names[0]`` is the name under the current key file, ``names[1]`` (if any) under the
    previous one.
    """

    names: tuple[str, ...]

    def __repr__(self) -> str:
        return f"SharedKey({self.names[0][:12]}...)"

    def value_key(self, index: int = 0) -> str:
        return f"{self.names[index]}.{VALUE_SUFFIX}"

    @property
    def lease_key(self) -> str:
        return f"{self.names[0]}.{LEASE_SUFFIX}"


def _scope_set(scope: str | tuple[str, ...]) -> tuple[str, ...]:
    words = scope.split() if isinstance(scope, str) else scope
    return tuple(sorted(set(words)))


class _Warnings:
    """One warning per kind per ``every`` seconds."""

    def __init__(self, every: float, clock: Callable[[], float]) -> None:
        self._every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def warn(self, kind: str, message: str, **extra: object) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._every:
                return
            self._last[kind] = now
        log.warning(message, extra=extra)


COUNTER_NAMES = ("hits", "misses", "leases", "lease_waits", "lease_takeovers", "errors",
                 "squats_taken_over", "recreated")


class Lease(enum.Enum):
    """What :meth:`SharedTier.lease` says to do."""

    TAKEN = "taken"
    """This replica holds the key: call the IdP, then store and release."""
    HELD_ELSEWHERE = "held_elsewhere"
    """Another replica holds it (or has just stored a value): wait for its token."""
    NO_TIER = "no_tier"
    """The tier does not answer now: go to the IdP without it."""


class SharedTier:
    """The shared tier over one bucket; every method is safe to call from many threads and
    never raises (a broken tier reads as a miss).

    ``now`` is the wall clock tokens expire on (``expires_at`` is absolute, so the fleet's
    clocks must agree within the expiry margin, as NTP keeps them); ``monotonic`` paces
    retries and warnings.
    """

    def __init__(self, kv: KeyValueStore, key: bytes, *, previous_key: bytes | None = None,
                 expiry_margin: float, max_age: float, replicas: int = 1,
                 retry_after: float = RETRY_AFTER, warn_every: float = WARN_EVERY,
                 now: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 timers: TimerService | None = None) -> None:
        self._kv = kv
        self._keys = (FleetKey(key),) + ((FleetKey(previous_key),) if previous_key else ())
        self._margin = expiry_margin
        self._max_age = max_age
        self._replicas = replicas
        self._retry_after = retry_after
        self._now = now
        self._monotonic = monotonic
        self._warnings = _Warnings(warn_every, monotonic)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)
        self._leases: dict[str, int] = {}
        self._bucket_ready = False
        self._healthy = False
        self._failed_before = False
        self._probing = threading.Lock()
        self._resting_until = 0.0
        self._timers = timers
        self.on_recreated: Callable[[], None] | None = None
        """Called (on the probing thread) after the bucket was found gone and made again."""

    # --- the broker's API -----------------------------------------------------------------

    def key(self, token_url: str, client_id: str, client_secret: str,
            scope: str | tuple[str, ...], auth_method: str) -> SharedKey:
        """The names of a request's entries; the secret enters only an HMAC."""
        scopes = _scope_set(scope)
        return SharedKey(tuple(k.name(token_url, client_id, client_secret, scopes, auth_method)
                               for k in self._keys))

    def key_for_grant(self, token_url: str, grant: Grant,
                      scopes: tuple[str, ...]) -> SharedKey:
        """The names of a grant's entries (a key or certificate, resources, an audience):
        its proof enters only a digest under the fleet's key."""
        return SharedKey(tuple(k.name_for_grant(token_url, grant, scopes) for k in self._keys))

    def lookup(self, key: SharedKey) -> IssuedToken | None:
        """A servable token from the bucket, or None (a miss, or the tier is down)."""
        if not self._ready():
            return None
        try:
            for index in range(len(key.names)):
                entry = self._kv.get(key.value_key(index))
                token = self._open(key, index, entry.value) if entry is not None else None
                if token is not None:
                    self._count("hits")
                    if index:
                        self.store(key, token)  # rotation: copy under the current key
                    return token
        except Exception as error:
            self._failed("lookup", error)
            return None
        self._count("misses")
        return None

    def store(self, key: SharedKey, token: IssuedToken) -> None:
        """Keep a token the IdP just issued for the fleet (until it expires), unless it is
        too short-lived to serve."""
        if not self._ready():
            return
        try:
            self._store(key, token)
        except Exception as error:
            self._failed("store", error)

    def lease(self, key: SharedKey, ttl: float, *, newer_than: float | None = None) -> Lease:
        """Take the key's lease for ``ttl`` seconds (see :class:`Lease` for what to do).

        A lease without a TTL, or older than ``ttl`` (a writer that squats the key), is
        taken over at once. Once taken, the value is read again: if a servable one is there
        (the previous holder stored it since this replica's lookup), the lease is given back
        and ``HELD_ELSEWHERE`` returned, so a wait serves that value at once. For
        refresh-ahead, ``newer_than`` is the local token's ``expires_at``: only a value that
        expires later counts (another replica has refreshed), an older one is refreshed.
        """
        if not self._ready():
            return Lease.NO_TIER
        try:
            revision = self._kv.create(key.lease_key, b"", ttl=ttl)
            if revision is None:
                revision = self._take_over_squat(key, ttl)
                if revision is None:
                    return Lease.HELD_ELSEWHERE
            entry = self._kv.get(key.value_key(), latest=True)  # a replica may lag
            opened = self._open_entry(key, 0, entry.value) if entry is not None else None
            if opened is not None and (newer_than is None or opened[1] > newer_than):
                self._kv.delete(key.lease_key, last_revision=revision)
                return Lease.HELD_ELSEWHERE
        except Exception as error:
            self._failed("lease", error)
            return Lease.NO_TIER
        with self._lock:
            self._leases[key.names[0]] = revision
            self._counts["leases"] += 1
        return Lease.TAKEN

    def _take_over_squat(self, key: SharedKey, ttl: float) -> int | None:
        """The lease is held: if the holder wrote it without a TTL, or longer ago than this
        worker's lease lives, replace it (atomically, only that revision); the new
        revision, or None for a live lease."""
        holder = self._kv.get(key.lease_key, latest=True)
        if holder is None:  # released a moment ago
            return self._kv.create(key.lease_key, b"", ttl=ttl)
        if not _squatted(holder, ttl, self._now()):
            return None
        revision = self._kv.update(key.lease_key, b"", last_revision=holder.revision, ttl=ttl)
        if revision is not None:
            self._count("squats_taken_over")
            self._warnings.warn("squat", "shared token cache: a lease with no TTL, or older "
                                "than this worker's, was taken over",
                                entry=f"{key.names[0][:12]}...", ttl=holder.ttl or None)
        return revision

    def refill(self, entries: list[CachedToken]) -> None:
        """Store back the tokens a replica holds (those cached with a shared key), after the
        bucket was made again."""
        kept = [(entry.shared_key, entry.token) for entry in entries
                if isinstance(entry.shared_key, SharedKey)]
        for shared_key, token in kept:
            self.store(shared_key, token)
        log.info("shared token cache refilled after it was made again",
                 extra={"tokens": len(kept)})

    def release(self, key: SharedKey) -> None:
        """Give a lease back (only if it is still ours): waiters that see it go without a
        value call the IdP themselves at once."""
        with self._lock:
            revision = self._leases.pop(key.names[0], None)
        if revision is None or not self._ready():
            return
        try:
            self._kv.delete(key.lease_key, last_revision=revision)
        except Exception as error:
            self._failed("release", error)

    def wait_then(self, key: SharedKey, timeout: float,
                  on_done: Callable[[IssuedToken | None], None], *,
                  newer_than: float | None = None) -> None:
        """Wait, holding no thread, for the token the lease holder stores: ``on_done`` is
        called once, with the token (on the connection's reader thread, where the watch
        sees it, or on this one if it is already stored), or with None when the lease is
        released without a value, ``timeout`` seconds pass (on the timers' thread) or the
        tier is down (at once). None means: read :meth:`latest` once more, then take over.
        With ``newer_than`` (refresh-ahead) only a value that expires later counts. Call
        it from a thread that may do I/O (it subscribes and reads once)."""
        waiter = self._start_wait(key, on_done, newer_than)
        if waiter is not None:
            waiter.attach(self._timer_service().call_at(self._monotonic() + timeout,
                                                        lambda: waiter.finish(None)))

    def wait(self, key: SharedKey, timeout: float, *,
             newer_than: float | None = None) -> IssuedToken | None:
        """:meth:`wait_then` holding this thread (refresh-ahead's, which has its own): the
        token, or None when it did not come within ``timeout``, after one last read from
        the stream leader."""
        done = threading.Event()
        got: list[IssuedToken | None] = []

        def on_done(token: IssuedToken | None) -> None:
            got.append(token)
            done.set()

        waiter = self._start_wait(key, on_done, newer_than)
        if waiter is not None and not done.wait(timeout):
            waiter.finish(None)
        done.wait()  # whoever ended the wait (the watch, a moment before?) calls on_done
        return got[0] if got[0] is not None else self.latest(key, newer_than=newer_than)

    def _start_wait(self, key: SharedKey, on_done: Callable[[IssuedToken | None], None],
                    newer_than: float | None) -> _LeaseWait | None:
        """Watch the key, then read it once (a value stored in between is seen on the
        watch): the wait, or None when it has ended already (a value found, the tier
        down; ``on_done`` was called)."""
        if not self._ready():
            on_done(None)
            return None
        self._count("lease_waits")
        waiter = _LeaseWait(self, key, newer_than, on_done)
        try:
            waiter.attach(self._kv.watch_each(f"{key.names[0]}.*", waiter.seen))
            token = self._latest(key, newer_than)
        except Exception as error:
            self._failed("wait", error)
            waiter.finish(None)
            return None
        if token is not None:
            waiter.finish(token)
            return None
        return waiter

    def latest(self, key: SharedKey, *, newer_than: float | None = None) -> IssuedToken | None:
        """After a wait that ended without a token: the value as the stream leader has it.
        A watch's interest takes a moment to reach every node of a cluster, and a put made
        elsewhere meanwhile passes unseen; the leader stores before it releases, so this
        one read finds what the watch missed. None: take over (counted)."""
        if not self._ready():
            return None
        try:
            token = self._latest(key, newer_than)
        except Exception as error:
            self._failed("wait", error)
            token = None
        self._count("hits" if token is not None else "lease_takeovers")
        return token

    @property
    def counts(self) -> dict[str, int]:
        """hits, misses, leases (taken), lease_waits, lease_takeovers (waits that ended
        without a value), errors: a snapshot for metrics."""
        with self._lock:
            return dict(self._counts)

    @property
    def available(self) -> bool:
        """True while the tier answers (the bucket ensured, no failure since)."""
        return self._healthy

    def prepare(self) -> bool:
        """Ensure the bucket now (at start, before serving: otherwise requests arriving
        while the first caller ensures it go without the tier); never raises."""
        return self._ready()

    # --- inside -------------------------------------------------------------------------

    def _latest(self, key: SharedKey, newer_than: float | None) -> IssuedToken | None:
        """The servable value from the stream leader (a lagging replica could miss one)."""
        entry = self._kv.get(key.value_key(), latest=True)
        return self._servable(key, entry.value, newer_than) if entry is not None else None

    def _servable(self, key: SharedKey, sealed: bytes, newer_than: float | None
                  ) -> IssuedToken | None:
        opened = self._open_entry(key, 0, sealed)
        if opened is None or (newer_than is not None and opened[1] <= newer_than):
            return None
        return opened[0]

    def _timer_service(self) -> TimerService:
        if self._timers is None:
            with self._lock:
                if self._timers is None:
                    self._timers = Timers(name="shared-cache-waits", clock=self._monotonic)
        return self._timers

    def _store(self, key: SharedKey, token: IssuedToken) -> None:
        """Seal and put; a token's life is capped at the bucket's max age (``cache.maxTtl``,
        as the local tier caps it), so the fleet agrees on when it expires."""
        lifetime = token.expires_in
        if self._max_age > 0:
            lifetime = min(lifetime, int(self._max_age))
        expires_at = token.issued_at + lifetime
        life = expires_at - self._now()
        if life <= self._margin:
            return
        plain = orjson.dumps(dict(zip(TOKEN_FIELDS, (
            token.access_token, token.token_type, token.scope, token.issued_at, expires_at),
            strict=True)))
        value_key = key.value_key()
        self._kv.put(value_key, self._keys[0].seal(value_key, plain), ttl=math.ceil(life))

    def _open(self, key: SharedKey, index: int, sealed: bytes) -> IssuedToken | None:
        """The token in a sealed value if it may still be served; None otherwise."""
        opened = self._open_entry(key, index, sealed)
        return opened[0] if opened is not None else None

    def _open_entry(self, key: SharedKey, index: int, sealed: bytes
                    ) -> tuple[IssuedToken, float] | None:
        """A servable token in a sealed value and its ``expires_at``; None otherwise."""
        value_key = key.value_key(index)
        try:
            fields = orjson.loads(self._keys[index].open(value_key, sealed))
            expires_at = float(fields["expires_at"])
            issued_at = float(fields["issued_at"])
            access_token, token_type, scope = (str(fields[name]) for name in TOKEN_FIELDS[:3])
        except (Unsealable, ValueError, KeyError, TypeError) as error:
            self._warnings.warn("unreadable", "shared token cache: a value does not open; "
                                "treated as a miss, the next store overwrites it",
                                entry=f"{key.names[index][:12]}...", error=str(error))
            return None
        now = self._now()
        if expires_at - self._margin <= now:
            return None
        token = IssuedToken(access_token=access_token, token_type=token_type, scope=scope,
                            expires_in=round(expires_at - issued_at), issued_at=issued_at)
        return token, expires_at

    def _ready(self) -> bool:
        """Whether to ask the bucket now. While healthy, yes. After a failure, nobody asks
        until the rest is over; then one caller probes (ensuring the bucket if it may be
        gone) while the others go on without the tier, so an outage never costs every
        request a timeout."""
        if self._healthy:
            return True
        if self._monotonic() < self._resting_until:
            return False
        if not self._probing.acquire(blocking=False):
            return False
        try:
            if self._bucket_ready:
                self._kv.get(PROBE_KEY)
                recreated = False
            else:
                info = self._kv.ensure_bucket(history=1, max_age=self._max_age,
                                              replicas=self._replicas, allow_msg_ttl=True)
                self._bucket_ready = True
                recreated = info.created and self._failed_before
        except Exception as error:
            self._failed("bucket" if not self._bucket_ready else "probe", error)
            return False
        finally:
            self._probing.release()
        if self._failed_before:
            log.info("shared token cache available again", extra={"recreated": recreated})
        self._healthy = True
        if recreated:
            self._count("recreated")
            if self.on_recreated is not None:
                self.on_recreated()
        return True

    def _failed(self, operation: str, error: Exception) -> None:
        """Count, warn (rate-limited), and rest before asking again; when the bucket looks
        gone (no responders, stream not found), ensure it again first. A timeout does not
        (the stream's API needs a meta leader, the data path only the stream's replicas)."""
        self._count("errors")
        self._healthy = False
        self._failed_before = True
        if isinstance(error, KvUnavailable) or (
                isinstance(error, KvError) and error.err_code == ERR_STREAM_NOT_FOUND):
            self._bucket_ready = False  # deleted, or never made: ensure it again
        log.debug("shared token cache call failed: %s", error,
                  extra={"operation": operation, "error": str(error) or type(error).__name__})
        self._resting_until = self._monotonic() + self._retry_after
        self._warnings.warn("unavailable", "shared token cache unavailable: serving from the "
                            "local cache and the identity provider",
                            operation=operation, error=str(error) or type(error).__name__,
                            retry_in_s=self._retry_after)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1


def _squatted(holder: Entry, ttl: float, now: float) -> bool:
    """A lease nobody can be waiting on: written without a TTL, or longer ago than a lease
    of this worker's lives (clocks agree within a second or so, as NTP keeps them)."""
    if not holder.ttl:
        return True
    return holder.stored_at is not None and now - holder.stored_at > ttl + 1.0


class _LeaseWait:
    """One :meth:`SharedTier.wait_then`: its watch, its timer, and the once-only end."""

    __slots__ = ("_done", "_key", "_lock", "_newer_than", "_on_done", "_tier", "_timer",
                 "_watch")

    def __init__(self, tier: SharedTier, key: SharedKey, newer_than: float | None,
                 on_done: Callable[[IssuedToken | None], None]) -> None:
        self._tier = tier
        self._key = key
        self._newer_than = newer_than
        self._on_done = on_done
        self._lock = threading.Lock()
        self._done = False
        self._watch: Closeable | None = None
        self._timer: Cancellable | None = None

    def attach(self, part: Closeable | Cancellable) -> None:
        """Keep the watch or the timer to stop at the end; stopped at once if the wait has
        ended meanwhile (the watch may see the value before it is attached)."""
        with self._lock:
            done = self._done
            if not done:
                if isinstance(part, _Closes):
                    self._watch = part
                else:
                    self._timer = part
        if done:
            _stop(part)

    def seen(self, change: Entry) -> None:
        """A change on the key's subjects (the reader thread): a servable value ends the
        wait with it; the lease released (the holder's call failed) ends it without."""
        key = self._key
        if change.key == key.value_key() and change.operation == PUT:
            token = self._tier._servable(key, change.value, self._newer_than)
            if token is not None:
                self.finish(token)
        elif change.key == key.lease_key and change.operation != PUT:
            self.finish(None)

    def finish(self, token: IssuedToken | None) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            parts = (self._timer, self._watch)
        for part in parts:
            if part is not None:
                _stop(part)
        if token is not None:
            self._tier._count("hits")
        self._on_done(token)


@runtime_checkable
class _Closes(Protocol):
    def close(self) -> None: ...


def _stop(part: Closeable | Cancellable) -> None:
    if isinstance(part, _Closes):
        part.close()
    else:
        part.cancel()
