"""Fakes for the unit layer (the real-server suite may use them too): stand-ins with the
product's interfaces, no server, no network, no sleeping.

- :class:`Clock`: wall and monotonic time, moved by hand;
- :class:`FakeIssuer`: the one fake IdP, an :class:`~token_worker.tokens.model.Issuer`;
- :class:`HeldExecutor`: an executor whose tasks run when the test says (refreshes);
- :class:`HeldWork`: the worker's pool without threads, run when the test says;
- :class:`ManualTimers`: timers fired by hand;
- :class:`MemoryKeyValue`: a JetStream KV bucket in memory;
- :class:`StubConnection`: a NATS connection with no server, for the worker.

Nothing here imports nats-py or starts a process.
"""

from __future__ import annotations

import contextlib
import math
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any

import pytest

from token_worker.errors import KvError, KvUnavailable, NotConnected, NoToken, PayloadTooLarge
from token_worker.nats.kv import (
    DEL,
    PUT,
    BucketInfo,
    Entry,
    Watch,
    check_key,
    ttl_header,
    wait_for_value,
)
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.nats.subscriptions import Subscription
from token_worker.tokens.grant import Grant
from token_worker.tokens.model import IssuedToken

# --- time ---------------------------------------------------------------------------------


class Clock:
    """The wall clock tokens expire on and the monotonic one leases, retries and rate
    limits wait on, both moved by hand with :meth:`advance`. Pass :meth:`time` (or the
    clock itself) where ``time.time`` is expected, :meth:`monotonic` for
    ``time.monotonic``."""

    def __init__(self, wall: float = 1_800_000_000.0, mono: float = 1000.0) -> None:
        self.wall = wall
        self.mono = mono

    def time(self) -> float:
        return self.wall

    __call__ = time

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


# --- the identity provider ------------------------------------------------------------------


class FakeIssuer:
    """The one fake IdP: what the broker asks of ``ResilientIdp`` (the
    :class:`~token_worker.tokens.model.Issuer` protocol), with no HTTP.

    Each call issues ``token-<N>`` (``token-for-<client id>-<N>`` with ``name_client``),
    living ``expires_in`` seconds from ``issued_at()`` (the wall clock by default), or
    raises ``error`` when one is set. Every call is recorded: ``calls`` counts them,
    ``sent`` holds (client id, secret, scope, auth method), ``deadlines`` the deadline each
    was given. ``entered`` is set when a call starts; while ``gate`` is set to an Event,
    calls wait for it (up to 10 s) before they answer.
    """

    token_url = known_token_url = "https://idp.test/token"

    def __init__(self, *, expires_in: int = 300, issued_at: Callable[[], float] = time.time,
                 error: Exception | None = None, name_client: bool = False) -> None:
        self.expires_in = expires_in
        self.issued_at = issued_at
        self.error = error
        self.name_client = name_client
        self.failing_fast = False
        self.refused: dict[str, NoToken] = {}
        """Client id -> the refusal :meth:`refusal` gives for it (a circuit, a hold)."""
        self.need = 0.0
        """What :meth:`time_needed` says a fetch needs."""
        self.calls = 0
        self.sent: list[tuple[str, str, str, str | None]] = []
        self.grants: list[Grant | None] = []
        """The grant each call was given (None for a secret method's)."""
        self.deadlines: list[float | None] = []
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def refusal(self, client_id: str) -> NoToken | None:
        return self.refused.get(client_id)

    def time_needed(self) -> float:
        return self.need

    def fetch_token(self, client_id: str, client_secret: str, scope: str, *,
                    deadline: float | None = None, auth_method: str | None = None,
                    grant: Grant | None = None) -> IssuedToken:
        with self._lock:
            self.calls += 1
            number = self.calls
            self.sent.append((client_id, client_secret, scope, auth_method))
            self.grants.append(grant)
            self.deadlines.append(deadline)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        text = f"token-for-{client_id}-{number}" if self.name_client else f"token-{number}"
        return IssuedToken(text, "Bearer", self.expires_in, scope, self.issued_at())


