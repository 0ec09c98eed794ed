"""The JetStream calls the shared token tier needs, over our own NATS connection.

pynats2 has no JetStream API, and the shared tier needs only a little of it, following the
key-value design of NATS ADR-8: a bucket ``B`` is the stream ``KV_B`` over the subjects
``$KV.B.>``; a key ``k`` is the subject ``$KV.B.k``; a value is the last message on it
(history 1). So this module does just that, on any connection with ``subscribe``,
``unsubscribe`` and ``request`` (a :class:`~token_worker.nats.connection.NatsConnection` that
announced header support in its CONNECT):

- stream info and create (``$JS.API.STREAM.INFO|CREATE.KV_B``), per-message TTLs allowed;
- put with the publish acknowledgement (the stream's sequence is the key's revision);
- atomic create: a put with ``Nats-Expected-Last-Subject-Sequence: 0`` that the stream
  refuses when the key already holds a value (a lease), with a ``Nats-TTL`` so the value
  disappears by itself;
- direct get of the last message of a key (``$JS.API.DIRECT.GET.KV_B.$KV.B.k``);
- delete (a ``KV-Operation: DEL`` marker);
- a watch of a key's subject: a plain core subscription sees every put as it happens,
  so a waiter never polls.

Requests go out through the connection's reply multiplexer (:mod:`token_worker.nats.replies`):
published with their headers, each with its own reply subject under the connection's one
wildcard inbox subscription. Every call has a timeout and raises a typed
:class:`~token_worker.errors.KvError`; nothing here blocks forever. Never call this from a
subscription callback: the replies arrive on the connection's reader thread, so a call
made there would wait for itself until its timeout (and fails at once instead).

The module is longer than 400 lines because the key-value calls are one API over one
bucket: its requests, replies, headers and errors are read the same way by every call.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import queue
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Protocol

from token_worker.errors import KvError, KvTimeout, KvUnavailable, NatsConnectionError
from token_worker.nats.protocol import Message, parse_headers
from token_worker.nats.replies import Connection

PUT = "PUT"
DEL = "DEL"
PURGE = "PURGE"

DEFAULT_TIMEOUT = 1.0
"""Seconds a JetStream call waits for its answer."""
NANOS = 1_000_000_000
DEFAULT_DUPLICATE_WINDOW = 120.0
"""JetStream's own default; a KV bucket's window never exceeds its max age (as nats.go)."""

ERR_STREAM_NOT_FOUND = 10059
ERR_NO_MESSAGE_FOUND = 10037
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_WRONG_LAST_SEQUENCE_REPLICATED = 10164
"""What a replicated (R>1) stream answers instead of 10071 (as nats.go checks)."""

_BUCKET_RE = re.compile(r"^[a-zA-Z0-9_-]+$")
_KEY_RE = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")
_PATTERN_RE = re.compile(r"^([-/_=a-zA-Z0-9]+|\*)(\.([-/_=a-zA-Z0-9]+|\*))*(\.>)?$|^>$")


@dataclass(frozen=True)
class Entry:
    """A key's value as the bucket holds it."""

    key: str
    value: bytes = field(repr=False)
    revision: int
    """The stream sequence of the value; 0 when seen live on a watch (core NATS carries no
    sequence)."""
    operation: str = PUT
    """``PUT``, or ``DEL``/``PURGE`` for a deletion marker."""
    ttl: str = ""
    """The message's own time to live (its ``Nats-TTL`` header, e.g. ``8s``), "" for none."""
    stored_at: float | None = None
    """When the stream stored it (``time.time()`` scale), where the server said."""


@dataclass(frozen=True)
class BucketInfo:
    """What matters of a bucket's stream configuration."""

    bucket: str
    history: int
    max_age: float
    """Seconds; 0 is unlimited."""
    replicas: int
    allow_msg_ttl: bool
    allow_direct: bool
    messages: int
    leader: str = ""
    """The server name of the stream's leader (clustered JetStream), else ""."""
    created: bool = False
    """True when :meth:`KeyValue.ensure_bucket` made it just now (it was missing)."""


class Watch(Protocol):
    """Live changes of the keys a watch covers; close it (or use it as a context)."""

    def next(self, timeout: float) -> Entry | None:
        """The next change, or None when ``timeout`` seconds pass without one."""


class KeyValueStore(Protocol):
    """The key-value API (:class:`KeyValue` over NATS, :class:`MemoryKeyValue` in memory)."""

    def ensure_bucket(self, *, history: int = 1, max_age: float = 0.0, replicas: int = 1,
                      allow_msg_ttl: bool = True) -> BucketInfo: ...

    def get(self, key: str, *, latest: bool = False) -> Entry | None: ...

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int: ...

    def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int | None: ...

    def update(self, key: str, value: bytes, *, last_revision: int,
               ttl: float | None = None) -> int | None: ...

    def delete(self, key: str, *, last_revision: int | None = None) -> int | None: ...

    def watch(self, pattern: str) -> AbstractContextManager[Watch]: ...

    def watch_each(self, pattern: str, on_entry: Callable[[Entry], None]) -> Closeable: ...

    def wait_for(self, key: str, timeout: float, *, after: int = 0) -> Entry | None: ...


