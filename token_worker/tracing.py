"""OpenTelemetry tracing, when the process has it: one trace from a service's span through
the worker to the IdP call.

- A requester (:class:`~token_worker.TokenClient`, :class:`~token_worker.AsyncTokenClient`)
  wraps each request it sends over NATS in a ``CLIENT`` span (:func:`requesting`) and
  carries that span's W3C trace context (``traceparent``, and ``tracestate`` when there is
  one) in the request's NATS headers. Its parent is whatever span is current in the app.
- The worker (:mod:`token_worker.serve.dispatch`) starts a ``SERVER`` span per request
  (:func:`start_request`), a child of the requester's when the request carries its
  context, and ends it when the reply goes out (:func:`finish_request`). A cache miss's work
  runs on a pool thread: the context goes along explicitly (:func:`capture`,
  :func:`carried`), since context variables do not cross threads. Under it, :func:`span`
  records the shared-tier lookup and each IdP attempt, and :func:`annotate` adds what only
  the code deeper down knows (the endpoint's host, the HTTP status).

Attributes hold names, subjects, ids, hosts, attempt numbers, statuses and error codes:
never a secret, a token or an error's text (which may quote an IdP's answer).

It costs nothing when tracing is off. Nothing here imports OpenTelemetry: a requester
looks for a span only once the process has loaded ``opentelemetry.trace`` (an app that
never did cannot have one), and a worker records spans only if a tracer provider was set
before its dispatcher was built (:func:`request_tracer`: by ``token-worker`` from the
``OTEL_*`` environment, :mod:`token_worker.serve.telemetry`, or by the app that embeds it).
Otherwise a request's headers are not even read, and the hot path (a cache hit) pays one
``is None`` test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from token_worker.version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

__all__ = ["TRACE_HEADERS", "annotate", "capture", "carried", "finish_request", "flush",
           "request_tracer", "requesting", "span", "start_request"]

TRACER_NAME = "token_worker"
TRACE_HEADERS = ("traceparent", "tracestate")
"""The W3C trace context headers a request carries (baggage is not sent)."""
_API = "opentelemetry.trace"
"""Loaded in any process that could have a span: without it, tracing is off for sure."""


class _Recording:
    """The worker's tracer while its spans are recorded (set by :func:`request_tracer`)."""

    tracer: Tracer | None = None


_recording = _Recording()


# --- the requester -----------------------------------------------------------------------


@contextmanager
def requesting(subject: str, request_id: str) -> Iterator[dict[str, str] | None]:
    """A ``CLIENT`` span around one request over NATS, and the NATS headers that carry its
    context (None when there is nothing to carry: no OpenTelemetry in this process, or no
    valid context). An error that leaves the block marks the span with its ``error_code``."""
    if _API not in sys.modules:
        yield None
        return
    from opentelemetry import trace  # noqa: PLC0415 - loaded already (see above)
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    tracer = trace.get_tracer(TRACER_NAME, __version__)
    with tracer.start_as_current_span(
            f"request {subject}", kind=trace.SpanKind.CLIENT, record_exception=False,
            set_status_on_exception=False,
            attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                        "messaging.operation.name": "request",
                        "token_worker.request_id": request_id}) as current:
        headers: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(headers)
        try:
            yield headers or None
        except Exception as error:
            _failed(current, error)
            raise


# --- the worker ----------------------------------------------------------------------------


def request_tracer() -> Tracer | None:
    """The tracer of the worker's request spans when this process records spans (a
    tracer provider is set: by the ``OTEL_*`` environment or by the app), else None; from
    then on the worker's child spans follow suit."""
    tracer = None
    if _API in sys.modules:
        from opentelemetry import trace  # noqa: PLC0415 - loaded already

        provider = trace.get_tracer_provider()
        if not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            tracer = provider.get_tracer(TRACER_NAME, __version__)
    _recording.tracer = tracer
    return tracer


