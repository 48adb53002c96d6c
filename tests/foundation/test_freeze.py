"""Transient is not a verdict: NATS frozen (SIGSTOP) for seconds while the simulator reads the node
dumps from the object store. The real pipeline on the shop snapshot; the simulator is the real one,
wrapped only to freeze the server at the moment it starts. A freeze shorter than the retry budget
ends with the calm run's verdict; one the budget cannot outlast ends FAILED with the reason —
never `completed UNDETERMINED` because a dump "could not be read"."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from services.cloud.handler import CloudStage
from services.collector.handler import CollectorStage
from services.gateway.store import ResultSink
from services.simulator import assemble
from services.simulator.handler import SimulatorStage
from services.topology.handler import TopologyStage
from shared.bus import BLOBS_BUCKET, Bus
from shared.config import Settings
from shared.natsserver import NatsServer
from shared.schemas import BlobRef, DiagnosisRequest, StageEnvelope, new_id, now
from tests.e2e.cases import SHOP, SHOP_CASES
from tests.foundation.helpers import run_to_end, stack_on

FREEZE_S = 6.0
SRC, DST, PORT, PROTO = SHOP_CASES["service"]
REQUEST = {"src": SRC, "dst": DST, "port": PORT, "protocol": PROTO}


def freezing_simulator(server: NatsServer, freezes: list[float]) -> type[SimulatorStage]:
    class Freezing(SimulatorStage):
        async def handle(self, env: StageEnvelope) -> StageEnvelope:
            # dumps this stage decoded before are cached by digest: forget them, so this run reads
            # them from the object store while the server is frozen
            self.blobs.nodes.clear()
            if freezes:
                assert server.proc is not None
                pid, seconds = server.proc.pid, freezes.pop(0)
                os.kill(pid, signal.SIGSTOP)
                asyncio.get_running_loop().call_later(seconds, os.kill, pid, signal.SIGCONT)
            return await super().handle(env)

    return Freezing


def stages(simulator: type[SimulatorStage]) -> tuple[object, ...]:
    return (TopologyStage, CollectorStage, CloudStage, simulator, ResultSink)


def data_missing(doc: dict) -> list[dict]:
    return [f for f in (doc.get("result") or {}).get("findings", []) if f["code"] == "DATA_MISSING"]


async def test_a_nats_freeze_while_reading_dumps_is_retried_not_a_verdict(fresh_nats: NatsServer) -> None:
    settings = Settings(snapshot=SHOP)
    async with stack_on(fresh_nats.url, settings, stages=stages(SimulatorStage)) as st, \
            aiohttp.ClientSession() as http:
        calm = await run_to_end(http, st.url, REQUEST, timeout=20)
    freezes = [FREEZE_S]
    async with stack_on(fresh_nats.url, settings, stages=stages(freezing_simulator(fresh_nats, freezes))) as st, \
            aiohttp.ClientSession() as http:
        frozen = await run_to_end(http, st.url, REQUEST, timeout=40)
        simulator = next(r for r in st.runners if r.stage.name == "simulator")
    assert not freezes, "the freeze never happened"
    assert calm["status"] == "completed" and not data_missing(calm), calm
    assert frozen["status"] == "completed", frozen
    assert not data_missing(frozen), data_missing(frozen)
    assert frozen["result"]["verdict"] == calm["result"]["verdict"]
    assert simulator.handled == 1


@pytest.mark.parametrize("max_deliver", [1])
async def test_a_freeze_longer_than_the_budget_fails_with_the_reason(fresh_nats: NatsServer, max_deliver: int) -> None:
    settings = Settings(snapshot=SHOP, max_deliver=max_deliver)
    freezes = [FREEZE_S]
    async with stack_on(fresh_nats.url, settings, stages=stages(freezing_simulator(fresh_nats, freezes))) as st, \
            aiohttp.ClientSession() as http:
        doc = await run_to_end(http, st.url, REQUEST, timeout=40)
    assert doc["status"] == "failed" and doc["result"] is None, doc
    assert doc["error"].startswith("stage simulator failed:") and "Timeout" in doc["error"], doc["error"]


async def test_absent_blobs_are_missing_data_not_a_retry(fresh_nats: NatsServer) -> None:
    """The other side of the line: a dump or inventory that is not there is DATA_MISSING at once."""
    settings = Settings(nats_url=fresh_nats.url, snapshot=SHOP)
    bus = await Bus.connect(name="simulator", settings=settings)
    try:
        env = StageEnvelope(id=new_id(), request=DiagnosisRequest.model_validate(REQUEST), created_at=now())
        env = await TopologyStage(bus, settings).handle(env)
        gone = BlobRef(bucket=BLOBS_BUCKET, name="nodes/never-written.json.gz", size=10, sha256="0" * 64)
        env = env.model_copy(update={"nodes": {"node-1": gone}, "cloud": gone})
        result = await assemble.diagnose(env, bus)
    finally:
        await bus.close()
    missing = [f for f in result.findings if f.code == "DATA_MISSING"]
    assert {f.hop for f in missing} >= {"node:node-1", None}, missing
    assert any("could not be read: BlobUnreadable" in f.message for f in missing), missing
