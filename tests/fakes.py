"""Fakes for the unit layer: stand-ins with the product's interfaces and no server.

Nothing here imports nats-py or starts a process.
"""

from __future__ import annotations

import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from token_worker.errors import KvError
from token_worker.nats.kv import DEL, PUT, BucketInfo, Entry, Watch, check_key, wait_for_value

# --- a JetStream KV bucket in memory ------------------------------------------------------


class _MemoryWatch:
    def __init__(self, pattern: str) -> None:
        self._pattern = re.compile("^" + re.escape(pattern).replace(r"\*", r"[^.]+")
                                   .replace(r"\>", ".+") + "$")
        self._queue: queue.SimpleQueue[Entry] = queue.SimpleQueue()

    def offer(self, entry: Entry) -> None:
        if self._pattern.match(entry.key):
            self._queue.put(Entry(entry.key, entry.value, 0, entry.operation))

    def next(self, timeout: float) -> Entry | None:
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None


class MemoryKeyValue:
    """:class:`KeyValue`'s behaviour in memory (history 1, TTLs on ``clock``); ``fail``
    set to an error makes every call raise it, as a broken JetStream would."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, tuple[Entry, float | None]] = {}
        self._watches: list[_MemoryWatch] = []
        self._lock = threading.Lock()
        self._sequence = 0
        self.fail: KvError | None = None
        self.calls = 0

    def ensure_bucket(self, *, history: int = 1, max_age: float = 0.0, replicas: int = 1,
                      allow_msg_ttl: bool = True) -> BucketInfo:
        self._enter()
        return BucketInfo("memory", history, max_age, replicas, allow_msg_ttl, True,
                          len(self._entries))

    def raw(self, key: str) -> Entry | None:
        """The key's last message, markers included (for tests to look at what is stored)."""
        with self._lock:
            return self._live(key)

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
            return self._store_locked(key, value, PUT, ttl)

    def delete(self, key: str, *, last_revision: int | None = None) -> int | None:
        self._enter()
        with self._lock:
            last = self._live(check_key(key))
            if last_revision is not None and (last.revision if last else 0) != last_revision:
                return None
            return self._store_locked(key, b"", DEL, None)

    @contextmanager
    def watch(self, pattern: str) -> Iterator[Watch]:
        self._enter()
        watch = _MemoryWatch(pattern)
        with self._lock:
            self._watches.append(watch)
        try:
            yield watch
        finally:
            with self._lock:
                self._watches.remove(watch)

    def wait_for(self, key: str, timeout: float, *, after: int = 0) -> Entry | None:
        return wait_for_value(self, key, timeout, after)

    def _enter(self) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail

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
            return self._store_locked(key, value, operation, ttl)

    def _store_locked(self, key: str, value: bytes, operation: str, ttl: float | None) -> int:
        self._sequence += 1
        entry = Entry(key, value, self._sequence, operation)
        dies_at = self._clock() + max(1, math.ceil(ttl)) if ttl is not None else None
        self._entries[key] = (entry, dies_at)
        for watch in self._watches:
            watch.offer(entry)
        return self._sequence
