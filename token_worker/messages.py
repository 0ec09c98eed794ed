"""Superseded by :mod:`token_worker.wire`; kept as a thin re-export for the modules that
still import it (``client.py``, ``health.py``). New code imports ``token_worker.wire``."""

from __future__ import annotations

from token_worker.wire import (
    IDP_BAD_RESPONSE,
    IDP_TIMEOUT,
    IDP_UNAVAILABLE,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_FIELD_LENGTH,
    OVERLOADED,
    SHUTTING_DOWN,
    TOKEN_TOO_LARGE,
    ErrorReply,
    InvalidRequest,
    TokenReply,
    TokenRequest,
    decode,
    encode,
    now_rfc3339,
    peek_request_id,
)

__all__ = [
    "IDP_BAD_RESPONSE",
    "IDP_TIMEOUT",
    "IDP_UNAVAILABLE",
    "INTERNAL_ERROR",
    "INVALID_REQUEST",
    "MAX_FIELD_LENGTH",
    "OVERLOADED",
    "SHUTTING_DOWN",
    "TOKEN_TOO_LARGE",
    "ErrorReply",
    "InvalidRequest",
    "TokenReply",
    "TokenRequest",
    "decode",
    "encode",
    "now_rfc3339",
    "parse_request",
    "peek_request_id",
]


def parse_request(payload: bytes, *, max_size: int) -> TokenRequest:
    """Parse and validate one request body, or raise :class:`InvalidRequest`."""
    return TokenRequest.from_bytes(payload, max_size=max_size)
