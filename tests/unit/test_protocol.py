"""The NATS protocol parser and builders, on byte strings: no socket, no server.

Whatever bytes arrive, the parser returns events and never raises; a stream that is not
the protocol ends in exactly one ProtocolError. Hypothesis checks that over generated
streams (valid ones chopped anywhere, and arbitrary bytes).
"""

from __future__ import annotations

import os
import random
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from token_worker.nats import protocol
from token_worker.nats.protocol import (
    Control,
    Info,
    Message,
    Parser,
    ProtocolError,
    ServerError,
    Skipped,
)


def parse(data: bytes) -> list[protocol.Event]:
    return Parser().feed(data)


def parse_split(data: bytes, cuts: list[int], max_control_line: int = protocol.MAX_CONTROL_LINE
                ) -> list[protocol.Event]:
    parser = Parser(max_control_line)
    events: list[protocol.Event] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events += parser.feed(data[start:cut])
        start = cut
    return events


# --- every kind of line --------------------------------------------------------------


def test_msg_without_and_with_reply():
    events = parse(b"MSG a.b 7 5\r\nhello\r\nMSG a.b 7 _INBOX.x 2\r\nhi\r\n")
    assert events == [(7, Message("a.b", "", b"hello")), (7, Message("a.b", "_INBOX.x", b"hi"))]


def test_hmsg_without_and_with_reply_and_status():
    headers = b"NATS/1.0\r\nTraceparent: 00-1\r\n\r\n"
    no_responders = b"NATS/1.0 503\r\n\r\n"
    stream = (b"HMSG s 1 %d %d\r\n%sbody\r\n" % (len(headers), len(headers) + 4, headers)
              + b"HMSG s 2 r.1 %d %d\r\n%s\r\n" % (len(no_responders), len(no_responders),
                                                   no_responders))
    assert parse(stream) == [
        (1, Message("s", "", b"body", 0, headers)),
        (2, Message("s", "r.1", b"", 503, no_responders)),
    ]


def test_empty_payload_and_payload_holding_crlf_and_protocol_words():
    payload = b"\r\nPING\r\nMSG x 1 1\r\n"
    events = parse(b"MSG s 1 0\r\n\r\nMSG s 1 %d\r\n%s\r\n" % (len(payload), payload))
    assert events == [(1, Message("s", "", b"")), (1, Message("s", "", payload))]


def test_control_lines():
    events = parse(b"PING\r\nPONG\r\n+OK\r\n-ERR 'Permissions Violation for Publish to x'\r\n"
                   b'INFO {"max_payload": 1048576}\r\n-ERR\r\n')
    assert events == [Control.PING, Control.PONG, Control.OK,
                      ServerError("Permissions Violation for Publish to x"),
                      Info({"max_payload": 1048576}), ServerError("(no text)")]


def test_lowercase_ops():
    events = parse(b"ping\r\npong\r\n+ok\r\nmsg s 1 2\r\nhi\r\nhmsg s 2 12 12\r\n"
                   b"NATS/1.0\r\n\r\n\r\ninfo {}\r\n")
    assert events == [Control.PING, Control.PONG, Control.OK, (1, Message("s", "", b"hi")),
                      (2, Message("s", "", b"", 0, b"NATS/1.0\r\n\r\n")), Info({})]


@pytest.mark.parametrize("line", [b"INFO {not json", b"INFO [1, 2]", b"INFO \xff\xfe",
                                  b"INFO " + b"[" * 10_000])
def test_unreadable_info_is_an_event_not_a_crash(line):
    events = Parser(max_control_line=1 << 20).feed(line + b"\r\nPING\r\n")
    assert isinstance(events[0], Info) and events[0].info is None and events[0].error
    assert events[1] is Control.PING


