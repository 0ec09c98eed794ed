"""The cache hit's short cuts give exactly what the general paths give: per-thread counts
summed exactly, the usual request checked in one go, a prepared reply, the MSG line read by
one expression."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from token_worker import wire
from token_worker.config import NatsConfig
from token_worker.counting import ThreadCounts
from token_worker.errors import BadSubject, InvalidRequest, PayloadTooLarge
from token_worker.fields import CONTROL
from token_worker.metrics import LATENCY_BUCKETS, Metrics, outcome_label
from token_worker.micro import Endpoint
from token_worker.nats import protocol
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.serve.service import endpoint_stats

# --- counts without a lock ---------------------------------------------------------------


def count_in_threads(count: Any, threads: int, each: int) -> None:
    workers = [threading.Thread(target=lambda: [count() for _ in range(each)])
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_thread_counts_add_up_every_thread_exactly_even_after_they_ended():
    counts = ThreadCounts(2)

    def count() -> None:
        values = counts.mine()
        values[0] += 1
        values[1] += 0.5

    count_in_threads(count, threads=8, each=5000)
    count()  # and this thread's
    assert counts.totals() == [40001, 20000.5]


def test_replies_are_counted_exactly_by_outcome_and_latency_across_threads_and_endpoints():
    metrics = Metrics()
    token, named = metrics.endpoint_counts(), metrics.endpoint_counts()
    sample = metrics.registry.get_sample_value
    count_in_threads(lambda: token.count("", 0.0004), threads=4, each=2000)
    count_in_threads(lambda: named.count("", 0.0004), threads=2, each=1000)
    token.count("invalid_client", 0.02)  # an IdP refusal: counted as idp_refused
    named.count(wire.OVERLOADED, 20.0)  # beyond the last bucket
    assert sample("token_worker_requests_total", {"outcome": "ok"}) == 10000
    assert sample("token_worker_requests_total", {"outcome": "idp_refused"}) == 1
    assert sample("token_worker_requests_total", {"outcome": "overloaded"}) == 1
    assert sample("token_worker_reply_seconds_bucket", {"le": "0.0005"}) == 10000
    assert sample("token_worker_reply_seconds_bucket", {"le": "0.025"}) == 10001
    assert sample("token_worker_reply_seconds_bucket", {"le": "10.0"}) == 10001
    assert sample("token_worker_reply_seconds_bucket", {"le": "+Inf"}) == 10002
    assert sample("token_worker_reply_seconds_count") == 10002
    assert sample("token_worker_reply_seconds_sum") == pytest.approx(10000 * 0.0004 + 20.02)
    assert len(LATENCY_BUCKETS) == 14


def test_a_latency_on_a_bucket_bound_is_in_that_bucket():
    """Prometheus buckets are "less than or equal": 1 ms goes to le="0.001"."""
    metrics = Metrics()
    metrics.endpoint_counts().count("", 0.001)
    sample = metrics.registry.get_sample_value
    assert sample("token_worker_reply_seconds_bucket", {"le": "0.0005"}) == 0
    assert sample("token_worker_reply_seconds_bucket", {"le": "0.001"}) == 1


def test_cache_events_are_counted_per_kind():
    metrics = Metrics()
    count_in_threads(metrics.cache_hit, threads=3, each=100)
    metrics.cache_miss()
    metrics.cache_refresh()
    metrics.cache_refresh()
    sample = metrics.registry.get_sample_value
    assert [sample("token_worker_cache_events_total", {"event": event})
            for event in ("hit", "miss", "refresh")] == [300, 1, 2]


def test_an_endpoints_stats_add_up_every_thread_and_keep_the_last_error():
    metrics = Metrics()
    counts, other = metrics.endpoint_counts(), metrics.endpoint_counts()
    count_in_threads(lambda: counts.count("", 0.001), threads=4, each=1000)
    counts.count(wire.OVERLOADED, 0.002)
    counts.count("", 0.001)
    other.count("invalid_client", 1.0)  # another endpoint's: not in this one's stats
    stats = endpoint_stats(Endpoint("token", "token.request", "token-workers"), counts)
    assert (stats.num_requests, stats.num_errors, stats.last_error) == (4002, 1, "overloaded")
    assert stats.processing_time == pytest.approx(4_003_000_000, rel=1e-6)  # 4.003 s
    assert stats.average_processing_time == stats.processing_time // 4002


def test_an_idp_error_code_named_ok_is_an_error_in_stats_and_in_prometheus():
    """An IdP may refuse with ``{"error": "ok"}``: the reply is an error all the same."""
    metrics = Metrics()
    counts = metrics.endpoint_counts()
    counts.count("", 0.001)
    counts.count("ok", 0.001)
    stats = endpoint_stats(Endpoint("token", "token.request", "token-workers"), counts)
    assert (stats.num_requests, stats.num_errors, stats.last_error) == (2, 1, "ok")
    sample = metrics.registry.get_sample_value
    assert sample("token_worker_requests_total", {"outcome": "ok"}) == 1
    assert sample("token_worker_requests_total", {"outcome": "idp_refused"}) == 1
    assert outcome_label("ok") == "idp_refused"


# --- the usual request, checked in one go ---------------------------------------------

LIMIT = 65536
text = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "a\tb", "x\u2028",
                                                        "é", "a" * 4097]))
value = st.one_of(st.none(), text, st.booleans(), st.integers(), st.lists(text, max_size=2))
documents = st.dictionaries(
    st.sampled_from(["request_id", "client_id", "client_secret", "scope", "timestamp",
                     "skip_cache", "resource", "audience", "other"]), value, max_size=9)


def parse(body: bytes, *, usual: bool) -> wire.TokenRequest | str:
    """The request, or the error it raises: by the usual path, or field by field."""
    saved = wire.usual_token_request
    try:
        if not usual:
            wire.usual_token_request = lambda *_args, **_kwargs: None  # type: ignore[assignment]
        return wire.TokenRequest.from_bytes(body, max_size=LIMIT)
    except InvalidRequest as error:
        return f"{error.request_id!r}: {error}"
    finally:
        wire.usual_token_request = saved


@settings(max_examples=1500, deadline=None)
@given(documents)
def test_the_usual_path_accepts_and_refuses_exactly_what_the_field_by_field_path_does(
        document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    assert parse(body, usual=True) == parse(body, usual=False)


odd_bytes = st.sampled_from([
    b'"\\ud800"', b'"a\\udfff"', b'"\xff"', b'"\xed\xa0\x80"', b'"\xc0\x80"', b"1e400",
    b"123456789012345678901234567890", b"NaN", b"-0", b"null", b"true", b"[]", b"{}",
    b'"\\u0000"', b'"\\u2028"', b'" "', b'"\x01"', b"[" * 1100 + b"]" * 1100, b'"x"'])


@settings(max_examples=1500, deadline=None)
@given(documents, st.lists(st.tuples(st.sampled_from(
    [b"request_id", b"client_id", b"client_secret", b"scope", b"timestamp", b"skip_cache",
     b"resource", b"other"]), odd_bytes), max_size=3), st.sampled_from([b"", b" ", b"\n"]))
def test_the_usual_path_agrees_on_bytes_no_json_library_writes(
        document: dict[str, Any], extra: list[tuple[bytes, bytes]], space: bytes) -> None:
    """Duplicated keys, escapes of lone surrogates, invalid UTF-8, numbers out of range,
    deep nesting: msgspec reads the usual request, orjson the rest, and a request either
    takes must come out the same (or be refused the same)."""
    body = json.dumps({"client_id": "app", "client_secret": "s", **document}).encode()
    for name, raw in extra:
        body = body[:-1] + (b", " if len(body) > 2 else b"") + b'"%s": %s}' % (name, raw)
    body = space + body + space
    assert parse(body, usual=True) == parse(body, usual=False)


def test_printable_text_never_holds_a_character_the_control_check_refuses():
    """The usual path searches for control characters only in text that is not printable:
    sound because every character the search finds is unprintable, on every code point."""
    refused = [chr(point) for point in range(0x110000) if CONTROL.match(chr(point))]
    assert len(refused) == 0x20 + 0x21 + 2 + 5 + 4
    assert not any(character.isprintable() for character in refused)


def test_a_long_body_still_has_its_fields_bounded():
    body = json.dumps({"client_id": "c", "client_secret": "s",
                       "request_id": "r" * (wire.MAX_FIELD_LENGTH + 1)}).encode()
    with pytest.raises(InvalidRequest, match="request_id is longer than"):
        wire.TokenRequest.from_bytes(body, max_size=LIMIT)


def test_a_body_of_exactly_the_size_limit_is_read_and_one_byte_more_is_not():
    body = json.dumps({"client_id": "c", "client_secret": "s"}).encode()
    assert wire.TokenRequest.from_bytes(body, max_size=len(body)).client_id == "c"
    with pytest.raises(InvalidRequest, match=f"request is {len(body)} bytes, the limit is"):
        wire.TokenRequest.from_bytes(body, max_size=len(body) - 1)


@pytest.mark.parametrize("field", ["request_id", "client_id", "scope"])
@pytest.mark.parametrize("character", ["\t", "\x7f", "\u2028", "\u202e"])
@pytest.mark.parametrize("scope", [None, "read"])
def test_a_control_character_in_an_echoed_field_is_refused_with_or_without_a_scope(
        field: str, character: str, scope: str | None) -> None:
    document: dict[str, Any] = {"client_id": "c", "client_secret": "s"}
    if scope is not None:
        document["scope"] = scope
    document[field] = f"a{character}b"
    refusal = {"scope": "field scope is not a valid scope string"}.get(
        field, f"field {field} must not contain control characters")
    with pytest.raises(InvalidRequest, match=refusal):
        wire.TokenRequest.from_bytes(json.dumps(document).encode(), max_size=LIMIT)


@pytest.mark.parametrize("other", [{}, {"other": 1}, {"resource": "https://api.example/"}])
def test_a_secret_may_hold_any_character_on_either_path(other: dict[str, Any]) -> None:
    """A secret is the IdP's to judge and never echoed: control characters in it are not
    refused, whether the usual path reads the request or, with another field, the field by
    field path does."""
    body = json.dumps({"client_id": "c", "client_secret": "s\te\u2028c", **other}).encode()
    assert wire.TokenRequest.from_bytes(body, max_size=LIMIT).client_secret == "s\te\u2028c"


def test_an_unknown_field_is_read_as_strictly_as_a_known_one():
    """msgspec skips the value of a field it does not know without reading it as UTF-8 or
    a number; such a body is read by the other path, which refuses it."""
    for raw in (b'"\xff"', b"1e400"):
        body = b'{"client_id": "c", "client_secret": "s", "other": %s}' % raw
        with pytest.raises(InvalidRequest, match="not a JSON object"):
            wire.TokenRequest.from_bytes(body, max_size=LIMIT)


def test_resource_and_audience_are_read_on_either_one_alone():
    body = json.dumps({"client_id": "c", "client_secret": "s",
                       "resource": "https://api.example/"}).encode()
    assert wire.TokenRequest.from_bytes(body, max_size=LIMIT).resource == (
        "https://api.example/",)
    body = json.dumps({"client_id": "c", "client_secret": "s", "audience": "api"}).encode()
    assert wire.TokenRequest.from_bytes(body, max_size=LIMIT).audience == "api"


# --- the prepared reply -------------------------------------------------------------------

tokens = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                 max_size=40)


@settings(max_examples=500, deadline=None)
@given(token=tokens, token_type=st.sampled_from(["Bearer", "bearer", "DPoP"]),
       scope=st.text(max_size=20), request_id=st.text(max_size=20),
       expires_in=st.integers(0, 10**6), credential=st.one_of(st.none(), st.text(max_size=12)))
def test_a_prepared_reply_is_byte_for_byte_the_encoded_one(
        token: str, token_type: str, scope: str, request_id: str, expires_in: int,
        credential: str | None) -> None:
    prepared = wire.TokenReplyParts(token, token_type, scope).encode(request_id, expires_in,
                                                                     credential)
    stamp = orjson.loads(prepared)["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert prepared == wire.encode_token_reply(
        request_id, token, token_type, expires_in, scope=scope, token_source="cache",
        credential=credential, timestamp=stamp)


def test_prepared_parts_never_show_the_token():
    assert "s3cret-token" not in repr(wire.TokenReplyParts("s3cret-token", "Bearer", ""))


# --- the MSG line by one expression ---------------------------------------------------------

lines = st.builds(
    lambda subject, sid, reply, body, sep: (b"MSG" + sep + subject + sep + sid
                                            + (sep + reply if reply else b"") + sep
                                            + b"%d" % len(body) + b"\r\n" + body + b"\r\n"),
    subject=st.binary(min_size=1, max_size=8).filter(lambda b: not set(b) & set(b" \r\n\t")),
    sid=st.sampled_from([b"1", b"42", b"0001", b"12345678901", b"x"]),
    reply=st.one_of(st.just(b""), st.binary(min_size=1, max_size=8)),
    body=st.binary(max_size=16), sep=st.sampled_from([b" ", b"  ", b"\t"]))


@settings(max_examples=1500, deadline=None)
@given(st.lists(lines, min_size=1, max_size=4), st.integers(1, 40))
def test_the_usual_msg_path_parses_exactly_as_the_general_path(frames: list[bytes],
                                                               cut: int) -> None:
    data = b"".join(frames)

    def events(usual: bool) -> list[Any]:
        saved = protocol._USUAL_MESSAGE
        if not usual:
            protocol._USUAL_MESSAGE = re.compile(rb"(?!)")  # never matches
        try:
            parser = protocol.Parser()
            return parser.feed(data[:cut]) + parser.feed(data[cut:])
        finally:
            protocol._USUAL_MESSAGE = saved

    assert events(usual=True) == events(usual=False)


# --- the PUB line's subject check -------------------------------------------------------

@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=st.sampled_from("a.>*_ \t\r\n\x0b\x0c\x85\u2028\u00a0é\udcff"),
               max_size=6), st.sampled_from(["", "_INBOX.x", "_INBOX. x"]))
def test_pub_refuses_exactly_the_subjects_with_whitespace_the_protocol_splits_on(
        subject: str, reply: str) -> None:
    """The printable shortcut never lets through what the full check refuses."""
    refused = (not subject or any(c in subject for c in " \t\r\n")
               or any(c in reply for c in " \t\r\n"))
    try:
        protocol.pub(subject, b"x", reply)
    except BadSubject:
        assert refused
    else:
        assert not refused


class _Recorder:
    """A socket that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=8).filter(
    lambda raw: b" " not in raw and b"\r\n" not in raw), min_size=1, max_size=4))
