"""Command-line entry points: ``token-worker`` (and ``bin/token-worker``) and ``token-request``.

Exit codes say what happened, so Kubernetes and operators can tell failures apart:
0 stopped on request (SIGTERM/SIGINT, drained), 2 bad configuration or usage,
3 NATS unreachable (connecting or reconnecting gave up), 4 a token request failed
(``token-request`` only), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from token_worker import defaults
from token_worker.config import SETTINGS, NatsConfig, load_config, parse_nats_urls
from token_worker.errors import ClientClosed, ConfigError, ReconnectGaveUp, TokenRequestFailed
from token_worker.logs import configure_logging
from token_worker.version import __version__

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


REQUEST_DESCRIPTION = """\
Ask the token-worker fleet for one token over NATS and print the reply as JSON.

Ask with a client id and its secret (--client-id; the secret is read from the environment
variable --client-secret-env names, else from standard input: with a prompt and no echo on
a terminal, one line from a pipe), or for a credential the workers hold (--credential NAME:
no secret is read or sent). A secret is never taken from the command line, where ps would
show it. --creds and --nkey sign the NATS connection as the worker's nats.credsFile and
nats.nkeyFile do."""

REQUEST_EPILOG = """\
exit codes: 0 a token was printed; 2 usage (a missing or bad option, an unset
--client-secret-env variable, no secret); 3 NATS unreachable; 4 no token: the reply is an
error, no worker is subscribed (asked again until --timeout, so a restarting worker is
waited for), or no reply within --timeout; 1 anything else."""

DEFAULT_REQUEST_NATS_URL = "nats://127.0.0.1:4222"


def request_main(argv: Sequence[str] | None = None) -> int:
    """``token-request``: ask the fleet for one token and print the reply as JSON (see
    :data:`REQUEST_DESCRIPTION`)."""
    parser = _request_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    # Loaded only for a request: --help never pays for the NATS client, and token-request
    # never loads the worker.
    from token_worker.client.client import TokenClient  # noqa: PLC0415

    body = _request_body(args)
    if body is None:
        return EXIT_CONFIG
    try:
        nats = _requester_nats(args)
        with TokenClient(nats, subject=_from_env(args.subject, "TOKEN_SUBJECT",
                                                 defaults.SUBJECT),
                         timeout=args.timeout, inbox_prefix=args.inbox_prefix,
                         named_subject=_from_env(args.named_subject, "NAMED_SUBJECT",
                                                 defaults.NAMED_SUBJECT)) as client:
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


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (``float`` alone takes "nan",
    "inf" and "-1", a request that never ends or ends at once)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > defaults.LONGEST_WAIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most {defaults.LONGEST_WAIT:g}")
    return value


REQUESTER_ENV = ("NATS_URL", "NATS_CREDS", "NATS_NKEY", "TOKEN_SUBJECT", "NAMED_SUBJECT")
"""The environment variables token-request reads besides --client-secret-env's."""


def _not_utf8(args: argparse.Namespace) -> str:
    """The first flag, or variable token-request reads, whose value came from bytes that
    were not UTF-8 (argv and the environment are decoded with surrogateescape), or ""."""
    named = [("--" + name.replace("_", "-"), value) for name, value in vars(args).items()]
    named += [(variable, os.environ.get(variable)) for variable in REQUESTER_ENV]
    for name, value in named:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return name
    return ""


def _request_body(args: argparse.Namespace) -> dict[str, Any] | None:
    """The request to send, or None (said on stderr) when the options do not make one."""
    from token_worker.client.exchange import named_request_body, request_body  # noqa: PLC0415

    flag = _not_utf8(args)
    if flag:
        print(f"token-request: {flag} is not valid UTF-8", file=sys.stderr)
        return None
    if (args.credential is None) == (args.client_id is None):
        print("token-request: give either --client-id or --credential", file=sys.stderr)
        return None
    if args.credential is not None:
        return named_request_body(args.scope)
    secret = _read_secret(args.client_id, args.client_secret_env)
    return None if secret is None else request_body(args.client_id, secret, args.scope)


def _read_secret(client_id: str, variable: str | None) -> str | None:
    """The client secret: from ``variable`` (which must be set), else from standard input
    (a terminal gets a prompt and no echo, a pipe gives one line); None, said on stderr,
    when there is none."""
    if variable:
        secret = os.environ.get(variable)
        if secret is None:
            print(f"token-request: environment variable {variable} (--client-secret-env) is "
                  "not set", file=sys.stderr)
            return None
    elif sys.stdin is None:
        secret = ""
    elif sys.stdin.isatty():
        secret = getpass.getpass(f"client secret for {client_id}: ")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    where = f"environment variable {variable}" if variable else "standard input"
    if not secret:
        print(f"token-request: no client secret: {where} is empty", file=sys.stderr)
        return None
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        print(f"token-request: the client secret from {where} is not valid UTF-8",
              file=sys.stderr)
        return None
    return secret


def _from_env(flag: str | None, variable: str, default: str) -> str:
    """The flag's value, else the environment variable's (as the worker reads it), else the
    default."""
    return flag if flag is not None else os.environ.get(variable) or default


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
    url, source = args.nats_url, "flag --nats-url"
    if url is None:
        url, source = os.environ.get("NATS_URL") or DEFAULT_REQUEST_NATS_URL, "env NATS_URL"
    if not chosen:
        return str(url)
    try:
        urls = parse_nats_urls(url)
    except ValueError as error:
        raise ConfigError("nats.url", source, str(error)) from None
    return NatsConfig(urls=urls, reconnect_wait=1.0, max_reconnect=-1, **chosen)


def _request_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-request", description=REQUEST_DESCRIPTION, epilog=REQUEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {__version__}")
    add("--nats-url", metavar="URL", default=None,
        help=f"NATS server URL(s), comma-separated (env NATS_URL; default: "
             f"{DEFAULT_REQUEST_NATS_URL})")
    add("--creds", metavar="FILE", default=None,
        help="NATS .creds file to sign the connection (env NATS_CREDS; default: none)")
    add("--nkey", metavar="FILE", default=None,
        help="file holding a NATS user NKey seed (env NATS_NKEY; default: none)")
    add("--subject", default=None,
        help=f"subject of requests that carry a secret (env TOKEN_SUBJECT; default: "
             f"{defaults.SUBJECT})")
    add("--client-id", metavar="ID", default=None,
        help="OAuth2 client id to ask a token for (default: none; or --credential)")
    add("--client-secret-env", metavar="VAR", default=None,
        help="environment variable holding the client secret (default: read standard "
             "input)")
    add("--credential", metavar="NAME", default=None,
        help="a credential the workers hold: no secret is read or sent (default: none)")
    add("--named-subject", metavar="PREFIX", default=None,
        help=f"prefix of named-credential subjects (env NAMED_SUBJECT; default: "
             f"{defaults.NAMED_SUBJECT})")
    add("--inbox-prefix", metavar="PREFIX", default="_INBOX",
        help="subject prefix of this requester's reply inboxes (default: %(default)s)")
    add("--scope", default=None,
        help="scopes to ask for, space-separated (default: the worker's idp.defaultScope; "
             "\"\" for none)")
    add("--timeout", metavar="SECONDS", type=_seconds, default=10.0,
        help="seconds to wait for the answer, retries included; the workers' IdP deadline "
             "is 8 s (default: %(default)s)")
    add("--show-token", action="store_true",
        help="print the access token itself (default: only its first characters)")
    return parser