def start_request(tracer: Tracer, name: str, subject: str,
                  headers: Mapping[str, str] | None) -> Span:
    """The ``SERVER`` span of one request, a child of the requester's span when
    ``headers`` (the request's NATS headers, names in any case) carry its context."""
    from opentelemetry.trace import SpanKind  # noqa: PLC0415 - loaded with the tracer
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    parent = None
    if headers:
        carrier = {name.lower(): value for name, value in headers.items()
                   if name.lower() in TRACE_HEADERS}
        parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    return tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes={
        "messaging.system": "nats", "messaging.destination.name": subject,
        "messaging.operation.name": "process"})


@contextmanager
def current(span_: Span) -> Iterator[None]:
    """Make ``span_`` the current span in this thread while the block runs."""
    from opentelemetry import context, trace  # noqa: PLC0415 - loaded with the tracer

    token = context.attach(trace.set_span_in_context(span_))
    try:
        yield
    finally:
        context.detach(token)


def finish_request(span_: Span, *, error_code: str, request_id: str, client_id: str) -> None:
    """End a request's span with what its reply said (its ``error_code``, if any)."""
    span_.set_attribute("token_worker.request_id", request_id)
    if client_id:
        span_.set_attribute("token_worker.client_id", client_id)
    if error_code:
        _failed(span_, error_code)
    span_.end()


def capture() -> Context | None:
    """The current context if it holds a span being recorded, to carry into work that runs
    on another thread (:func:`carried`); None when tracing is off."""
    if _recording.tracer is None:
        return None
    from opentelemetry import context, trace  # noqa: PLC0415 - loaded with the tracer

    return context.get_current() if trace.get_current_span().is_recording() else None


def carried(captured: Context | None, work: Callable[[], None]) -> Callable[[], None]:
    """``work``, run in the ``captured`` context (on whatever thread runs it)."""
    if captured is None:
        return work

    def run() -> None:
        from opentelemetry import context  # noqa: PLC0415 - loaded with the tracer

        token = context.attach(captured)
        try:
            work()
        finally:
            context.detach(token)
    return run


@contextmanager
def span(name: str, attributes: Mapping[str, AttributeValue] | None = None, *,
         client: bool = False) -> Iterator[None]:
    """A child of the current span, if one is being recorded (else nothing): ``client``
    for a call to another service. An exception that leaves the block marks it with its
    ``error_code`` (and ``status``, an HTTP status), never its text."""
    tracer = _recording.tracer
    if tracer is None:
        yield
        return
    from opentelemetry import trace  # noqa: PLC0415 - loaded with the tracer

    if not trace.get_current_span().is_recording():
        yield
        return
    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    with tracer.start_as_current_span(name, kind=kind, attributes=attributes,
                                      record_exception=False,
                                      set_status_on_exception=False) as child:
        try:
            yield
        except Exception as error:
            _failed(child, error)
            raise


def annotate(attributes: Mapping[str, AttributeValue]) -> None:
    """Add ``attributes`` to the current span, if one is being recorded."""
    if _recording.tracer is None:
        return
    from opentelemetry import trace  # noqa: PLC0415 - loaded with the tracer

    current_span = trace.get_current_span()
    if current_span.is_recording():
        current_span.set_attributes(attributes)


def flush(timeout: float = 5.0) -> None:
    """Export the spans still buffered, if the tracer provider buffers (the SDK's does)."""
    if _API not in sys.modules:
        return
    from opentelemetry import trace  # noqa: PLC0415 - loaded already

    force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(force_flush):
        force_flush(int(timeout * 1000))


def _failed(span_: Span, error: BaseException | str) -> None:
    """Mark ``span_`` failed with an error code (and an HTTP status), never a text."""
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 - loaded already

    if isinstance(error, str):
        code = error
    else:
        code = str(getattr(error, "error_code", "") or type(error).__name__)
        status = getattr(error, "status", None)
        if isinstance(status, int):
            span_.set_attribute("http.response.status_code", status)
    span_.set_attribute("token_worker.error_code", code)
    span_.set_status(Status(StatusCode.ERROR, code))