def test_garbage_header_blocks_and_spoofed_status_lines():
    cases = {
        b"garbage\x00\xff no crlf at all": 0,
        b"NATS/1.0 503\r\n\r\n": 503,
        b"NATS/1.0 5033\r\n\r\n": 0,  # not a status code
        b"NATS/1.0 99999999999999999999999999999\r\n\r\n": 0,
        b"Status: 503\r\nNATS/1.0 503\r\n\r\n": 0,  # only the first line counts
        b"HTTP/1.1 503\r\n\r\n": 0,
        b"": 0,
    }
    for headers, status in cases.items():
        stream = b"HMSG s 1 r %d %d\r\n%sp\r\n" % (len(headers), len(headers) + 1, headers)
        assert parse(stream) == [(1, Message("s", "r", b"p", status, headers))], headers


def test_long_reply_subject():
    reply = "_INBOX." + "r" * 3_000
    events = parse(b"MSG token.request 1 %s 2\r\n{}\r\n" % reply.encode())
    assert events == [(1, Message("token.request", reply, b"{}"))]


def test_non_utf8_subjects_round_trip_to_the_same_bytes():
    raw_reply = b"_INBOX.\xff\xfe\xc3(.1"
    raw_subject = b"token.\x80request"
    [(sid, message)] = parse(b"MSG %s 3 %s 2\r\n{}\r\n" % (raw_subject, raw_reply))
    assert sid == 3 and message.payload == b"{}"
    assert protocol.pub(message.reply, b"ok") == b"PUB %s 2\r\nok\r\n" % raw_reply
    assert protocol.pub("x", b"ok", reply=message.subject) == b"PUB x %s 2\r\nok\r\n" % raw_subject


def test_control_characters_that_are_not_separators_stay_in_the_subject():
    [(_, message)] = parse(b"MSG a\x0bb 1 r\x0cs 1\r\nx\r\n")
    assert message.subject == "a\x0bb" and message.reply == "r\x0cs"


def test_tabs_and_repeated_spaces_separate_arguments():
    assert parse(b"MSG  s\t1   r 1\r\nx\r\n") == [(1, Message("s", "r", b"x"))]


@pytest.mark.parametrize("line", [
    b"MSG s 1\r\n",                      # too few arguments
    b"MSG s 1 r x 5\r\n",                # too many
    b"MSG s 1 -5\r\n",                   # negative size
    b"MSG s x 1\r\n",                    # sid not a number
    b"MSG s 1 99999999999999999999\r\n", # huge size
    b"MSG s 1 %d\r\n" % (protocol.MAX_MESSAGE_SIZE + 1),
    b"HMSG s 1 10 5\r\n",                # headers larger than the whole
    b"HMSG s 1 5\r\n",                   # no total size
    b"MSG s 1 1\r\nxy\r\n",              # payload longer than said
    b"HELLO\r\n",                        # unknown operation
    b"\r\n",                             # empty line
    b"PINGX\r\n",
    b"INFO\r\n",
])
def test_broken_lines_end_in_one_protocol_error(line):
    events = parse(b"PING\r\n" + line + b"PING\r\n")
    assert events[0] is Control.PING
    assert len(events) == 2 and isinstance(events[1], ProtocolError), events


def test_after_a_protocol_error_nothing_more_is_yielded():
    parser = Parser()
    assert isinstance(parser.feed(b"BOGUS\r\n")[0], ProtocolError)
    assert parser.broken
    assert parser.feed(b"PING\r\n") == []


def test_overlong_control_lines_other_than_messages_break_the_stream():
    parser = Parser(max_control_line=100)
    assert parser.feed(b"-ERR " + b"e" * 50) == []  # may still end in time
    assert isinstance(parser.feed(b"e" * 60)[0], ProtocolError)
    for line in (b"-ERR " + b"e" * 200, b"INFO {" + b" " * 200 + b"}", b"MSGX" + b"s" * 200,
                 b"HMSGX" + b"s" * 200):
        [error] = Parser(max_control_line=100).feed(line + b"\r\nPING\r\n")
        assert error == ProtocolError("protocol line too long"), line


OVERLONG_REPLY = b"_INBOX." + b"r" * 70_000  # the finding: a 70 KB reply subject


