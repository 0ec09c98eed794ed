"""Keep-alive and stale detection: PING a quiet server, and notice one that is gone.

A server that dies or is cut off without closing the TCP connection looks, to a blocked
reader, exactly like a quiet one. So a thread of its own looks at two clocks once per
tick: when the server was last heard from (PINGs go out after ``pingInterval`` of
silence, and ``maxPingsOut`` unanswered ones make the connection stale), and how long the
current write has been blocked (a peer that stopped reading fills the send buffers; a
write stuck for longer than ``pingInterval`` makes the connection stale too). This thread
never waits for the send lock, so a blocked write cannot hide a dead server.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

TICK = 1.0
"""Longest the keep-alive thread sleeps between looks at its clocks (no busy loop)."""


class Verdict(enum.Enum):
    """What one look at the clocks decides."""

    WAIT = "wait"
    PING = "ping"
    STALE = "stale"


def judge(now: float, *, last_heard: float, pings_out: int, write_started: float,
          ping_interval: float, max_pings_out: int) -> tuple[Verdict, str]:
    """The verdict for the clocks at ``now``, with the reason when stale."""
    if write_started and now - write_started > ping_interval:
        return Verdict.STALE, f"stale connection: a write blocked for {now - write_started:.1f} s"
    if now - last_heard < ping_interval:
        return Verdict.WAIT, ""
    if pings_out >= max_pings_out:
        return Verdict.STALE, f"stale connection: {pings_out} PINGs unanswered"
    return Verdict.PING, ""


class KeepAlive:
    """The clocks of one connection and the thread that watches them.

    The reader calls :meth:`heard` after every read; the send path sets ``write_started``
    around each write. ``ping`` must not block on a busy writer (it returns False when it
    could not send now); ``lose`` shuts the connection without the send lock.
    """

    def __init__(self, ping_interval: float, max_pings_out: int) -> None:
        self.ping_interval = ping_interval
        self.max_pings_out = max_pings_out
        self.last_heard = time.monotonic()
        self.pings_out = 0
        self.write_started = 0.0
        """``time.monotonic()`` when the write in progress began; 0 when none is."""

    def heard(self, now: float) -> None:
        """The server sent something: it is alive."""
        self.last_heard = now
        self.pings_out = 0

    def reset(self) -> None:
        """A new connection: every clock starts again."""
        self.heard(time.monotonic())
        self.write_started = 0.0

    def run(self, closing: threading.Event, connected: Callable[[], bool],
            ping: Callable[[], bool], lose: Callable[[str], None]) -> None:
        """The thread's loop, until ``closing`` is set."""
        tick = min(TICK, self.ping_interval)
        while not closing.wait(tick):
            if not connected():
                continue
            now = time.monotonic()
            verdict, reason = judge(now, last_heard=self.last_heard, pings_out=self.pings_out,
                                    write_started=self.write_started,
                                    ping_interval=self.ping_interval,
                                    max_pings_out=self.max_pings_out)
            if verdict is Verdict.STALE:
                lose(reason)
            elif verdict is Verdict.PING and ping():
                self.pings_out += 1
                self.last_heard = now
