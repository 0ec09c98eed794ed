"""The NATS client protocol: bytes in, events out; bytes out for PUB, HPUB, SUB and UNSUB.

The one place where frames are read and written: the parser, the frame encoders
(:func:`pub`, :func:`hpub`, :func:`sub`, :func:`unsub`) and header
blocks (:func:`encode_headers`, :func:`parse_headers`). It is longer than 400 lines because
both directions of the contract stay side by side, the parser's hot loop inlined: split,
a change to what is read would no longer be seen next to what is written.

No socket, no lock, no callback, no logging: :class:`Parser` is fed whatever the socket
gave and returns what it could parse, so every byte sequence a server (or anybody able to
publish) can produce is tested on byte strings. It never raises: a stream that is not the
NATS protocol gives one :class:`ProtocolError` event, after which the parser yields
nothing more (the connection is then dropped and re-established).

One kind of over-long line is not a broken stream: a MSG or HMSG line longer than
``max_control_line`` (a publisher's huge reply subject, let through by a server whose own
``max_control_line`` was raised). Dropping the connection for it would drop every other
request in flight and reconnect in a loop while the publisher retries, so that one
message is skipped, line and payload, and reported as :class:`Skipped`. Its bytes are
discarded as they come: only the line's last :data:`_SKIP_TAIL` bytes are kept, to read
the sizes at its end.

Subjects are bytes on the wire, and NATS does not require them to be UTF-8. They are
decoded with ``surrogateescape``, so a non-UTF-8 byte becomes a lone surrogate instead of
an error, and :func:`pub` encodes the same way: a reply subject read here is answered with
exactly the bytes it came with.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from token_worker.errors import BadSubject

MAX_CONTROL_LINE = 64 * 1024
"""A protocol line longer than this is a broken stream, not a slow one."""
MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""nats-server's ceiling for ``max_payload``: a larger MSG size is a broken stream."""
_MAX_DIGITS = 10
"""More digits than this in a sid or size is a broken stream (and ``int()`` stays cheap)."""
SUBJECT_ENCODING = ("utf-8", "surrogateescape")
"""How subjects go between wire bytes and ``str``, both ways (bytes-safe round trip)."""

_SKIP_TAIL = 64
"""Bytes kept of a skipped line: its end holds the sizes (at most 2 x 10 digits)."""
_ARGUMENT_SEPARATOR = re.compile(rb"[ \t]+")
_MESSAGE_OPS = (b"MSG ", b"HMSG")
_USUAL_MESSAGE = re.compile(
    rb"MSG (\S+) ([0-9]{1,10})(?: (\S+))? ([0-9]{1,10})\r\n")
"""``MSG <subject> <sid> [reply] <size>`` as servers send it: single spaces, plain digits
(a subject with any other whitespace in it takes the general path)."""


class Message(NamedTuple):
    """One message delivered to a subscription (a tuple: built for every message)."""

    subject: str
    reply: str
    payload: bytes
    status: int = 0
    """A server status from a header block (503: no responders), else 0."""
    headers: bytes = b""
    """The raw header block of an HMSG (``NATS/1.0 ...\\r\\n...\\r\\n\\r\\n``), else empty."""


class Control(enum.Enum):
    """Protocol lines that carry nothing: the reader only needs to know which one came."""

    PING = "PING"
    PONG = "PONG"
    OK = "+OK"


class Info(NamedTuple):
    """An INFO line: ``info`` is the server's JSON object, or None with ``error`` saying why
    it could not be read (an unreadable INFO is reported, never fatal)."""

    info: dict[str, Any] | None
    error: str = ""


class ServerError(NamedTuple):
    """A ``-ERR`` line, with its text (quotes removed)."""

    text: str


class Skipped(NamedTuple):
    """A message skipped unread because its line was longer than ``max_control_line``; the
    stream goes on. ``size`` is the bytes skipped (line and payload)."""

    reason: str
    size: int


class ProtocolError(NamedTuple):
    """The stream is not the NATS protocol; the last event the parser ever yields."""

    reason: str


_new_tuple = tuple.__new__

Delivery = tuple[int, Message]
"""A MSG or HMSG: the subscription id and the message (a plain tuple: one per message)."""
Event = Delivery | Control | Info | ServerError | Skipped | ProtocolError


class _Skip:
    """The message being skipped: in its line (``left`` < 0) or in its payload."""

    __slots__ = ("headed", "left", "size", "tail")

    def __init__(self, headed: bool) -> None:
        self.headed = headed
        self.tail = b""
        """The last bytes seen of the line (where its sizes are)."""
        self.left = -1
        """Bytes of payload and final CRLF still to discard; -1 while in the line."""
        self.size = 0


