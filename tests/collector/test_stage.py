"""Node agent + collector stage over a real nats-server, reading real namespaces."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from services.collector.agent import CollectRequest, NodeAgent, request_dump
from services.collector.capture import capture_nodes
from services.collector.handler import CollectorStage
from shared.bus import Bus, node_collect_subject, progress_subject
from shared.config import Settings
from shared.netstack import decode_dump
from shared.schemas import DiagnosisOptions, DiagnosisRequest, StageEnvelope, new_id, now
from shared.topology import Endpoint, EndpointKind, TopologyReport
from tests.collector import netns_fixture

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def fx() -> Iterator[netns_fixture.Fixture]:
    with netns_fixture.fixture() as built:
        yield built


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="collector-test", settings=Settings(nats_url=nats_url))
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def agent(bus: Bus, fx: netns_fixture.Fixture) -> AsyncIterator[NodeAgent]:
    a = NodeAgent(bus, "node-1", fx.node1)
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


def pod_object(name: str, node: str, ip: str) -> dict:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}


def envelope(nodes: list[str], timeout: float | None = None) -> StageEnvelope:
    report = TopologyReport(
        source="live",
        src=Endpoint(address="10.244.1.11", kind=EndpointKind.POD, pod="default/p2", node="node-1"),
        dst=Endpoint(address="10.244.1.10", kind=EndpointKind.POD, pod="default/p1", node="node-1"),
        nodes_to_collect=nodes,
    )
    report.objects.pods = [pod_object("p1", "node-1", "10.244.1.10"), pod_object("p4", "node-1", "10.244.1.12")]
    options = DiagnosisOptions(collect_timeout_s=timeout) if timeout else DiagnosisOptions()
    request = DiagnosisRequest(src=ip_address("10.244.1.11"), dst=ip_address("10.244.1.10"), port=8080, protocol="tcp",
                               options=options)
    return StageEnvelope(id=new_id(), request=request, created_at=now(), topology=report.model_dump(mode="json"))


async def test_stage_collects_live_node_and_reports_the_missing_one(bus: Bus, agent: NodeAgent,
                                                                    nats_url: str) -> None:
    env = envelope(["node-1", "node-gone"])
    progress: list[dict] = []

    async def record(msg: Msg) -> None:
        progress.append(json.loads(msg.data))

    sub = await bus.nc.subscribe(progress_subject(env.id), cb=record)
    stage = CollectorStage(bus, Settings(nats_url=nats_url, collect_timeout_s=2.0))
    started = time.monotonic()
    out = await stage.handle(env)
    elapsed = time.monotonic() - started
    await bus.nc.flush()
    await sub.unsubscribe()
    assert elapsed < 2.0  # nobody subscribed for node-gone: NATS says so at once
    assert list(out.nodes) == ["node-1"]
    dump = decode_dump(await bus.get_blob(out.nodes["node-1"]))
    assert dump.node == "node-1"
    assert sorted(p.pod or "?" for p in dump.pods) == ["default/p1", "default/p2", "default/p4"]
    [gone] = out.findings
    assert (gone.code, gone.hop, gone.evidence["node"]) == ("COLLECTOR_UNAVAILABLE", "node:node-gone", "node-gone")
    assert "node-gone" in gone.message
    by_node = {p["detail"]["node"]: p for p in progress if p["state"] == "progress"}
    assert set(by_node) == {"node-1", "node-gone"} and by_node["node-1"]["detail"]["ms"] > 0


async def test_agent_that_hangs_is_unavailable_within_the_deadline(bus: Bus, nats_url: str) -> None:
    hung = await bus.nc.subscribe(node_collect_subject("node-hung"), queue="netdiag-agent-node-hung",
                                  cb=_never_answer)
    try:
        env = envelope(["node-hung"], timeout=0.5)
        started = time.monotonic()
        out = await CollectorStage(bus, Settings(nats_url=nats_url)).handle(env)
        elapsed = time.monotonic() - started
    finally:
        await hung.unsubscribe()
    assert 0.45 < elapsed < 3.0  # the 0.5 s deadline, not the 5 s default; slack for a loaded machine
    assert [f.code for f in out.findings] == ["COLLECTOR_UNAVAILABLE"] and out.nodes == {}
    assert out.findings[0].evidence["reason"] == "timeout"


async def test_agent_refuses_other_nodes_and_bad_requests(bus: Bus, agent: NodeAgent) -> None:
    wrong = CollectRequest(node="node-2").model_dump_json().encode()
    reply = json.loads((await bus.nc.request(node_collect_subject("node-1"), wrong, timeout=5)).data)
    assert reply["ok"] is False and "node-2" in reply["error"]
    bad = await bus.nc.request(node_collect_subject("node-1"), b'{"node": "node-1", "cmd": "rm"}', timeout=5)
    assert json.loads(bad.data)["ok"] is False


async def _ask_raw(bus: Bus, request: CollectRequest) -> dict:
    msg = await bus.nc.request(node_collect_subject(request.node), request.model_dump_json().encode(), timeout=5)
    return json.loads(msg.data)


async def test_agent_skips_requests_nobody_waits_for(bus: Bus, agent: NodeAgent) -> None:
    before = agent.collections
    late = await _ask_raw(bus, CollectRequest(node="node-1", deadline=time.time() - 5))
    assert late["ok"] is False and late["error"].startswith("expired") and agent.collections == before
    # one that expires while queued behind another collection is not collected either
    agent.clock_skew_s = 0.0
    async with agent._lock:  # a collection in progress
        queued = asyncio.create_task(_ask_raw(bus, CollectRequest(node="node-1", deadline=time.time() + 0.5)))
        await asyncio.sleep(1.0)
    reply = await queued
    assert reply["ok"] is False and reply["error"].startswith("expired") and agent.collections == before


async def test_concurrent_requests_share_one_collection(bus: Bus, agent: NodeAgent) -> None:
    before = agent.collections
    pod_ips = {"10.244.1.10": "default/p1"}
    replies = await asyncio.gather(*(request_dump(bus, "node-1", 10.0, diagnosis_id=f"share-{i}", pod_ips=pod_ips)
                                     for i in range(3)))
    assert all(r.ok and r.blob for r in replies), [r.error for r in replies]
    assert agent.collections == before + 1
    blobs = {r.blob.name for r in replies if r.blob}
    assert len(blobs) == 3  # each diagnosis still gets its own blob
    dumps = [decode_dump(await bus.get_blob(r.blob)) for r in replies if r.blob]
    assert all("default/p1" in {p.pod for p in d.pods} for d in dumps)


async def test_capture_then_snapshot_mode(bus: Bus, agent: NodeAgent, tmp_path: Path, nats_url: str) -> None:
    result = await capture_nodes(bus, ["node-1", "node-absent"], tmp_path, timeout_s=2.0)
    assert result["node-1"] is None and "node-absent" in (result["node-absent"] or "")
    written = json.loads((tmp_path / "nodes" / "node-1.json").read_text())
    assert written["node"] == "node-1" and written["version"] == 1
    stage = CollectorStage(bus, Settings(nats_url=nats_url, snapshot=tmp_path))
    out = await stage.handle(envelope(["node-1", "node-absent"]))
    assert list(out.nodes) == ["node-1"]
    assert decode_dump(await bus.get_blob(out.nodes["node-1"])).host.names == written["host"]["names"]
    [missing] = out.findings
    assert missing.code == "DATA_MISSING" and missing.hop == "node:node-absent"
    assert any("node-absent" in a.text for a in out.assumptions)


async def _never_answer(msg: object) -> None:
    await asyncio.sleep(0)
