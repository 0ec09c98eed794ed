"""The wire types on byte strings: what requests parse to, the exact JSON of replies, and
that no bytes make parsing raise anything but the typed errors."""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from token_worker import micro, wire
from token_worker.errors import InvalidReply, InvalidRequest

LIMIT = 64 * 1024


def request(**fields: object) -> bytes:
    body = {"request_id": "r-1", "client_id": "svc", "client_secret": "s3cret-value",
            "timestamp": "2026-11-29T12:00:00Z", **fields}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_a_valid_request_parses_to_its_fields():
    parsed = wire.TokenRequest.from_bytes(request(scope=["b", "a"], skip_cache=True),
                                          max_size=LIMIT)
    assert parsed == wire.TokenRequest("r-1", "svc", "s3cret-value", "b a",
                                       "2026-11-29T12:00:00Z", True)
    assert "s3cret-value" not in repr(parsed)


UNKNOWN_FIELDS = {"grant_type": "password", "resources": ["a", "b"],
                  "future": {"nested": [1, None, True]}, "n": 7, "flag": False,
                  "nothing": None, "aud": "https://api.example"}
"""Fields a requester may add that the worker does not know, of every JSON type."""


def test_unknown_fields_are_ignored():
    """README: "Unknown fields are ignored." A request with them is the same request."""
    plain = wire.TokenRequest.from_bytes(request(scope="read"), max_size=LIMIT)
    extended = wire.TokenRequest.from_bytes(request(scope="read", **UNKNOWN_FIELDS),
                                            max_size=LIMIT)
    assert extended == plain == wire.TokenRequest("r-1", "svc", "s3cret-value", "read",
                                                  "2026-11-29T12:00:00Z", False)


def test_unknown_fields_and_credentials_in_a_named_request_are_ignored():
    """docs/security.md: a client_id, client_secret or any other field in the body of a
    named request is ignored."""
    body = {"request_id": "r-1", "scope": "read", "client_id": "other",
            "client_secret": "other-secret", "credential": "billing", **UNKNOWN_FIELDS}
    parsed = wire.NamedTokenRequest.from_bytes(json.dumps(body).encode(), max_size=LIMIT)
    assert parsed == wire.NamedTokenRequest("r-1", "read", False, "")


def test_a_request_without_request_id_is_served_with_an_empty_one():
    parsed = wire.TokenRequest.from_bytes(request(request_id=...), max_size=LIMIT)
    assert parsed.request_id == ""
    assert wire.TokenRequest.from_bytes(request(request_id=None), max_size=LIMIT
                                        ).request_id == ""


@pytest.mark.parametrize(("payload", "request_id", "fragment"), [
    (b"{not json", "", "Invalid request format"),
    (b"[1]", "", "Invalid request format"),
    (b"\xff\xfe", "", "Invalid request format"),
    (request(client_id=...), "r-1", "missing field client_id"),
    (request(client_id=" "), "r-1", "client_id must not be empty"),
    (request(client_secret=7), "r-1", "client_secret must be a string, got number"),
    (request(request_id=7), "", "request_id must be a string"),
    (request(request_id="a\nb"), "a\nb", "request_id must not contain control characters"),
    (request(client_id="a\x00b"), "r-1", "control characters"),
    (request(client_id="a\u2028b"), "r-1", "control characters"),
    (request(client_id="a\u2029b"), "r-1", "control characters"),
    (request(client_id="a\u0085b"), "r-1", "control characters"),
    (request(client_id="a\u0080b"), "r-1", "control characters"),
    (request(client_id="a\u009fb"), "r-1", "control characters"),
    (request(client_id="a\u202ab"), "r-1", "control characters"),
    (request(client_id="a\u202eb"), "r-1", "control characters"),
    (request(client_id="a\u2066b"), "r-1", "control characters"),
    (request(client_id="a\u2069b"), "r-1", "control characters"),
    (request(request_id="a\u2028b"), "a\u2028b", "request_id must not contain control"),
    (request(scope="read\u2029write"), "r-1", "scope is not a valid scope string"),
    (request(scope={"a": 1}), "r-1", "scope must be a string or a list"),
    (request(skip_cache="yes"), "r-1", "skip_cache must be true or false, got string"),
    (request(client_id="x" * 5000), "r-1", "longer than 4096"),
])
def test_bad_requests_raise_invalid_request_with_the_id_when_readable(payload, request_id,
                                                                      fragment):
    with pytest.raises(InvalidRequest, match=fragment) as caught:
        wire.TokenRequest.from_bytes(payload, max_size=LIMIT)
    assert caught.value.request_id == request_id
    assert "s3cret-value" not in str(caught.value)