class Parser:
    """Turns a byte stream from a NATS server into events; feed it reads of any size.

    The hot path is a read holding many small messages: one ``bytes`` copy per read (none
    when fed ``bytes`` with nothing pending), then slices. A message larger than a read is
    gathered in a list until complete, so big payloads cost no repeated concatenation.
    """

    __slots__ = ("_broken", "_chunks", "_needed", "_pending", "_skip", "max_control_line")

    def __init__(self, max_control_line: int = MAX_CONTROL_LINE) -> None:
        self.max_control_line = max_control_line
        self._chunks: list[bytes] = []
        self._pending = 0
        """Bytes in ``_chunks``, the start of an incomplete line or message."""
        self._needed = 0
        """Bytes the incomplete message needs in all (0: unknown, parse on every feed)."""
        self._broken = False
        self._skip: _Skip | None = None

    @property
    def broken(self) -> bool:
        """True once a :class:`ProtocolError` was yielded: nothing more will come."""
        return self._broken

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Parse ``data`` after what earlier calls left incomplete; never raises."""
        events: list[Event] = []
        if self._broken or not data:
            return events
        try:
            chunk = bytes(data)
            if self._chunks:
                self._pending += len(chunk)
                self._chunks.append(chunk)
                if self._pending < self._needed:
                    return events
                chunk = b"".join(self._chunks)
                self._chunks.clear()
            while True:
                if self._skip is not None:
                    chunk = self._skip_message(chunk, events)
                    if not chunk:
                        return events
                rest = self._parse(chunk, events)
                if self._skip is None:
                    break
                chunk = rest  # an over-long message line: skip it, then go on
            if rest:
                self._chunks.append(rest)
            self._pending = len(rest)
        except Exception as error:  # a parser bug must not kill the reader: report it
            self._fail(events, f"parser failure: {type(error).__name__}: {error}")
        return events

    def _fail(self, events: list[Event], reason: str) -> None:
        self._broken = True
        self._skip = None
        self._chunks.clear()
        self._pending = self._needed = 0
        events.append(ProtocolError(reason))

    def _parse(self, data: bytes, events: list[Event]) -> bytes:  # noqa: PLR0912 - hot loop
        """Append the events of every complete item in ``data``; return the incomplete
        rest (empty after a protocol error)."""
        pos = 0
        size = len(data)
        limit = self.max_control_line
        append = events.append
        usual = _USUAL_MESSAGE.match
        self._needed = 0
        while pos < size:
            matched = usual(data, pos)
            if matched is not None and (start := matched.end()) - 2 - pos <= limit:
                # the hot path: a MSG as servers send them, its line read by one regular
                # expression; anything else takes the general path
                subject_bytes, sid_digits, reply_bytes, total_digits = matched.groups()
                sid, total, headed, header_size = int(sid_digits), int(total_digits), False, 0
                subject = subject_bytes.decode("utf-8", "surrogateescape")
                reply = "" if reply_bytes is None else reply_bytes.decode(
                    "utf-8", "surrogateescape")
            else:
                end = data.find(b"\r\n", pos)
                if end < 0 or end - pos > limit:
                    if end >= 0 or size - pos > limit + 1:  # + 1: a last CR may end it
                        return self._overlong(data, pos, events)
                    break
                op = data[pos : pos + 4]
                if op not in _MESSAGE_OPS and op.upper() not in _MESSAGE_OPS:
                    problem = _control_line(data[pos:end], append)
                    if problem:
                        self._fail(events, problem)
                        return b""
                    pos = end + 2
                    continue
                headed = op[0] in b"Hh"
                parsed = _message_line(data[pos + 3 + headed : end], headed)
                if isinstance(parsed, str):
                    self._fail(events, parsed)
                    return b""
                subject, sid, reply, header_size, total = parsed
                start = end + 2
            stop = start + total
            if total > MAX_MESSAGE_SIZE:
                self._fail(events, "bad message size in message line")
                return b""
            if stop + 2 > size:
                self._needed = stop + 2 - pos
                break
            if data[stop : stop + 2] != b"\r\n":
                self._fail(events, "message payload not followed by CRLF")
                return b""
            if headed:
                headers = data[start : start + header_size]
                append((sid, Message(subject, reply, data[start + header_size : stop],
                                     _status_of(headers), headers)))
            else:  # tuple.__new__: a NamedTuple's own __new__ is a Python call per message
                append((sid, _new_tuple(Message, (subject, reply, data[start:stop], 0, b""))))
            pos = stop + 2
        return data[pos:]

    def _overlong(self, data: bytes, pos: int, events: list[Event]) -> bytes:
        """The line at ``pos`` is too long: a message's starts a skip (its bytes from
        ``pos`` are returned to be skipped), any other is a broken stream."""
        op = data[pos : pos + 5].upper()
        if op[:4] == b"MSG " or (op[:4] == b"HMSG" and op[4:5] in (b" ", b"\t")):
            self._skip = _Skip(headed=op[0] == ord("H"))
            return data[pos:]
        self._fail(events, "protocol line too long")
        return b""

    def _skip_message(self, data: bytes, events: list[Event]) -> bytes:
        """Discard ``data`` up to the end of the message being skipped; return what
        follows it (empty when the message goes on, or after a protocol error)."""
        skip = self._skip
        assert skip is not None
        if skip.left < 0:
            held = skip.tail + data
            end = held.find(b"\r\n")
            if end < 0:
                skip.size += len(data)
                skip.tail = held[-_SKIP_TAIL:]
                return b""
            total = _skipped_size(held[max(0, end - _SKIP_TAIL) : end], skip.headed)
            if total < 0:
                self._fail(events, "bad sizes at the end of an over-long message line")
                return b""
            skip.size += end + 2 - len(skip.tail)
            skip.left = total + 2
            data = held[end + 2 :]
        left = skip.left
        low, high = max(0, left - 2), min(len(data), left)
        if low < high and data[low:high] != b"\r\n"[low - left + 2 : high - left + 2]:
            self._fail(events, "message payload not followed by CRLF")
            return b""
        if len(data) < left:
            skip.left -= len(data)
            skip.size += len(data)
            return b""
        skip.size += left
        events.append(Skipped(f"message line longer than {self.max_control_line} bytes",
                              skip.size))
        self._skip = None
        return data[left:]


def _skipped_size(tail: bytes, headed: bool) -> int:
    """The total size at the end of a skipped line (its last ``_SKIP_TAIL`` bytes), or -1
    when the sizes cannot be read there."""
    parts = _ARGUMENT_SEPARATOR.split(tail.strip(b" \t"))
    counts = 2 if headed else 1
    numbers = parts[-counts:]
    if len(parts) <= counts or not all(
            number.isdigit() and len(number) <= _MAX_DIGITS for number in numbers):
        return -1  # a number cut by the window, or not a number
    total = int(numbers[-1])
    if total > MAX_MESSAGE_SIZE or int(numbers[0]) > total:
        return -1
    return total


def _message_line(line: bytes, headed: bool) -> tuple[str, int, str, int, int] | str:
    """The arguments of ``MSG <subject> <sid> [reply] <size>`` or ``HMSG <subject> <sid>
    [reply] <header size> <total size>`` (``line`` starts at the separator after the op),
    or a problem."""
    parts = line[1:].split(b" ")
    counts = 2 if headed else 1
    if len(parts) - counts not in (2, 3) or b"" in parts or line[:1] not in (b" ", b"\t"):
        parts = _ARGUMENT_SEPARATOR.split(line.strip(b" \t"))  # tabs or repeated spaces
        if len(parts) - counts not in (2, 3) or b"" in parts:
            return f"bad message line: {line[:200]!r}"
    numbers = parts[-counts:]
    numbers.append(parts[1])
    for number in numbers:
        if not number.isdigit() or len(number) > _MAX_DIGITS:
            return f"bad number in message line: {line[:200]!r}"
    total = int(parts[-1])
    header_size = int(parts[-2]) if headed else 0
    if total > MAX_MESSAGE_SIZE or header_size > total:
        return f"bad message size in message line: {line[:200]!r}"
    subject = parts[0].decode(*SUBJECT_ENCODING)
    reply = parts[2].decode(*SUBJECT_ENCODING) if len(parts) - counts == 3 else ""
    return subject, int(parts[1]), reply, header_size, total


def _control_line(line: bytes, append: Any) -> str:
    """Append the event of one line that is not a message; return a problem or ""."""
    op = line[:4].upper()
    if op == b"PING" and not line[4:].strip():
        append(Control.PING)
    elif op == b"PONG" and not line[4:].strip():
        append(Control.PONG)
    elif op[:3] == b"+OK" and not line[3:].strip():
        append(Control.OK)
    elif op == b"-ERR":
        append(ServerError(_err_text(line)))
    elif op == b"INFO" and line[4:5] in (b" ", b"\t"):
        append(_info(line[5:]))
    else:
        return f"unknown protocol line: {line[:200]!r}"
    return ""


def _info(text: bytes) -> Info:
    try:
        info = json.loads(text)
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError included
        return Info(None, f"not JSON: {error}")
    except RecursionError:
        return Info(None, "not JSON: nested too deeply")
    if not isinstance(info, dict):
        return Info(None, f"not a JSON object but {type(info).__name__}")
    return Info(info)


def _status_of(headers: bytes) -> int:
    """The status code of a ``NATS/1.0 503`` header block, else 0."""
    first = headers.split(b"\r\n", 1)[0].split()
    if len(first) > 1 and first[0].startswith(b"NATS/") and first[1].isdigit() and len(
            first[1]) == 3:
        return int(first[1])
    return 0


def _err_text(line: bytes) -> str:
    text = line[4:].decode("utf-8", "replace").strip()
    return text.strip("'") or "(no text)"


# --- bytes out ------------------------------------------------------------------------


def holds_separator(text: str) -> bool:
    """Whether ``text`` holds what the protocol reads as the end of an argument or of a line
    (a space, a tab, CR or LF). Printable text can hold only the space, so the others are
    searched for only in text that is not: a clean subject costs two C calls."""
    return " " in text or (not text.isprintable() and (
        "\t" in text or "\r" in text or "\n" in text))


def encode_subject(subject: str, what: str = "subject") -> bytes:
    """``subject`` as wire bytes (the exact bytes a parsed subject came with)."""
    if not subject or holds_separator(subject):
        raise BadSubject(f"{what} must be non-empty without spaces, tabs or line breaks: "
                         f"{subject[:200]!r}")
    return subject.encode("utf-8", "surrogateescape")


PUB_FORMAT = b"PUB %s %d\r\n%s\r\n"
"""A PUB without a reply subject: ``PUB_FORMAT % (subject, size, payload)``, the subject
encoded (``SUBJECT_ENCODING``) and checked."""


def pub(subject: str, payload: bytes, reply: str = "") -> bytes:
    """``PUB <subject> [reply] <size>`` and the payload, both subjects checked."""
    if not subject or holds_separator(subject):
        encode_subject(subject)  # raises, saying why
    if reply:
        if holds_separator(reply):
            encode_subject(reply, "reply subject")
        return b"PUB %s %s %d\r\n%s\r\n" % (
            subject.encode("utf-8", "surrogateescape"),
            reply.encode("utf-8", "surrogateescape"), len(payload), payload)
    return PUB_FORMAT % (subject.encode("utf-8", "surrogateescape"), len(payload), payload)


def hpub(subject: str, headers: bytes, payload: bytes, reply: str = "") -> bytes:
    """``HPUB <subject> [reply] <header size> <total size>``, the header block and the
    payload; ``headers`` is a complete block (``NATS/1.0\\r\\n...\\r\\n\\r\\n``)."""
    if not headers.startswith(b"NATS/1.0") or not headers.endswith(b"\r\n\r\n"):
        raise ValueError("headers must be a NATS/1.0 block ending with an empty line")
    sizes = b"%d %d" % (len(headers), len(headers) + len(payload))
    target = encode_subject(subject)
    if reply:
        target += b" " + encode_subject(reply, "reply subject")
    return b"HPUB %s %s\r\n%s%s\r\n" % (target, sizes, headers, payload)


class Headers(NamedTuple):
    """A parsed NATS header block."""

    status: int
    """The status of the first line (``NATS/1.0 404 Message Not Found``), else 0."""
    description: str
    fields: dict[str, str]
    """Each header's first value, by its name as sent."""


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """A header block for HPUB: ``NATS/1.0``, one ``Name: value`` line each, a blank line."""
    lines = [b"NATS/1.0"]
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n") or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent")
        lines.append(f"{name}: {value}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_headers(block: bytes) -> Headers:
    """Read a header block as the server sends it in an HMSG (status line, then fields)."""
    lines = block.decode("utf-8", "replace").split("\r\n")
    first = lines[0].split(None, 2) if lines else []
    status = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
    description = first[2] if len(first) > 2 else ""
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            fields.setdefault(name.strip(), value.strip())
    return Headers(status, description, fields)


def sub(subject: str, sid: int, queue: str = "") -> bytes:
    """``SUB <subject> [queue] <sid>``."""
    if queue:
        return b"SUB %s %s %d\r\n" % (encode_subject(subject), encode_subject(queue, "queue"),
                                      sid)
    return b"SUB %s %d\r\n" % (encode_subject(subject), sid)


def unsub(sid: int, max_messages: int = 0) -> bytes:
    """``UNSUB <sid> [max]``."""
    if max_messages:
        return b"UNSUB %d %d\r\n" % (sid, max_messages)
    return b"UNSUB %d\r\n" % sid
