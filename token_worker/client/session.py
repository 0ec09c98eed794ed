"""What a :class:`~token_worker.client.client.TokenClient` holds in one process, and what a
fork does to it.

A :class:`Session` is one process's share of a client: its NATS connection (with the
connection's reply space), the calls waiting on it (:class:`~token_worker.client.inbox.Inbox`),
the requester and the token cache. It belongs to the process that opened it.

A forked child (gunicorn ``--preload``, celery's prefork pool, ``multiprocessing`` with the
``fork`` start method) inherits the parent's session, socket included, but none of its
threads: requests it sent on that socket would be answered to the parent's reader thread,
and closing it (a finaliser at the child's exit) would shut the parent's socket down. So
a child never uses its parent's session. A client keeps its sessions in :class:`Sessions`,
which ``os.register_at_fork`` reaches: in the child, right after the fork, every live
client lets go of the parent's session (:meth:`Session.let_go`: its finaliser detached,
only the child's copies of the socket closed, no lock taken, nothing written, read or
shut down), and opens a session of its own on first use. A pid check on every use
catches a fork that ran no Python hooks.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from token_worker.client.inbox import Inbox
from token_worker.client.requester import Requester
from token_worker.config import NatsConfig
from token_worker.errors import ClientClosed, NatsUnavailable, ReconnectGaveUp
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.tokens.cache import TokenCache

__all__ = ["Opener", "Session", "Sessions", "open_session"]


@dataclass(frozen=True)
class Session:
    """One process's connection, waiting calls, requester and cache."""

    pid: int
    """The process that opened it: the only one that may use it."""
    connection: NatsConnection
    inbox: Inbox
    requester: Requester
    cache: TokenCache | None
    finalizer: weakref.finalize[[NatsConnection, Inbox], object]
    """Closes the connection when its client is closed or dropped."""

    @property
    def here(self) -> bool:
        """Whether this process opened it (else it is a parent's, seen from a child)."""
        return self.pid == os.getpid()

    def let_go(self) -> None:
        """In a forked child: forget the parent's session without touching it. Its
        finaliser never runs here, and the connection is only abandoned (this process's
        copies of the sockets closed; nothing written, read or shut down, no lock)."""
        self.finalizer.detach()
        self.connection.abandon()


def open_session(owner: object, closed: threading.Event, *, config: NatsConfig, name: str,
                 inbox_prefix: str, max_reply_size: int, timeout: float, retries: int,
                 new_cache: Callable[[], TokenCache | None]) -> Session:
    """Connect (one round over the servers) and build a session for this process; calls
    end with ``ClientClosed`` once ``closed`` is set, and its finaliser closes the
    connection when ``owner`` is dropped. Raises ``ReconnectGaveUp`` when no server
    answers."""

    def on_state(state: State) -> None:
        inbox.on_state(state)

    connection = NatsConnection(config, name, no_responders=True, first_connect_rounds=1,
                                inbox_prefix=inbox_prefix, on_state=on_state)
    inbox = Inbox(connection.replies, max_reply_size)
    connection.connect()
    return Session(
        pid=os.getpid(), connection=connection, inbox=inbox,
        requester=Requester(connection, inbox, closed, timeout=timeout, retries=retries),
        cache=new_cache(), finalizer=weakref.finalize(owner, shut, connection, inbox))


def shut(connection: NatsConnection, inbox: Inbox) -> None:
    """Close what a session owns; also run by its finaliser when its client is dropped
    unclosed."""
    inbox.close()
    connection.close()


Opener = Callable[[object, threading.Event], Session]
"""Opens a session for this process (:func:`open_session` with a client's settings)."""


class Sessions:
    """A client's session in each process that uses it: opened at once in the process that
    makes the client, on first use in a forked child. ``closed`` is the client's: once set,
    calls end with ``ClientClosed``, in this process and in children forked later."""

    def __init__(self, opener: Opener) -> None:
        self.closed = threading.Event()
        self._opener = opener
        self._opening: dict[int, threading.Lock] = {}
        """One lock per process: a lock held at a fork stays held in the child."""
        self._session: Session | None = opener(self, self.closed)
        _LIVE.add(self)

    def mine(self) -> Session | None:
        """This process's session, if it has opened one."""
        current = self._session
        return current if current is not None and current.here else None

    def here(self) -> Session:
        """This process's session; in a forked child, opened now (``NatsUnavailable`` when
        no server answers, ``ClientClosed`` after :meth:`close`)."""
        if (mine := self.mine()) is not None:
            return mine
        with self._opening.setdefault(os.getpid(), threading.Lock()):
            if (mine := self.mine()) is not None:
                return mine
            self.let_go_of_parent()
            if self.closed.is_set():
                raise ClientClosed("the TokenClient is closed")
            try:
                self._session = mine = self._opener(self, self.closed)
            except ReconnectGaveUp as error:
                raise NatsUnavailable(f"no NATS connection in this process: {error}"
                                      ) from None
            return mine

    def close(self) -> None:
        """Close this process's connection (never a parent's); calls end with
        ``ClientClosed``."""
        self.closed.set()
        if (mine := self.mine()) is not None:
            mine.finalizer()
        else:
            self.let_go_of_parent()

    def let_go_of_parent(self) -> None:
        """In a forked child: let go of the parent's session without touching it
        (:meth:`Session.let_go`). Run right after the fork (``os.register_at_fork``), or on
        first use when no hook ran."""
        current = self._session
        if current is None or current.here:
            return
        self._session = None
        current.let_go()
        closed = threading.Event()  # a fresh one: a parent's thread may have held its lock
        if self.closed.is_set():
            closed.set()
        self.closed = closed


_LIVE: weakref.WeakSet[Sessions] = weakref.WeakSet()
"""Every client's sessions, until the client is dropped."""


def _after_fork_in_child() -> None:
    for sessions in list(_LIVE):
        sessions.let_go_of_parent()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
