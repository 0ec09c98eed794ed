"""The token contract, both ends: token requests, their replies and the error codes.

Every message that crosses NATS is one type here with ``to_bytes()`` and ``from_bytes()``,
used by the worker and by requesters alike, so the two sides cannot drift apart:

- :class:`TokenRequest`: ``{"request_id", "client_id", "client_secret", "timestamp"}``
  plus the optional ``scope`` and ``skip_cache`` (the original's request, served on the
  token subject). A request without ``request_id`` is served, as the original served it,
  and its reply carries ``"request_id": ""``.
- :class:`NamedTokenRequest`: the same without credentials, for a credential the worker
  holds itself (served on ``token.named.<credential>``).
- :class:`TokenReply` and :class:`ErrorReply`: the two replies, in the original's JSON
  shapes (``scope``, ``token_source``, ``credential`` and ``error_description`` omitted
  when empty). :func:`parse_reply` tells them apart for a requester.

The NATS services API bodies (``$SRV``) are :mod:`token_worker.micro`'s.

Parsing a request never raises anything but :class:`~token_worker.errors.InvalidRequest`,
whatever bytes arrive; parsing a reply never raises anything but
:class:`~token_worker.errors.InvalidReply`, with strict types (a requester must not take a
number for a token). JSON goes through orjson: every reply is encoded on the hot path,
where it is six times faster than the standard library, and it refuses what a token
request never is (invalid UTF-8, NaN, nesting deeper than 1024). The usual token request
is decoded by msgspec straight into its typed fields (:mod:`token_worker.request_decoding`,
loaded on the first request parsed); whatever it does not take (an unknown field, a wrong
type) is read by orjson and checked field by field, which says what is wrong.

The module is longer than 400 lines because the contract is one piece: requests, replies
and error codes, read and written by both ends with the same types. Split, each end's half
could drift from the other's.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from token_worker.errors import InvalidReply, InvalidRequest
from token_worker.fields import (
    CONTROL,
    MAX_FIELD_LENGTH,
    audience_field,
    normal_scope,
    optional_flag,
    optional_text,
    readable_request_id,
    request_document,
    request_id_field,
    required_text,
    resource_field,
    scope_field,
)

if TYPE_CHECKING:
    from token_worker.request_decoding import UsualRequest

__all__ = [
    "ACCESS_TOKEN",
    "IDP_BAD_RESPONSE",
    "IDP_TIMEOUT",
    "IDP_UNAVAILABLE",
    "INLINE_SECRETS_DISABLED",
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "MAX_FIELD_LENGTH",
    "OVERLOADED",
    "RATE_LIMITED",
    "SHUTTING_DOWN",
    "TOKEN_TOO_LARGE",
    "UNKNOWN_CREDENTIAL",
    "ErrorReply",
    "InvalidReply",
    "InvalidRequest",
    "NamedTokenRequest",
    "TokenReply",
    "TokenRequest",
    "decode",
    "encode",
    "encode_token_reply",
    "now_rfc3339",
    "parse_reply",
    "peek_request_id",
    "reply_from_document",
    "retry_seconds",
    "text_field",
    "usual_token_request",
]

# --- error codes of token-worker's own (the IdP's OAuth2 codes pass through unchanged) ---

INVALID_REQUEST = "invalid_request"
"""The request body is not a valid token request (the reply's ``error`` says why)."""
IDP_UNAVAILABLE = "idp_unavailable"
"""The IdP could not be reached, failed (5xx, 429) or its circuit is open."""
IDP_TIMEOUT = "idp_timeout"
"""The IdP did not answer within the deadline."""
IDP_BAD_RESPONSE = "idp_bad_response"
"""The IdP answered something that is not a usable token response (not retried)."""
INTERNAL_ERROR = "internal_error"
"""A bug in a handler; the exception is logged."""
OVERLOADED = "overloaded"
"""No room for the request now (pool and backlog full, too many waiting, too little of the
deadline left after waiting for a thread, the replica's IdP call ceiling): retry shortly."""
RATE_LIMITED = "rate_limited"
"""The client's budget of IdP calls is spent and no cached token could stand in; the reply
says ``retry_after``."""
LONGEST_RETRY_AFTER = 86400
"""The longest ``retry_after`` a reply says (a day)."""
TOKEN_TOO_LARGE = "token_too_large"  # noqa: S105 - an error code, not a secret
"""The reply would be larger than the NATS server's ``max_payload``."""
SHUTTING_DOWN = "shutting_down"
"""The worker is stopping and did not start this request: retry at once (another replica
answers)."""
UNKNOWN_CREDENTIAL = "unknown_credential"
"""A named request (``token.named.<name>``) for a credential the worker does not hold."""
INLINE_SECRETS_DISABLED = "inline_secrets_disabled"
"""``credentials.inline`` is false: requests carrying ``client_secret`` are refused."""


ACCESS_TOKEN = re.compile(r"[\x21-\x7e]+")
"""What an access token may be, at both ends: visible ASCII (RFC 6749 A.12, ``1*VSCHAR``).
RFC 6750's stricter ``b64token`` is not asked for: it is the Bearer header's syntax, and
some IdPs issue opaque tokens outside it. What matters is that no token can carry a
space, a control character or a line separator into a header, a reply or a log line."""



# --- requests ---------------------------------------------------------------------------

class TokenRequest(NamedTuple):
    """A parsed, valid token request carrying its client's credentials (a tuple: one is
    built for every request on the hot path)."""

    request_id: str
    """Chosen by the requester, echoed in the reply; "" when the request had none."""
    client_id: str
    client_secret: str
    scope: str | None = None
    """``None`` when the request names none (the configured default applies)."""
    timestamp: str = ""
    skip_cache: bool = False
    """Ask the IdP even if a cached token would do (the original front end's field)."""
    resource: tuple[str, ...] = ()
    """RFC 8707 resource indicators the token is for (``resource``: a string or a list of
    strings); the worker checks each is an absolute URI."""
    audience: str | None = None
    """An Auth0-style ``audience`` the token is for."""

    def __repr__(self) -> str:
        return (f"TokenRequest(request_id={self.request_id!r}, client_id={self.client_id!r}, "
                f"scope={self.scope!r}, resource={self.resource!r}, "
                f"audience={self.audience!r}, client_secret='********')")

    @classmethod
    def from_bytes(cls, payload: bytes, *, max_size: int) -> TokenRequest:
        """Parse and validate one request body, or raise :class:`InvalidRequest`.

        The usual request (only the fields of the contract, strings where strings belong,
        no scope list, no resource) is decoded and typed in one call to msgspec and checked
        in one go; anything else, valid or not, takes the field-by-field path, which says
        which field is wrong. Both accept exactly the same requests."""
        size = len(payload)
        if size > max_size:
            raise InvalidRequest(f"request is {size} bytes, the limit is {max_size}")
        request = usual_token_request(payload)
        if request is not None:
            return request
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise InvalidRequest("Invalid request format: not a JSON object") from None
        if type(document) is not dict:
            raise InvalidRequest("Invalid request format: not a JSON object")
        try:  # every request msgspec did not take, valid or not
            request = cls(request_id_field(document), required_text(document, "client_id"),
                          required_text(document, "client_secret", secret=True),
                          scope_field(document), optional_text(document, "timestamp"),
                          optional_flag(document, "skip_cache"))
            if "resource" in document or "audience" in document:  # rare: off the hot path
                request = request._replace(resource=resource_field(document),
                                           audience=audience_field(document))
            return request
        except ValueError as error:
            raise InvalidRequest(str(error), request_id=readable_request_id(document)
                                 ) from None

    def to_bytes(self) -> bytes:
        """The request body (``scope`` and ``skip_cache`` only when set)."""
        body: dict[str, Any] = {"request_id": self.request_id, "client_id": self.client_id,
                                "client_secret": self.client_secret,
                                "timestamp": self.timestamp or now_rfc3339()}
        if self.scope is not None:
            body["scope"] = self.scope
        if self.skip_cache:
            body["skip_cache"] = True
        if self.resource:
            body["resource"] = list(self.resource)
        if self.audience is not None:
            body["audience"] = self.audience
        return orjson.dumps(body)


_new_tuple = tuple.__new__


def _load_usual_decoder(payload: bytes) -> UsualRequest:
    """The first request parsed loads msgspec's decoder of the usual request (a requester,
    which never parses one, never loads msgspec); later ones call the decoder itself."""
    global _decode_usual  # noqa: PLW0603 - set once, to the same function by any thread
    from token_worker.request_decoding import decode  # noqa: PLC0415 - loaded when first used

    _decode_usual = decode
    return decode(payload)


_decode_usual: Callable[[bytes], UsualRequest] = _load_usual_decoder


def usual_token_request(payload: bytes) -> TokenRequest | None:
    """The usual request (see :meth:`TokenRequest.from_bytes`), checked, or None for any
    other body, valid or not (which ``from_bytes`` reads field by field and judges). The
    caller has checked the size. The decoder checks types, lengths and field names; what
    types cannot say (a blank id or secret, control characters) is checked here, every
    check of the field-by-field path being made by one or the other."""
    try:
        usual = _decode_usual(payload)
    except (ValueError, RecursionError):  # msgspec.DecodeError is a ValueError
        return None
    request_id = usual.request_id or ""
    client_id = usual.client_id
    scope = usual.scope
    secret = usual.client_secret
    if not client_id or client_id.isspace() or not secret or secret.isspace():
        return None  # invalid (blank: what strip() would empty): the other path says which
    if not (request_id.isprintable() and client_id.isprintable()
            and (scope is None or scope.isprintable())) and CONTROL.search(
                request_id + client_id + (scope or "")):
        return None  # printable text holds no control character: searched only if not
    if scope is not None:
        scope = normal_scope(scope)
    return _new_tuple(TokenRequest, (request_id, client_id, secret, scope,
                                     usual.timestamp or "", usual.skip_cache, (), None))


class NamedTokenRequest(NamedTuple):
    """A token request for a credential the worker holds (served on
    ``token.named.<credential>``): no ``client_id``, no secret on the wire. Unknown fields
    are ignored, as for :class:`TokenRequest`."""

    request_id: str
    scope: str | None = None
    """``None`` when the request names none (the credential's scope applies)."""
    skip_cache: bool = False
    timestamp: str = ""

    @classmethod
    def from_bytes(cls, payload: bytes, *, max_size: int) -> NamedTokenRequest:
        """Parse and validate one named request body, or raise :class:`InvalidRequest`.

        An empty body is a request with every field at its default."""
        if not payload.strip():
            return cls(request_id="")
        document = request_document(payload, max_size)
        try:
            return cls(request_id=request_id_field(document), scope=scope_field(document),
                       skip_cache=optional_flag(document, "skip_cache"),
                       timestamp=optional_text(document, "timestamp"))
        except ValueError as error:
            raise InvalidRequest(str(error), request_id=readable_request_id(document)
                                 ) from None

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {"request_id": self.request_id,
                                "timestamp": self.timestamp or now_rfc3339()}
        if self.scope is not None:
            body["scope"] = self.scope
        if self.skip_cache:
            body["skip_cache"] = True
        return orjson.dumps(body)


def peek_request_id(payload: bytes, *, max_size: int) -> str:
    """The request id of a payload if it has a readable one, else ""; never raises (for
    error replies to requests that were never parsed: overloaded, shutting down)."""
    if len(payload) > max_size:
        return ""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    return readable_request_id(document) if isinstance(document, dict) else ""


# --- replies ----------------------------------------------------------------------------

class TokenReply(NamedTuple):
    """A token for the requester, in the original's shape."""

    request_id: str
    access_token: str
    token_type: str
    expires_in: int
    """Seconds left when the reply was built."""
    scope: str = ""
    token_source: str = ""
    """``cache`` or ``idp``; omitted when empty."""
    credential: str | None = None
    """The named credential the token is for (named requests only); omitted when None."""
    timestamp: str = ""
    """When the reply was built (RFC 3339); empty: the moment it is encoded."""
    fetch_refused: str = ""
    """Why the fresh token asked for (``skip_cache``) was not fetched and a cached one is
    served instead (``rate_limited``); omitted when empty."""

    def __repr__(self) -> str:
        return (f"TokenReply(request_id={self.request_id!r}, token_type={self.token_type!r}, "
                f"expires_in={self.expires_in}, scope={self.scope!r}, "
                f"token_source={self.token_source!r}, access_token='********')")

    def to_bytes(self) -> bytes:
        return encode_token_reply(self.request_id, self.access_token, self.token_type,
                                  self.expires_in, scope=self.scope,
                                  token_source=self.token_source,
                                  credential=self.credential, timestamp=self.timestamp,
                                  fetch_refused=self.fetch_refused)

    @classmethod
    def from_bytes(cls, payload: bytes) -> TokenReply:
        """A token reply, strictly typed, or :class:`InvalidReply` (also for an error
        reply: use :func:`parse_reply` to accept both)."""
        reply = parse_reply(payload)
        if isinstance(reply, ErrorReply):
            raise InvalidReply(f"reply is an error: {reply.error_code}: {reply.error}")
        return reply

    @classmethod
    def _from_document(cls, document: dict[str, Any]) -> TokenReply:
        access_token = document.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise InvalidReply("reply field access_token must be a non-empty string")
        expires_in = document.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 0:
            raise InvalidReply("reply field expires_in must be a non-negative integer")
        credential = document.get("credential")
        if credential is not None and not isinstance(credential, str):
            raise InvalidReply("reply field credential must be a string")
        return cls(
            request_id=text_field(document, "request_id"),
            access_token=access_token,
            token_type=text_field(document, "token_type", required=True),
            expires_in=expires_in,
            scope=text_field(document, "scope"),
            token_source=text_field(document, "token_source"),
            credential=credential,
            timestamp=text_field(document, "timestamp"),
            fetch_refused=text_field(document, "fetch_refused"),
        )


def encode_token_reply(request_id: str, access_token: str, token_type: str, expires_in: int,
                       *, scope: str = "", token_source: str = "",
                       credential: str | None = None, timestamp: str = "",
                       fetch_refused: str = "") -> bytes:
    """:meth:`TokenReply.to_bytes` without building the tuple first: the worker's cache hits
    encode through here, one per request."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "access_token": access_token,
        "token_type": token_type,
        "expires_in": expires_in,
    }
    if scope:
        body["scope"] = scope
    if token_source:
        body["token_source"] = token_source
    if credential is not None:
        body["credential"] = credential
    if fetch_refused:
        body["fetch_refused"] = fetch_refused
    body["timestamp"] = timestamp or now_rfc3339()
    return orjson.dumps(body)


class TokenReplyParts:
    """A cached token's reply, prepared once: the bytes around what changes per request
    (``request_id``, ``expires_in``, ``credential``, ``timestamp``), so a cache hit costs
    one formatting instead of a JSON encoding. :meth:`encode` gives exactly the bytes
    :func:`encode_token_reply` gives for ``token_source`` ``cache``."""

    __slots__ = ("_after_expires", "_after_id")

    def __init__(self, access_token: str, token_type: str, scope: str) -> None:
        dumps = orjson.dumps
        self._after_id = b',"access_token":%s,"token_type":%s,"expires_in":' % (
            dumps(access_token), dumps(token_type))
        scope_part = b',"scope":%s' % dumps(scope) if scope else b""
        self._after_expires = scope_part + b',"token_source":"cache"'

    def __repr__(self) -> str:
        return "TokenReplyParts(access_token='********')"

    def encode(self, request_id: str, expires_in: int, credential: str | None) -> bytes:
        """The reply to ``request_id``, timestamped now."""
        named = b"" if credential is None else b',"credential":%s' % orjson.dumps(credential)
        return b'{"request_id":%s%s%d%s%s,"timestamp":"%s"}' % (
            orjson.dumps(request_id), self._after_id, expires_in, self._after_expires, named,
            now_rfc3339_bytes())


class ErrorReply(NamedTuple):
    """A request that got no token: a sentence in ``error`` and a code in ``error_code``."""

    request_id: str
    error: str
    """One sentence a person can act on (never a secret or a token)."""
    error_code: str
    """token-worker's own code (constants in this module) or the IdP's OAuth2 code."""
    error_description: str = ""
    """The IdP's ``error_description``, when it sent one; omitted when empty."""
    timestamp: str = ""
    retry_after: int | None = None
    """Whole seconds after which asking again may succeed, when the worker knows (a
    client's back-off or budget, a cool-down, a ``Retry-After``); omitted when None."""

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "error": self.error or self.error_code,
            "error_code": self.error_code,
        }
        if self.error_description:
            body["error_description"] = self.error_description
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        body["timestamp"] = self.timestamp or now_rfc3339()
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, payload: bytes) -> ErrorReply:
        reply = parse_reply(payload)
        if isinstance(reply, TokenReply):
            raise InvalidReply("reply is a token, not an error")
        return reply

    @classmethod
    def _from_document(cls, document: dict[str, Any]) -> ErrorReply:
        return cls(
            request_id=text_field(document, "request_id"),
            error=text_field(document, "error", required=True),
            # The original sent no error_code: a requester written for both reads "".
            error_code=text_field(document, "error_code"),
            error_description=text_field(document, "error_description"),
            timestamp=text_field(document, "timestamp"),
            retry_after=_retry_after(document),
        )


