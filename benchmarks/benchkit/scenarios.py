"""The benchmark's sections; each starts its responders and stops them, also on failure."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from benchkit.measure import HEADER, Bench, Result
from benchkit.pipelined import generate
from benchkit.responders import (
    WorkerProcess,
    baseline_worker,
    null_responder,
    token_worker,
)
from benchkit.workload import CLIENTS, credentials_dir, named_payloads, payloads

from tests.integration.processes import IdpServer, NatsServer


@contextlib.contextmanager
def running(starts: dict[str, Callable[[], WorkerProcess]]) -> Iterator[dict[str, WorkerProcess]]:
    """The responders started in order; every one started is stopped on the way out."""
    with contextlib.ExitStack() as stack:
        workers = {}
        for name, start in starts.items():
            worker = start()
            stack.callback(worker.stop)
            workers[name] = worker
        yield workers


def throughput(bench: Bench, requests: int, rounds: int, null_binary: str | None,
               directory: str) -> None:
    """(a), (m), (c) and (n) run side by side on their own subjects and are measured in
    alternation, ``rounds`` times each, so all see the same machine; each row is the
    median round by rate, and the ratios are medians over the rounds."""
    nats, idp = bench.nats, bench.idp
    subjects = {"a": "bench.a", "m": "bench.named.bench-000", "c": "bench.c", "n": "bench.n"}
    labels = {"a": "(a) token-worker, cache warm", "c": "(c) nats-py baseline, cache warm",
              "m": "(m) token-worker, named credential, cache warm",
              "n": "(n) null responder (C, no work)"}
    bodies: dict[str, Callable[[int], list[bytes]]] = {"m": named_payloads}
    starts: dict[str, Callable[[], WorkerProcess]] = {
        "a": lambda: token_worker(nats, idp, TOKEN_SUBJECT=subjects["a"]),
        "m": lambda: token_worker(nats, idp, TOKEN_SUBJECT="bench.m",
                                  NAMED_SUBJECT="bench.named",
                                  CREDENTIALS_DIR=credentials_dir(directory)),
        "c": lambda: baseline_worker(nats, idp, subjects["c"])}
    if null_binary:
        starts["n"] = lambda: null_responder(null_binary, nats, subjects["n"])
    levels = (1, 16, 64)
    runs: dict[tuple[str, int], list[Result]] = {}
    print(HEADER)
    with running(starts) as workers:
        for name, worker in workers.items():
            bench.wait_serving(worker, subjects[name])
            make = bodies.get(name, payloads)
            generate(nats.port, make(len(CLIENTS)), 8, subjects[name], 1)  # warm caches
        for concurrency in levels:
            count = requests // 10 if concurrency == 1 else requests
            for _ in range(rounds):
                for name, worker in workers.items():
                    runs.setdefault((name, concurrency), []).append(bench.pipelined(
                        worker, bodies.get(name, payloads)(count), concurrency,
                        subjects[name]))
    for name in starts:
        for concurrency in levels:
            results = sorted(runs[(name, concurrency)], key=lambda r: r.rate)
            print(results[len(results) // 2].row(labels[name], concurrency))
    with running({"b": lambda: token_worker(nats, idp, CACHE_ENABLED="false")}) as workers:
        bench.wait_serving(workers["b"])
        for concurrency in levels:
            result = bench.pipelined(workers["b"], payloads(min(requests, 3000)), concurrency)
            print(result.row("(b) token-worker, cache off", concurrency), flush=True)
    ratios(runs, levels, rounds)


def ratios(runs: dict[tuple[str, int], list[Result]], levels: Sequence[int],
           rounds: int) -> None:
    print(f"\nRatios token-worker (a) / nats-py baseline (c), medians of {rounds} alternating "
          "rounds (req/s: higher is better; CPU per request: lower is better):")
    for concurrency in levels:
        a, c = runs[("a", concurrency)], runs[("c", concurrency)]
        rate = statistics.median(x.rate / y.rate for x, y in zip(a, c, strict=True))
        cpu = statistics.median(x.cpu_per_request / y.cpu_per_request
                                for x, y in zip(a, c, strict=True))
        p99 = statistics.median(x.percentile(0.99) for x in a)
        print(f"  concurrency {concurrency:>2}: req/s a/c {rate:.2f}x "
              f"(rounds: {', '.join(f'{x.rate / y.rate:.2f}' for x, y in zip(a, c, strict=True))}),"
              f" CPU per request a/c {cpu:.2f}x, p99 of (a) {p99:.2f} ms")
    print("  targets at concurrency 16: req/s a/c >= 1.25x, CPU per request a/c <= 0.75x, "
          "p99 of (a) < 3 ms")
    print("Named (m) / inline (a), same medians (the cost of a named request):")
    for concurrency in levels:
        a, m = runs[("a", concurrency)], runs[("m", concurrency)]
        rate = statistics.median(x.rate / y.rate for x, y in zip(m, a, strict=True))
        cpu = statistics.median(x.cpu_per_request / y.cpu_per_request
                                for x, y in zip(m, a, strict=True))
        print(f"  concurrency {concurrency:>2}: req/s m/a {rate:.2f}x, "
              f"CPU per request m/a {cpu:.2f}x")


def cold_cache(bench: Bench) -> None:
    print("\nCold cache, IdP answering in 50 ms, 2,000 requests over 100 clients, "
          "concurrency 64:")
    print(HEADER)
    starts: tuple[tuple[str, Callable[[NatsServer, IdpServer], WorkerProcess]], ...] = (
        ("(a) token-worker", token_worker), ("(c) nats-py baseline", baseline_worker))
    for label, start in starts:
        with contextlib.ExitStack() as stack:
            slow_idp = IdpServer(clients=CLIENTS, delay_ms=50).start()
            stack.callback(slow_idp.stop)
            worker = start(bench.nats, slow_idp)
            stack.callback(worker.stop)
            bench.wait_serving(worker)  # one IdP call for bench-000, counted below
            result = bench.pipelined(worker, payloads(2000)[1:] + payloads(1), 64,
                                     idp=slow_idp)
            result.idp_calls = slow_idp.token_calls()
            print(result.row(label, 64), flush=True)


def memory(bench: Bench, keys: int) -> None:
    print(f"\nMemory under churn: {keys:,} distinct keys through a cache of 500 entries:")
    start = {"a": lambda: token_worker(bench.nats, bench.idp, CACHE_MAX_ENTRIES="500")}
    with running(start) as workers:
        worker = workers["a"]
        bench.wait_serving(worker)
        bodies = payloads(keys, scope_churn=keys)
        readings = []
        step = keys // 5
        for first in range(0, keys, step):
            bench.pipelined(worker, bodies[first:first + step], 16)
            readings.append(worker.rss_mib())
        print("RSS MiB after each fifth: " + ", ".join(f"{r:.1f}" for r in readings))
        growth = (readings[-1] - readings[1]) / readings[1] * 100
        print(f"growth from the 2nd to the 5th fifth: {growth:+.1f}% (target: within 10%)")


def requester(bench: Bench, calls: int) -> None:
    from token_worker import TokenClient

    print("\nRequester side: TokenClient.get_token from 16 threads over 100 clients:")
    with running({"a": lambda: token_worker(bench.nats, bench.idp)}) as workers:
        bench.wait_serving(workers["a"])
        for cache in (True, False):
            with TokenClient(bench.nats.url, cache=cache) as client:
                for c in CLIENTS:  # warm both caches
                    client.get_token(c["client_id"], c["client_secret"])
                count = calls * 20 if cache else calls
                started = time.perf_counter()
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(lambda i: client.get_token(
                        CLIENTS[i % 100]["client_id"], CLIENTS[i % 100]["client_secret"]),
                        range(count)))
                elapsed = time.perf_counter() - started
                print(f"  client cache {'on ' if cache else 'off'}: {count / elapsed:,.0f} "
                      f"calls/s ({client.requests_sent - len(CLIENTS)} sent over NATS "
                      f"for {count:,} calls)")
