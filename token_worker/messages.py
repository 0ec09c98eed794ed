"""The wire contract: token requests and replies as JSON, compatible with the original.

A request is ``{"request_id", "client_id", "client_secret", "timestamp"}`` plus the optional
``scope`` and ``skip_cache``. A reply echoes ``request_id`` and carries either the token
fields or a human-readable ``error`` with a machine-readable ``error_code``. Parsing never
raises anything but :class:`InvalidRequest`, whatever bytes arrive.

JSON goes through orjson: every request is parsed and every reply encoded on the hot path,
where it is six times faster than the standard library, and it refuses what a token
request never is (invalid UTF-8, NaN, nesting deeper than 1024).
"""

from __future__ import annotations

import re
import time
from typing import Any, NamedTuple

import orjson

# Codes of token-worker's own (the IdP's OAuth2 codes pass through unchanged).
INVALID_REQUEST = "invalid_request"
IDP_UNAVAILABLE = "idp_unavailable"
IDP_TIMEOUT = "idp_timeout"
INTERNAL_ERROR = "internal_error"
OVERLOADED = "overloaded"

MAX_FIELD_LENGTH = 4096
"""Longest accepted value of any string field; longer is a bad request, not a big one."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidRequest(Exception):
    """A request that cannot be served; ``request_id`` is set when one could be read."""

    def __init__(self, message: str, *, request_id: str = "") -> None:
        self.request_id = request_id
        super().__init__(message)


class TokenRequest(NamedTuple):
    """A parsed, valid token request."""

    request_id: str
    client_id: str
    client_secret: str
    scope: str | None = None
    """``None`` when the request names none (the configured default applies)."""
    timestamp: str = ""
    skip_cache: bool = False
    """Ask the IdP even if a cached token would do (the original front end's field)."""

    def __repr__(self) -> str:
        return (f"TokenRequest(request_id={self.request_id!r}, client_id={self.client_id!r}, "
                f"scope={self.scope!r}, client_secret='********')")


def parse_request(payload: bytes, *, max_size: int) -> TokenRequest:
    """Parse and validate one request body, or raise :class:`InvalidRequest`."""
    if len(payload) > max_size:
        raise InvalidRequest(f"request is {len(payload)} bytes, the limit is {max_size}")
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidRequest("Invalid request format: not a JSON object") from None
    if not isinstance(document, dict):
        raise InvalidRequest("Invalid request format: not a JSON object")
    try:
        return TokenRequest(
            request_id=_required_text(document, "request_id"),
            client_id=_required_text(document, "client_id"),
            client_secret=_required_text(document, "client_secret", secret=True),
            scope=_scope(document),
            timestamp=_optional_text(document, "timestamp"),
            skip_cache=_optional_flag(document, "skip_cache"),
        )
    except ValueError as error:
        raise InvalidRequest(str(error), request_id=_readable_request_id(document)) from None


def peek_request_id(payload: bytes, *, max_size: int) -> str:
    """The request id of a payload if it has a readable one, else ""; never raises."""
    if len(payload) > max_size:
        return ""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    return _readable_request_id(document) if isinstance(document, dict) else ""


def _readable_request_id(document: dict[str, Any]) -> str:
    value = document.get("request_id")
    if isinstance(value, str) and len(value) <= MAX_FIELD_LENGTH:
        return value
    return ""


def _required_text(document: dict[str, Any], name: str, *, secret: bool = False) -> str:
    value = document.get(name)
    if value is None:
        raise ValueError(f"missing field {name}")
    if not isinstance(value, str):
        raise ValueError(f"field {name} must be a string, got {_json_type(value)}")
    if not value.strip():
        raise ValueError(f"field {name} must not be empty")
    if len(value) > MAX_FIELD_LENGTH:
        raise ValueError(f"field {name} is longer than {MAX_FIELD_LENGTH} characters")
    if not secret and _CONTROL.search(value):
        raise ValueError(f"field {name} must not contain control characters")
    return value


def _optional_text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH:
        raise ValueError(f"field {name} must be a string")
    return value


def _optional_flag(document: dict[str, Any], name: str) -> bool:
    value = document.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"field {name} must be true or false, got {_json_type(value)}")
    return value


def _scope(document: dict[str, Any]) -> str | None:
    """Accept a space-separated string or a list of strings; ``None`` when absent."""
    value = document.get("scope")
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = " ".join(value)
    if not isinstance(value, str):
        raise ValueError("field scope must be a string or a list of strings")
    if len(value) > MAX_FIELD_LENGTH or _CONTROL.search(value):
        raise ValueError("field scope is not a valid scope string")
    return " ".join(value.split())


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object"}
    return names.get(type(value), type(value).__name__)


_second_text: tuple[int, str] = (0, "")


def now_rfc3339() -> str:
    """The current UTC time in RFC 3339 with microseconds, as Go marshals ``time.Time``.

    Built for every reply, so the formatted second is reused until the clock moves on."""
    global _second_text  # noqa: PLW0603 - a one-entry memo, replaced whole (thread-safe)
    now = time.time()
    second = int(now)
    memo = _second_text
    if memo[0] != second:
        memo = _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{memo[1]}.{int((now - second) * 1_000_000):06d}Z"



_ERROR_CODE_FIELD = b'"error_code":"'


def error_code_of(reply: bytes) -> str:
    """The ``error_code`` of an encoded reply, "" for a success (a scan, not a parse: it
    runs for every reply, to count outcomes)."""
    start = reply.find(_ERROR_CODE_FIELD)
    if start < 0:
        return ""
    start += len(_ERROR_CODE_FIELD)
    end = reply.find(b'"', start)
    return reply[start:end].decode("utf-8", "replace") if end > start else "error"


def encode(body: dict[str, Any]) -> bytes:
    """A JSON body as compact UTF-8 bytes."""
    return orjson.dumps(body)


def decode(payload: bytes) -> Any:
    """A JSON body; raises ``ValueError`` for anything that is not JSON."""
    return orjson.loads(payload)


def token_reply(
    request_id: str,
    *,
    access_token: str,
    token_type: str,
    expires_in: int,
    scope: str = "",
    token_source: str = "",
) -> bytes:
    """A success reply, in the original's shape (``scope`` and ``token_source`` omitted
    when empty)."""
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
    body["timestamp"] = now_rfc3339()
    return orjson.dumps(body)


def error_reply(request_id: str, error_code: str, error: str, *, description: str = "") -> bytes:
    """An error reply: a non-empty ``error`` sentence and a machine-readable ``error_code``."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "error": error or error_code,
        "error_code": error_code,
    }
    if description:
        body["error_description"] = description
    body["timestamp"] = now_rfc3339()
    return orjson.dumps(body)
