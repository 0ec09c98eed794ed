"""The request's JSON fields, read strictly: types, bounds, no control characters.

The readers :mod:`token_worker.wire` builds its requests with, each raising ``ValueError``
with a sentence that names the field (the request then gets an ``invalid_request`` reply
saying it): strings where strings belong, at most :data:`MAX_FIELD_LENGTH` characters, no
character that could forge or reorder a log line (:data:`CONTROL`), scopes as a string or a
list, resources as a string or a bounded list. A body that is not a JSON object within the
size limit is an :class:`~token_worker.errors.InvalidRequest` before any field is read.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

from token_worker.errors import InvalidRequest

MAX_FIELD_LENGTH = 4096
"""Longest accepted value of any request string field; longer is a bad request."""
MAX_RESOURCES = 16
"""Most ``resource`` indicators one request may name."""
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""C0, DEL and C1 controls (U+0085 is a line break), the Unicode line and paragraph
separators and the bidi overrides: a reader splitting on Unicode line breaks, or a
terminal, would see a forged or reordered log line in them."""


@functools.lru_cache(maxsize=1024)
def normal_scope(scope: str) -> str:
    """Scopes separated by single spaces; memoised, as a fleet asks for few scopes."""
    return " ".join(scope.split())


def request_document(payload: bytes, max_size: int) -> dict[str, Any]:
    if len(payload) > max_size:
        raise InvalidRequest(f"request is {len(payload)} bytes, the limit is {max_size}")
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidRequest("Invalid request format: not a JSON object") from None
    if not isinstance(document, dict):
        raise InvalidRequest("Invalid request format: not a JSON object")
    return document


def readable_request_id(document: dict[str, Any]) -> str:
    value = document.get("request_id")
    if isinstance(value, str) and len(value) <= MAX_FIELD_LENGTH:
        return value
    return ""


def request_id_field(document: dict[str, Any]) -> str:
    """Optional, as the original had it: absent (or null) is served as ""."""
    value = document.get("request_id")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field request_id must be a string, got {json_type(value)}")
    if len(value) > MAX_FIELD_LENGTH:
        raise ValueError(f"field request_id is longer than {MAX_FIELD_LENGTH} characters")
    if CONTROL.search(value):
        raise ValueError("field request_id must not contain control characters")
    return value


def required_text(document: dict[str, Any], name: str, *, secret: bool = False) -> str:
    value = document.get(name)
    if value is None:
        raise ValueError(f"missing field {name}")
    if not isinstance(value, str):
        raise ValueError(f"field {name} must be a string, got {json_type(value)}")
    if not value.strip():
        raise ValueError(f"field {name} must not be empty")
    if len(value) > MAX_FIELD_LENGTH:
        raise ValueError(f"field {name} is longer than {MAX_FIELD_LENGTH} characters")
    if not secret and CONTROL.search(value):
        raise ValueError(f"field {name} must not contain control characters")
    return value


def optional_text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_FIELD_LENGTH:
        raise ValueError(f"field {name} must be a string")
    return value


def optional_flag(document: dict[str, Any], name: str) -> bool:
    value = document.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"field {name} must be true or false, got {json_type(value)}")
    return value


def scope_field(document: dict[str, Any]) -> str | None:
    """Accept a space-separated string or a list of strings; ``None`` when absent."""
    value = document.get("scope")
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = " ".join(value)
    if not isinstance(value, str):
        raise ValueError("field scope must be a string or a list of strings")
    if len(value) > MAX_FIELD_LENGTH or CONTROL.search(value):
        raise ValueError("field scope is not a valid scope string")
    return normal_scope(value)


def resource_field(document: dict[str, Any]) -> tuple[str, ...]:
    """``resource``: a string or a list of strings, each one line, bounded (whether each
    is an absolute URI is checked where the grant is made)."""
    value = document.get("resource")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or len(items) > MAX_RESOURCES or not all(
            isinstance(item, str) and item and len(item) <= MAX_FIELD_LENGTH
            and not CONTROL.search(item) for item in items):
        raise ValueError(f"field resource must be a non-empty string or a list of at most "
                         f"{MAX_RESOURCES} such strings")
    return tuple(items)


def audience_field(document: dict[str, Any]) -> str | None:
    value = document.get("audience")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD_LENGTH or (
            CONTROL.search(value)):
        raise ValueError("field audience must be a non-empty string without control "
                         "characters")
    return value


def json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
             dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)
