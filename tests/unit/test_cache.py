"""The token cache on an injected clock: servable life, refresh point, cap, discard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes import Clock
from token_worker.tokens.cache import CacheKey, TokenCache, cache_key
from token_worker.tokens.model import IssuedToken

KEY = cache_key("https://idp.test/token", "c", "s", "read", "client_secret_post")


def token(expires_in: int) -> IssuedToken:
    return IssuedToken("t", "Bearer", expires_in, "read", 0.0)


def make(clock: Clock, *, margin: float = 30.0, refresh_ahead: float = 0.2,
         max_ttl: float = 86_400.0) -> TokenCache:
    return TokenCache(max_entries=10, expiry_margin=margin, refresh_ahead=refresh_ahead,
                      now=clock, max_ttl=max_ttl)


@pytest.mark.parametrize(
    ("expires_in", "refresh_after"),
    [
        (45, 12.0),    # servable 15 s: refreshed from its 12th second (not after 36 s)
        (60, 24.0),    # servable 30 s, Keycloak realms of one minute
        (300, 216.0),  # servable 270 s
        (33, 1.5),     # servable 3 s: refreshed half-way at the latest
    ],
)
def test_the_refresh_point_lies_inside_the_servable_life(expires_in, refresh_after):
    clock = Clock()
    entry = make(clock).put(KEY, token(expires_in))
    assert entry.serve_until == clock.wall + expires_in - 30
    assert entry.refresh_at == pytest.approx(clock.wall + refresh_after)
    assert clock.wall < entry.refresh_at < entry.serve_until


@given(expires_in=st.integers(0, 10**7), margin=st.integers(0, 600),
       refresh_ahead=st.floats(0.01, 0.99))
def test_any_servable_token_is_refreshed_before_serving_stops(expires_in, margin,
                                                              refresh_ahead):
    clock = Clock()
    entry = make(clock, margin=margin, refresh_ahead=refresh_ahead).put(KEY, token(expires_in))
    if entry.serve_until > clock.wall:
        assert clock.wall < entry.refresh_at < entry.serve_until


def test_refresh_ahead_zero_never_refreshes():
    clock = Clock()
    entry = make(clock, refresh_ahead=0.0).put(KEY, token(300))
    assert entry.refresh_at == entry.serve_until


def test_a_huge_expires_in_is_capped_by_max_ttl():
    clock = Clock()
    cache = make(clock, max_ttl=3600)
    entry = cache.put(KEY, token(10**12))
    assert entry.expires_in(clock.wall) == 3600
    clock.advance(3600 - 30)
    assert cache.get(KEY) is None  # not served forever


def test_discard_drops_an_entry():
    clock = Clock()
    cache = make(clock)
    cache.put(KEY, token(300))
    assert cache.discard(KEY) is True
    assert cache.get(KEY) is None
    assert cache.discard(KEY) is False


def test_a_token_issued_earlier_keeps_its_expiry_and_its_refresh_point():
    """A token from the shared tier, 200 s into a 300 s life: it expires when it would have,
    and its refresh point (216 s into its life) is not pushed back to a share of the 70 s
    left (which would refresh it at 256 s)."""
    clock = Clock()
    issued_at = clock.wall
    clock.advance(200)
    entry = make(clock).put(KEY, token(300), age=200)
    assert entry.expires_at == pytest.approx(issued_at + 300)
    assert entry.serve_until == pytest.approx(issued_at + 270)
    assert entry.refresh_at == pytest.approx(issued_at + 216)


def test_a_token_issued_too_long_ago_is_not_stored():
    clock = Clock()
    cache = make(clock)
    cache.put(KEY, token(300), age=271)
    assert cache.get(KEY) is None
    assert len(cache) == 0


# --- fair between clients ------------------------------------------------------------------


def client_key(client: str, scope: str, url: str = "https://idp.test/token") -> CacheKey:
    return cache_key(url, client, "secret", scope, "client_secret_post")


def test_a_client_over_its_share_evicts_its_own_least_recently_used_never_others():
    clock = Clock()
    cache = TokenCache(max_entries=10_000, per_client=100, expiry_margin=30,
                       refresh_ahead=0.2, now=clock)
    others = [client_key(f"service-{n}", "read") for n in range(20)]
    for key in others:
        cache.put(key, token(300))
    greedy = [client_key("greedy", f"scope-{n}") for n in range(10_000)]
    for key in greedy:
        cache.put(key, token(300))
    assert all(cache.get(key) is not None for key in others)
    assert len(cache) == 20 + 100
    kept = [key for key in greedy if cache.get(key) is not None]
    assert kept == greedy[-100:]  # its most recent hundred
    assert cache.evictions == {"client_share": 9_900, "capacity": 0}


def test_a_clients_recently_used_entries_are_the_ones_it_keeps():
    clock = Clock()
    cache = TokenCache(max_entries=100, per_client=2, expiry_margin=30, refresh_ahead=0.2,
                       now=clock)
    first, second, third = (client_key("c", scope) for scope in ("a", "b", "c"))
    cache.put(first, token(300))
    cache.put(second, token(300))
    assert cache.get(first) is not None  # used: now the newest
    cache.put(third, token(300))
    assert cache.get(second) is None
    assert cache.get(first) is not None and cache.get(third) is not None


def test_the_same_client_id_at_two_endpoints_has_two_shares():
    clock = Clock()
    cache = TokenCache(max_entries=100, per_client=1, expiry_margin=30, refresh_ahead=0.2,
                       now=clock)
    here = client_key("c", "read", "https://a/token")
    there = client_key("c", "read", "https://b/token")
    cache.put(here, token(300))
    cache.put(there, token(300))
    assert cache.get(here) is not None and cache.get(there) is not None


def test_a_full_cache_evicts_the_least_recently_used_of_all_and_counts_it():
    clock = Clock()
    cache = TokenCache(max_entries=3, per_client=100, expiry_margin=30, refresh_ahead=0.2,
                       now=clock)
    keys = [client_key(f"c{n}", "read") for n in range(4)]
    for key in keys:
        cache.put(key, token(300))
    assert cache.get(keys[0]) is None
    assert len(cache) == 3 and cache.evictions == {"client_share": 0, "capacity": 1}
    cache.put(keys[0], token(300))  # the share table stays right
    assert len(cache) == 3


def test_an_expired_or_discarded_entry_frees_its_clients_share():
    clock = Clock()
    cache = TokenCache(max_entries=100, per_client=1, expiry_margin=30, refresh_ahead=0.2,
                       now=clock)
    old, new = client_key("c", "a"), client_key("c", "b")
    cache.put(old, token(60))
    clock.advance(31)
    assert cache.get(old) is None
    cache.put(new, token(300))
    assert cache.evictions["client_share"] == 0  # the expired one had left already
    assert cache.discard(new) is True
    cache.put(old, token(300))
    assert cache.evictions["client_share"] == 0
