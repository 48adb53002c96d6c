"""Observability: one OpenTelemetry trace per diagnosis across the gateway and every stage (the
context travels in NATS headers), exported over OTLP/HTTP when configured, Prometheus metrics on
/metrics, JSON logs with the diagnosis id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from services.collector.handler import CollectorStage
from services.gateway.app import create_app
from services.gateway.store import ResultSink, ResultStore
from shared.bus import SUBJECT_CLOUD, SUBJECT_COLLECTED, SUBJECT_COMPLETED, SUBJECT_REQUESTED, SUBJECT_TOPOLOGY, Bus
from shared.config import Settings
from shared.logs import JsonFormatter
from shared.metrics import start_metrics_server
from shared.schemas import (
    DiagnosisRequest,
    DiagnosisResult,
    DiagnosisStatus,
    StageEnvelope,
    Verdict,
    new_id,
    now,
)
from shared.stage import Stage, StageRunner
from shared.telemetry import tracer_provider
from shared.topology import Endpoint, EndpointKind, TopologyReport
from tests.deploy.natscluster import free_port
from tests.foundation.helpers import pipeline, post, run_to_end, scripted, sse_events, stack_on

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "tests" / "topology" / "fixtures" / "basic"
SUBJECTS = {"topology": (SUBJECT_REQUESTED, SUBJECT_TOPOLOGY), "collector": (SUBJECT_TOPOLOGY, SUBJECT_COLLECTED),
            "cloud": (SUBJECT_COLLECTED, SUBJECT_CLOUD), "simulator": (SUBJECT_CLOUD, SUBJECT_COMPLETED)}


class StandInStage(Stage):
    """A stage with the real name and subjects and no work: the simulator's verdict is scripted
    (REACHABLE), so the tests using it prove the tracing, metrics and log plumbing, not a diagnosis."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.input_subject, self.output_subject = SUBJECTS[name]

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        if self.name == "simulator":
            return env.model_copy(update={"result": DiagnosisResult(verdict=Verdict.REACHABLE, summary="ok")})
        return env