def retry_seconds(seconds: float | None) -> int | None:
    """A ``retry_after`` for a reply: whole seconds, rounded up, at least 1 (a requester
    asking again in 0 s would only be told the same), at most a day; None stays None."""
    if seconds is None:
        return None
    return min(LONGEST_RETRY_AFTER, max(1, math.ceil(seconds)))


def _retry_after(document: dict[str, Any]) -> int | None:
    value = document.get("retry_after")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidReply("reply field retry_after must be a non-negative integer")
    return value


def parse_reply(payload: bytes) -> TokenReply | ErrorReply:
    """A worker's reply: an :class:`ErrorReply` when ``error`` is set (the original also
    sent empty token fields with it), else a :class:`TokenReply`; :class:`InvalidReply`
    for anything else."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidReply("reply is not JSON") from None
    if not isinstance(document, dict):
        raise InvalidReply("reply is not a JSON object")
    if document.get("error"):
        return ErrorReply._from_document(document)
    return TokenReply._from_document(document)


def reply_from_document(document: dict[str, Any]) -> TokenReply | ErrorReply:
    """:func:`parse_reply` for a reply already decoded: a requester that matched the JSON
    object to its request first reads it once. :class:`InvalidReply` when it is neither."""
    if document.get("error"):
        return ErrorReply._from_document(document)
    return TokenReply._from_document(document)


def text_field(document: dict[str, Any], name: str, *, required: bool = False) -> str:
    """A string field of a decoded reply ('' when absent and not ``required``), or
    :class:`InvalidReply` naming it."""
    value = document.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidReply(f"reply field {name} must be a"
                           f"{' non-empty' if required else ''} string")
    return value



# --- shared helpers ---------------------------------------------------------------------

_NS_PER_SECOND = 1_000_000_000
_second_format: tuple[int, bytes] = (-1, b"")
"""The second being formatted: its first nanosecond, and the timestamp's bytes up to the
fraction with a ``%06d`` for the microseconds."""


def now_rfc3339() -> str:
    """The current UTC time in RFC 3339 with microseconds, as Go marshals ``time.Time``."""
    return now_rfc3339_bytes().decode()


def now_rfc3339_bytes(time_ns: Callable[[], int] = time.time_ns) -> bytes:
    """:func:`now_rfc3339` as the bytes a reply carries. Built for every reply, so the
    formatted second is reused until the clock leaves it (then, or if it steps back, the
    second is formatted again)."""
    global _second_format  # noqa: PLW0603 - a one-entry memo, replaced whole (thread-safe)
    now = time_ns()
    start, formatted = _second_format
    if not 0 <= now - start < _NS_PER_SECOND:
        start = now - now % _NS_PER_SECOND
        formatted = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(start // _NS_PER_SECOND)
                                  ).encode() + b"%06dZ"
        _second_format = (start, formatted)
    return formatted % ((now - start) // 1000)


def encode(body: dict[str, Any]) -> bytes:
    """A JSON body as compact UTF-8 bytes."""
    return orjson.dumps(body)


def decode(payload: bytes) -> Any:
    """A JSON body; raises ``ValueError`` for anything that is not JSON."""
    return orjson.loads(payload)
