"""What a requester does after an attempt failed: the outcomes, and the pause before the next.

Retries follow what happened: "no worker subscribed" (the server's 503) is retried with
back-off for as long as one attempt may wait for an answer (``timeout``, within the budget:
a worker restart is bridged, a fleet that is gone is reported without using the whole
budget); a lost NATS connection is retried with back-off for the whole budget; an attempt
that got no answer counts against ``retries`` and is tried again at once when a forged
reply was dropped (the genuine one may have gone to a rogue). A worker that turns the
request away answers at once, so it is asked again within the budget: ``shutting_down``
(that worker stops; another replica answers) at once, ``overloaded`` after a short
jittered back-off; neither counts against ``retries``.

The outcomes are internal: :class:`~token_worker.client.client.TokenClient` turns the last one
into a public :class:`~token_worker.errors.TokenRequestFailed`.
"""

from __future__ import annotations

import random
import time
from typing import Any

BACKOFF_FIRST = 0.05
"""First pause before asking again when no worker is subscribed or NATS is away."""
BACKOFF_MAX = 1.0
"""Longest pause between such attempts (they go on for the whole budget)."""


class AttemptFailed(Exception):
    """An attempt ended without a believable reply."""


class NoResponders(AttemptFailed):
    """The server said nobody is subscribed (retried with back-off for one ``timeout``)."""


class ConnectionLost(AttemptFailed):
    """NATS is away (retried with back-off for the whole budget)."""


class Unanswered(AttemptFailed):
    """No genuine reply within the attempt's timeout (counts against ``retries``)."""

    def __init__(self, message: str, *, dropped: int) -> None:
        self.dropped = dropped
        """Replies dropped as not genuine during the attempt: retry at once."""
        super().__init__(message)


class TurnedAway(AttemptFailed):
    """A genuine worker answered that it did not serve the request: ask again. ``reply`` is
    that answer, handed to the caller when no further attempt fits the budget."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply
        super().__init__(f"worker answered {reply.get('error_code')}: {reply.get('error')}")


class ShuttingDown(TurnedAway):
    """The worker stops and did not start the request: another replica answers, at once."""


class Overloaded(TurnedAway):
    """Every handler of the worker was busy: ask again after a short jittered back-off."""


class BudgetSpent(Exception):
    """No time is left for another attempt (the previous outcome says why)."""


class RetryPolicy:
    """What one call does after an attempt failed: the pause before the next attempt, or
    None when the call ends.

    An attempt with no answer counts against ``retries`` (tried again at once when a forged
    reply was dropped). "No worker subscribed" and a lost connection cost nothing and are
    retried with exponential back-off (jittered, at most ``BACKOFF_MAX``, each on its own);
    "no worker" for at most ``timeout`` from the first such answer, a lost connection for
    the whole budget (a reconnect ends its pause early). A worker turning the request away
    is asked again for the whole budget: ``shutting_down`` at once the first time (then with
    back-off, should every replica be stopping), ``overloaded`` with back-off.
    ``retries=0``: nothing is retried.
    """

    def __init__(self, retries: int, timeout: float) -> None:
        self._retries = retries
        self._timeout = timeout
        self._unanswered = 0
        self._pauses: dict[type[AttemptFailed], float] = {}
        self._nobody_since = 0.0

    def pause_after(self, outcome: AttemptFailed) -> float | None:
        """Seconds to wait before the next attempt, or None: no further attempt."""
        if self._retries == 0:
            return None
        if isinstance(outcome, (Unanswered, TurnedAway)):
            self._nobody_since = 0.0  # someone is subscribed: a later 503 starts afresh
            self._pauses.pop(NoResponders, None)
        if isinstance(outcome, Unanswered):
            self._unanswered += 1
            if self._unanswered > self._retries:
                return None
            return 0.0 if outcome.dropped else random.uniform(0, BACKOFF_FIRST)  # noqa: S311
        if isinstance(outcome, ShuttingDown) and ShuttingDown not in self._pauses:
            self._pauses[ShuttingDown] = BACKOFF_FIRST
            return 0.0
        pause = self._pauses.get(type(outcome), BACKOFF_FIRST)
        self._pauses[type(outcome)] = min(pause * 2, BACKOFF_MAX)
        delay = random.uniform(pause / 2, pause)  # noqa: S311 - jitter only
        if isinstance(outcome, NoResponders):
            return self._within_nobody_window(delay)
        return delay

    def _within_nobody_window(self, delay: float) -> float | None:
        """"No worker" is asked again for one ``timeout`` from its first answer: the pause,
        cut so the last attempt comes at the window's end, or None once it is spent."""
        now = time.monotonic()
        self._nobody_since = self._nobody_since or now
        left = self._nobody_since + self._timeout - now
        return min(delay, left) if left > 0 else None