@pytest.mark.parametrize("headed", [False, True])
def test_a_message_with_an_overlong_line_is_skipped_and_the_stream_goes_on(headed):
    if headed:
        headers = b"NATS/1.0\r\nA: b\r\n\r\n"
        big = b"HMSG token.request 1 %s %d %d\r\n%s{}\r\n" % (
            OVERLONG_REPLY, len(headers), len(headers) + 2, headers)
    else:
        big = b"MSG token.request 1 %s 2\r\n{}\r\n" % OVERLONG_REPLY
    small = b"MSG token.request 1 _INBOX.a 2\r\n{}\r\n"
    stream = b"PING\r\n" + small + big + small + b"PING\r\n"
    expected = [Control.PING, (1, Message("token.request", "_INBOX.a", b"{}")),
                Skipped("message line longer than 65536 bytes", len(big)),
                (1, Message("token.request", "_INBOX.a", b"{}")), Control.PING]
    assert parse(stream) == expected
    for read in (65536, 4096, 1000):
        assert parse_split(stream, list(range(0, len(stream), read))) == expected, read
    for cut in range(len(stream) - len(small) - 40, len(stream)):  # around the big end
        assert parse_split(stream, [70_000, cut]) == expected, cut


def test_a_line_of_exactly_the_limit_is_read_wherever_it_is_cut():
    line = b"MSG s 1 r%s 1" % (b"x" * 89)
    assert len(line) == 100
    stream = line + b"\r\nz\r\n"
    expected = [(1, Message("s", "r" + "x" * 89, b"z"))]
    for cut in range(len(stream) + 1):
        assert parse_split(stream, [cut], max_control_line=100) == expected, cut


def test_a_skipped_message_split_at_every_byte_boundary():
    big = b"HMSG s 1 r%s 12 15\r\nNATS/1.0\r\n\r\nabc\r\n" % (b"x" * 150)
    stream = b"PING\r\n" + big + b"MSG s 2 1\r\nz\r\n"
    expected = [Control.PING, Skipped("message line longer than 100 bytes", len(big)),
                (2, Message("s", "", b"z"))]
    for cut in range(len(stream) + 1):
        assert parse_split(stream, [cut], max_control_line=100) == expected, cut
    parser = Parser(max_control_line=100)  # and one byte at a time
    assert [event for i in range(len(stream)) for event in parser.feed(stream[i:i + 1])
            ] == expected


@pytest.mark.parametrize("big", [
    b"MSG s 1 r%s x\r\n" % (b"x" * 150),                        # size not a number
    b"MSG s 1 r%s 99999999999\r\n" % (b"x" * 150),              # huge size
    b"MSG s 1 r%s %d\r\n" % (b"x" * 150, protocol.MAX_MESSAGE_SIZE + 1),
    b"HMSG s 1 r%s 10 5\r\n" % (b"x" * 150),                    # headers larger than the whole
    b"MSG s 1 r%s%s 2\r\n" % (b"x" * 150, b" " * 100),          # sizes beyond the kept tail
    b"MSG s 1 %s\r\n" % (b"1" * 150),                           # a number cut by the tail
    b"MSG s 1 r%s 1\r\nxy\r\n" % (b"x" * 150),                  # payload longer than said
])
def test_an_overlong_message_line_without_readable_sizes_breaks_the_stream(big):
    for cuts in ([], list(range(len(big) + 1))):
        events = parse_split(b"PING\r\n" + big + b"PING\r\n", cuts, max_control_line=100)
        assert events[0] is Control.PING
        assert len(events) == 2 and isinstance(events[1], ProtocolError), events


def test_a_skipped_line_is_discarded_as_it_comes():
    """A 16 MB message line fed in 64 KiB reads: the parser holds a tail, not the line."""
    parser = Parser()
    read = b"r" * 65536
    tracemalloc.start()
    try:
        assert parser.feed(b"MSG s 1 _INBOX.") == []
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(256):
            assert parser.feed(read) == []
        held = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert held < 4 * len(read)  # a read or two in flight, never the 16 MB
    [skipped] = parser.feed(b" 3\r\nabc\r\n")
    assert skipped == Skipped("message line longer than 65536 bytes",
                              len(b"MSG s 1 _INBOX.") + 256 * len(read) + len(b" 3\r\nabc\r\n"))


