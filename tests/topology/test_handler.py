"""TopologyStage on a real nats-server: requested → topology, over a snapshot."""

from __future__ import annotations

import asyncio

from services.topology.handler import TopologyStage
from shared.bus import SUBJECT_REQUESTED, SUBJECT_TOPOLOGY, Bus, progress_subject
from shared.config import Settings
from shared.natsserver import NatsServer
from shared.schemas import DiagnosisRequest, StageEnvelope, new_id, now
from shared.stage import run_stages
from shared.topology import TopologyReport
from tests.topology.conftest import BASIC


async def test_stage_publishes_the_topology(fresh_nats: NatsServer) -> None:
    settings = Settings(nats_url=fresh_nats.url, snapshot=BASIC)
    bus = await Bus.connect(name="topology-test", settings=settings)
    stop = asyncio.Event()
    outputs: asyncio.Queue[StageEnvelope] = asyncio.Queue()
    progress: list[bytes] = []
    env = StageEnvelope(id=new_id(), created_at=now(), request=DiagnosisRequest(
        src="10.244.1.20", dst="10.96.0.10", port=53, protocol="udp"))

    async def on_output(msg) -> None:  # type: ignore[no-untyped-def]
        await outputs.put(StageEnvelope.model_validate_json(msg.data))

    async def on_progress(msg) -> None:  # type: ignore[no-untyped-def]
        progress.append(msg.data)

    await bus.nc.subscribe(SUBJECT_TOPOLOGY, cb=on_output)
    await bus.nc.subscribe(progress_subject(env.id), cb=on_progress)
    runner = asyncio.create_task(run_stages(bus, [TopologyStage(bus, settings)], stop))
    try:
        await bus.publish_model(SUBJECT_REQUESTED, env, msg_id=f"{env.id}:requested")
        out = await asyncio.wait_for(outputs.get(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(runner, 10)
        await bus.close()
    assert out.id == env.id and out.topology is not None
    report = TopologyReport.model_validate(out.topology)
    assert report.service is not None and report.service.service == "kube-system/kube-dns"
    assert report.nodes_to_collect == ["node-1", "node-2"]
    assert report.cluster.cni == "flannel-host-gw"
    assert "topology" in out.timings_ms
    assert any(b"path(s)" in p for p in progress)
