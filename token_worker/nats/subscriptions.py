"""Subscriptions that outlive a socket: kept so every reconnect re-creates them, and
marked when the server refuses them.

Every SUB is followed by a PING, and a :class:`SubscribeCheck` waits in the PONG queue
for its PONG: the server has then processed the SUB (the subscription is *confirmed*; a
reconnect makes every subscription unconfirmed until its re-sent SUB is). A refusal is a
``-ERR`` permissions violation, at subscribe time or after a config reload that took the
permission away (:func:`refused_by` reads which subscriptions it names). A refused
subscription receives nothing; a reconnect re-subscribes it, and its check clears the mark
once the PING round trip passed with no new refusal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from token_worker.nats.protocol import Message

__all__ = ["MessageCallback", "RefusedCallback", "SubscribeCheck", "Subscription",
           "refused_by"]

_SUB_REFUSED = re.compile(
    r'Permissions Violation for Subscription to "(?P<subject>[^"]*)"'
    r'(?: using queue "(?P<queue>[^"]*)")?(?: \(sid "(?P<sid>[^"]*)"\))?', re.IGNORECASE)
"""nats-server's refusal of a SUB: at subscribe time, and after a config reload that took
the permission away (then with the ``sid``), e.g.
``Permissions Violation for Subscription to "token.request" using queue "q" (sid "1")``."""

MessageCallback = Callable[[Message], None]


@dataclass
class Subscription:
    """A subscription; kept so it can be re-created after every reconnect."""

    sid: int
    subject: str
    queue: str
    callback: MessageCallback
    refused: bool = False
    """The server refused it (a ``-ERR`` permissions violation, at subscribe time or after
    a config reload): no message comes. Cleared when a reconnect re-subscribes and no
    refusal comes within a PING round trip."""
    refusals: int = 0
    """How many ``-ERR`` refusals named it so far."""
    confirmed: bool = False
    """The server has processed its SUB on the current socket (the PONG of a PING sent
    after it came back); false again from every reconnect until the re-sent SUB is."""


RefusedCallback = Callable[[Subscription, str], None]
"""Called (on the reader thread) with a subscription the server refused and its text."""


class SubscribeCheck:
    """Waits, in the PONG queue, for the PONG after SUBs (a subscribe, or a reconnect's
    re-sent subscriptions): the server has then processed them, and a subscription not
    refused by then is served."""

    def __init__(self, subscriptions: list[Subscription]) -> None:
        self.subscriptions = [(sub, sub.refusals) for sub in subscriptions]

    def confirmed(self) -> None:
        """The PONG came: every subscription is confirmed, and served unless refused
        since its SUB."""
        for sub, refusals in self.subscriptions:
            sub.confirmed = True
            if sub.refusals == refusals:
                sub.refused = False


def refused_by(text: str, subscriptions: list[Subscription]) -> list[Subscription]:
    """The subscriptions a ``-ERR`` text refuses: none unless it is a subscription
    permissions violation; by ``sid`` when it names one (after a reload), else every one
    with that subject (and queue, when it names one)."""
    match = _SUB_REFUSED.search(text)
    if match is None:
        return []
    sid = match["sid"]
    if sid is not None:
        return [s for s in subscriptions if str(s.sid) == sid]
    queue = match["queue"]
    return [s for s in subscriptions if s.subject == match["subject"]
            and (queue is None or s.queue == queue)]