def test_a_large_payload_split_over_many_reads():
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = b"MSG big 1 %d\r\n%s\r\nPING\r\n" % (len(payload), payload)
    parser = Parser()
    events = []
    for start in range(0, len(stream), 65536):
        events += parser.feed(memoryview(stream)[start:start + 65536])
    assert events == [(1, Message("big", "", payload)), Control.PING]


def test_split_at_every_byte_boundary():
    headers = b"NATS/1.0 503\r\nX: y\r\n\r\n"
    stream = (b"INFO {\"a\": 1}\r\nMSG s.1 1 2\r\nab\r\nMSG s 2 r.x 0\r\n\r\n"
              + b"HMSG s 3 r %d %d\r\n%sxyz\r\nPING\r\n-ERR 'x'\r\n+OK\r\nPONG\r\n"
              % (len(headers), len(headers) + 3, headers))
    whole = parse(stream)
    assert len(whole) == 8
    for cut in range(len(stream) + 1):
        assert parse_split(stream, [cut]) == whole, cut
    parser = Parser()  # and one byte at a time
    assert [event for i in range(len(stream)) for event in parser.feed(stream[i:i + 1])] == whole


# --- bytes out -----------------------------------------------------------------------


def test_builders():
    assert protocol.pub("a", b"xy") == b"PUB a 2\r\nxy\r\n"
    assert protocol.pub("a", b"", reply="r") == b"PUB a r 0\r\n\r\n"
    assert protocol.sub("a.*", 4) == b"SUB a.* 4\r\n"
    assert protocol.sub("a", 4, queue="q") == b"SUB a q 4\r\n"
    assert protocol.unsub(4) == b"UNSUB 4\r\n"
    assert protocol.unsub(4, 1) == b"UNSUB 4 1\r\n"
    headers = b"NATS/1.0\r\nA: b\r\n\r\n"
    assert protocol.hpub("a", headers, b"xy", reply="r") == (
        b"HPUB a r %d %d\r\n%sxy\r\n" % (len(headers), len(headers) + 2, headers))
    with pytest.raises(ValueError, match=r"NATS/1\.0 block"):
        protocol.hpub("a", b"A: b\r\n", b"")


@pytest.mark.parametrize("subject", ["", "a b", "a\tb", "a\r\nPUB x 1", "a\n"])
def test_builders_refuse_subjects_that_would_break_the_stream(subject):
    builds = [lambda: protocol.pub(subject, b""), lambda: protocol.sub(subject, 1)]
    if subject:  # an empty reply subject or queue group means none
        builds += [lambda: protocol.pub("a", b"", subject), lambda: protocol.sub("a", 1, subject)]
    for build in builds:
        with pytest.raises(protocol.BadSubject):
            build()


def test_built_messages_parse_back():
    built = protocol.pub("a.b", b"payload", reply="r.1").replace(b"PUB", b"MSG 9", 1)
    # MSG has the sid after the subject: rebuild the line the way a server would
    line, rest = built.split(b"\r\n", 1)
    _, sid, subject, reply, size = line.split(b" ")
    assert parse(b" ".join((b"MSG", subject, sid, reply, size)) + b"\r\n" + rest) == [
        (9, Message("a.b", "r.1", b"payload"))]


# --- generated streams ---------------------------------------------------------------

subjects = st.binary(min_size=1, max_size=40).filter(
    lambda b: not any(c in b for c in b" \t\r\n"))
payloads = st.binary(max_size=300)
header_blocks = st.one_of(  # (block, the status it carries)
    st.just((b"NATS/1.0\r\n\r\n", 0)),
    st.integers(100, 999).map(lambda code: (b"NATS/1.0 %d\r\n\r\n" % code, code)),
    st.binary(max_size=60).filter(lambda b: not b.startswith(b"NATS/")).map(lambda b: (b, 0)))


