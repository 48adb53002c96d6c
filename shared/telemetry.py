"""OpenTelemetry wiring of a service process.

The spans themselves are made where the work is (gateway request, each stage's message) and
joined into one trace per diagnosis through NATS headers (shared/bus.py injects, shared/stage.py
extracts). Here a process only decides where spans go: to an OTLP/HTTP collector when
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; otherwise nowhere
(the API's no-op tracer, no cost). The exporter reads the other standard OTEL_EXPORTER_OTLP_*
variables (headers, timeout, compression, certificates) itself.
"""

from __future__ import annotations

import asyncio
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.config import Settings
from shared.metrics import start_metrics_server

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracer_provider(service: str, *processors: SpanProcessor) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get(
        "OTEL_SERVICE_NAME", f"netdiag-{service}")}))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def setup_tracing(service: str) -> SpanProcessor | None:
    """Export this process's spans over OTLP/HTTP if an endpoint is configured. Returns the
    processor doing it (hand it to `shutdown_tracing` when the process or stack stops), or None."""
    if not any(os.environ.get(var) for var in ENDPOINT_VARS):
        return None
    # imported here: only a process that exports pays for protobuf and the HTTP client (~15 ms)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    processor = BatchSpanProcessor(OTLPSpanExporter())
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        # the global provider can be set only once per process: join the one already there
        # (an embedding application's, or a second embedded stack's)
        provider.add_span_processor(processor)
    else:
        trace.set_tracer_provider(tracer_provider(service, processor))
    return processor


async def shutdown_tracing(processor: SpanProcessor | None) -> None:
    """Export what is still queued, then stop exporting. In a thread: the export is a blocking
    HTTP call, and the collector receiving it may be served by this very event loop."""
    if processor is not None:
        await asyncio.to_thread(processor.shutdown)


def setup_process(service: str, settings: Settings) -> SpanProcessor | None:
    """Everything a service process exposes about itself: traces (OTLP) and metrics (Prometheus).
    Returns the span exporter for `shutdown_tracing`."""
    start_metrics_server(settings)
    return setup_tracing(service)