def test_a_reply_published_to_a_received_reply_subject_is_the_checked_pub(
        raw_subjects: list[bytes]) -> None:
    """Whatever reply subject the parser can hand over (a MSG-line token: any bytes but a
    space, a bare CR, LF or tab included, as a server may pass them on), publish_reply
    writes the PUB that publish, with every check, writes, or refuses it as publish does."""
    connection = NatsConnection(NatsConfig(), "unit")
    socket = _Recorder()
    connection._sock = socket  # type: ignore[assignment]
    connection._state = State.CONNECTED
    for raw in raw_subjects:
        frame = b"MSG token.request 1 %s 2\r\n{}\r\n" % raw
        delivered = [event for event in protocol.Parser().feed(frame) if type(event) is tuple]
        if not delivered:
            continue  # not a message line the parser takes (a tab splitting it, say)
        [(_, message)] = delivered  # type: ignore[misc]
        outcomes = []
        for publish in (connection.publish_reply, connection.publish):
            try:
                publish(message.reply, b'{"a":1}')
                outcomes.append(socket.sent.pop())
            except BadSubject:
                outcomes.append(b"refused")
        assert outcomes[0] == outcomes[1], message.reply


def test_a_reply_over_the_servers_limit_is_refused_and_never_written() -> None:
    connection = NatsConnection(NatsConfig(), "unit")
    socket = _Recorder()
    connection._sock = socket  # type: ignore[assignment]
    connection._state = State.CONNECTED
    connection.max_payload = 4
    connection.publish_reply("_INBOX.a", b"1234")
    with pytest.raises(PayloadTooLarge):
        connection.publish_reply("_INBOX.a", b"12345")
    assert socket.sent == [b"PUB _INBOX.a 4\r\n1234\r\n"]
