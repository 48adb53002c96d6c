"""The pipeline's plumbing: a diagnosis crosses the stage chain over real NATS JetStream, reaches the
real simulator, is stored and served, and carries one trace id from the gateway through every stage.
Topology, collector and cloud are pass-through stand-ins here (tests/foundation/helpers.py): what they
compute is tested with their own services (tests/topology, tests/collector, tests/cloud) and end to end
in tests/e2e."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.foundation.helpers import (
    REQUEST,
    TIMED_STAGES,
    completed_events,
    post,
    run_to_end,
    sse_events,
    stack_on,
)


async def test_diagnosis_crosses_stand_in_stages_to_the_real_simulator_and_is_served(nats_url: str) -> None:
    async with stack_on(nats_url) as st, aiohttp.ClientSession() as http:
        doc = await run_to_end(http, st.url)
    assert doc["status"] == "completed", doc
    assert doc["error"] is None
    assert doc["result"]["verdict"] == "UNDETERMINED"  # the real simulator, with no topology to follow
    assert any(a["could_change_outcome"] for a in doc["result"]["assumptions"])  # says why it cannot decide
    assert set(doc["timings_ms"]) == set(TIMED_STAGES)
    assert all(t >= 0 for t in doc["timings_ms"].values())
    assert doc["completed_at"] >= doc["created_at"]
    assert len(await completed_events(nats_url, doc["id"])) == 1


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider can be set once per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # stops collecting: the processor stays on the global provider


async def test_one_trace_id_across_gateway_and_stand_in_stages(nats_url: str, spans: InMemorySpanExporter) -> None:
    async with stack_on(nats_url) as st, aiohttp.ClientSession() as http:
        diagnosis_id = await post(http, st.url)
        await sse_events(http, st.url, diagnosis_id)
        expected = {"netdiag.gateway.create_diagnosis", "netdiag.topology", "netdiag.collector",
                    "netdiag.cloud", "netdiag.simulator", "netdiag.gateway-store"}
        for _ in range(50):  # the sink's span ends just after it stored the result
            mine = [s for s in spans.get_finished_spans()
                    if s.attributes and s.attributes.get("netdiag.diagnosis_id") == diagnosis_id]
            if {s.name for s in mine} >= expected:
                break
            await asyncio.sleep(0.02)
    assert {s.name for s in mine} == expected
    assert len({s.context.trace_id for s in mine}) == 1, [(s.name, hex(s.context.trace_id)) for s in mine]
    root = next(s for s in mine if s.name == "netdiag.gateway.create_diagnosis")
    assert root.kind == trace.SpanKind.SERVER
    assert all(s.parent is not None for s in mine if s is not root)  # every stage continues the chain


async def test_gateway_continues_a_callers_trace(nats_url: str, spans: InMemorySpanExporter) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with stack_on(nats_url) as st, aiohttp.ClientSession() as http:
        async with http.post(f"{st.url}/api/v1/diagnoses", json=REQUEST,
                             headers={"traceparent": f"00-{trace_id}-{parent}-01"}) as resp:
            diagnosis_id = (await resp.json())["id"]
        await sse_events(http, st.url, diagnosis_id)
    root = next(s for s in spans.get_finished_spans() if s.name == "netdiag.gateway.create_diagnosis"
                and s.attributes and s.attributes.get("netdiag.diagnosis_id") == diagnosis_id)
    assert f"{root.context.trace_id:032x}" == trace_id
    assert root.parent is not None and f"{root.parent.span_id:016x}" == parent
