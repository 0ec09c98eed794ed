"""The benchmark's sections; each starts its responders and stops them, also on failure."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from benchkit.closedloop import ClosedLoop
from benchkit.measure import HEADER, Bench, Result
from benchkit.native import Programs
from benchkit.pipelined import generate
from benchkit.responders import (
    WorkerProcess,
    baseline_worker,
    go_worker,
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


LABELS = {"a": "(a) token-worker, cache warm",
          "m": "(m) token-worker, named credential, cache warm",
          "c": "(c) nats-py baseline, cache warm",
          "g": "(g) Go cached worker (nats.go), cache warm",
          "n": "(n) null responder (C, no work)"}
NAMES = {"a": "token-worker (a)", "m": "named (m)", "c": "nats-py baseline (c)",
         "g": "Go cached worker (g)", "n": "null responder (n)"}
SUBJECTS = {"a": "bench.a", "m": "bench.named.bench-000", "c": "bench.c", "g": "bench.g",
            "n": "bench.n"}
"""Each responder side by side on its own subject (the named worker serves bench.named.*)."""

UNBUDGETED = {"IDP_CLIENT_RATE": "100000", "IDP_CLIENT_BURST": "1000000",
              "IDP_MAX_CALLS_PER_SECOND": "100000"}
"""The bulkheads that bound IdP calls, opened as far as they go: for measuring the IdP path."""

Runs = dict[tuple[str, int], list[Result]]
"""The results of every round, by responder and concurrency, in round order."""


@dataclass
class Setup:
    """What the sections share."""

    bench: Bench
    programs: Programs
    requests: int
    """Per run (a tenth of it at concurrency 1)."""
    rounds: int
    directory: str
    """A temporary directory, removed at the end."""
    connections: int = 2
    """NATS connections of the closed-loop generator."""
    quick: bool = False
    """A smoke run: the memory and requester sections shrink too."""
    generator_threads: int | None = None
    """GOMAXPROCS of the closed-loop generator (None: Go's default)."""


def side_by_side(setup: Setup) -> dict[str, Callable[[], WorkerProcess]]:
    """How to start (a), (m), (c), (g) and (n); (g) and (n) when they were built."""
    nats, idp, programs = setup.bench.nats, setup.bench.idp, setup.programs
    starts: dict[str, Callable[[], WorkerProcess]] = {
        "a": lambda: token_worker(nats, idp, TOKEN_SUBJECT=SUBJECTS["a"]),
        "m": lambda: token_worker(nats, idp, TOKEN_SUBJECT="bench.m",
                                  NAMED_SUBJECT="bench.named",
                                  CREDENTIALS_DIR=credentials_dir(setup.directory)),
        "c": lambda: baseline_worker(nats, idp, SUBJECTS["c"])}
    if programs.go_worker:
        go_binary = programs.go_worker
        starts["g"] = lambda: go_worker(go_binary, nats, idp, SUBJECTS["g"])
    if programs.null_responder:
        null_binary = programs.null_responder
        starts["n"] = lambda: null_responder(null_binary, nats, SUBJECTS["n"])
    return starts


def alternate(setup: Setup, levels: Sequence[int],
              measure: Callable[[str, WorkerProcess, int], Result]) -> Runs:
    """Every responder started, answering and warm (each of the 100 clients asked once),
    then measured in turn at each concurrency, ``setup.rounds`` times, so all see the
    same machine; each round starts one responder further down the list, so none is
    always first after the previous concurrency's last run."""
    bench, runs = setup.bench, {}
    with running(side_by_side(setup)) as workers:
        for name, worker in workers.items():
            bench.wait_serving(worker, SUBJECTS[name])
            warm(bench, name)
        order = list(workers)
        for concurrency in levels:
            for round_ in range(setup.rounds):
                shift = round_ % len(order)
                for name in order[shift:] + order[:shift]:
                    result = measure(name, workers[name], concurrency)
                    runs.setdefault((name, concurrency), []).append(result)
    return runs


def warm(bench: Bench, name: str) -> None:
    """Each of the 100 clients asked once, so the runs measure a warm cache."""
    make = named_payloads if name == "m" else payloads
    warmed = generate(bench.nats.port, make(len(CLIENTS)), 8, SUBJECTS[name], 1)
    if warmed.errors:  # a run that fetches tokens would not measure a warm cache
        raise RuntimeError(f"{LABELS[name]}: {warmed.errors} of the {len(CLIENTS)} "
                           "warm-up requests got no token")


def median_round(runs: Runs, name: str, concurrency: int) -> Result:
    """The round whose rate is the median: its row is the table's, its p99 the one quoted."""
    results = sorted(runs[(name, concurrency)], key=lambda r: r.rate)
    return results[len(results) // 2]


def table(runs: Runs, levels: Sequence[int]) -> None:
    """One row per responder and concurrency: the median round by rate."""
    print(HEADER)
    for name, label in LABELS.items():
        for concurrency in levels:
            if (name, concurrency) in runs:
                print(median_round(runs, name, concurrency).row(label, concurrency))
    for (name, concurrency), results in runs.items():
        for round_, result in enumerate(results, 1):
            if result.load.errors:
                print(f"errors of {LABELS[name]} at {concurrency}, round {round_}: "
                      f"{result.load.errors} (the first: {result.load.first_error or '?'})")


def pipelined(setup: Setup) -> None:
    """The pipelined generator (pipelined.py) against (a), (m), (c), (g) and (n)."""
    bench, levels = setup.bench, (1, 16, 64)
    print(f"\nPipelined generator: {bench.generators} processes of one raw-protocol connection "
          f"each, cache warm, {setup.requests:,} requests per run "
          f"({setup.requests // 10:,} at concurrency 1), {rounds(setup.rounds)}:")

    def measure(name: str, worker: WorkerProcess, concurrency: int) -> Result:
        count = setup.requests // 10 if concurrency == 1 else setup.requests
        bodies = (named_payloads if name == "m" else payloads)(count)
        return bench.pipelined(worker, bodies, concurrency, SUBJECTS[name])

    runs = alternate(setup, levels, measure)
    table(runs, levels)
    ratios(runs, levels, setup.rounds)
    headroom(runs, (16, 64), "pipelined")  # at 1 the round trip's latency bounds every rate


def closed_loop(setup: Setup) -> None:
    """The closed-loop generator (closedloop.py) against (a), (m), (c), (g) and (n)."""
    bench, levels = setup.bench, (16, 64)
    if setup.programs.closed_loop is None:
        print("\nClosed loop: skipped (its generator is a Go program, not built: see above)")
        return
    generator = ClosedLoop(setup.programs.closed_loop, bench.nats.port, setup.connections,
                           setup.generator_threads)
    threads = (f"GOMAXPROCS {setup.generator_threads}" if setup.generator_threads
               else "Go's default threads")
    print(f"\nClosed loop: independent requesters, each waiting for its reply, over "
          f"{setup.connections} NATS connections (nats.go, {threads}), {len(CLIENTS)} "
          f"clients, cache warm, {setup.requests:,} requests per run, "
          f"{rounds(setup.rounds)}:")

    def measure(name: str, worker: WorkerProcess, concurrency: int) -> Result:
        return bench.measure(worker, setup.requests, lambda: generator.run(
            SUBJECTS[name], setup.requests, concurrency, named=name == "m"))

    runs = alternate(setup, levels, measure)
    table(runs, levels)
    ratios(runs, levels, setup.rounds)
    closed_loop_targets(runs)
    headroom(runs, levels, "closed-loop")


def ratio(runs: Runs, x: str, y: str, concurrency: int, measure: Callable[[Result], float]
          ) -> tuple[float, list[float]]:
    """The median over rounds of ``measure`` of x / y (round i against round i), and each
    round's."""
    each = [measure(p) / measure(q) if measure(q) else float("nan")  # a run below a tick
            for p, q in zip(runs[(x, concurrency)], runs[(y, concurrency)], strict=True)]
    return statistics.median(each), each


def rate(result: Result) -> float:
    return result.rate


def cpu(result: Result) -> float:
    return result.cpu_per_request


def ratios(runs: Runs, levels: Sequence[int], count: int) -> None:
    """token-worker against the baseline and the Go worker, named against inline."""
    how = "medians of the rounds' ratios" if count > 1 else "one round"
    print(f"\nRatios ({how}; req/s: higher is better; CPU per request: lower is better):")
    for y in ("c", "g"):
        if (y, levels[0]) not in runs:
            continue
        print(f"{NAMES['a']} / {NAMES[y]}:")
        for concurrency in levels:
            r, each = ratio(runs, "a", y, concurrency, rate)
            c, each_cpu = ratio(runs, "a", y, concurrency, cpu)
            p99 = median_round(runs, "a", concurrency).percentile(0.99)
            print(f"  concurrency {concurrency:>2}: req/s a/{y} {r:.2f}x (rounds: "
                  f"{_each(each)}), CPU per request a/{y} {c:.2f}x (rounds: "
                  f"{_each(each_cpu)}), p99 of (a) {p99:.2f} ms (its table row's)")
    print("Named (m) / inline (a) (the cost of a named request):")
    for concurrency in levels:
        r, _ = ratio(runs, "m", "a", concurrency, rate)
        c, _ = ratio(runs, "m", "a", concurrency, cpu)
        print(f"  concurrency {concurrency:>2}: req/s m/a {r:.2f}x, CPU per request m/a {c:.2f}x")


def rounds(count: int) -> str:
    return "one round" if count == 1 else f"median of {count} alternating rounds"


def _each(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def headroom(runs: Runs, levels: Sequence[int], scenario: str) -> None:
    """Whether the generator could be the ceiling: the null responder, through the same
    generator, must reach at least twice token-worker's rate."""
    if ("n", levels[0]) not in runs:
        print(f"Generator headroom ({scenario}): not shown, no null responder (see above)")
        return
    print(f"Generator headroom ({scenario}): null responder (n) / token-worker (a) req/s, "
          "needed at least 2x:")
    for concurrency in levels:
        r, each = ratio(runs, "n", "a", concurrency, rate)
        generator = statistics.median(x.generator_cpu_per_request
                                      for x in runs[("a", concurrency)])
        verdict = ("the generator is not the ceiling" if r >= 2 else
                   "NOT shown: the generator or the machine may be the ceiling")
        print(f"  concurrency {concurrency:>2}: {r:.2f}x (rounds: {_each(each)}): {verdict}; "
              f"generator CPU {generator:.1f} µs per request of (a)")


def closed_loop_targets(runs: Runs) -> None:
    """The hot path's targets, closed loop, checked on this run's medians."""
    checks: list[tuple[str, bool]] = []
    if ("g", 16) in runs:
        value, _ = ratio(runs, "a", "g", 16, cpu)
        checks.append((f"CPU per request a/g at 16 <= 1.3x: {value:.2f}x", value <= 1.3))
    value, _ = ratio(runs, "a", "c", 16, cpu)
    checks.append((f"CPU per request a/c at 16 <= 0.6x: {value:.2f}x", value <= 0.6))
    for concurrency, floor in ((16, 1.3), (64, 1.15)):
        value, _ = ratio(runs, "a", "c", concurrency, rate)
        checks.append((f"req/s a/c at {concurrency} >= {floor}x: {value:.2f}x", value >= floor))
    p99 = max(median_round(runs, "a", c).percentile(0.99) for c in (16, 64))
    checks.append((f"p99 of (a) < 3 ms: {p99:.2f} ms", p99 < 3))
    errors = sum(x.load.errors for x in runs[("a", 16)] + runs[("a", 64)])
    checks.append((f"no errors for (a): {errors}", errors == 0))
    print("Targets (closed loop, on this run's medians):")
    for text, ok in checks:
        print(f"  {text}, {'met' if ok else 'NOT met'}")


def cache_off(setup: Setup) -> None:
    """token-worker with its cache off: every request goes to the IdP (one Node process)."""
    bench, count = setup.bench, min(setup.requests, 3000)
    print(f"\nCache off: every request goes to the IdP, {count:,} requests per run, "
          "pipelined generator (the per-client budgets and the replica's IdP ceiling "
          "lifted, or they would answer most of them):")
    print(HEADER)
    start = {"b": lambda: token_worker(bench.nats, bench.idp, CACHE_ENABLED="false",
                                       **UNBUDGETED)}
    with running(start) as workers:
        bench.wait_serving(workers["b"])
        for concurrency in (1, 16, 64):
            result = bench.pipelined(workers["b"], payloads(count), concurrency)
            print(result.row("(b) token-worker, cache off", concurrency), flush=True)


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