def parse_timestamp(text: str) -> float | None:
    """An RFC 3339 time as the server writes it (nanoseconds, ``Z``) on ``time.time()``'s
    scale, or None when it is not one."""
    whole, _, fraction = text.rstrip("Zz").partition(".")
    try:
        moment = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    digits = "".join(c for c in fraction if c.isdigit())[:9]
    return moment.timestamp() + (int(digits) / 10 ** len(digits) if digits else 0.0)


def ttl_header(ttl: float) -> str:
    """A ``Nats-TTL`` value: whole seconds, rounded up, at least one (the server's unit)."""
    return f"{max(1, math.ceil(ttl))}s"


def check_key(key: str) -> str:
    """``key`` if it is a legal KV key (``[-/_=.a-zA-Z0-9]``, dot-separated tokens)."""
    if not _KEY_RE.match(key):
        raise ValueError(f"not a legal key-value key: {key!r}")
    return key


def _json_reply(message: Message) -> dict[str, Any]:
    """A JetStream API answer as a dict; its ``error`` raised as a KvError."""
    try:
        body = json.loads(message.payload)
    except ValueError:
        raise KvError(500, "unreadable JetStream answer") from None
    if not isinstance(body, dict):
        raise KvError(500, "unreadable JetStream answer")
    error = body.get("error")
    if isinstance(error, dict):
        raise KvError(int(error.get("code") or 500), str(error.get("description") or ""),
                      err_code=int(error.get("err_code") or 0))
    return body


def _bucket_info(bucket: str, body: Mapping[str, Any]) -> BucketInfo:
    config = body.get("config") or {}
    state = body.get("state") or {}
    return BucketInfo(
        bucket=bucket,
        history=int(config.get("max_msgs_per_subject") or 0),
        max_age=int(config.get("max_age") or 0) / NANOS,
        replicas=int(config.get("num_replicas") or 1),
        allow_msg_ttl=bool(config.get("allow_msg_ttl")),
        allow_direct=bool(config.get("allow_direct")),
        messages=int(state.get("messages") or 0),
        leader=str((body.get("cluster") or {}).get("leader") or ""),
    )


def _wrong_last_sequence(error: KvError) -> bool:
    return error.err_code in (ERR_WRONG_LAST_SEQUENCE, ERR_WRONG_LAST_SEQUENCE_REPLICATED)


# --- the bucket over NATS ----------------------------------------------------------------


class Closeable(Protocol):
    """Something to stop: a watch."""

    def close(self) -> None: ...


class _SubjectWatch:
    """A core subscription on key subjects, each change handed to ``on_entry`` on the
    connection's reader thread (no I/O there: hand it on)."""

    def __init__(self, connection: Connection, subject: str, prefix_length: int,
                 on_entry: Callable[[Entry], None]) -> None:
        self._connection = connection
        self._prefix_length = prefix_length
        self._on_entry = on_entry
        self._sub = connection.subscribe(subject, self._on_message)

    def _on_message(self, message: Message) -> None:
        fields = parse_headers(message.headers).fields if message.headers else {}
        operation = fields.get("KV-Operation", PUT).upper()
        self._on_entry(Entry(message.subject[self._prefix_length:], message.payload, 0,
                             operation))

    def close(self) -> None:
        with contextlib.suppress(NatsConnectionError):  # gone with the connection
            self._connection.unsubscribe(self._sub)


class _QueuedWatch:
    """A watch read with :meth:`next`: changes queue up until read."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self.subscription: Closeable | None = None

    def offer(self, entry: Entry) -> None:
        self._queue.put(entry)

    def next(self, timeout: float) -> Entry | None:
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None


def wait_for_value(store: KeyValueStore, key: str, timeout: float, after: int) -> Entry | None:
    """What both stores' ``wait_for`` do: watch the key, then read it (a put between the
    two is seen on the watch), then wait for the first put, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    with store.watch(key) as watch:
        current = store.get(key)
        if current is not None and current.revision > after:
            return current
        while (left := deadline - time.monotonic()) > 0:
            entry = watch.next(left)
            if entry is not None and entry.operation == PUT:
                return entry
    return None