@st.composite
def items(draw: st.DrawFn) -> tuple[bytes, protocol.Event]:
    """One protocol item as a server would send it, and the event it must give."""
    kind = draw(st.sampled_from(["msg", "hmsg", "ping", "pong", "ok", "err", "info"]))
    if kind in ("msg", "hmsg"):
        subject, sid = draw(subjects), draw(st.integers(0, 10**9))
        reply, payload = draw(st.one_of(st.just(b""), subjects)), draw(payloads)
        target = b"%s %d%s" % (subject, sid, b" " + reply if reply else b"")
        text = (subject.decode(*protocol.SUBJECT_ENCODING),
                reply.decode(*protocol.SUBJECT_ENCODING))
        if kind == "msg":
            return (b"MSG %s %d\r\n%s\r\n" % (target, len(payload), payload),
                    (sid, Message(text[0], text[1], payload)))
        headers, status = draw(header_blocks)
        return (b"HMSG %s %d %d\r\n%s%s\r\n" % (target, len(headers),
                                               len(headers) + len(payload), headers, payload),
                (sid, Message(text[0], text[1], payload, status, headers)))
    if kind == "err":
        text = draw(st.text(alphabet="abcdefghij XYZ", min_size=1, max_size=30)).strip()
        return b"-ERR '%s'\r\n" % text.encode(), ServerError(text or "(no text)")
    if kind == "info":
        value = draw(st.integers())
        return b'INFO {"max_payload": %d}\r\n' % value, Info({"max_payload": value})
    line, event = {"ping": (b"PING", Control.PING), "pong": (b"PONG", Control.PONG),
                   "ok": (b"+OK", Control.OK)}[kind]
    return line + b"\r\n", event


PARSER_FUZZ_EXAMPLES = int(os.environ.get("PARSER_FUZZ_EXAMPLES", "1200"))
"""Cases per hypothesis test: with the 20,000 seeded chopped streams below, tens of
thousands of streams in seconds; tox's py311 environment runs 5,000 per test."""
FUZZ = settings(max_examples=PARSER_FUZZ_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.lists(items(), max_size=12), st.lists(st.integers(0, 5000), max_size=8))
def test_valid_streams_chopped_anywhere_give_the_same_events(stream_items, cuts):
    stream = b"".join(raw for raw, _ in stream_items)
    expected = [event for _, event in stream_items]
    assert parse(stream) == expected
    assert parse_split(stream, [cut % (len(stream) + 1) for cut in cuts]) == expected


@st.composite
def overlong_items(draw: st.DrawFn) -> tuple[bytes, protocol.Event]:
    """A message whose line is longer than FUZZ_LINE: skipped, with its size."""
    reply = b"_INBOX." + b"r" * draw(st.integers(FUZZ_LINE, 3 * FUZZ_LINE))
    payload = draw(payloads)
    if draw(st.booleans()):
        raw = b"MSG s %d %s %d\r\n%s\r\n" % (draw(st.integers(0, 99)), reply, len(payload),
                                              payload)
    else:
        headers, _ = draw(header_blocks)
        raw = b"HMSG\ts 1 %s %d %d\r\n%s%s\r\n" % (reply, len(headers),
                                                   len(headers) + len(payload), headers, payload)
    return raw, Skipped(f"message line longer than {FUZZ_LINE} bytes", len(raw))


FUZZ_LINE = 300


@FUZZ
@given(st.lists(st.one_of(items(), overlong_items()), max_size=8),
       st.lists(st.integers(0, 20_000), max_size=8))
