"""The bytes kv.py sends and reads: header blocks, HPUB frames, TTLs and key names."""

from __future__ import annotations

import pytest

from token_worker.nats.kv import check_key, ttl_header
from token_worker.nats.protocol import encode_headers, hpub, parse_headers


def test_a_status_line_and_fields_are_read_from_a_header_block() -> None:
    headers = parse_headers(b"NATS/1.0 404 Message Not Found\r\n\r\n")
    assert (headers.status, headers.description, headers.fields) == (
        404, "Message Not Found", {})

    headers = parse_headers(b"NATS/1.0\r\nNats-Stream: KV_t\r\nNats-Sequence: 42\r\n"
                            b"KV-Operation: DEL\r\nNats-Subject: $KV.t.a.b\r\n\r\n")
    assert headers.status == 0
    assert headers.fields == {"Nats-Stream": "KV_t", "Nats-Sequence": "42",
                              "KV-Operation": "DEL", "Nats-Subject": "$KV.t.a.b"}
    assert parse_headers(b"NATS/1.0 503\r\n\r\n").status == 503


def test_hpub_counts_the_header_block_and_the_total() -> None:
    frame = hpub("$KV.t.k", encode_headers({"Nats-TTL": "5s"}), b"value",
                 reply="_INBOX.x.1")
    block = b"NATS/1.0\r\nNats-TTL: 5s\r\n\r\n"
    assert frame == (b"HPUB $KV.t.k _INBOX.x.1 %d %d\r\n" % (len(block), len(block) + 5)
                     + block + b"value\r\n")
    assert parse_headers(encode_headers({"A": "1", "B": "two"})).fields == {"A": "1",
                                                                            "B": "two"}


def test_a_header_that_would_break_the_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        encode_headers({"A": "1\r\nB: 2"})


def test_ttls_are_whole_seconds_rounded_up() -> None:
    assert [ttl_header(t) for t in (0.2, 1, 1.5, 90)] == ["1s", "1s", "2s", "90s"]


@pytest.mark.parametrize("key", ["abc", "a.b", "A-b_c/d=e.0", "0f3a.tok"])
def test_legal_keys_pass(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", ".a", "a.", "a..b", "a b", "a*", "a>", "ü", "a\r\n"])
def test_illegal_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="not a legal"):
        check_key(key)
