"""What makes two requests the same token: the worker's cache keys (tokens/cache.py) and the
shared tier's entry names and seals (tokens/sealing.py). Each part of a key, as
docs/architecture.md lists them (token endpoint, client id, secret, scope set, auth
method), must tell two requests apart on its own; nothing else may."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tests.fakes import Clock
from token_worker.tokens.cache import TokenCache, cache_key
from token_worker.tokens.model import IssuedToken
from token_worker.tokens.sealing import FleetKey, Unsealable

URL = "https://idp.test/token"
BASE = (URL, "orders", "shared-secret", "read write", "client_secret_post")
"""token endpoint, client id, secret, scope, auth method"""
OTHERS = {
    "token endpoint": "https://other-idp.test/token",
    "client id": "billing",
    "secret": "another-secret",
    "scope": "read",
    "auth method": "client_secret_basic",
}
PART = {"token endpoint": 0, "client id": 1, "secret": 2, "scope": 3, "auth method": 4}


def changed(part: str) -> tuple[str, str, str, str, str]:
    values = list(BASE)
    values[PART[part]] = OTHERS[part]
    return values[0], values[1], values[2], values[3], values[4]


@pytest.mark.parametrize("part", sorted(OTHERS))
def test_each_part_of_a_request_makes_another_cache_key(part):
    assert cache_key(*changed(part)) != cache_key(*BASE)


@pytest.mark.parametrize("part", sorted(OTHERS))
def test_a_token_cached_for_one_request_is_not_served_to_one_differing_in_a_part(part):
    """The case that matters: two clients with the same secret and scope (or one client
    with two secrets, ...) never share a token."""
    clock = Clock()
    cache = TokenCache(max_entries=10, expiry_margin=30, refresh_ahead=0.2, now=clock)
    cache.put(cache_key(*BASE), IssuedToken("orders-token", "Bearer", 300, "read write",
                                            clock()))
    assert cache.get(cache_key(*changed(part))) is None
    hit = cache.get(cache_key(*BASE))
    assert hit is not None and hit.token.access_token == "orders-token"


def test_the_scope_is_a_set():
    """"b a a" and "a b" ask for the same token (RFC 6749 3.3: a space-delimited list
    whose order does not matter)."""
    assert cache_key(URL, "c", "s", "write read read", "m") == cache_key(
        URL, "c", "s", "read write", "m")
    assert cache_key(URL, "c", "s", "", "m") != cache_key(URL, "c", "s", "openid", "m")


def test_the_secret_is_never_in_the_key():
    key = cache_key(*BASE)
    assert "shared-secret" not in repr(key)
    assert b"shared-secret" not in key.secret_digest
    assert key.client_id == "orders"


# --- the shared tier: entry names and seals ---------------------------------------------

FLEET_SECRET = b"k" * 32


def fleet_name(key: FleetKey, values: tuple[str, str, str, str, str]) -> str:
    url, client_id, secret, scope, method = values
    return key.name(url, client_id, secret, tuple(sorted(set(scope.split()))), method)


@pytest.mark.parametrize("part", sorted(OTHERS))
def test_each_part_of_a_request_names_another_entry(part):
    key = FleetKey(FLEET_SECRET)
    assert fleet_name(key, changed(part)) != fleet_name(key, BASE)


def test_an_entry_name_is_the_same_on_every_replica_and_reveals_nothing():
    one, other = FleetKey(FLEET_SECRET), FleetKey(bytes(FLEET_SECRET))
    name = fleet_name(one, BASE)
    assert name == fleet_name(other, BASE)
    assert len(name) == 64 and int(name, 16) >= 0  # a hex HMAC-SHA256
    for part in BASE:
        assert part not in name
    assert fleet_name(FleetKey(b"x" * 32), BASE) != name  # another fleet's key


def test_parts_cannot_be_shifted_into_each_other():
    """("ab", "c") and ("a", "bc") are different requests: the parts are length-prefixed."""
    key = FleetKey(FLEET_SECRET)
    assert key.name(URL, "ab", "cd", ("x",), "m") != key.name(URL, "a", "bcd", ("x",), "m")
    assert key.name(URL, "a", "b", ("x",), "ym") != key.name(URL, "a", "b", ("xy",), "m")


def test_a_fleet_key_needs_32_bytes():
    """docs/operations.md: a key file of at least 32 random bytes."""
    with pytest.raises(ValueError, match="32 bytes"):
        FleetKey(b"k" * 31)
    FleetKey(b"k" * 32)
    assert "k" * 8 not in repr(FleetKey(FLEET_SECRET))


def test_a_sealed_value_opens_only_under_its_key_and_its_entry():
    key = FleetKey(FLEET_SECRET)
    sealed = key.seal("entry-a", b'{"access_token": "t"}')
    assert b"access_token" not in sealed
    assert key.open("entry-a", sealed) == b'{"access_token": "t"}'
    assert key.seal("entry-a", b"same") != key.seal("entry-a", b"same")  # a fresh nonce
    with pytest.raises(Unsealable):
        key.open("entry-b", sealed)  # copied to another entry
    with pytest.raises(Unsealable):
        FleetKey(b"x" * 32).open("entry-a", sealed)  # another fleet's key
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(Unsealable):
        key.open("entry-a", tampered)


@pytest.mark.parametrize("value", [
    b"", *(b"\x01" + b"n" * length for length in range(9)),  # shorter than any nonce
    b"\x01" + b"n" * 12 + b"t" * 15,                          # shorter than the tag
    b"\x02" + b"n" * 12 + b"t" * 40, b'{"access_token": "t"}'])
def test_what_is_not_a_sealed_value_does_not_open(value):
    with pytest.raises(Unsealable):
        FleetKey(FLEET_SECRET).open("entry-a", value)


def test_a_value_of_another_format_version_does_not_open():
    """The version byte is outside the AES-GCM tag: only the check of it refuses a value
    whose first byte was changed."""
    key = FleetKey(FLEET_SECRET)
    sealed = key.seal("entry-a", b'{"access_token": "t"}')
    for version in (b"\x00", b"\x02", b"\xff"):
        with pytest.raises(Unsealable):
            key.open("entry-a", version + sealed[1:])


def test_any_bytes_round_trip_even_none():
    key = FleetKey(FLEET_SECRET)
    for plaintext in (b"", b"x", bytes(range(256)) * 4):
        assert key.open("entry-a", key.seal("entry-a", plaintext)) == plaintext


# The format every replica of a fleet must read alike, whatever its version, written out
# from the module's description (HKDF-SHA256 derived keys; HMAC-SHA256 over length-prefixed
# fields; version byte 1, a 96-bit nonce, AES-256-GCM with the entry's name as associated
# data) and checked against the code.


def derived(label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"token-worker/shared-cache/v1/" + label).derive(FLEET_SECRET)


def test_an_entry_name_is_the_documented_hmac():
    secret_digest = hmac.digest(derived(b"client-secret"), b"shared-secret", hashlib.sha256)
    fields = b"".join(len(part).to_bytes(4, "big") + part for part in (
        URL.encode(), b"orders", secret_digest, b"read write", b"client_secret_post"))
    expected = hmac.digest(derived(b"name"), fields, hashlib.sha256).hex()
    assert fleet_name(FleetKey(FLEET_SECRET), BASE) == expected


def test_a_sealed_value_is_the_documented_aes_gcm_layout():
    sealed = FleetKey(FLEET_SECRET).seal("entry-a", b"plain")
    assert sealed[:1] == b"\x01" and len(sealed) == 1 + 12 + len(b"plain") + 16
    nonce, box = sealed[1:13], sealed[13:]
    aad = b"token-worker/shared-cache/v1\x00entry-a"
    assert AESGCM(derived(b"seal")).decrypt(nonce, box, aad) == b"plain"
    # and a value sealed that way by another replica opens here
    other = b"\x01" + bytes(12) + AESGCM(derived(b"seal")).encrypt(bytes(12), b"theirs", aad)
    assert FleetKey(FLEET_SECRET).open("entry-a", other) == b"theirs"
