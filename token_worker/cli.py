"""Command-line entry points: ``token-worker`` (and ``bin/token-worker``) and ``token-request``.

Exit codes say what happened, so Kubernetes and operators can tell failures apart:
0 stopped on request (SIGTERM/SIGINT, drained), 2 bad configuration or usage,
3 NATS unreachable (connecting or reconnecting gave up), 4 a token request failed
(``token-request`` only), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from token_worker.config import SETTINGS, NatsConfig, load_config, parse_nats_urls
from token_worker.errors import ClientClosed, ConfigError, ReconnectGaveUp, TokenRequestFailed
from token_worker.logs import configure_logging

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_NATS_GAVE_UP = 3
EXIT_REQUEST_FAILED = 4

log = logging.getLogger("token_worker")


def main(argv: Sequence[str] | None = None) -> int:
    """Run a worker until signalled; return the process exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        config = load_config(arguments)
    except ConfigError as error:
        print(f"token-worker: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return int(exit_.code or 0)
    # Loaded only once a worker is to run: --help and a bad config never pay for it.
    from token_worker.serve import telemetry  # noqa: PLC0415
    from token_worker.serve.naming import client_name  # noqa: PLC0415
    from token_worker.serve.worker import TokenWorker  # noqa: PLC0415

    configure_logging(config.log_level, client_name(config.name_suffix), config.environment)
    tracer_provider = telemetry.configure_from_environment(os.environ)
    try:
        worker = TokenWorker(config)
        log.info("starting", extra={"nats": ",".join(config.nats.urls),
                                    "idp_token_url": config.idp.token_url})
        worker.run()
    except ConfigError as error:  # found while building: the credentials directory
        print(f"token-worker: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except ReconnectGaveUp as error:
        log.error("exiting: NATS unreachable", extra={"reason": str(error)})
        print(f"token-worker: NATS unreachable, giving up: {error}", file=sys.stderr)
        return EXIT_NATS_GAVE_UP
    except Exception:
        log.exception("exiting: unexpected error")
        return EXIT_UNEXPECTED
    finally:
        telemetry.shut_down(tracer_provider)
    return EXIT_OK


def request_main(argv: Sequence[str] | None = None) -> int:
    """``token-request``: ask the fleet for one token and print the reply as JSON.

    For operators and the demo: ``token-request --client-id demo-service
    --client-secret-env DEMO_SECRET``, or ``token-request --credential orders`` for a
    credential the workers hold (no secret is read). A secret is read from an environment
    variable or standard input, never from the command line, where ``ps`` would show it.
    ``--creds FILE`` / ``--nkey FILE`` (or ``NATS_CREDS`` / ``NATS_NKEY``) sign the NATS
    connection as the worker's ``nats.credsFile`` / ``nats.nkeyFile`` do.
    """
    parser = _request_parser(request_main.__doc__)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    # Loaded only for a request: --help never pays for the NATS client, and token-request
    # never loads the worker.
    from token_worker.client.client import TokenClient  # noqa: PLC0415
    from token_worker.client.exchange import named_request_body, request_body  # noqa: PLC0415

    if (args.credential is None) == (args.client_id is None):
        print("token-request: give either --client-id or --credential", file=sys.stderr)
        return EXIT_CONFIG
    if args.credential is not None:
        body = named_request_body(args.scope)
    else:
        if args.client_secret_env:
            secret = os.environ.get(args.client_secret_env, "")
        else:
            secret = sys.stdin.readline().rstrip("\n")
        body = request_body(args.client_id, secret, args.scope)
    try:
        nats = _requester_nats(args)
        with TokenClient(nats, subject=args.subject, timeout=args.timeout,
                         inbox_prefix=args.inbox_prefix,
                         named_subject=args.named_subject) as client:
            reply = client.request(body, budget=args.timeout, credential=args.credential)
    except (ValueError, ConfigError) as error:  # a bad URL, creds or NKey seed file
        print(f"token-request: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except ReconnectGaveUp as error:
        print(f"token-request: NATS unreachable: {error}", file=sys.stderr)
        return EXIT_NATS_GAVE_UP
    except (TokenRequestFailed, ClientClosed) as error:
        print(f"token-request: {error}", file=sys.stderr)
        return EXIT_REQUEST_FAILED
    token = reply.get("access_token")
    if isinstance(token, str) and token and not args.show_token:
        reply["access_token"] = token[:8] + "…"
    print(json.dumps(reply, indent=2, ensure_ascii=False))
    return EXIT_REQUEST_FAILED if reply.get("error") else EXIT_OK


def _requester_nats(args: argparse.Namespace) -> NatsConfig | str:
    """The requester's NATS settings: the URL alone, or with a creds or NKey seed file
    (checked now: a bad file is a ConfigError naming the flag or variable)."""
    sources = (("nats.credsFile", "creds", "NATS_CREDS"), ("nats.nkeyFile", "nkey", "NATS_NKEY"))
    chosen: dict[str, Any] = {}
    for key, flag, variable in sources:
        value, source = getattr(args, flag), f"flag --{flag}"
        if value is None and os.environ.get(variable):
            value, source = os.environ[variable], f"env {variable}"
        if value is not None:
            setting = next(s for s in SETTINGS if s.key == key)
            chosen[setting.path[-1]] = setting.read(value, source)
    if not chosen:
        return str(args.nats_url)
    try:
        urls = parse_nats_urls(args.nats_url)
    except ValueError as error:
        raise ConfigError("nats.url", "flag --nats-url", str(error)) from None
    return NatsConfig(urls=urls, reconnect_wait=1.0, max_reconnect=-1, **chosen)


def _request_parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="token-request", description=description)
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--creds", metavar="FILE", default=None,
                        help="NATS .creds file to sign the connection (env NATS_CREDS)")
    parser.add_argument("--nkey", metavar="FILE", default=None,
                        help="file holding a NATS user NKey seed (env NATS_NKEY)")
    parser.add_argument("--subject", default="token.request")
    parser.add_argument("--client-id", default=None)
    parser.add_argument("--client-secret-env", metavar="VAR",
                        help="environment variable holding the secret (default: read stdin)")
    parser.add_argument("--credential", metavar="NAME", default=None,
                        help="a credential the workers hold (no secret is read or sent)")
    parser.add_argument("--named-subject", default="token.named",
                        help="prefix of named-credential subjects")
    parser.add_argument("--inbox-prefix", default="_INBOX",
                        help="subject prefix of this requester's reply inboxes")
    parser.add_argument("--scope", default=None)
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the answer (the IdP deadline is 8 s)")
    parser.add_argument("--show-token", action="store_true",
                        help="print the access token itself (default: only its first characters)")
    return parser
