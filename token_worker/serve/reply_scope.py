"""Where replies may go: the worker answers only literal reply subjects under
``replySubjects`` (default ``_INBOX.>``).

A requester names the subject its reply goes to, and NATS's ``allow_responses`` lets the
worker publish to whatever a request named. Without this bound a requester allowed to ask
for its own token could have it published to a JetStream stream, a JetStream API subject
or a subject another role reads, with a ``request_id`` of its choosing; a wildcard reply
subject would reach every inbox it matches at once.
"""

from __future__ import annotations

from token_worker.nats.protocol import holds_separator

__all__ = ["reply_allowed", "reply_prefixes"]


def reply_prefixes(patterns: tuple[str, ...]) -> tuple[str, ...] | None:
    """What a reply subject must start with under ``replySubjects`` (``_INBOX.>`` gives
    ``_INBOX.``), or None when ``>`` lets replies go anywhere. A requester names the
    subject its reply goes to; without this bound it could make the worker publish a token
    (and a ``request_id`` of its choosing) to any subject the worker may publish to, such
    as a stream's or another service's."""
    if ">" in patterns:
        return None
    return tuple(pattern[:-1] for pattern in patterns)


def reply_allowed(reply: str, prefixes: tuple[str, ...] | None) -> bool:
    """Whether a reply may be sent to ``reply``: under ``prefixes`` (None: anywhere) and a
    literal subject. A reply subject with a wildcard token (``_INBOX.>``) would reach every
    subscriber it matches at once, one with an empty token nobody; one with a tab, CR or LF
    in it (a server may pass a bare CR on) would be read as another subject, or break the
    stream, by whoever parses the PUB. No NATS library makes any of them."""
    if prefixes is not None and not reply.startswith(prefixes):
        return False
    return not ("*" in reply or ">" in reply or ".." in reply or reply.endswith(".")
                or holds_separator(reply))
