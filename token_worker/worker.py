"""The worker: a queue subscription feeding a bounded pool of handler threads.

Data flows one way: the connection's reader thread gives each request to the handler,
which answers at once what needs no I/O (a cache hit, a bad request: a :class:`Reply`)
and defers the rest (a :class:`Deferred`) to the pool, or the worker answers
``overloaded`` at once when the pool is full. A pool thread runs the deferred call, and
its reply goes back over the connection. Before any reply is sent it is checked against
the server's ``max_payload``: one that would not fit becomes a ``token_too_large`` error
reply, so the connection is never dropped by the server for it.

The worker owns the subscription, the pool and the order of shutdown (as dramatiq stops
its consumers before its broker): unsubscribe, answer ``shutting_down`` to requests queued
but not started (their requesters retry another replica at once), let running requests
finish and reply, answer ``shutting_down`` to those still running when ``drainTimeout``
ends or a second signal cuts the drain short (their late replies are dropped: one answer
per request), then close what it built.

Readiness is false while the server refuses the work subscription (an ACL denying
``sub token.request``, at start or after a config reload): connected but deaf is not
ready.

With ``credentials.dir`` set, the worker also holds the named credentials (a
:class:`~token_worker.credentials.CredentialStore`, reloaded in the background from start to
stop) and queue-subscribes ``<namedSubject>.*`` in the same queue group; without it the
named subjects are not subscribed, so a named request finds no responder at once.

Signals take no lock: the handler records the signal, and the byte that
``signal.set_wakeup_fd`` writes wakes the main thread, which logs and acts. The first
connect runs on a helper thread, so a signal stops a worker that is still trying to reach
NATS at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NamedTuple, Protocol

from token_worker import wire
from token_worker.config import Config
from token_worker.credentials import CredentialStore
from token_worker.errors import (
    ConfigError,
    CredentialsDirError,
    NatsConnectionError,
    NotConnected,
    PayloadTooLarge,
    ReconnectGaveUp,
)
from token_worker.handler import BytesHandler, Deferred, Reply, RequestHandler, TokenHandler
from token_worker.health import HealthServer
from token_worker.logs import RateLimitedLog, redact_secrets, request_context
from token_worker.metrics import Metrics
from token_worker.naming import client_name
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.nats.protocol import Message
from token_worker.nats.subscriptions import Subscription
from token_worker.pool import BoundedPool
from token_worker.service import ServiceResponder
from token_worker.version import __version__

log = logging.getLogger(__name__)

Handler = RequestHandler | Callable[[bytes], bytes]
"""What ``TokenWorker(config, handler)`` accepts: a :class:`RequestHandler` (typed replies,
a fast path), or a function from request bytes to reply bytes (always run on a pool
thread). A handler should not raise; if it does, the requester gets ``internal_error``."""

LOG_INTERVAL = 1.0
"""Seconds between two lines of one per-request warning (each counts what it suppressed)."""
SUBSCRIBE_CONFIRM_TIMEOUT = 5.0
"""Seconds :meth:`TokenWorker.start` waits for the server to confirm the subscription."""
WAKE_INTERVAL = 1.0
"""Longest the main thread sleeps in :meth:`TokenWorker.run` without looking around."""
FIRST_CONNECT_ABORT_WAIT = 2.0
"""After a stop during the first connect: how long to wait for the connecting thread."""


class Connection(Protocol):
    """What the worker needs of a NATS connection (:class:`NatsConnection`, or a stub in
    tests)."""

    @property
    def state(self) -> State: ...
    @property
    def is_connected(self) -> bool: ...
    @property
    def server_url(self) -> str: ...
    @property
    def reconnects(self) -> int: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def max_payload(self) -> int: ...
    def connect(self) -> None: ...
    def close(self, timeout: float = 5.0) -> None: ...
    def subscribe(self, subject: str, callback: Callable[[Message], None],
                  queue: str = "") -> Subscription: ...
    def unsubscribe(self, sub: Subscription, *, drain_timeout: float = 0.0) -> None: ...
    def publish(self, subject: str, payload: bytes, reply: str = "") -> None: ...
    def flush(self, timeout: float) -> None: ...


class _Job(NamedTuple):
    """A deferred request waiting for (or on) a pool thread."""

    message: Message
    deferred: Deferred[Any]
    received: float
    named: bool = False
    """Came on a named-credential subject (counted for its own ``$SRV`` endpoint)."""


class _Wakeup:
    """A self-pipe the main thread sleeps on. Signals write to it at C level
    (``signal.set_wakeup_fd``); other threads through :meth:`notify`."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    def notify(self) -> None:
        """Wake the sleeper (never from a signal handler: this takes a lock)."""
        with self._lock:
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # full: it will wake anyway
                    os.write(self.write_fd, b"\0")

    def wait(self, timeout: float) -> None:
        """Sleep until woken or ``timeout``; empty the pipe."""
        select.select([self.read_fd], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 512):
                pass

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self.read_fd)
                os.close(self.write_fd)


