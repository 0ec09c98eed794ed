"""The Python work of a cache hit, alone: no socket, no server, no other process.

A real :class:`~token_worker.nats.connection.NatsConnection` (parser, reader, outbox,
publish) with a socket that only counts what it is given, the worker's dispatcher, reply
path and metrics, and the token handler over a broker whose cache is warm (its issuer the
tests' fake IdP, asked once per client). Reads of ``batch`` requests are fed to the
reader as if they had come from the server, and the time per request is CPU time
(``time.process_time``) over many reads. It measures exactly the interpreter's share of
the hot path, so a change to it shows here without the noise of the machine, and a
regression cannot hide behind system calls.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from benchkit.workload import CLIENTS, payloads
from tests.fakes import FakeIssuer
from token_worker.config import load_config
from token_worker.metrics import Metrics
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.nats.subscriptions import Subscription
from token_worker.serve.dispatch import Dispatcher, Route, unsent_to
from token_worker.serve.pool import BoundedPool
from token_worker.serve.replying import ReplySender, Warnings
from token_worker.serve.token_handler import TokenHandler
from token_worker.tokens.broker import TokenBroker
from token_worker.tokens.bulkheads import Guards
from token_worker.tokens.cache import TokenCache


class _CountingSocket:
    """Takes writes and counts them; nothing is sent."""

    def __init__(self) -> None:
        self.writes = 0
        self.bytes = 0

    def sendall(self, data: bytes) -> None:
        self.writes += 1
        self.bytes += len(data)


@dataclass
class InProcess:
    """µs of CPU per cache hit, the interpreter's share only."""

    microseconds: float
    requests: int
    replies_bytes: int


def measure(requests: int = 200_000, batch: int = 4) -> InProcess:
    """Serve ``requests`` cache hits in reads of ``batch`` messages each."""
    import logging

    logging.getLogger("token_worker").setLevel(logging.WARNING)
    config = load_config([])
    metrics = Metrics()
    issuer = FakeIssuer(expires_in=3600)
    cache = TokenCache(max_entries=config.cache.max_entries,
                       per_client=config.cache.max_entries_per_client,
                       expiry_margin=config.cache.expiry_margin,
                       refresh_ahead=config.cache.refresh_ahead, now=time.time,
                       max_ttl=config.cache.max_ttl)
    broker = TokenBroker(issuer, cache, auth_method=config.idp.auth_method,
                         guards=Guards.from_defaults(), metrics=metrics)
    handler = TokenHandler(broker, default_scope=config.idp.default_scope,
                           max_payload=config.max_payload, deadline=config.idp.deadline)
    connection = NatsConnection(config.nats, "bench")
    sock = _CountingSocket()
    connection._sock = sock  # type: ignore[assignment]
    connection._state = State.CONNECTED
    connection._reader_ident = threading.get_ident()
    routes = [Route("token", "token.request", handler)]
    warnings = Warnings(logging.getLogger("bench"))
    dispatcher = Dispatcher(routes, pool=BoundedPool(2, 10), max_payload=config.max_payload,
                            warnings=warnings,
                            replies=ReplySender(connection, metrics=metrics,
                                                unsent=unsent_to(routes), warnings=warnings))
    served = dispatcher.served[0]
    connection._subscriptions[1] = Subscription(
        1, "token.request", "token-workers", served.on_message)
    bodies = payloads(len(CLIENTS))
    frames = [b"MSG token.request 1 _INBOX.bench.%d %d\r\n%s\r\n" % (n, len(body), body)
              for n, body in enumerate(bodies)]
    reads = [b"".join(frames[(i + j) % len(frames)] for j in range(batch))
             for i in range(0, len(frames), batch)]
    for read in reads:  # warm: each client's token fetched once
        connection._handle(connection._parser.feed(read))
    assert issuer.calls == len(CLIENTS), issuer.calls
    rounds = max(1, requests // (len(reads) * batch))
    handle, feed = connection._handle, connection._parser.feed
    started = time.process_time()
    for _ in range(rounds):
        for read in reads:
            handle(feed(read))
    spent = time.process_time() - started
    served_requests = rounds * len(reads) * batch
    assert issuer.calls == len(CLIENTS), "a hit went to the IdP"
    return InProcess(spent / served_requests * 1e6, served_requests, sock.bytes)


if __name__ == "__main__":
    import sys

    result = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
    print(f"{result.microseconds:.2f} µs of CPU per cache hit over {result.requests:,} "
          f"requests (the interpreter's share, no socket)")
