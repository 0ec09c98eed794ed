"""The token cache on an injected clock: servable life, refresh point, cap, discard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes import Clock
from token_worker.tokens.cache import TokenCache, cache_key
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
