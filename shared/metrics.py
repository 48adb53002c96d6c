"""Prometheus metrics of every netdiag service (prometheus-client's default registry).

Each service process serves them on NETDIAG_METRICS_PORT (`start_metrics_server`); the gateway
also answers GET /metrics on its HTTP port.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest, start_http_server

from shared.config import Settings

log = logging.getLogger("netdiag.metrics")

DIAGNOSES = Counter("netdiag_diagnoses_total", "Diagnoses completed, by verdict ('failed': no result)", ["verdict"])
STAGE_SECONDS = Histogram(
    "netdiag_stage_duration_seconds", "Time a stage spent on one message (handled successfully)", ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REDELIVERIES = Counter("netdiag_stage_redeliveries_total", "Messages a stage received more than once", ["stage"])
STAGE_ERRORS = Counter("netdiag_stage_errors_total", "Handler failures (retried, or failing the diagnosis)",
                       ["stage"])
REJECTED_EVENTS = Counter("netdiag_rejected_events_total", "Bus events refused at the edge and not stored, by "
                          "stage and reason (invalid, unknown id, already terminal, unsigned)", ["stage", "reason"])
COLLECTOR_TIMEOUTS = Counter("netdiag_collector_timeouts_total", "Node agents that did not answer in time",
                             ["node"])

_started: set[int] = set()


def stage_received(stage: str, attempt: int) -> None:
    if attempt > 1:
        REDELIVERIES.labels(stage).inc()


def record_diagnosis(verdict: str | None) -> None:
    DIAGNOSES.labels(verdict or "failed").inc()


def start_metrics_server(settings: Settings) -> None:
    """Serve /metrics on settings.metrics_port (once per process; off when unset)."""
    port = settings.metrics_port
    if port is None or port in _started:
        return
    start_http_server(port)
    _started.add(port)
    log.info("metrics on :%d/metrics", port)


async def metrics_handler(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
