"""The baseline: what a careful engineer writes in an afternoon with nats-py.

    python baseline_worker.py NATS_URL TOKEN_URL SUBJECT

Run by the benchmark in a process of its own; it needs only nats-py and urllib3.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time


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


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    run_baseline_worker(*sys.argv[1:])
