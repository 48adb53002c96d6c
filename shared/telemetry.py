"""OpenTelemetry wiring of a service process.

The spans themselves are made where the work is (gateway request, each stage's message) and
joined into one trace per diagnosis through NATS headers (shared/bus.py injects, shared/stage.py
extracts). Here a process only decides where spans go: to an OTLP collector when
OTEL_EXPORTER_OTLP_ENDPOINT is set and the exporter package (opentelemetry-exporter-otlp-proto-http)
is installed; otherwise nowhere (the API's no-op tracer, no cost).
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from shared.config import Settings
from shared.metrics import start_metrics_server

log = logging.getLogger("netdiag.telemetry")


def tracer_provider(service: str, *processors: SpanProcessor) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get(
        "OTEL_SERVICE_NAME", f"netdiag-{service}")}))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def setup_tracing(service: str) -> bool:
    """Install an OTLP-exporting tracer provider if configured; True when spans are exported."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http is not "
                    "installed: traces are not exported")
        return False
    trace.set_tracer_provider(tracer_provider(service, BatchSpanProcessor(OTLPSpanExporter())))
    return True


def setup_process(service: str, settings: Settings) -> None:
    """Everything a service process exposes about itself: traces (OTLP) and metrics (Prometheus)."""
    setup_tracing(service)
    start_metrics_server(settings)