class TokenWorker:
    """A token worker: ``run()`` blocks, ``start()`` serves in the background.

    ``handler``, if given, replaces the token exchange (see :data:`Handler`); the caller
    keeps ownership of it. ``connection``, if given (a stub, in tests), is taken over: the
    worker connects it in :meth:`start` and closes it in :meth:`stop`; the caller wires
    its state callbacks, if it has any.
    """

    def __init__(self, config: Config, handler: Handler | None = None, *,
                 connection: Connection | None = None) -> None:
        self.config = config
        self.client_name = client_name(config.name_suffix)
        self.metrics = Metrics()
        """This worker's numbers (a registry of its own, served at ``/metrics``)."""
        nats: NatsConnection | None = None
        if connection is None:
            connection = nats = NatsConnection(config.nats, self.client_name,
                                               on_state=self._on_state,
                                               on_gave_up=self._on_gave_up,
                                               on_refused=self._on_refused)
        self._connection: Connection = connection
        self._token_handler: TokenHandler | None = None
        self._credentials: CredentialStore | None = None
        if handler is None:
            self._credentials = _credential_store(config)
            handler = self._token_handler = TokenHandler.from_config(
                config, self.metrics, connection=nats,  # the shared tier shares it
                credentials=self._credentials)
        self._handler: RequestHandler = (handler if isinstance(handler, RequestHandler)
                                         else BytesHandler(handler))
        self._handle = self._handler.handle
        self._pool: BoundedPool[_Job] = BoundedPool(config.workers, config.backlog,
                                                    self._serve)
        self.metrics.in_flight.set_function(lambda: self._pool.admitted)
        self.metrics.capacity.set(self._pool.capacity)
        self.metrics.reconnect_buffer.set_function(lambda: self._connection.buffered_bytes)
        self._named_subject = (f"{config.named_subject}.*"
                               if self._credentials is not None else None)
        self._service = ServiceResponder(
            self._connection, version=__version__, subject=config.subject, queue=config.queue,
            metrics=self.metrics, metadata={"client_name": self.client_name},
            named_subject=self._named_subject)
        self._health: HealthServer | None = None
        self._last_state = State.DISCONNECTED
        self._subscription: Subscription | None = None
        self._named_subscription: Subscription | None = None
        self._stop_requested = threading.Event()
        self._cold_stop = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._release_lock = threading.Lock()
        self._released = False
        self._draining = False
        self._wakeup: _Wakeup | None = None
        self._signals_received = 0
        """Written by the signal handler only (a plain int: no lock in a handler)."""
        self._last_signal = 0
        self._signals_acted_on = 0
        self._warn = _Warnings()
        self.failure = ""
        """Why the worker stopped on its own ("" while serving or after a requested stop)."""
        redact_secrets(secret.reveal() for secret in (config.nats.password, config.nats.token)
                       if secret is not None)

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect, subscribe, and return with the worker serving in background threads.

        The health listener (if configured) starts first, so liveness holds while NATS is
        still being reached. Raises :class:`~token_worker.errors.ReconnectGaveUp` if NATS
        cannot be reached within the reconnect policy (or the connect was aborted by a
        stop); what was built is released then, and nothing claims a drain.
        """
        try:
            self._start_health()
            self._connection.connect()
            if self._stop_requested.is_set():
                raise ReconnectGaveUp("stopped while connecting")
            if self._credentials is not None:
                self._credentials.start()
            self._subscription = self._connection.subscribe(
                self.config.subject, self._on_message, self.config.queue)
            if self._named_subject is not None:
                self._named_subscription = self._connection.subscribe(
                    self._named_subject, self._on_named_message, self.config.queue)
            self._service.start()
        except BaseException:
            self._release()
            raise
        if self._token_handler is not None:
            self._token_handler.prepare()  # the shared tier's bucket, off the critical path
        with contextlib.suppress(NatsConnectionError):
            self._connection.flush(SUBSCRIBE_CONFIRM_TIMEOUT)
        log.info("serving", extra={"subject": self.config.subject, "queue": self.config.queue,
                                   "named_subject": self._named_subject,
                                   "credentials": (self._credentials.names()
                                                   if self._credentials is not None else None),
                                   "server": self._connection.server_url,
                                   "workers": self.config.workers})

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until :meth:`stop`, SIGTERM or SIGINT; then drain and return.

        A second signal during the drain stops at once; a signal while the first connect
        is still being tried stops at once too (and ``run`` returns normally). Raises
        ``ReconnectGaveUp`` when NATS could not be reached (at first or ever again).
        """
        wakeup = self._wakeup = _Wakeup()
        try:
            with self._signals_handled(handle_signals, wakeup):
                start_error: list[BaseException] = []
                starter = threading.Thread(target=self._start_for_run, args=(start_error,),
                                           name="token-worker-start", daemon=True)
                starter.start()
                while not self._stop_requested.is_set():
                    wakeup.wait(WAKE_INTERVAL)
                    self._act_on_signals()
                start_failed = bool(start_error)  # else a stop was asked for (or NATS lost)
                if starter.is_alive():  # a stop while the first connect is still tried
                    self._connection.close()
                    starter.join(FIRST_CONNECT_ABORT_WAIT)
                if start_failed:
                    raise start_error[0]
                self.stop()
        finally:
            self._wakeup = None
            wakeup.close()
        if self.failure:
            raise ReconnectGaveUp(self.failure)

    def request_stop(self) -> None:
        """Ask :meth:`run` to drain and return (from any thread, not a signal handler);
        a second call stops at once."""
        if self._stop_requested.is_set():
            self._cold_stop.set()
        self._ask_stop()

    def stop(self, timeout: float | None = None) -> bool:
        """Drain and close: unsubscribe, answer queued requests ``shutting_down``, let
        running requests reply (those still running at the end of the drain are answered
        ``shutting_down``), close what the worker built.

        Returns True when every running request finished within ``timeout`` (default
        ``drainTimeout``). Safe to call more than once and from any thread.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return True
            self._stopped.set()
            self._ask_stop()
            if self._subscription is None:  # start() failed or was aborted: nothing to drain
                self._release()
                log.info("stopped before serving", extra={"reason": self._stop_reason()})
                return True
            self._draining = True
            budget = self.config.drain_timeout if timeout is None else timeout
            deadline = time.monotonic() + budget
            log.info("draining", extra={"in_flight": self._pool.admitted})
            if self._named_subscription is not None:
                self._connection.unsubscribe(self._named_subscription)
            self._connection.unsubscribe(self._subscription,
                                         drain_timeout=min(budget, SUBSCRIBE_CONFIRM_TIMEOUT))
            self._hand_back_queued()
            drained = self._wait_for_running(deadline)
            if not drained:
                self._answer_running()
            if self._connection.is_connected:
                with contextlib.suppress(NatsConnectionError):
                    self._connection.flush(max(0.1, min(2.0, deadline - time.monotonic())))
            self._release()
            log.info("stopped", extra={"drained": drained, "failure": self.failure or None})
            return drained

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop was requested (or the worker failed); True if it was."""
        return self._stop_requested.wait(timeout)

    @property
    def is_ready(self) -> bool:
        """Connected, subscribed and not draining: a requester's message would be served."""
        return self._ready()[0]

    @property
    def shared_cache_available(self) -> bool | None:
        """Whether the shared token tier answers now; None without one (or with a handler
        of your own). Readiness never depends on it."""
        if self._token_handler is None:
            return None
        return self._token_handler.shared_available

    @property
    def instance_id(self) -> str:
        """This worker's id in the NATS services API (``$SRV``)."""
        return self._service.instance_id

    @property
    def health_port(self) -> int | None:
        """The port the health listener got (``health.port`` 0 picks a free one)."""
        return self._health.port if self._health is not None else None

    @property
    def connection_state(self) -> State:
        """The NATS connection's state."""
        return self._connection.state

    @property
    def server_url(self) -> str:
        """The NATS server this worker is (or was last) connected to."""
        return self._connection.server_url

    @property
    def reconnects(self) -> int:
        """How many times the connection was re-established."""
        return self._connection.reconnects

    # --- serving ------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        """Runs on the reader thread: answer what needs no I/O at once (the connection
        sends all replies of one read together); hand the rest to the pool, never block.
        (Kept apart from :meth:`_on_named_message`, line for line, because it is the
        hottest path: one call less per request.)"""
        received = time.perf_counter()
        if not message.reply:
            self._warn.no_reply({"subject": message.subject, "bytes": len(message.payload)})
            return
        try:
            outcome = self._handle(message.payload)
        except Exception:
            self._send_reply(message.reply, self._internal_error(message.payload, None),
                             received)
            return
        if isinstance(outcome, Reply):
            self._send_reply(message.reply, outcome, received)
        elif not self._pool.try_submit(_Job(message, outcome, received)):
            self._reject(message, outcome, received)

    def _on_named_message(self, message: Message) -> None:
        """A request on ``<namedSubject>.<credential>``, on the reader thread: as
        :meth:`_on_message`, through the handler's named path."""
        received = time.perf_counter()
        handler = self._token_handler
        if not message.reply or handler is None:
            self._warn.no_reply({"subject": message.subject, "bytes": len(message.payload)})
            return
        try:
            outcome = handler.handle_named(message.subject, message.payload)
        except Exception:
            self._send_reply(message.reply, self._internal_error(message.payload, None),
                             received, True)
            return
        if isinstance(outcome, Reply):
            self._send_reply(message.reply, outcome, received, True)
        elif not self._pool.try_submit(_Job(message, outcome, received, True)):
            self._reject(message, outcome, received, True)

    def _serve(self, job: _Job) -> None:
        """Runs on a pool thread. A reply that comes after the drain ended is dropped: its
        requester was answered ``shutting_down`` already (:meth:`_answer_running`)."""
        try:
            reply = job.deferred.run()
        except Exception:
            reply = self._internal_error(job.message.payload, job.deferred.request_id)
        if self._pool.claim(job):
            self._send_reply(job.message.reply, reply, job.received, job.named)
        else:
            log.debug("late reply dropped: answered shutting_down at the end of the drain",
                      extra={"request_id": reply.request_id})

    def _internal_error(self, payload: bytes, request_id: str | None) -> Reply:
        if request_id is None:
            request_id = wire.peek_request_id(payload, max_size=self.config.max_payload)
        with request_context(request_id):
            self._warn.handler_failed(exc_info=True)
        return _error(request_id, wire.INTERNAL_ERROR,
                      "internal error while serving the request")

    def _reject(self, message: Message, deferred: Deferred[Any], received: float,
                named: bool = False) -> None:
        """The pool is full (``overloaded``) or closed (``shutting_down``): answer at once,
        and log at most once a second, with a count."""
        deferred.drop()
        request_id = self._request_id(message, deferred)
        if self._draining:
            reply = _error(request_id, wire.SHUTTING_DOWN,
                           "worker shutting down, retry (another replica answers)")
        else:
            with request_context(request_id):
                self._warn.overloaded({"capacity": self._pool.capacity})
            reply = _error(request_id, wire.OVERLOADED, "worker overloaded, retry shortly")
        self._send_reply(message.reply, reply, received, named)

    def _request_id(self, message: Message, deferred: Deferred[Any]) -> str:
        if deferred.request_id is not None:
            return deferred.request_id
        return wire.peek_request_id(message.payload, max_size=self.config.max_payload)

    def _send_reply(self, subject: str, reply: Reply, received: float,
                    named: bool = False) -> None:
        """Check the size, count the reply, then send it: whoever reads the metrics or
        ``$SRV.STATS`` after getting the reply sees it counted."""
        limit = self._connection.max_payload
        if len(reply.body) > limit:
            self._handler.unsent(reply)
            reply = self._too_large(reply, len(reply.body), limit)
        seconds = time.perf_counter() - received
        self.metrics.count_reply(reply.error_code, seconds)
        if named:
            self._service.count_named(reply.error_code, seconds)
        elif reply.error_code:
            self._service.inline_error(reply.error_code)
        try:
            self._connection.publish(subject, reply.body)
        except PayloadTooLarge as error:  # the server's limit changed under us
            self._handler.unsent(reply)
            with contextlib.suppress(NatsConnectionError):
                self._connection.publish(subject,
                                         self._too_large(reply, error.size, error.limit).body)
        except NotConnected as error:
            self._warn.reply_lost({"error": str(error)})

    def _too_large(self, reply: Reply, size: int, limit: int) -> Reply:
        """The reply that replaces one the server would refuse (logged with the client id,
        never with the reply, which may hold a token)."""
        with request_context(reply.request_id, reply.client_id):
            self._warn.too_large({"bytes": size, "max_payload": limit})
        return _error(reply.request_id, wire.TOKEN_TOO_LARGE,
                      f"reply is {size} bytes, larger than the {limit} bytes the NATS "
                      "server accepts", client_id=reply.client_id)

    def _hand_back_queued(self) -> None:
        """Answer ``shutting_down`` to every request not started: its requester retries
        another replica at once instead of waiting out its timeout."""
        queued = self._pool.close()
        for job in queued:
            job.deferred.drop()
            request_id = self._request_id(job.message, job.deferred)
            self._send_reply(job.message.reply, _error(
                request_id, wire.SHUTTING_DOWN,
                "worker shutting down, retry (another replica answers)"), job.received,
                job.named)
        if queued:
            log.info("queued requests answered shutting_down", extra={"requests": len(queued)})

    def _answer_running(self) -> None:
        """The drain ended (``drainTimeout``, or a second signal) with requests still
        running: answer each ``shutting_down`` now, so its requester retries another
        replica at once instead of waiting out its timeout. Their late replies are dropped
        (exactly one answer per request)."""
        running = self._pool.take_running()
        for job in running:
            request_id = self._request_id(job.message, job.deferred)
            self._send_reply(job.message.reply, _error(
                request_id, wire.SHUTTING_DOWN,
                "worker shutting down, retry (another replica answers)"), job.received,
                job.named)
        if running:
            log.warning("drain ended with requests running: answered shutting_down",
                        extra={"requests": len(running)})

    # --- events ---------------------------------------------------------------------------

    def _on_state(self, state: State) -> None:
        log.debug("connection state", extra={"state": state.value})
        if state is State.CONNECTED and self._last_state is State.RECONNECTING:
            self.metrics.reconnects.inc()
        self._last_state = state
        self.metrics.connection_state.state(state.value)

    def _start_health(self) -> None:
        port = self.config.health.port
        if port is None or self._health is not None:
            return
        self._health = HealthServer(self.config.health.host, port, alive=self._alive,
                                    ready=self._ready, registry=self.metrics.registry)
        self._health.start()

    def _alive(self) -> tuple[bool, str]:
        if self.failure:
            return False, self.failure
        if self._connection.state is State.CLOSED and not self._draining:
            return False, "connection closed"
        return True, self._connection.state.value

    def _ready(self) -> tuple[bool, str]:
        if self._draining:
            return False, "draining"
        subscription = self._subscription
        if subscription is None:
            return False, "not subscribed yet"
        if not self._connection.is_connected:
            return False, f"nats {self._connection.state.value}"
        if subscription.refused:
            return False, f"subscription to {subscription.subject} refused by the server"
        return True, "serving"

    def _on_refused(self, subscription: Subscription, text: str) -> None:
        """The server refused a subscription (an ACL, at start or after a config reload):
        for the work subject, the worker is not ready until a reconnect re-subscribes."""
        if subscription is self._subscription or subscription.subject == self.config.subject:
            log.error("subscription refused by the server: not ready",
                      extra={"subject": subscription.subject, "queue": subscription.queue,
                             "server_error": text})

    def _on_gave_up(self, reason: str) -> None:
        self.failure = reason
        self._ask_stop()

    # --- stopping ---------------------------------------------------------------------------

    def _ask_stop(self) -> None:
        self._stop_requested.set()
        wakeup = self._wakeup
        if wakeup is not None:
            wakeup.notify()

    def _start_for_run(self, errors: list[BaseException]) -> None:
        """The first connect, off the main thread, so that the main thread can act on a
        signal meanwhile."""
        try:
            self.start()
        except BaseException as error:
            errors.append(error)
            self._ask_stop()

    def _act_on_signals(self) -> None:
        """On the main thread, after the handler recorded a signal: log it and stop (warm
        the first time, cold the second)."""
        received = self._signals_received
        while self._signals_acted_on < received:
            self._signals_acted_on += 1
            name = signal.Signals(self._last_signal).name
            if self._signals_acted_on == 1:
                log.info("signal received", extra={"signal": name})
            else:
                log.info("signal received again: stopping at once", extra={"signal": name})
            self.request_stop()

    def _stop_reason(self) -> str:
        if self._signals_received:
            return f"{signal.Signals(self._last_signal).name} before NATS was reached"
        return self.failure or "stop requested before NATS was reached"

    def _wait_for_running(self, deadline: float) -> bool:
        while True:
            self._act_on_signals_if_main_thread()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._cold_stop.is_set():
                return self._pool.admitted == 0
            if self._pool.wait_idle(min(remaining, 0.2)):
                return True

    def _act_on_signals_if_main_thread(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._act_on_signals()

    def _release(self) -> None:
        """Close what this worker built (or took over), in order; idempotent."""
        with self._release_lock:
            if self._released:
                return
            self._released = True
        self._pool.close()
        self._connection.close()
        if self._token_handler is not None:
            self._token_handler.close()
        if self._credentials is not None:
            self._credentials.close()
        if self._health is not None:
            self._health.stop()

    @contextlib.contextmanager
    def _signals_handled(self, enabled: bool, wakeup: _Wakeup) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            # No lock, no logging, no Event: the interrupted main thread may hold any of
            # them. The C-level handler already wrote the wake-up byte.
            self._last_signal = signum
            self._signals_received += 1

        previous_fd = signal.set_wakeup_fd(wakeup.write_fd, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)


class _Warnings:
    """The worker's per-request warnings, each at most one line a second."""

    def __init__(self) -> None:
        def limited(level: int, message: str) -> RateLimitedLog:
            return RateLimitedLog(log, level, message, interval=LOG_INTERVAL)

        self.no_reply = limited(logging.WARNING, "request without reply subject dropped")
        self.overloaded = limited(logging.WARNING, "overloaded: requests rejected")
        self.too_large = limited(logging.WARNING,
                                 "reply too large for NATS: answered token_too_large")
        self.reply_lost = limited(logging.WARNING, "reply lost: NATS connection down")
        self.handler_failed = limited(logging.ERROR, "handler failed")


def _credential_store(config: Config) -> CredentialStore | None:
    """The named credentials of ``credentials.dir`` (read now, reloaded from start), or
    None without one. Every secret it reads is also handed to the log redaction, so that
    not even a mistake elsewhere could print one."""
    directory = config.credentials.directory
    if directory is None:
        return None
    made: list[CredentialStore] = []

    def redact(_event: str, name: str) -> None:
        credential = made[0].get(name) if made else None
        if credential is not None:
            redact_secrets([credential.client_secret.reveal()])

    try:
        store = CredentialStore(directory, start=False, on_change=redact)
    except CredentialsDirError as error:
        raise ConfigError("credentials.dir", f"directory {directory}", error.problem) from None
    made.append(store)
    for name in store.names():
        redact("added", name)
    return store


def _error(request_id: str, error_code: str, error: str, *, client_id: str = "") -> Reply:
    return Reply(wire.ErrorReply(request_id, error, error_code).to_bytes(), error_code,
                 request_id, client_id)
