"""The usual token request as msgspec decodes it: one C call that reads the JSON, checks
each field's type and length, and refuses any field the contract does not name.

:mod:`token_worker.wire` loads this module on the first request it parses, so a requester
(which builds requests and never parses one) never loads msgspec. Whatever the decoder
refuses is read by :mod:`token_worker.wire`'s field-by-field path, which says what is
wrong; the checks types cannot express (a blank id, control characters) are made there.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from token_worker.fields import MAX_FIELD_LENGTH

__all__ = ["UsualRequest", "decode"]

Bounded = Annotated[str, msgspec.Meta(max_length=MAX_FIELD_LENGTH)]


class UsualRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """Only the contract's fields, each of its type and at most ``MAX_FIELD_LENGTH``
    characters (anything else, such as an unknown field, a ``resource`` or a scope list,
    fails to decode)."""

    client_id: Bounded
    client_secret: Bounded
    request_id: Bounded | None = None
    scope: Bounded | None = None
    timestamp: Bounded | None = None
    skip_cache: bool = False


decode = msgspec.json.Decoder(UsualRequest).decode
"""Bytes to :class:`UsualRequest`; raises ``msgspec.DecodeError`` (a ``ValueError``)."""