def test_printable_unicode_is_accepted_in_request_fields():
    fields = {"client_id": "svc-\u00e9\u4e2d\U0001f600\u00a0", "request_id": "r-\u2027\u202f",
              "scope": "read\u00e9"}
    parsed = wire.TokenRequest.from_bytes(request(**fields), max_size=LIMIT)
    assert (parsed.client_id, parsed.request_id, parsed.scope) == (
        fields["client_id"], fields["request_id"], fields["scope"])


def test_an_oversize_request_is_refused_before_parsing():
    with pytest.raises(InvalidRequest, match="request is 2000 bytes, the limit is 1024"):
        wire.TokenRequest.from_bytes(b" " * 2000, max_size=1024)
    assert wire.peek_request_id(b" " * 2000, max_size=1024) == ""


def test_a_request_round_trips_through_bytes():
    original = wire.TokenRequest("r-9", "svc", "pw-123", "read", "2026-01-01T00:00:00Z", True)
    assert wire.TokenRequest.from_bytes(original.to_bytes(), max_size=LIMIT) == original
    bare = orjson.loads(wire.TokenRequest("r", "svc", "pw", timestamp="t").to_bytes())
    assert bare == {"request_id": "r", "client_id": "svc", "client_secret": "pw",
                    "timestamp": "t"}


def test_named_requests_carry_no_credentials():
    named = wire.NamedTokenRequest.from_bytes(b'{"request_id": "n-1", "scope": "read"}',
                                              max_size=LIMIT)
    assert named == wire.NamedTokenRequest("n-1", "read", False, "")
    assert wire.NamedTokenRequest.from_bytes(b"", max_size=LIMIT) == wire.NamedTokenRequest("")
    assert wire.NamedTokenRequest.from_bytes(named.to_bytes(), max_size=LIMIT
                                             ).scope == "read"
    with pytest.raises(InvalidRequest, match="skip_cache"):
        wire.NamedTokenRequest.from_bytes(b'{"request_id": "n", "skip_cache": 1}',
                                          max_size=LIMIT)


def test_a_token_reply_has_the_originals_shape():
    body = orjson.loads(wire.TokenReply("r-1", "tok", "Bearer", 300, "read", "cache",
                                        timestamp="T").to_bytes())
    assert list(body) == ["request_id", "access_token", "token_type", "expires_in", "scope",
                          "token_source", "timestamp"]
    assert body["expires_in"] == 300
    bare = orjson.loads(wire.TokenReply("", "tok", "Bearer", 5).to_bytes())
    assert set(bare) == {"request_id", "access_token", "token_type", "expires_in",
                         "timestamp"}
    assert bare["timestamp"].endswith("Z")
    named = orjson.loads(wire.TokenReply("r", "t", "Bearer", 5, credential="billing"
                                         ).to_bytes())
    assert named["credential"] == "billing"
    assert "tok-value" not in repr(wire.TokenReply("r", "tok-value", "Bearer", 5))


def test_an_error_reply_has_the_originals_shape_and_a_code():
    body = orjson.loads(wire.ErrorReply("r-2", "worker overloaded", wire.OVERLOADED
                                        ).to_bytes())
    assert list(body) == ["request_id", "error", "error_code", "timestamp"]
    described = orjson.loads(wire.ErrorReply("r", "refused", "invalid_scope", "no admin"
                                             ).to_bytes())
    assert described["error_description"] == "no admin"
    assert orjson.loads(wire.ErrorReply("r", "", "x").to_bytes())["error"] == "x"


def test_replies_round_trip_and_parse_reply_tells_them_apart():
    token = wire.TokenReply("r", "tok", "Bearer", 60, "a b", "idp", "cred", "T")
    error = wire.ErrorReply("r", "no", wire.SHUTTING_DOWN, "", "T")
    assert wire.parse_reply(token.to_bytes()) == token
    assert wire.parse_reply(error.to_bytes()) == error
    assert wire.TokenReply.from_bytes(token.to_bytes()) == token
    assert wire.ErrorReply.from_bytes(error.to_bytes()) == error
    with pytest.raises(InvalidReply, match="reply is an error: shutting_down"):
        wire.TokenReply.from_bytes(error.to_bytes())


