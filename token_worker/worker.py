"""The worker: a queue subscription feeding a bounded pool of handler threads.

Data flows one way: the connection's reader thread answers what needs no I/O itself (a
cache hit, a bad request) and hands everything else to the pool (or answers
``overloaded`` at once when the pool is full); a pool thread runs the handler, and the
handler's reply goes back over the connection. The worker owns the subscription, the
pool and the order of shutdown: unsubscribe, let in-flight requests finish and reply,
then close the connection (as dramatiq stops its consumers before its broker).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from token_worker import messages
from token_worker.config import Config
from token_worker.connection import Message, NatsConnection, State, Subscription
from token_worker.errors import NatsConnectionError, NotConnected, ReconnectGaveUp
from token_worker.handler import TokenHandler
from token_worker.health import HealthServer
from token_worker.logs import RedactSecrets, request_context
from token_worker.metrics import Metrics
from token_worker.naming import client_name
from token_worker.pool import BoundedPool
from token_worker.service import ServiceResponder
from token_worker.version import __version__

log = logging.getLogger(__name__)

Handler = Callable[[bytes], bytes]
"""Turns a request body into a reply body. It should not raise; if it does, the requester
gets an ``internal_error`` reply and the exception is logged."""

OVERLOAD_LOG_INTERVAL = 1.0
"""Seconds between two ``overloaded`` log lines (each counts the rejections since the last)."""
SUBSCRIBE_CONFIRM_TIMEOUT = 5.0
"""Seconds :meth:`TokenWorker.start` waits for the server to confirm the subscription."""


class TokenWorker:
    """A token worker: ``run()`` blocks, ``start()`` serves in the background.

    ``handler``, if given, replaces the token exchange: a callable from request bytes to
    reply bytes (tests and custom brokers use it).
    """

    def __init__(self, config: Config, handler: Handler | None = None) -> None:
        self.config = config
        self.client_name = client_name(config.name_suffix)
        self.metrics = Metrics()
        """This worker's numbers (a registry of its own, served at ``/metrics``)."""
        self._token_handler: TokenHandler | None = None
        if handler is None:
            handler = self._token_handler = TokenHandler.from_config(config, self.metrics)
        self._handler = handler
        self._answer_now: Callable[[bytes], bytes | None] | None = getattr(
            handler, "answer_now", None)
        self._pool = BoundedPool(config.workers, config.backlog)
        self.metrics.in_flight.set_function(lambda: self._pool.admitted)
        self.metrics.capacity.set(self._pool.capacity)
        self._connection = NatsConnection(
            config.nats, self.client_name, on_state=self._on_state, on_gave_up=self._on_gave_up
        )
        self.metrics.reconnect_buffer.set_function(lambda: self._connection.buffered_bytes)
        self._service = ServiceResponder(
            self._connection, version=__version__, subject=config.subject, queue=config.queue,
            metrics=self.metrics, metadata={"client_name": self.client_name})
        self._health: HealthServer | None = None
        self._last_state = State.DISCONNECTED
        self._last_overload_log = -OVERLOAD_LOG_INTERVAL
        self._rejected_since_log = 0
        self._subscription: Subscription | None = None
        self._stop_requested = threading.Event()
        self._cold_stop = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._draining = False
        self.failure = ""
        """Why the worker stopped on its own ("" while serving or after a requested stop)."""
        for secret in (config.nats.password, config.nats.token):
            if secret is not None:
                RedactSecrets.register(secret.reveal())

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect, subscribe, and return with the worker serving in background threads.

        The health listener (if configured) starts first, so liveness holds while NATS is
        still being reached. Raises :class:`~token_worker.errors.ReconnectGaveUp` if NATS
        cannot be reached within the reconnect policy.
        """
        try:
            self._start_health()
            self._connection.connect()
        except BaseException:
            self.stop(timeout=0)  # release the health listener, pool and IdP connections
            raise
        self._subscription = self._connection.subscribe(
            self.config.subject, self._on_message, self.config.queue
        )
        self._service.start()
        with contextlib.suppress(NatsConnectionError):
            self._connection.flush(SUBSCRIBE_CONFIRM_TIMEOUT)
        log.info("serving", extra={"subject": self.config.subject, "queue": self.config.queue,
                                   "server": self._connection.server_url,
                                   "workers": self.config.workers})

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve until :meth:`stop`, SIGTERM or SIGINT; then drain and return.

        A second signal during the drain stops at once. Raises ``ReconnectGaveUp`` when the
        worker stopped because NATS could not be reached again.
        """
        with self._signals_handled(handle_signals):
            self.start()
            while not self._stop_requested.wait(1.0):
                pass
            self.stop()
        if self.failure:
            raise ReconnectGaveUp(self.failure)

    def request_stop(self) -> None:
        """Ask :meth:`run` to drain and return (safe from signal handlers and any thread)."""
        if self._stop_requested.is_set():
            self._cold_stop.set()
        self._stop_requested.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Drain and close: unsubscribe, let in-flight requests reply, close the connection.

        Returns True when every in-flight request finished within ``timeout`` (default
        ``drainTimeout``). Safe to call more than once and from any thread.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return True
            self._draining = True
            self._stop_requested.set()
            budget = self.config.drain_timeout if timeout is None else timeout
            deadline = time.monotonic() + budget
            log.info("draining", extra={"in_flight": self._pool.admitted})
            if self._subscription is not None:
                self._connection.unsubscribe(self._subscription,
                                             drain_timeout=min(budget, SUBSCRIBE_CONFIRM_TIMEOUT))
            drained = self._wait_for_in_flight(deadline)
            if self._connection.is_connected:
                with contextlib.suppress(NatsConnectionError):
                    self._connection.flush(max(0.1, min(2.0, deadline - time.monotonic())))
            self._pool.shutdown()
            self._connection.close()
            if self._token_handler is not None:
                self._token_handler.close()
            if self._health is not None:
                self._health.stop()
            self._stopped.set()
            log.info("stopped", extra={"drained": drained, "failure": self.failure or None})
            return drained

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop was requested (or the worker failed); True if it was."""
        return self._stop_requested.wait(timeout)

    @property
    def is_ready(self) -> bool:
        """Connected, subscribed and not draining: a requester's message would be served."""
        return (self._connection.is_connected and self._subscription is not None
                and not self._draining)

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
        sends all replies of one read together); hand the rest to the pool, never block."""
        received = time.perf_counter()
        if not message.reply:
            log.warning("request without reply subject dropped",
                        extra={"subject": message.subject, "bytes": len(message.payload)})
            return
        if self._answer_now is not None:
            try:
                reply = self._answer_now(message.payload)
            except Exception:
                log.exception("fast path failed; serving on a pool thread")
                reply = None
            if reply is not None:
                self._send_reply(message.reply, reply, received)
                return
        if not self._pool.try_submit(lambda: self._serve(message, received)):
            self._reject_overloaded(message, received)

    def _serve(self, message: Message, received: float) -> None:
        try:
            reply = self._handler(message.payload)
        except Exception:
            request_id = messages.peek_request_id(message.payload,
                                                  max_size=self.config.max_payload)
            with request_context(request_id):
                log.exception("handler failed")
            reply = messages.error_reply(request_id, messages.INTERNAL_ERROR,
                                         "internal error while serving the request")
        self._send_reply(message.reply, reply, received)

    def _reject_overloaded(self, message: Message, received: float) -> None:
        """Answer ``overloaded`` at once; log at most once a second, with a count, so that
        a flood of requests does not become a flood of log lines too."""
        request_id = messages.peek_request_id(message.payload, max_size=self.config.max_payload)
        self._rejected_since_log += 1
        if received - self._last_overload_log >= OVERLOAD_LOG_INTERVAL:
            with request_context(request_id):
                log.warning("overloaded: requests rejected", extra={
                    "capacity": self._pool.capacity, "rejected": self._rejected_since_log})
            self._last_overload_log = received
            self._rejected_since_log = 0
        self._send_reply(message.reply, messages.error_reply(
            request_id, messages.OVERLOADED, "worker overloaded, retry shortly"), received)

    def _send_reply(self, subject: str, reply: bytes, received: float) -> None:
        """Count the reply, then send it: whoever reads the metrics or ``$SRV.STATS`` after
        getting the reply sees it counted."""
        self.metrics.count_reply(messages.error_code_of(reply),
                                 time.perf_counter() - received)
        try:
            self._connection.publish(subject, reply)
        except NotConnected as error:
            log.warning("reply lost: NATS connection down", extra={"error": str(error)})

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
        if self._subscription is None:
            return False, "not subscribed yet"
        if not self._connection.is_connected:
            return False, f"nats {self._connection.state.value}"
        return True, "serving"

    def _on_gave_up(self, reason: str) -> None:
        self.failure = reason
        self._stop_requested.set()

    def _wait_for_in_flight(self, deadline: float) -> bool:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._cold_stop.is_set():
                return self._pool.admitted == 0
            if self._pool.wait_idle(min(remaining, 0.2)):
                return True

    @contextlib.contextmanager
    def _signals_handled(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            self.request_stop()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