def test_streams_with_skipped_messages_chopped_anywhere_give_the_same_events(stream_items, cuts):
    stream = b"".join(raw for raw, _ in stream_items)
    expected = [event for _, event in stream_items]
    assert parse_split(stream, [], FUZZ_LINE) == expected
    assert parse_split(stream, [cut % (len(stream) + 1) for cut in cuts], FUZZ_LINE) == expected


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_never_raise_and_end_in_at_most_one_error(data, cuts):
    for events in (parse(data), parse_split(data, cuts)):
        errors = [e for e in events if isinstance(e, ProtocolError)]
        assert len(errors) <= 1
        if errors:
            assert events[-1] is errors[0]


@FUZZ
@given(st.lists(items(), min_size=1, max_size=6), st.integers(0, 10_000), st.binary(max_size=8))
def test_corrupted_valid_streams_never_raise(stream_items, where, junk):
    stream = b"".join(raw for raw, _ in stream_items)
    where %= len(stream) + 1
    corrupted = stream[:where] + junk + stream[where + len(junk):]
    events = parse(corrupted)
    assert sum(isinstance(e, ProtocolError) for e in events) <= 1
    assert parse_split(corrupted, [where, where + 1]) == events


@FUZZ
@given(st.lists(st.sampled_from([b"MSG ", b"HMSG ", b"s ", b"1 ", b"-1 ", b"99999999999 ",
                                 b"\r\n", b"\t", b"x", b"\xff", b"PING", b"NATS/1.0 503",
                                 b"INFO ", b"{", b"}", b"0 ", b"3\r\nabc"]), max_size=30))
def test_protocol_shaped_noise_never_raises(pieces):
    data = b"".join(pieces)
    events = parse(data)
    assert parse_split(data, list(range(0, len(data), 3))) == events
    short = Parser(max_control_line=12).feed(data)  # over-long lines: skipped or broken
    assert parse_split(data, list(range(0, len(data), 3)), max_control_line=12) == short
    assert sum(isinstance(e, ProtocolError) for e in short) <= 1


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_arbitrary_bytes_with_a_short_line_limit_chopped_anywhere_agree(data, cuts):
    whole = Parser(max_control_line=8).feed(data)
    assert parse_split(data, cuts, max_control_line=8) == whole
    assert sum(isinstance(e, ProtocolError) for e in whole) <= 1


SAMPLE_ITEMS = [
    b"MSG token.request 1 _INBOX.a.1 2\r\n{}\r\n",
    b"MSG s 22 0\r\n\r\n",
    b"MSG \xff.s 3 \xc3(\x80 4\r\na\r\nb\r\n",
    b"HMSG s 4 r 16 20\r\nNATS/1.0 503\r\n\r\nbody\r\n",
    b"HMSG s 4 11 11\r\ngarbage\r\n\r\n\r\n",
    b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Stale Connection'\r\n",
    b'INFO {"max_payload": 1048576, "connect_urls": ["a:1"]}\r\n', b"INFO {bad\r\n",
]


def test_seeded_random_streams_chopped_anywhere():
    """20,000 more cases at plain-Python speed: streams of sample items cut at random
    points (a fixed seed: the same cases every run) give the events of the whole stream."""
    rng = random.Random(20261130)
    expected = {item: parse(item) for item in SAMPLE_ITEMS}
    assert all(len(events) == 1 and not isinstance(events[0], ProtocolError)
               for events in expected.values())
    for _ in range(20_000):
        chosen = rng.choices(SAMPLE_ITEMS, k=rng.randint(1, 10))
        stream = b"".join(chosen)
        cuts = [rng.randint(0, len(stream)) for _ in range(rng.randint(1, 6))]
        assert parse_split(stream, cuts) == [e for item in chosen for e in expected[item]]


def test_parser_keeps_up():
    """10,000 small messages in 64 KiB reads: well under a second even on a busy CI core."""
    one = b"MSG token.request 1 _INBOX.abcdefghijkl.123 60\r\n" + b"x" * 60 + b"\r\n"
    stream = one * 10_000
    parser = Parser()
    started = time.process_time()
    count = sum(len(parser.feed(stream[i:i + 65536])) for i in range(0, len(stream), 65536))
    assert count == 10_000
    assert time.process_time() - started < 1.0