class KeyValue:
    """One JetStream KV bucket over a NATS connection that speaks headers."""

    def __init__(self, connection: Connection, bucket: str, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"not a legal bucket name: {bucket!r}")
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.timeout = timeout
        self._connection = connection
        self._prefix = f"$KV.{bucket}."

    def info(self) -> BucketInfo | None:
        """The bucket's configuration and size, or None when it does not exist."""
        try:
            body = self._api(f"$JS.API.STREAM.INFO.{self.stream}", b"")
        except KvError as error:
            if error.err_code == ERR_STREAM_NOT_FOUND:
                return None
            raise
        return _bucket_info(self.bucket, body)

    def ensure_bucket(self, *, history: int = 1, max_age: float = 0.0, replicas: int = 1,
                      allow_msg_ttl: bool = True) -> BucketInfo:
        """The bucket, created as asked when missing (an existing one is left as it is).

        Raises KvError when it exists without what per-message TTLs need, as a bucket made
        by hand might: the operator decides, not a worker.
        """
        info = self.info()
        if info is None:
            info = self._create_bucket(history, max_age, replicas, allow_msg_ttl)
        if allow_msg_ttl and not info.allow_msg_ttl:
            raise KvError(400, f"bucket {self.bucket} does not allow per-message TTLs "
                               "(stream setting allow_msg_ttl)")
        if not info.allow_direct:
            raise KvError(400, f"bucket {self.bucket} does not allow direct gets "
                               "(stream setting allow_direct)")
        return info

    def _create_bucket(self, history: int, max_age: float, replicas: int,
                       allow_msg_ttl: bool) -> BucketInfo:
        window = DEFAULT_DUPLICATE_WINDOW
        if 0 < max_age < window:
            window = max_age
        config = {
            "name": self.stream, "subjects": [f"$KV.{self.bucket}.>"],
            "retention": "limits", "storage": "file", "discard": "new",
            "max_msgs_per_subject": history, "max_msgs": -1, "max_bytes": -1,
            "max_msg_size": -1, "max_consumers": -1, "max_age": int(max_age * NANOS),
            "duplicate_window": int(window * NANOS), "num_replicas": replicas,
            "allow_rollup_hdrs": True, "deny_delete": True, "deny_purge": False,
            "allow_direct": True, "mirror_direct": False, "allow_msg_ttl": allow_msg_ttl,
        }
        try:
            body = self._api(f"$JS.API.STREAM.CREATE.{self.stream}",
                             json.dumps(config).encode())
        except KvError:
            info = self.info()  # another replica may have just created it
            if info is None:
                raise
            return info
        return replace(_bucket_info(self.bucket, body), created=True)

    def get(self, key: str, *, latest: bool = False) -> Entry | None:
        """The key's value, or None when it has none (never put, deleted or expired).

        A direct get may be answered by any replica of the stream, which can lag the
        leader by a moment; ``latest`` asks the stream leader (``STREAM.MSG.GET``), which
        has every acknowledged write: for the decisions a lease makes."""
        entry = self._get_latest(key) if latest else self._get_raw(key)
        if entry is None or entry.operation != PUT:
            return None
        return entry

    def _get_latest(self, key: str) -> Entry | None:
        """The key's last message from the stream leader, deletion markers included."""
        subject = self._prefix + check_key(key)
        try:
            body = self._api(f"$JS.API.STREAM.MSG.GET.{self.stream}",
                             json.dumps({"last_by_subj": subject}).encode())
        except KvError as error:
            if error.err_code == ERR_NO_MESSAGE_FOUND:
                return None
            raise
        message = body.get("message")
        if not isinstance(message, dict):
            raise KvError(500, "stream message get answered without a message")
        try:
            value = base64.b64decode(message.get("data") or "")
            headers = parse_headers(base64.b64decode(message.get("hdrs") or ""))
        except ValueError:
            raise KvError(500, "unreadable stream message") from None
        sequence = message.get("seq")
        stored = message.get("time")
        return Entry(key, value, sequence if isinstance(sequence, int) else 0,
                     headers.fields.get("KV-Operation", PUT).upper(),
                     headers.fields.get("Nats-TTL", ""),
                     parse_timestamp(stored) if isinstance(stored, str) else None)

    def _get_raw(self, key: str) -> Entry | None:
        """The key's last message, deletion markers included."""
        subject = self._prefix + check_key(key)
        reply = self._request(f"$JS.API.DIRECT.GET.{self.stream}.{subject}", b"")
        headers = parse_headers(reply.headers)
        if headers.status == 404:
            return None
        if headers.status:
            raise KvError(headers.status, headers.description or "direct get failed")
        if not reply.headers:
            raise KvError(500, "direct get answered without headers: does the connection "
                               "announce header support?")
        revision = headers.fields.get("Nats-Sequence", "0")
        return Entry(key, reply.payload, int(revision) if revision.isdigit() else 0,
                     headers.fields.get("KV-Operation", PUT).upper(),
                     headers.fields.get("Nats-TTL", ""),
                     parse_timestamp(headers.fields.get("Nats-Time-Stamp", "")))

    def put(self, key: str, value: bytes, *, ttl: float | None = None) -> int:
        """Store ``value`` (for ``ttl`` seconds when given); return its revision."""
        headers = {"Nats-TTL": ttl_header(ttl)} if ttl is not None else None
        return self._publish(key, value, headers)

    def create(self, key: str, value: bytes, *, ttl: float | None = None) -> int | None:
        """Store ``value`` only if the key holds none; its revision, or None when it does.

        Atomic in the stream: of concurrent creates exactly one wins. A deletion marker
        counts as no value (the create then expects the marker's revision, as nats.go).
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        if ttl is not None:
            headers["Nats-TTL"] = ttl_header(ttl)
        try:
            return self._publish(key, value, headers)
        except KvError as error:
            if not _wrong_last_sequence(error):
                raise
        last = self._get_raw(key)
        if last is None or last.operation == PUT:
            return None  # held by someone else (or gone a moment ago: let it be)
        return self.update(key, value, last_revision=last.revision, ttl=ttl)

    def update(self, key: str, value: bytes, *, last_revision: int,
               ttl: float | None = None) -> int | None:
        """Store ``value`` only if the key's last message is still revision
        ``last_revision``; the new revision, or None when it is not (someone else's)."""
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last_revision)}
        if ttl is not None:
            headers["Nats-TTL"] = ttl_header(ttl)
        try:
            return self._publish(key, value, headers)
        except KvError as error:
            if _wrong_last_sequence(error):
                return None
            raise

    def delete(self, key: str, *, last_revision: int | None = None) -> int | None:
        """Mark the key deleted; with ``last_revision``, only if that is still its value
        (None when it is not: someone else's by now)."""
        headers = {"KV-Operation": DEL}
        if last_revision is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(last_revision)
        try:
            return self._publish(key, b"", headers)
        except KvError as error:
            if last_revision is not None and _wrong_last_sequence(error):
                return None
            raise

    @contextmanager
    def watch(self, pattern: str) -> Iterator[Watch]:
        """Live puts and deletions on the keys ``pattern`` covers (KV wildcards ``*``, ``>``),
        from the moment the subscription is made; closed when the context ends."""
        queued = _QueuedWatch()
        watch = self.watch_each(pattern, queued.offer)
        try:
            yield queued
        finally:
            watch.close()

    def watch_each(self, pattern: str, on_entry: Callable[[Entry], None]) -> Closeable:
        """Live puts and deletions on the keys ``pattern`` covers, each handed to
        ``on_entry`` on the connection's reader thread as it happens (a waiter that holds
        no thread); stop it with ``close()``."""
        if not _PATTERN_RE.match(pattern):
            raise ValueError(f"not a legal key pattern: {pattern!r}")
        return _SubjectWatch(self._connection, self._prefix + pattern, len(self._prefix),
                             on_entry)

    def wait_for(self, key: str, timeout: float, *, after: int = 0) -> Entry | None:
        """The key's value once it is newer than revision ``after``: at once if it already
        is, else the first put seen on the key's subject; None after ``timeout``."""
        return wait_for_value(self, check_key(key), timeout, after)

    def _publish(self, key: str, value: bytes, headers: Mapping[str, str] | None) -> int:
        body = _json_reply(self._request(self._prefix + check_key(key), value, headers))
        sequence = body.get("seq")
        if not isinstance(sequence, int):
            raise KvError(500, "publish acknowledgement without a sequence")
        return sequence

    def _api(self, subject: str, payload: bytes) -> dict[str, Any]:
        return _json_reply(self._request(subject, payload))

    def _request(self, subject: str, payload: bytes,
                 headers: Mapping[str, str] | None = None) -> Message:
        """Send and wait for the one reply; raises KvTimeout or KvUnavailable."""
        if self._connection.on_reader_thread():
            raise KvError(500, "a JetStream call on the connection's reader thread would "
                               "wait for its own reply: call it from another thread")
        try:
            reply = self._connection.request(subject, payload, self.timeout, headers=headers)
        except NatsConnectionError as error:
            raise KvUnavailable(f"request not sent: {error}") from None
        if reply is None:
            raise KvTimeout(f"no answer on {_api_name(subject)} within {self.timeout:g} s")
        if reply.status == 503:
            raise KvUnavailable(f"no responders on {_api_name(subject)}: JetStream is off, "
                                "the bucket is missing, or its stream has no leader yet")
        return reply


def _api_name(subject: str) -> str:
    """A subject fit for an error text: the API call, never the key (a digest anyway)."""
    parts = subject.split(".")
    return ".".join(parts[:4]) if subject.startswith("$JS.") else ".".join(parts[:2])
