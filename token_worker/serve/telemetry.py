"""The ``token-worker`` command's OpenTelemetry SDK, set up from the standard ``OTEL_*``
environment.

Only when ``OTEL_TRACES_EXPORTER`` names exporters and the SDK is installed
(``pip install 'token-worker[otel]'``): ``console`` (spans as JSON on standard output),
``otlp`` (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL``:
``http/protobuf``, the default, or ``grpc`` if its exporter is installed), ``none``. The
rest is the SDK's own reading of the environment: the endpoint and headers
(``OTEL_EXPORTER_OTLP_*``), the sampler (``OTEL_TRACES_SAMPLER``), the batching
(``OTEL_BSP_*``), the resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``; the
service is ``token-worker`` unless they name it). Spans are exported in batches, and
flushed when the worker stops (:func:`token_worker.tracing.flush`) and at exit.

Tracing never stops a worker from serving: an exporter that is unknown or not installed
is logged once and left out. A worker embedded in an app (:class:`TokenWorker` as a
library) is not set up here: it records spans with the tracer provider the app set.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["configure_from_environment", "shut_down"]

log = logging.getLogger(__name__)

SERVICE_NAME = "token-worker"
_OTLP = {
    "http/protobuf": "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "grpc": "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
}
"""The OTLP span exporter's module for each protocol."""


def configure_from_environment(environ: Mapping[str, str]) -> TracerProvider | None:
    """Set the global tracer provider from ``environ`` and return it; None when
    ``OTEL_TRACES_EXPORTER`` is unset or ``none``, or the SDK is not installed (said once)."""
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
             if name.strip()]
    if not names or names == ["none"]:
        return None
    try:
        from opentelemetry import trace  # noqa: PLC0415 - only when tracing is asked for
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER is set but the OpenTelemetry SDK is not installed: "
                    "no spans (pip install 'token-worker[otel]')")
        return None
    named = "service.name" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "") or environ.get(
        "OTEL_SERVICE_NAME")
    provider = TracerProvider(resource=Resource.create(
        {} if named else {"service.name": SERVICE_NAME}))
    exporters = [exporter for name in names
                 if (exporter := _exporter(name, environ)) is not None]
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on", extra={"exporters": names})
    return provider


def shut_down(provider: TracerProvider | None) -> None:
    """Export what is left and stop the exporters."""
    if provider is not None:
        provider.shutdown()


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    """The span exporter ``name`` stands for, or None (logged) when it cannot be had."""
    if name == "none":
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("unknown OTEL_TRACES_EXPORTER left out (console, otlp or none)",
                    extra={"exporter": name})
        return None
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    module = _OTLP.get(protocol)
    if module is None:
        log.warning("unknown OTLP protocol: otlp exporter left out (http/protobuf or grpc)",
                    extra={"protocol": protocol})
        return None
    try:
        return importlib.import_module(module).OTLPSpanExporter()
    except ImportError:
        log.warning("otlp exporter not installed: left out",
                    extra={"protocol": protocol, "module": module})
        return None
