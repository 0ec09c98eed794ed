"""The worker: a queue subscription feeding a bounded pool of handler threads.

Data flows one way: the connection's reader thread gives each request to the dispatcher
(:mod:`token_worker.serve.dispatch`), whose handler answers at once what needs no I/O (a
cache hit, a bad request) and defers the rest to the pool; a pool thread runs it, and its
reply goes back through the reply path (:mod:`token_worker.serve.replying`), checked
against the server's ``max_payload`` first. What serves tokens (IdP client, caches,
broker, :class:`~token_worker.serve.token_handler.TokenHandler`) is built by
:mod:`token_worker.serve.assembly` unless a handler of the caller's own is given.

The worker owns the subscriptions, the dispatcher and the order of shutdown (as dramatiq stops
its consumers before its broker): unsubscribe, answer ``shutting_down`` to requests queued
but not started (their requesters retry another replica at once), let running requests
finish and reply, answer ``shutting_down`` to those still running when ``drainTimeout``
ends or a second signal cuts the drain short (their late replies are dropped: one answer
per request), then close what it built.

Readiness waits for the server to confirm the subscriptions (the PONG after their SUBs), at
start and after every reconnect, and is false while the server refuses the work
subscription (an ACL denying ``sub token.request``): connected but deaf is not ready.

With ``credentials.dir`` set, the worker also holds the named credentials (a
:class:`~token_worker.serve.credentials.CredentialStore`, reloaded in the background from
start to stop) and queue-subscribes ``<namedSubject>.*`` in the same queue group; without it the
named subjects are not subscribed, so a named request finds no responder at once.

Signals take no lock (:mod:`token_worker.serve.signals`): the handler records the signal,
and the byte that ``signal.set_wakeup_fd`` writes wakes the main thread, which logs and
acts (SIGHUP reloads, never stops). The first connect runs on a helper thread, so a signal
stops a worker that is still trying to reach NATS at once.

The module is a little longer than 400 lines because the worker is one object whose
start, readiness and shutdown order share its state.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from token_worker import tracing
from token_worker.config import Config
from token_worker.errors import NatsConnectionError, ReconnectGaveUp
from token_worker.logs import redact_secrets
from token_worker.metrics import Metrics
from token_worker.nats.connection import NatsConnection
from token_worker.nats.link import State
from token_worker.nats.subscriptions import Subscription
from token_worker.serve import assembly
from token_worker.serve.credentials import CredentialStore
from token_worker.serve.dispatch import Dispatcher, Route, unsent_to
from token_worker.serve.handler import BytesHandler, RequestHandler
from token_worker.serve.health import HealthServer
from token_worker.serve.naming import client_name
from token_worker.serve.pool import BoundedPool
from token_worker.serve.reply_scope import reply_prefixes
from token_worker.serve.replying import Connection, ReplySender, Warnings
from token_worker.serve.service import ServiceResponder
from token_worker.serve.signals import SignalCatcher, Wakeup
from token_worker.version import __version__

log = logging.getLogger(__name__)

Handler = RequestHandler | Callable[[bytes], bytes]
"""What ``TokenWorker(config, handler)`` accepts: a :class:`RequestHandler` (typed replies,
a fast path), or a function from request bytes to reply bytes (always run on a pool
thread). A handler should not raise; if it does, the requester gets ``internal_error``."""

SUBSCRIBE_CONFIRM_TIMEOUT = 5.0
"""Seconds :meth:`TokenWorker.start` waits for the server to confirm the subscription."""
WAKE_INTERVAL = 1.0
"""Longest the main thread sleeps in :meth:`TokenWorker.run` without looking around."""
FIRST_CONNECT_ABORT_WAIT = 2.0
"""After a stop during the first connect: how long to wait for the connecting thread."""


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
            # no_responders: a JetStream call to a stream that is gone fails at once (the
            # server answers 503) instead of waiting out its timeout.
            connection = nats = NatsConnection(config.nats, self.client_name,
                                               on_state=self._on_state,
                                               on_gave_up=self._on_gave_up,
                                               on_refused=self._on_refused,
                                               no_responders=True)
        self._connection: Connection = connection
        self._pool = BoundedPool(config.workers, config.backlog)
        self._tokens: assembly.TokenService | None = None
        self._credentials: CredentialStore | None = None
        if handler is None:
            self._credentials = assembly.credential_store(config)
            self._tokens = assembly.token_service(
                config, self.metrics, self._pool, connection=nats,  # the shared tier's too
                credentials=self._credentials)
            routes = self._tokens.routes
        else:
            routes = [Route("token", config.subject, handler if isinstance(
                handler, RequestHandler) else BytesHandler(handler))]
        self._warn = Warnings(log)
        prefixes = reply_prefixes(config.reply_subjects)
        self._dispatch = Dispatcher(
            routes, pool=self._pool, max_payload=config.max_payload, warnings=self._warn,
            tracer=tracing.request_tracer(), reply_prefixes=prefixes,
            replies=ReplySender(self._connection, metrics=self.metrics,
                                unsent=unsent_to(routes), warnings=self._warn))
        self._service = ServiceResponder(
            self._connection, version=__version__,
            endpoints=self._dispatch.endpoints(config.queue), metrics=self.metrics,
            metadata={"client_name": self.client_name},
            reply_prefixes=prefixes)
        pool = self._pool
        self.metrics.in_flight.set_function(lambda: pool.admitted)
        self.metrics.capacity.set(pool.capacity)
        self.metrics.reconnect_buffer.set_function(lambda: self._connection.buffered_bytes)
        self._health: HealthServer | None = None
        self._last_state = State.DISCONNECTED
        self._subscriptions: list[Subscription] = []
        self._stop_requested = threading.Event()
        self._cold_stop = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._release_lock = threading.Lock()
        self._released = False
        self._wakeup: Wakeup | None = None
        self._signals = SignalCatcher()
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
            self._subscriptions = [
                self._connection.subscribe(served.route.subject, served.on_message,
                                           self.config.queue)
                for served in self._dispatch.served]
            self._service.start()
        except BaseException:
            self._release()
            raise
        if self._tokens is not None:
            self._tokens.prepare()  # the shared tier's bucket, off the critical path
        with contextlib.suppress(NatsConnectionError):
            self._connection.flush(SUBSCRIBE_CONFIRM_TIMEOUT)
        log.info("serving", extra={"subjects": [sub.subject for sub in self._subscriptions],
                                   "queue": self.config.queue,
                                   "credentials": (self._credentials.names()
                                                   if self._credentials is not None else None),
                                   "server": self._connection.server_url,
                                   "workers": self.config.workers})

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until :meth:`stop`, SIGTERM or SIGINT (SIGHUP only reloads); then drain.

        A second signal during the drain stops at once; a signal while the first connect
        is still being tried stops at once too (and ``run`` returns normally). Raises
        ``ReconnectGaveUp`` when NATS could not be reached (at first or ever again).
        """
        wakeup = self._wakeup = Wakeup()
        try:
            with self._signals.installed(handle_signals, wakeup):
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
            if not self._subscriptions:  # start() failed or was aborted: nothing to drain
                self._release()
                log.info("stopped before serving", extra={"reason": self._stop_reason()})
                return True
            self._dispatch.draining = True
            budget = self.config.drain_timeout if timeout is None else timeout
            deadline = time.monotonic() + budget
            log.info("draining", extra={"in_flight": len(self._dispatch.outstanding)})
            *others, last = self._subscriptions
            for subscription in others:
                self._connection.unsubscribe(subscription)
            self._connection.unsubscribe(last,
                                         drain_timeout=min(budget, SUBSCRIBE_CONFIRM_TIMEOUT))
            self._dispatch.hand_back_queued()
            drained = self._wait_for_running(deadline)
            if not drained:
                self._dispatch.answer_outstanding()
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
        """Connected, subscribed (confirmed by the server) and not draining: a requester's
        message would be served."""
        return self._ready()[0]

    @property
    def shared_cache_available(self) -> bool | None:
        """Whether the shared token tier answers now; None without one (or with a handler
        of your own). Readiness never depends on it."""
        if self._tokens is None:
            return None
        return self._tokens.shared_available

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
        if self._connection.state is State.CLOSED and not self._dispatch.draining:
            return False, "connection closed"
        return True, self._connection.state.value

    def _ready(self) -> tuple[bool, str]:
        if self._dispatch.draining:
            return False, "draining"
        if not self._subscriptions:
            return False, "not subscribed yet"
        subscription = self._subscriptions[0]
        if not self._connection.is_connected:
            return False, f"nats {self._connection.state.value}"
        for sub in self._subscriptions:
            if not sub.confirmed:
                return False, f"subscription to {sub.subject} not confirmed by the server yet"
        if subscription.refused:
            return False, f"subscription to {subscription.subject} refused by the server"
        return True, "serving"

    def _on_refused(self, subscription: Subscription, text: str) -> None:
        """The server refused a subscription (an ACL, at start or after a config reload):
        for the work subject, the worker is not ready until a reconnect re-subscribes."""
        if subscription in self._subscriptions[:1] or subscription.subject == self.config.subject:
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
        self._signals.act(stop=self.request_stop, credentials=self._credentials)

    def _stop_reason(self) -> str:
        if self._signals.received:
            return f"{self._signals.last_name} before NATS was reached"
        return self.failure or "stop requested before NATS was reached"

    def _wait_for_running(self, deadline: float) -> bool:
        """Wait for every request accepted to be answered (running work finishing, waiters
        getting its outcome), until ``deadline`` or a second signal."""
        while True:
            self._act_on_signals_if_main_thread()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._cold_stop.is_set():
                return len(self._dispatch.outstanding) == 0
            if self._dispatch.outstanding.wait_idle(min(remaining, 0.2)):
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
        self._dispatch.hand_back_queued()
        if self._tokens is not None:
            self._tokens.close()
        self._connection.close()
        if self._credentials is not None:
            self._credentials.close()
        if self._health is not None:
            self._health.stop()
        tracing.flush()
