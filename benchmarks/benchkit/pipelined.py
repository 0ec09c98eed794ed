"""The pipelined load generator: the raw NATS protocol on plain sockets, in several processes.

Each process has one connection: it subscribes to its own inbox wildcard
(``_INBOX.<random>.*``), publishes requests with reply subjects
(``PUB <subject> _INBOX.<random>.<n>``), keeps its share of the concurrency outstanding, and
for every read sends as many new requests as replies arrived, in one write. So it batches
more messages per read and write than independent requesters do (see closedloop.py for
those), and costs a few microseconds of CPU per request.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import socket
import time
from array import array
from typing import Any

from benchkit.workload import REPLY_WAIT, Load


def _connect(port: int, name: str, inbox: bytes) -> socket.socket:
    """A NATS connection subscribed to ``inbox``.*, confirmed by a PONG."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = json.dumps({"verbose": False, "pedantic": False, "echo": False,
                          "protocol": 1, "name": name}).encode()
    sock.sendall(b"CONNECT " + connect + b"\r\nSUB " + inbox + b"* 1\r\nPING\r\n")
    seen = b""
    while b"PONG\r\n" not in seen:
        data = sock.recv(65536)
        if not data or b"-ERR" in data:
            raise RuntimeError(f"nats-server refused the generator: {data[:200]!r}")
        seen += data
    return sock


def _generator(port: int, subject: bytes, bodies: list[bytes], window: int,  # noqa: PLR0912, PLR0917
               start: Any, results: Any) -> None:
    """One generator process: keep ``window`` requests outstanding on one connection,
    send as many new ones as replies arrived, in one write, and time each round trip.
    One loop on purpose: a function call per reply would cost the generator what it
    measures."""
    inbox = b"_INBOX.%s." % os.urandom(6).hex().encode()
    sock = _connect(port, f"bench-generator-{os.getpid()}", inbox)
    count, prefix = len(bodies), len(inbox)
    commands = [b"PUB %s %s%d %d\r\n%s\r\n" % (subject, inbox, i, len(body), body)
                for i, body in enumerate(bodies)]
    sent_at = array("d", bytes(8 * count))
    latencies = array("d", bytes(8 * count))
    errors = done = 0
    start.wait(REPLY_WAIT)  # every generator connected and subscribed: start together
    cpu_started, started = time.process_time(), time.perf_counter()
    sent = min(window, count)
    now = time.perf_counter()
    for i in range(sent):
        sent_at[i] = now
    sock.sendall(b"".join(commands[:sent]))
    buffer = b""
    while done < count:
        try:
            data = sock.recv(262144)
        except TimeoutError:
            errors += count - done
            break
        if not data:
            raise RuntimeError("nats-server closed the generator's connection")
        now = time.perf_counter()
        buffer = buffer + data if buffer else data
        pos = replies = 0
        while True:
            eol = buffer.find(b"\r\n", pos)
            if eol < 0:
                break
            if buffer.startswith((b"MSG ", b"HMSG "), pos):
                fields = buffer[pos:eol].split()
                end = eol + 2 + int(fields[-1])
                if end + 2 > len(buffer):
                    break
                index = int(fields[1][prefix:])
                latencies[index] = now - sent_at[index]
                if buffer.find(b'"access_token"', eol + 2, end) < 0:
                    errors += 1
                replies += 1
                pos = end + 2
            else:
                if buffer.startswith(b"PING", pos):
                    sock.sendall(b"PONG\r\n")
                elif buffer.startswith(b"-ERR", pos):
                    raise RuntimeError(buffer[pos:eol].decode(errors="replace"))
                pos = eol + 2
        buffer = buffer[pos:]
        done += replies
        more = min(replies, count - sent)
        if more:
            now = time.perf_counter()
            for i in range(sent, sent + more):
                sent_at[i] = now
            sock.sendall(b"".join(commands[sent:sent + more]))
            sent += more
    finished = time.perf_counter()
    results.put((started, finished, latencies[:done].tobytes(), errors,
                 time.process_time() - cpu_started))
    sock.close()


def generate(port: int, bodies: list[bytes], concurrency: int, subject: str,
             processes: int) -> Load:
    """Send ``bodies`` with ``concurrency`` outstanding, spread over up to ``processes``
    generator processes (each one connection), which start together once all are
    subscribed; timed from the first start to the last end. A reply that does not carry
    an access token, or none within REPLY_WAIT, counts as an error."""
    processes = max(1, min(processes, concurrency, len(bodies)))
    context = multiprocessing.get_context("fork")
    start, results = context.Barrier(processes), context.Queue()
    children = []
    for p in range(processes):
        window = concurrency // processes + (1 if p < concurrency % processes else 0)
        share = bodies[p::processes]
        children.append(context.Process(target=_generator, daemon=True, args=(
            port, subject.encode(), share, window, start, results)))
    outcomes = []
    try:
        for child in children:
            child.start()
        while len(outcomes) < len(children):
            try:
                outcomes.append(results.get(timeout=1))
            except queue.Empty:
                running = sum(child.exitcode is None for child in children)
                if running < len(children) - len(outcomes):  # one ended without a result
                    try:
                        outcomes.append(results.get(timeout=2))  # unless it is on its way
                    except queue.Empty:
                        raise RuntimeError("a load generator process failed (its traceback "
                                           "is above)") from None
        for child in children:
            child.join(10)
    finally:
        for child in children:  # none is left behind, whatever happened
            if child.is_alive():
                child.terminate()
                child.join(5)
    latencies: list[float] = []
    for outcome in outcomes:
        latencies.extend(array("d", outcome[2]))
    seconds = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    return Load(seconds, latencies, sum(o[3] for o in outcomes), sum(o[4] for o in outcomes))
