"""OpenTelemetry for tests of both layers: the ``spans`` fixture sets an SDK tracer provider
that keeps every finished span in memory, for one test only, and puts the process back as
it was (no provider, the worker's tracing off), so no other test records spans.

The SDK is optional: a test that takes the fixture is skipped without it. Test modules
import the fixture from here (``from tests.otel import spans``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from token_worker import tracing


@pytest.fixture
def spans() -> Iterator[Any]:
    """An ``InMemorySpanExporter`` behind the global tracer provider, for this test."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.util._once import Once

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # The API lets a process set its provider once; OpenTelemetry's own test helpers reset
    # these two globals the same way between tests.
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
        trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
        tracing.request_tracer()  # the worker's child spans off again


def console_spans(text: str) -> list[dict[str, Any]]:
    """The spans the SDK's console exporter printed (one JSON document after another)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = 0
    while True:
        start = text.find("{", index)
        if start < 0:
            return found
        document, index = decoder.raw_decode(text, start)
        found.append(document)


def hex_id(value: int, width: int) -> str:
    """An id as the console exporter prints it (``0x`` and zero-padded hex)."""
    return f"0x{value:0{width}x}"


def attribute_values(span_documents: list[dict[str, Any]]) -> list[str]:
    """Every attribute value of these spans, and every name, as text (for secret scans)."""
    values = []
    for document in span_documents:
        values.append(str(document.get("name")))
        values.extend(str(value) for value in (document.get("attributes") or {}).values())
        status = document.get("status") or {}
        values.append(str(status.get("description")))
    return values