def test_an_original_error_reply_with_empty_token_fields_is_an_error():
    original = (b'{"request_id": "", "access_token": "", "token_type": "", "expires_in": 0,'
                b' "error": "Invalid request format", "timestamp": "T"}')
    reply = wire.parse_reply(original)
    assert reply == wire.ErrorReply("", "Invalid request format", "", "", "T")


@pytest.mark.parametrize(("body", "fragment"), [
    (b"nope", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"request_id": "r", "token_type": "Bearer", "expires_in": 5}', "access_token"),
    (b'{"request_id": "r", "access_token": 5, "token_type": "B", "expires_in": 5}',
     "access_token"),
    (b'{"request_id": "r", "access_token": "t", "token_type": "B", "expires_in": true}',
     "expires_in"),
    (b'{"request_id": "r", "access_token": "t", "token_type": "B", "expires_in": 5.5}',
     "expires_in"),
    (b'{"request_id": "r", "access_token": "t", "token_type": "B", "expires_in": -1}',
     "expires_in"),
    (b'{"request_id": 3, "access_token": "t", "token_type": "B", "expires_in": 1}',
     "request_id"),
    (b'{"request_id": "r", "access_token": "t", "expires_in": 1}', "token_type"),
    (b'{"request_id": "r", "error": ["x"]}', "error"),
])
def test_malformed_replies_raise_invalid_reply_naming_the_field(body, fragment):
    with pytest.raises(InvalidReply, match=fragment) as caught:
        wire.parse_reply(body)
    assert '"t"' not in str(caught.value)


def test_service_bodies_have_the_adr32_shapes_and_round_trip():
    identity = micro.ServiceIdentity("token-worker", "ID1", "0.1.0", {"client_name": "w"})
    endpoint = micro.Endpoint("token", "token.request", "token-workers")
    ping = micro.PingResponse(identity)
    assert orjson.loads(ping.to_bytes()) == {
        "type": "io.nats.micro.v1.ping_response", "name": "token-worker", "id": "ID1",
        "version": "0.1.0", "metadata": {"client_name": "w"}}
    info = micro.InfoResponse(identity, "tokens", (endpoint,))
    assert orjson.loads(info.to_bytes())["endpoints"] == [
        {"name": "token", "subject": "token.request", "queue_group": "token-workers",
         "metadata": None}]
    stats = micro.StatsResponse(identity, "2026-11-29T12:00:00Z", (micro.EndpointStats(
        endpoint, 7, 1, "overloaded", 7000, 1000),))
    assert orjson.loads(stats.to_bytes())["endpoints"][0]["num_errors"] == 1
    assert micro.PingResponse.from_bytes(ping.to_bytes()) == ping
    assert micro.InfoResponse.from_bytes(info.to_bytes()) == info
    assert micro.StatsResponse.from_bytes(stats.to_bytes()) == stats
    with pytest.raises(InvalidReply, match="ping_response"):
        micro.PingResponse.from_bytes(info.to_bytes())


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=256) | st.text(max_size=64).map(str.encode))
def test_no_bytes_make_parsing_raise_anything_but_the_typed_errors(payload):
    for parse in (lambda p: wire.TokenRequest.from_bytes(p, max_size=LIMIT),
                  lambda p: wire.NamedTokenRequest.from_bytes(p, max_size=LIMIT)):
        with contextlib.suppress(InvalidRequest):
            parse(payload)
    with contextlib.suppress(InvalidReply):
        wire.parse_reply(payload)
    assert isinstance(wire.peek_request_id(payload, max_size=LIMIT), str)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                     max_leaves=5)


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional=dict.fromkeys(
    ("request_id", "client_id", "client_secret", "scope", "skip_cache", "access_token",
     "token_type", "expires_in", "error", "error_code", "timestamp"), _json)))
def test_json_objects_with_any_field_types_parse_or_raise_typed_errors(document):
    payload = json.dumps(document).encode()
    try:
        parsed = wire.TokenRequest.from_bytes(payload, max_size=LIMIT)
    except InvalidRequest:
        pass
    else:
        assert isinstance(parsed.client_id, str) and isinstance(parsed.request_id, str)
    try:
        reply = wire.parse_reply(payload)
    except InvalidReply:
        pass
    else:
        assert isinstance(reply.request_id, str)
        if isinstance(reply, wire.TokenReply):
            assert type(reply.expires_in) is int and reply.access_token