def in_memory_spans() -> InMemorySpanExporter:
    """Spans of this process go (also) to memory. The global provider can be set only once per
    process: reuse an SDK provider another test installed."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = tracer_provider("test")
        trace.set_tracer_provider(provider)
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    return exporter


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_stand_in_stages_carry_one_trace_per_diagnosis_and_count_scripted_verdicts(nats_url: str) -> None:
    exporter = in_memory_spans()
    settings = Settings(nats_url=nats_url, metrics_port=free_port())
    start_metrics_server(settings)
    reachable_before = sample("netdiag_diagnoses_total", verdict="REACHABLE")
    sim_count_before = sample("netdiag_stage_duration_seconds_count", stage="simulator")
    buses: list[Bus] = []
    stop = asyncio.Event()
    tasks = []
    for stage in [*(StandInStage(n) for n in SUBJECTS), None]:
        bus = await Bus.connect(name="obs", settings=settings)
        buses.append(bus)
        tasks.append(asyncio.create_task(StageRunner(bus, stage or ResultSink(bus, settings)).run(stop)))
    gateway_bus = await Bus.connect(name="gateway", settings=settings)
    runner = web.AppRunner(create_app(gateway_bus), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        ids = []
        async with aiohttp.ClientSession() as s:
            for port in (53, 80, 443):
                body = {"src": "10.244.1.5", "dst": "10.96.0.10", "port": port, "protocol": "tcp"}
                async with s.post(f"{base}/api/v1/diagnoses", json=body) as resp:
                    assert resp.status == 202
                    ids.append((await resp.json())["id"])
            store = ResultStore(gateway_bus)
            for _ in range(100):
                done = [await store.get(i) for i in ids]
                if all(d and d.status == DiagnosisStatus.COMPLETED for d in done):
                    break
                await asyncio.sleep(0.1)
            async with s.get(f"{base}/metrics") as resp:
                exposition = await resp.text()

        spans = [(str((sp.attributes or {}).get("netdiag.diagnosis_id")), sp) for sp in exporter.get_finished_spans()]
        traces: dict[str, set[int]] = defaultdict(set)
        names: dict[str, set[str]] = defaultdict(set)
        for diagnosis_id, sp in spans:
            if diagnosis_id in ids and sp.context is not None:
                traces[diagnosis_id].add(sp.context.trace_id)
                names[diagnosis_id].add(sp.name)
        for i in ids:
            assert len(traces[i]) == 1, f"diagnosis {i} spans {len(traces[i])} traces"
            assert names[i] >= {"netdiag.gateway.create_diagnosis", *(f"netdiag.{n}" for n in SUBJECTS),
                                "netdiag.gateway-store"}, names[i]
        assert len({next(iter(t)) for t in traces.values()}) == len(ids)  # one trace each, not shared

        assert sample("netdiag_diagnoses_total", verdict="REACHABLE") == reachable_before + 3
        assert sample("netdiag_stage_duration_seconds_count", stage="simulator") >= sim_count_before + 3
        for metric in ("netdiag_diagnoses_total", "netdiag_stage_duration_seconds_bucket",
                       "netdiag_stage_redeliveries_total", "netdiag_collector_timeouts_total"):
            assert metric in exposition or metric.removesuffix("_total") in exposition, metric
        port_text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=5).read())
        assert b"netdiag_diagnoses_total" in port_text  # the per-service metrics port
    finally:
        stop.set()
        await runner.cleanup()
        await asyncio.wait(tasks, timeout=5)
        for bus in [*buses, gateway_bus]:
            with contextlib.suppress(Exception):
                await bus.close()


class OtlpReceiver:
    """The receiving end of OTLP/HTTP (what an OpenTelemetry Collector serves on :4318): protobuf
    ExportTraceServiceRequests POSTed to a traces path, decoded with the exporter's own schema."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[ExportTraceServiceRequest] = []
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def _traces(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        self.requests.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def __aenter__(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post(self.path, self._traces)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.runner:
            await self.runner.cleanup()

    def spans(self) -> list[tuple[str, Span]]:
        """(service.name of the sender, span) for every span received."""
        out = []
        for req in self.requests:
            for resource_spans in req.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                out += [(attrs.get("service.name", ""), span)
                        for scope in resource_spans.scope_spans for span in scope.spans]
        return out


def span_attr(span: Span, key: str) -> str | None:
    return next((a.value.string_value for a in span.attributes if a.key == key), None)


@pytest.mark.parametrize("endpoint_var", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
async def test_otlp_export_carries_one_trace_per_diagnosis(nats_url: str, endpoint_var: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The real OTLP/HTTP exporter, configured by the standard variables, posting to a receiver on
    loopback: a diagnosis through the embedded stack arrives as one trace rooted at the gateway's
    SERVER span, with every stage's span in it, flushed when the stack stops."""
    # the base endpoint gets /v1/traces appended; the traces endpoint is used as it is
    path = "/v1/traces" if endpoint_var == "OTEL_EXPORTER_OTLP_ENDPOINT" else "/otlp/traces"
    async with OtlpReceiver(path) as receiver:
        monkeypatch.setenv(endpoint_var, receiver.base + ("" if path == "/v1/traces" else path))
        async with stack_on(nats_url) as stack, aiohttp.ClientSession() as http:
            diagnosis_id = await post(http, stack.url)
            await sse_events(http, stack.url, diagnosis_id)
        # stop() returned: the batch processor has flushed, nothing is left queued for later
        mine = [(service, sp) for service, sp in receiver.spans()
                if span_attr(sp, "netdiag.diagnosis_id") == diagnosis_id]
    names = {sp.name for _, sp in mine}
    assert names >= {"netdiag.gateway.create_diagnosis", "netdiag.topology", "netdiag.collector",
                     "netdiag.cloud", "netdiag.simulator", "netdiag.gateway-store"}, names
    assert len({sp.trace_id for _, sp in mine}) == 1, "a diagnosis must be one trace"
    (root,) = [sp for _, sp in mine if sp.name == "netdiag.gateway.create_diagnosis"]
    assert root.kind == Span.SpanKind.SPAN_KIND_SERVER and not root.parent_span_id
    by_id = {sp.span_id: sp for _, sp in mine}
    for _, sp in mine:  # every stage span hangs (through its predecessors) under the gateway's
        assert sp is root or sp.parent_span_id in by_id, sp.name


@contextlib.contextmanager
def json_log_lines() -> Iterator[list[dict[str, Any]]]:
    """The netdiag loggers' warnings as the JSON lines an operator's log pipeline receives."""
    lines: list[dict[str, Any]] = []
    handler = logging.Handler(logging.WARNING)
    handler.setFormatter(JsonFormatter())
    handler.emit = lambda record: lines.append(json.loads(handler.format(record)))  # type: ignore[method-assign]
    netdiag_log = logging.getLogger("netdiag")
    level = netdiag_log.level
    netdiag_log.addHandler(handler)
    netdiag_log.setLevel(logging.WARNING)
    try:
        yield lines
    finally:
        netdiag_log.removeHandler(handler)
        netdiag_log.setLevel(level)


async def test_a_failing_handler_logs_json_lines_with_the_diagnosis_id_and_stage(nats_url: str) -> None:
    async def broken(env: StageEnvelope) -> StageEnvelope:
        raise RuntimeError("the collector broke")

    stages = pipeline(collector=scripted("collector", broken))
    with json_log_lines() as lines:
        async with stack_on(nats_url, Settings(max_deliver=2), stages=stages) as stack, \
                aiohttp.ClientSession() as http:
            doc = await run_to_end(http, stack.url)
    assert doc["status"] == "failed" and "the collector broke" in doc["error"]
    mine = [line for line in lines if line.get("diagnosis_id") == doc["id"]]
    failures = [line for line in mine if line["logger"] == "netdiag.stage"]
    assert [line["level"] for line in failures] == ["warning", "warning"], mine  # one per attempt
    assert all(line["stage"] == "collector" and "the collector broke" in line["msg"] for line in failures)


async def test_a_node_that_does_not_answer_is_logged_with_diagnosis_stage_and_node(nats_url: str) -> None:
    node = f"node-gone-{os.getpid()}"  # no agent serves it: NATS answers "no responders" at once
    report = TopologyReport(source="live", src=Endpoint(address="10.244.1.11", kind=EndpointKind.POD, node=node),
                            dst=Endpoint(address="10.244.1.10", kind=EndpointKind.POD, node=node),
                            nodes_to_collect=[node])
    request = DiagnosisRequest(src=ip_address("10.244.1.11"), dst=ip_address("10.244.1.10"), port=80, protocol="tcp")
    env = StageEnvelope(id=new_id(), request=request, created_at=now(), topology=report.model_dump(mode="json"))
    bus = await Bus.connect(nats_url, name="obs-collector", settings=Settings(nats_url=nats_url))
    try:
        with json_log_lines() as lines:
            out = await CollectorStage(bus, Settings(nats_url=nats_url, collect_timeout_s=2.0)).handle(env)
    finally:
        await bus.close()
    assert [f.code for f in out.findings] == ["COLLECTOR_UNAVAILABLE"]
    [line] = [line for line in lines if line.get("diagnosis_id") == env.id]
    assert (line["logger"], line["stage"], line["node"]) == ("netdiag.collector", "collector", node), line


def test_json_logs_carry_the_diagnosis_id() -> None:
    record = logging.LogRecord("netdiag.stage", logging.WARNING, __file__, 1, "attempt %d failed", (2,), None)
    record.diagnosis_id, record.stage = "0123abcd" * 4, "collector"
    line = json.loads(JsonFormatter().format(record))
    assert line["diagnosis_id"] == "0123abcd" * 4 and line["stage"] == "collector"
    assert line["msg"] == "attempt 2 failed" and line["level"] == "warning"


async def test_each_service_process_runs_as_deployed_serves_metrics_and_exports_traces(nats_url: str) -> None:
    """The commands of the chart and docker-compose, as separate processes on one NATS: a diagnosis
    goes through all of them, each serves Prometheus metrics on its own port, and each exports its
    spans over OTLP/HTTP (flushed as it stops) into one trace across the processes."""
    http_port = free_port()
    commands = {
        "topology": ["services.topology"], "collector": ["services.collector"], "cloud": ["services.cloud"],
        "simulator": ["services.simulator"], "agent": ["services.collector", "agent", "--node", "node-1"],
        "gateway": ["services.gateway", "--host", "127.0.0.1", "--port", str(http_port)],
    }
    ports = {name: free_port() for name in commands}
    procs = []
    async with OtlpReceiver("/v1/traces") as receiver:
        try:
            for name, argv in commands.items():
                env = {**os.environ, "NETDIAG_NATS_URL": nats_url, "NETDIAG_METRICS_PORT": str(ports[name]),
                       "NETDIAG_SNAPSHOT": str(SNAPSHOT), "NETDIAG_COLLECT_TIMEOUT_S": "2",
                       "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base}
                procs.append(subprocess.Popen([sys.executable, "-m", *argv], env=env, cwd=ROOT,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            base = f"http://127.0.0.1:{http_port}"
            async with aiohttp.ClientSession() as s:
                for _ in range(200):  # the processes import and connect
                    with contextlib.suppress(aiohttp.ClientError):
                        async with s.get(f"{base}/readyz") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.1)
                body = {"src": "10.244.1.2", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}
                async with s.post(f"{base}/api/v1/diagnoses", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    diagnosis_id = (await resp.json())["id"]
                for _ in range(300):
                    async with s.get(f"{base}/api/v1/diagnoses/{diagnosis_id}") as resp:
                        doc = await resp.json()
                    if doc["status"] != "queued":
                        break
                    await asyncio.sleep(0.1)
                assert doc["status"] == "completed", doc.get("error")
                assert set(doc["timings_ms"]) >= {"topology", "collector", "cloud", "simulator"}
                for name, port in ports.items():
                    async with s.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        text = await resp.text()
                        assert resp.status == 200 and "netdiag_stage_duration_seconds" in text, name
            for proc in procs:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else proc.args
        finally:
            for proc in procs:
                proc.terminate()
            # waited for off the event loop: the receiver on this loop takes their last exports
            for proc in procs:
                try:
                    await asyncio.to_thread(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert all(proc.returncode == 0 for proc in procs), [(p.args, p.returncode) for p in procs]
    mine = [(service, sp) for service, sp in receiver.spans()
            if span_attr(sp, "netdiag.diagnosis_id") == diagnosis_id]
    assert len({sp.trace_id for _, sp in mine}) == 1
    assert {service for service, _ in mine} == {f"netdiag-{n}" for n in ("gateway", *SUBJECTS)}