class HeldExecutor(Executor):
    """Holds what is submitted (the broker's background refreshes) until the test runs it:
    :meth:`run_all`, or :meth:`run_due` for the tasks submitted at least ``latency``
    seconds before ``now`` on ``clock`` (the moment each was submitted)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.queued: list[tuple[float, Any, tuple[Any, ...]]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.queued.append((self.clock(), fn, args))
        return Future()

    def run_due(self, now: float, latency: float) -> int:
        due = [task for task in self.queued if task[0] + latency <= now]
        self.queued = [task for task in self.queued if task not in due]
        for _, fn, args in due:
            fn(*args)
        return len(due)

    def run_all(self) -> int:
        tasks, self.queued = self.queued, []
        for _, fn, args in tasks:
            fn(*args)
        return len(tasks)


class HeldWork:
    """The worker's pool without threads: what is submitted waits until the test runs it
    (:meth:`run_all`, :meth:`run_next`); ``capacity`` bounds it as the pool's backlog does,
    and :meth:`close` drops what was never run, as the pool does at a stop."""

    def __init__(self, capacity: int = 1000, workers: int = 4, *,
                 at_once: bool = False) -> None:
        self.capacity = capacity
        self.workers = workers
        self.at_once = at_once
        """Run each task as it is submitted (a pool with a free thread), for tests that ask
        with ``fetch``; the tasks it submits in turn run then too."""
        self.closed = False
        self.tasks: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self.submitted = 0

    def try_submit(self, run: Callable[[], None], drop: Callable[[], None]) -> bool:
        if self.closed or len(self.tasks) >= self.capacity:
            return False
        self.tasks.append((run, drop))
        self.submitted += 1
        if self.at_once:
            self.run_all()
        return True

    def run_next(self) -> None:
        run, _ = self.tasks.pop(0)
        run()

    def run_all(self) -> int:
        """Run every task, including those the tasks submit; how many ran."""
        ran = 0
        while self.tasks:
            self.run_next()
            ran += 1
        return ran

    def close(self) -> None:
        self.closed = True
        tasks, self.tasks = self.tasks, []
        for _, drop in tasks:
            drop()


class ManualTimers:
    """Timers that fire when the test says (:meth:`fire_due` at a moment of its clock)."""

    def __init__(self) -> None:
        self.pending: list[list[Any]] = []

    def call_at(self, when: float, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(self, [when, callback])
        self.pending.append(timer.entry)
        return timer

    def fire_due(self, now: float) -> int:
        due = [entry for entry in self.pending if entry[0] <= now]
        self.pending = [entry for entry in self.pending if entry[0] > now]
        for _, callback in due:
            callback()
        return len(due)


class _ManualTimer:
    def __init__(self, timers: ManualTimers, entry: list[Any]) -> None:
        self._timers = timers
        self.entry = entry

    def cancel(self) -> None:
        if self.entry in self._timers.pending:
            self._timers.pending.remove(self.entry)


# --- a JetStream KV bucket in memory ------------------------------------------------------


class _MemoryWatch:
    def __init__(self, pattern: str, on_entry: Callable[[Entry], None]) -> None:
        self._pattern = re.compile("^" + re.escape(pattern).replace(r"\*", r"[^.]+")
                                   .replace(r"\>", ".+") + "$")
        self._on_entry = on_entry
        self._close: Callable[[_MemoryWatch], None] | None = None

    def offer(self, entry: Entry) -> None:
        if self._pattern.match(entry.key):
            self._on_entry(Entry(entry.key, entry.value, 0, entry.operation))

    def close(self) -> None:
        if self._close is not None:
            self._close(self)


class _QueuedWatch:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Entry] = queue.SimpleQueue()

    def next(self, timeout: float) -> Entry | None:
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None


class MemoryKeyValue:
    """:class:`KeyValue`'s behaviour in memory (history 1, TTLs on ``clock``, the time a
    value was stored on ``wall``); ``fail`` set to an error makes every call raise it, as a
    broken JetStream would; :meth:`drop_bucket` plays a deleted stream (every call answers
    no responders until ``ensure_bucket`` makes it again). Watchers are told of a change
    after the store's lock is released, as the reader thread tells them."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall = wall
        self._entries: dict[str, tuple[Entry, float | None]] = {}
        self._watches: list[_MemoryWatch] = []
        self._lock = threading.Lock()
        self._sequence = 0
        self._missing = False
        self.fail: KvError | None = None
        self.calls = 0
        self.created = 0
        """Times ``ensure_bucket`` made the bucket."""

    def ensure_bucket(self, *, history: int = 1, max_age: float = 0.0, replicas: int = 1,
                      allow_msg_ttl: bool = True) -> BucketInfo:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        created = self._missing or self.created == 0
        if created:
            self._missing = False
            self.created += 1
        return BucketInfo("memory", history, max_age, replicas, allow_msg_ttl, True,
                          len(self._entries), created=created)

    def drop_bucket(self) -> None:
        """The stream is deleted: its values are gone, and nobody answers for it."""
        with self._lock:
            self._entries.clear()
            self._missing = True

    def raw(self, key: str) -> Entry | None:
        """The key's last message, markers included (for tests to look at what is stored)."""
        with self._lock:
            return self._live(key)

    def plant(self, key: str, value: bytes, *, ttl: float | None = None,
              stored_at: float | None = None) -> int:
        """Store as another writer would, TTL or none, at a given moment (a squatted lease)."""
        with self._lock:
            sequence, _ = self._store_locked(check_key(key), value, PUT, ttl, stored_at)
        return sequence

    @property
    def watching(self) -> int:
        """Watches open now (a test waits for a waiter to be watching)."""
        with self._lock:
            return len(self._watches)

    def stored_keys(self) -> list[str]:
        """The keys that hold something (values or markers) now."""
        with self._lock:
            return [key for key in list(self._entries) if self._live(key) is not None]

    def get(self, key: str, *, latest: bool = False) -> Entry | None:
        self._enter()
        with self._lock:
            entry = self._live(check_key(key))
        return entry if entry is not None and entry.operation == PUT else None

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        self._enter()
        return self._store(check_key(key), value, PUT, ttl)

    def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int | None:
        self._enter()
        with self._lock:
            last = self._live(check_key(key))
            if last is not None and last.operation == PUT:
                return None
            sequence, entry = self._store_locked(key, value, PUT, ttl)
        self._notify(entry)
        return sequence

    def update(self, key: str, value: bytes, *, last_revision: int,
               ttl: float | None = None) -> int | None:
        self._enter()
        with self._lock:
            last = self._live(check_key(key))
            if (last.revision if last else 0) != last_revision:
                return None
            sequence, entry = self._store_locked(key, value, PUT, ttl)
        self._notify(entry)
        return sequence

    def delete(self, key: str, *, last_revision: int | None = None) -> int | None:
        self._enter()
        with self._lock:
            last = self._live(check_key(key))
            if last_revision is not None and (last.revision if last else 0) != last_revision:
                return None
            sequence, entry = self._store_locked(key, b"", DEL, None)
        self._notify(entry)
        return sequence

    @contextmanager
    def watch(self, pattern: str) -> Iterator[Watch]:
        queued = _QueuedWatch()
        watch = self.watch_each(pattern, queued._queue.put)
        try:
            yield queued
        finally:
            watch.close()

    def watch_each(self, pattern: str, on_entry: Callable[[Entry], None]) -> _MemoryWatch:
        self._enter()
        watch = _MemoryWatch(pattern, on_entry)
        watch._close = self._unwatch
        with self._lock:
            self._watches.append(watch)
        return watch

    def wait_for(self, key: str, timeout: float, *, after: int = 0) -> Entry | None:
        return wait_for_value(self, key, timeout, after)

    def _unwatch(self, watch: _MemoryWatch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def _enter(self) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self._missing:
            raise KvUnavailable("no responders: the stream is gone")

    def _live(self, key: str) -> Entry | None:
        held = self._entries.get(key)
        if held is None:
            return None
        entry, dies_at = held
        if dies_at is not None and self._clock() >= dies_at:
            del self._entries[key]
            return None
        return entry

    def _store(self, key: str, value: bytes, operation: str, ttl: float | None) -> int:
        with self._lock:
            sequence, entry = self._store_locked(key, value, operation, ttl)
        self._notify(entry)
        return sequence

    def _store_locked(self, key: str, value: bytes, operation: str, ttl: float | None,
                      stored_at: float | None = None) -> tuple[int, Entry]:
        self._sequence += 1
        entry = Entry(key, value, self._sequence, operation,
                      ttl_header(ttl) if ttl is not None else "",
                      self._wall() if stored_at is None else stored_at)
        dies_at = self._clock() + max(1, math.ceil(ttl)) if ttl is not None else None
        self._entries[key] = (entry, dies_at)
        return self._sequence, entry

    def _notify(self, entry: Entry) -> None:
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.offer(entry)


# --- a NATS connection with no server -------------------------------------------------------


class StubConnection:
    """A NATS connection with no server, for unit tests of the worker (it has what
    ``token_worker.serve.replying.Connection`` asks for).

    :meth:`deliver` plays a message arriving from the server; ``published`` lists what was
    sent. ``on_connect``, if set, runs inside :meth:`connect` (to block or fail there).
    """

    def __init__(self, *, max_payload: int = 1024 * 1024) -> None:
        self.max_payload = max_payload
        self.state = State.DISCONNECTED
        self.server_url = "nats://stub:4222"
        self.reconnects = 0
        self.buffered_bytes = 0
        self.published: list[tuple[str, bytes]] = []
        self.subscriptions: dict[int, Subscription] = {}
        self.on_connect: Callable[[], None] | None = None
        self.connect_calls = 0
        self.closed = threading.Event()
        self._sent = threading.Condition()
        self._next_sid = 1

    @property
    def is_connected(self) -> bool:
        return self.state is State.CONNECTED

    def connect(self) -> None:
        self.connect_calls += 1
        if self.on_connect is not None:
            self.on_connect()
        self.state = State.CONNECTED

    def close(self, timeout: float = 5.0) -> None:
        self.state = State.CLOSED
        self.closed.set()

    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Subscription:
        subscription = Subscription(self._next_sid, subject, queue, callback,
                                    confirmed=True)  # no server: nothing to wait for
        self._next_sid += 1
        self.subscriptions[subscription.sid] = subscription
        return subscription

    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None:
        self.subscriptions.pop(sub.sid, None)

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        if not self.is_connected:
            raise NotConnected("stub: not connected")
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(len(payload), self.max_payload)
        with self._sent:
            self.published.append((subject, payload))
            self._sent.notify_all()

    def publish_reply(self, subject: str, payload: bytes) -> None:
        self.publish(subject, payload)

    def flush(self, timeout: float) -> None:
        if not self.is_connected:
            raise NotConnected("stub: not connected")

    def deliver(self, subject: str, payload: bytes, reply: str = "") -> None:
        """A message from the server, on the calling thread (the reader thread's role)."""
        for subscription in list(self.subscriptions.values()):
            if subscription.subject == subject:
                subscription.callback(Message(subject, reply, payload))

    def replies_to(self, subject: str) -> list[bytes]:
        with self._sent:
            return [payload for sent_to, payload in self.published if sent_to == subject]

    def wait_for_reply(self, subject: str, timeout: float = 5.0) -> bytes:
        with self._sent:
            if not self._sent.wait_for(lambda: any(to == subject for to, _ in self.published),
                                       timeout):
                pytest.fail(f"no reply published to {subject} within {timeout} s")
            return next(payload for to, payload in self.published if to == subject)


@contextmanager
def trickling_server() -> Iterator[tuple[int, threading.Event]]:
    """A TCP server on loopback that greets one byte every 50 ms, forever, as a rogue or
    broken NATS server might: yields its port and an Event set once the client hung up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    done = threading.Event()
    hung_up = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            client, _ = listener.accept()
            with client:
                while not done.wait(0.05):
                    client.sendall(b"I")
        hung_up.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], hung_up
    finally:
        done.set()
        listener.close()
        thread.join(5)

