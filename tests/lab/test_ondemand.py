"""Collection on demand, judged by the kernel: a stale DNAT on node-3 sends the node-exporter Service
to web-1 on node-1, a node the Kubernetes model does not put on the path (so the collector does not ask
it). The simulator asks node-1's agent itself (live), reads nodes/node-1.json (snapshot), and only a
node whose agent does not answer (or a snapshot without its dump) stays unknown.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lab.dataplane import Lab
from lab.faults import BY_NAME
from services.cli import build_parser, cmd_snapshot_capture
from services.stack import EmbeddedStack
from shared.config import Settings
from tests.foundation.helpers import get_json, post, sse_events
from tests.lab.conftest import MakeLab
from tests.lab.test_differential import explain

pytestmark = pytest.mark.lab

FAULT = BY_NAME["stale_dnat_to_uncollected_node"]


def _body(lab: Lab) -> dict[str, Any]:
    spec = FAULT.probe
    return {"src": lab.source_address(spec.src), "dst": lab.address(spec.dst), "port": spec.port,
            "protocol": spec.protocol}


async def _run(stack: EmbeddedStack, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The result and the simulator's progress events (SSE)."""
    async with aiohttp.ClientSession() as http:
        diagnosis_id = await post(http, stack.url, body)
        events = await sse_events(http, stack.url, diagnosis_id, timeout=30)
        doc = await get_json(http, f"{stack.url}/api/v1/diagnoses/{diagnosis_id}")
    return doc["result"], [data for name, data in events if name != "result" and data.get("stage") == "simulator"]


def _injected(make_lab: MakeLab) -> Lab:
    lab = make_lab(FAULT.scenario)
    spec = FAULT.probe
    assert lab.probe(spec.src, spec.dst, spec.port).outcome == "connected"
    FAULT.inject(lab)
    assert lab.probe(spec.src, spec.dst, spec.port).outcome == "refused"  # the kernel: web-1 has no :9100
    return lab


def _on_demand(events: list[dict[str, Any]], node: str) -> list[str]:
    return [e["message"] for e in events if e.get("detail", {}).get("on_demand") and e["detail"].get("node") == node]


async def test_live_on_demand_collection_shows_in_progress(make_lab: MakeLab) -> None:
    lab = _injected(make_lab)
    api = await asyncio.to_thread(lab.start_api)
    agents = {name: node.netns for name, node in lab.state.nodes.items()}
    async with EmbeddedStack(Settings(kubeconfig=api.kubeconfig, collect_timeout_s=5.0), agents=agents) as stack:
        result, events = await _run(stack, _body(lab))
    text = explain(result)
    assert result["verdict"] == "UNREACHABLE", text
    assert any(f["code"] == "NO_LISTENER" and f["hop"] == "node:node-1" and "10.244.1.2" in f["message"]
               for f in result["findings"]), text
    asked = _on_demand(events, "node-1")
    assert len(asked) == 2 and "asking its agent on demand" in asked[0] and "collected on demand" in asked[1], events
    assert not _on_demand(events, "node-2"), "only the node the packet reaches is asked"


async def test_agent_that_does_not_answer_is_collector_unavailable(make_lab: MakeLab) -> None:
    lab = _injected(make_lab)
    api = await asyncio.to_thread(lab.start_api)
    agents = {"node-3": lab.state.nodes["node-3"].netns}  # node-1 has no agent
    async with EmbeddedStack(Settings(kubeconfig=api.kubeconfig, collect_timeout_s=2.0), agents=agents) as stack:
        result, events = await _run(stack, _body(lab))
    text = explain(result)
    assert result["verdict"] == "UNDETERMINED", text  # never a confident answer about an unseen node
    (unavailable,) = [f for f in result["findings"] if f["code"] == "COLLECTOR_UNAVAILABLE"]
    assert unavailable["hop"] == "node:node-1" and unavailable["evidence"]["on_demand"] is True, text
    assert not any(f["code"] == "DATA_MISSING" and f["hop"] == "node:node-1" for f in result["findings"]), text
    assert "could not be collected on demand" in _on_demand(events, "node-1")[-1], events


async def test_snapshot_reads_the_node_dump_on_demand(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = _injected(make_lab)
    api = await asyncio.to_thread(lab.start_api)
    snapshot = tmp_path / "snap"
    argv = ["snapshot", "capture", "--out", str(snapshot), "--kubeconfig", str(api.kubeconfig), "--timeout", "10"]
    for name, node in lab.state.nodes.items():
        argv += ["--agent", f"{name}={node.netns}"]
    assert await asyncio.to_thread(cmd_snapshot_capture, build_parser().parse_args(argv)) == 0  # runs its own loop
    lab.down()  # the snapshot alone answers from here on
    async with EmbeddedStack(Settings(snapshot=snapshot)) as stack:
        result, events = await _run(stack, _body(lab))
        text = explain(result)
        assert result["verdict"] == "UNREACHABLE", text
        # the capture named every pod namespace: the on-demand dump names web-1
        assert any(f["code"] == "NO_LISTENER" and f["hop"] == "pod:prod/web-1" for f in result["findings"]), text
        assert "collected on demand" in _on_demand(events, "node-1")[-1], events

        (snapshot / "nodes" / "node-1.json").unlink()
        result, _ = await _run(stack, _body(lab))
    text = explain(result)
    assert result["verdict"] == "UNDETERMINED", text
    assert any(f["code"] == "DATA_MISSING" and f["hop"] == "node:node-1" and "snapshot has no node-1.json" in
               f["message"] for f in result["findings"]), text
    shutil.rmtree(snapshot)
