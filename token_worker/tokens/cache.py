"""The per-worker token cache: bounded, keyed so that no secret can reach another's token.

A key is the token endpoint, the ``client_id``, a keyed digest (BLAKE2b in its MAC mode,
under a random per-process key) of the ``client_secret``, the sorted scope set and the
auth method. The secret itself is never stored, so a wrong or rotated secret can never hit
another secret's entry. Only an allow-list of token fields is kept (as MSAL does). Entries
are evicted least-recently-used first, so memory stays bounded
with any number of clients, and fairly: each client id (at a token endpoint) keeps at most
its share (``cache.maxEntriesPerClient``); a client over it evicts its own least recently
used entries, never another client's. Time is injected (``now``), so expiry is tested
without sleeping.

A token's servable life runs from its arrival to ``expiryMargin`` before its expiry (and is
never longer than ``maxTtl``). Its refresh point lies inside that servable life, the last
``refreshAhead`` share of it, so refresh-ahead works for any lifetime: a 45 s token with a
30 s margin is served for 15 s and refreshed from its 12th second (a share of the full
lifetime would put the refresh point after serving had stopped).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import NamedTuple

from token_worker import defaults, wire
from token_worker.tokens.model import IssuedToken

MIN_REFRESH_LEAD = 2.0
"""Seconds a refresh is started at least before serving stops (an IdP round trip), but
never earlier than half-way through the servable life."""


class CacheKey(NamedTuple):
    """What makes two requests ask for the same token (a tuple: hashed on every request)."""

    token_url: str
    client_id: str
    secret_digest: bytes
    """Keyed BLAKE2b of the secret: equal for equal secrets, useless outside the process."""
    scopes: tuple[str, ...]
    auth_method: str


@dataclass(frozen=True)
class CachedToken:
    """A cached token with the two moments that matter for it."""

    token: IssuedToken
    expires_at: float
    """When the IdP said it expires."""
    serve_until: float
    """Last moment it may be served (``expires_at`` less the margin)."""
    refresh_at: float
    """From here on, one background refresh replaces it (always before ``serve_until``)."""
    shared_key: Hashable | None = None
    """Where the shared tier keeps the same token (digests only), if there is one: a bucket
    made again after it was lost is given back what this replica holds."""

    def expires_in(self, now: float) -> int:
        """Whole seconds of life left, never negative (the reply's ``expires_in``)."""
        return max(0, int(self.expires_at - now))

    reply_parts: wire.TokenReplyParts = field(init=False, repr=False, compare=False)
    """Its reply as a cache hit, prepared when it is cached: a hit only fills in the
    request's own fields."""

    def __post_init__(self) -> None:
        token = self.token
        object.__setattr__(self, "reply_parts", wire.TokenReplyParts(
            token.access_token, token.token_type, token.scope))


_DIGEST_KEY = secrets.token_bytes(32)
"""Random per process: digests of secrets mean nothing outside it."""
_KEYED = hashlib.blake2b(key=_DIGEST_KEY, digest_size=32)
"""BLAKE2b with the key block already hashed: each digest starts from a copy of it."""
_new_tuple = tuple.__new__
_ClientKeys = OrderedDict[CacheKey, None]
"""One client's keys, least recently used first."""


def cache_key(token_url: str, client_id: str, client_secret: str, scope: str,
              auth_method: str) -> CacheKey:
    """The key of a request; the secret enters only as a keyed digest, the scope as a sorted
    set (``"b a a"`` and ``"a b"`` are the same request). Built for every request, so the
    key's block is not hashed again (a copy of :data:`_KEYED`) and the tuple is made
    without a Python-level ``__new__``."""
    mac = _KEYED.copy()
    mac.update(client_secret.encode())
    return _new_tuple(CacheKey, (token_url, client_id, mac.digest(), scope_set(scope),
                                 auth_method))


@functools.lru_cache(maxsize=4096)
def scope_set(scope: str) -> tuple[str, ...]:
    """A scope string as a sorted set; memoised, as a fleet asks for few distinct scopes."""
    return tuple(sorted(set(scope.split())))


class TokenCache:
    """A thread-safe LRU cache of tokens, fair between clients; ``now`` is the clock
    (``time.time`` in service).

    Each client (a client id at a token endpoint) holds at most ``per_client`` entries: a
    client over its share evicts its own least recently used entry, never another
    client's, so one client asking for ten thousand scope sets cannot empty the cache of
    everyone else. When the whole cache is full, the least recently used entry of all goes.
    ``evictions`` counts both kinds (``client_share``, ``capacity``).

    Both orders are ``OrderedDict`` s (least recently used first), moved in C on every hit:
    a hit is most of what a worker does, and ``cachetools.LRUCache`` would spend two
    Python-level calls per order on it.
    """

    def __init__(self, *, max_entries: int, expiry_margin: float, refresh_ahead: float,
                 now: Callable[[], float], max_ttl: float = defaults.CACHE_MAX_TTL,
                 per_client: int | None = None) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[CacheKey, tuple[CachedToken, _ClientKeys]] = OrderedDict()
        """Each entry with its client's keys (so a hit reorders both without a lookup)."""
        self._per_client = min(per_client or max_entries, max_entries)
        self._clients: dict[tuple[str, str], _ClientKeys] = {}
        """Each client's keys, least recently used first."""
        self._lock = threading.Lock()
        self._margin = expiry_margin
        self._refresh_ahead = refresh_ahead
        self.max_ttl = max_ttl
        """Longest life an entry is given, whatever the token's ``expires_in``."""
        self.now = now
        self.evictions = {"client_share": 0, "capacity": 0}
        """Entries evicted to make room: for a client over its share, or a full cache."""

    def get(self, key: CacheKey, now: float | None = None) -> CachedToken | None:
        """The entry if it may still be served at ``now`` (by default the cache's clock
        now), and now the most recently used, of all and of its client; an expired entry
        is dropped. Taken for every hit: the lock is acquired and released by hand (half
        the cost of ``with`` in CPython), and a client's only key is not moved."""
        lock = self._lock
        lock.acquire()
        try:
            held = self._entries.get(key)
            if held is None:
                return None
            entry, client_keys = held
            if (self.now() if now is None else now) >= entry.serve_until:
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            if len(client_keys) > 1:  # moving the only key would rehash it for nothing
                client_keys.move_to_end(key)
            return entry
        finally:
            lock.release()

    def put(self, key: CacheKey, token: IssuedToken, *, age: float = 0.0,
            shared_key: Hashable | None = None) -> CachedToken:
        """Store a token (unless too short-lived to serve); return its entry. Its life is
        counted on the cache's clock from ``age`` seconds ago (0: the IdP just issued it; a
        token read from the shared tier was issued earlier) and capped at ``max_ttl``. The
        refresh point is a share of the whole servable life, so a token that arrives late in
        its life is refreshed as soon as one issued here would be (or at once)."""
        now = self.now()
        issued = now - max(0.0, age)
        expires_at = issued + min(token.expires_in, self.max_ttl)
        serve_until = expires_at - self._margin
        entry = CachedToken(token=token, expires_at=expires_at, serve_until=serve_until,
                            refresh_at=serve_until - self._refresh_lead(serve_until - issued),
                            shared_key=shared_key)
        if serve_until > now:
            with self._lock:
                self._store(key, entry)
        return entry

    def _store(self, key: CacheKey, entry: CachedToken) -> None:
        entries = self._entries
        client = (key.token_url, key.client_id)
        mine = self._clients.get(client)
        if mine is None:
            mine = self._clients[client] = OrderedDict()
        elif key not in mine and len(mine) >= self._per_client:
            oldest, _ = mine.popitem(last=False)
            del entries[oldest]
            self.evictions["client_share"] += 1
        elif key in mine:
            mine.move_to_end(key)
        mine[key] = None
        if key in entries:
            entries.move_to_end(key)
        elif len(entries) >= self._max_entries:
            oldest, _ = entries.popitem(last=False)
            self._forget_client_key(oldest)
            self.evictions["capacity"] += 1
        entries[key] = (entry, mine)

    def _remove(self, key: CacheKey) -> None:
        del self._entries[key]
        self._forget_client_key(key)

    def _forget_client_key(self, key: CacheKey) -> None:
        client = (key.token_url, key.client_id)
        mine = self._clients.get(client)
        if mine is not None:
            mine.pop(key, None)
            if not mine:
                del self._clients[client]

    def _refresh_lead(self, servable: float) -> float:
        """How long before ``serve_until`` the refresh point lies; 0 turns refreshes off."""
        if self._refresh_ahead <= 0 or servable <= 0:
            return 0.0
        floor = min(MIN_REFRESH_LEAD, servable / 2)
        return min(max(self._refresh_ahead * servable, floor), servable)

    def discard(self, key: CacheKey) -> bool:
        """Drop the entry of ``key``; True if there was one."""
        with self._lock:
            if key not in self._entries:
                return False
            self._remove(key)
            return True

    def servable(self) -> list[CachedToken]:
        """Every entry that may still be served, now (a copy: for giving a bucket back what
        this replica holds)."""
        now = self.now()
        with self._lock:
            return [entry for entry, _ in self._entries.values() if entry.serve_until > now]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
