"""Signal plumbing for :meth:`TokenWorker.run <token_worker.serve.worker.TokenWorker.run>`:
a self-pipe the main thread sleeps on, and handlers that only count.

SIGTERM and SIGINT drain the worker (a second one stops it at once). SIGHUP never stops
it: the main thread reloads what can change without a restart (the credentials
directory, read again at once) and logs ``signal received`` either way.

A signal handler takes no lock, logs nothing and sets no Event: the interrupted main
thread may hold any of them. :class:`SignalCatcher`'s handler records the signal in plain
ints, and the byte that ``signal.set_wakeup_fd`` writes (at C level) wakes the main thread
from :meth:`Wakeup.wait`; the main thread then acts on what was recorded
(:meth:`SignalCatcher.take`). Other threads wake it with :meth:`Wakeup.notify`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

from token_worker.serve.credentials import CredentialStore

__all__ = ["SignalCatcher", "Wakeup", "reload_on_hangup"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that drain a worker (the second one stops it at once)."""
RELOAD_SIGNAL = signal.SIGHUP
"""The signal that reloads what can be reloaded without a restart; it never stops."""


class Wakeup:
    """A self-pipe the main thread sleeps on. Signals write to it at C level
    (``signal.set_wakeup_fd``); other threads through :meth:`notify`."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    def notify(self) -> None:
        """Wake the sleeper (never from a signal handler: this takes a lock)."""
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # full: it will wake anyway
                    os.write(self.write_fd, b"\0")

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout``; empty the pipe."""
        select.select([self.read_fd], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 512):
                pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.read_fd)
                os.close(self.write_fd)


class SignalCatcher:
    """Counts SIGTERM and SIGINT, and apart from them SIGHUP, while :meth:`installed`;
    :meth:`take` and :meth:`take_reloads` hand the main thread the ones it has not acted on
    yet."""

    def __init__(self) -> None:
        self.received = 0
        """Stop signals; written by the signal handler only (a plain int: no lock in a
        handler)."""
        self.last = 0
        """The number of the last stop signal received."""
        self.reloads = 0
        """SIGHUPs received; written by the signal handler only."""
        self._acted_on = 0
        self._reloads_acted_on = 0

    @property
    def last_name(self) -> str:
        """The name of the last signal received (``SIGTERM``)."""
        return signal.Signals(self.last).name

    def take(self) -> Iterator[int]:
        """For each signal received and not acted on yet: how many have been acted on,
        this one included (1 for the first: a warm stop; more: stop at once)."""
        received = self.received
        while self._acted_on < received:
            self._acted_on += 1
            yield self._acted_on

    def act(self, *, stop: Callable[[], None], credentials: CredentialStore | None) -> None:
        """On the main thread, after the handler recorded a signal: log it; SIGHUP reloads
        (:func:`reload_on_hangup`), a stop signal calls ``stop`` (a warm stop the first
        time, at once the second)."""
        if self.take_reloads():
            reload_on_hangup(credentials)
        for count in self.take():
            name = self.last_name
            if count == 1:
                log.info("signal received", extra={"signal": name})
            else:
                log.info("signal received again: stopping at once", extra={"signal": name})
            stop()

    def take_reloads(self) -> int:
        """How many SIGHUPs came since the last call (acted on once: one reload does)."""
        received = self.reloads
        count, self._reloads_acted_on = received - self._reloads_acted_on, received
        return count

    @contextlib.contextmanager
    def installed(self, enabled: bool, wakeup: Wakeup) -> Iterator[None]:
        """Catch the stop signals and SIGHUP for the block (only on the main thread, and
        only when ``enabled``), waking ``wakeup``; the previous handlers come back after
        it."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            # No lock, no logging, no Event: the interrupted main thread may hold any of
            # them. The C-level handler already wrote the wake-up byte.
            if signum == RELOAD_SIGNAL:
                self.reloads += 1
                return
            self.last = signum
            self.received += 1

        previous_fd = signal.set_wakeup_fd(wakeup.write_fd, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, on_signal)
                    for sig in (*STOP_SIGNALS, RELOAD_SIGNAL)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)


def reload_on_hangup(credentials: CredentialStore | None) -> None:
    """What SIGHUP does, on the main thread: reload what can change without a restart, the
    credentials directory (read at once; it is also read every second). Every other
    setting is read at start only. Logged either way; never stops the worker nor touches
    a request."""
    log.info("signal received", extra={
        "signal": RELOAD_SIGNAL.name, "action": "reloading the credentials directory"
        if credentials else "nothing to reload (settings are read at start)"})
    if credentials is None:
        return
    try:
        changed = credentials.reload()
    except Exception:  # the previous credentials stay, and so does the worker
        log.exception("credentials reload failed")
        return
    log.info("credentials reloaded", extra={"changed": changed,
                                             "credentials": credentials.names()})
