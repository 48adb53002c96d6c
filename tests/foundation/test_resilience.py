"""Faults the pipeline must survive: a crashing handler, a replica dying with a message, a
handler that never succeeds, a gateway restart, a NATS restart and a NATS outage."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from shared.bus import SUBJECT_CLOUD, Bus
from shared.config import Settings
from shared.natsserver import NatsServer
from shared.schemas import StageEnvelope
from shared.stage import StageRunner
from tests.foundation.helpers import (
    REQUEST,
    ScriptedStage,
    completed_events,
    gateway_on,
    get_json,
    pipeline,
    post,
    run_to_end,
    scripted,
    sse_events,
    stack_on,
)

FAST = Settings(ack_wait_s=1.0, max_deliver=3)


async def assert_completed_once(nats_url: str, doc: dict) -> None:
    assert doc["status"] == "completed", doc
    assert doc["result"]["verdict"]
    events = await completed_events(nats_url, doc["id"])
    assert len(events) == 1, f"{len(events)} completed events for {doc['id']}"


@pytest.mark.parametrize("crash_point", ["before_output", "after_output"])
async def test_handler_crashing_once_still_completes_exactly_once(fresh_nats: NatsServer, crash_point: str) -> None:
    """`after_output`: the first attempt publishes the stage's output (with the runner's
    Nats-Msg-Id) and then dies before the ack — the retry's output must be de-duplicated."""
    seen: set[str] = set()
    bus_box: list[Bus] = []

    async def crash_first(env: StageEnvelope) -> StageEnvelope:
        if env.id not in seen:
            seen.add(env.id)
            if crash_point == "after_output":
                await bus_box[0].publish_model(SUBJECT_CLOUD, env, msg_id=f"{env.id}:cloud")
            raise RuntimeError("boom on first delivery")
        return env

    def cloud(bus: Bus, _settings: Settings) -> ScriptedStage:
        bus_box.append(bus)
        return ScriptedStage("cloud", crash_first)

    async with stack_on(fresh_nats.url, FAST, stages=pipeline(cloud=cloud)) as st, \
            aiohttp.ClientSession() as http:
        doc = await run_to_end(http, st.url)
        await asyncio.sleep(0.3)  # give a wrongly duplicated completion time to show up
    assert seen == {doc["id"]}
    await assert_completed_once(fresh_nats.url, doc)
    # the simulator ran exactly once too: the duplicate cloud event never reached it
    sim = next(r for r in st.runners if r.stage.name == "simulator")
    assert sim.handled == 1


@pytest.mark.parametrize("max_deliver", [3, 1])
async def test_replica_dying_with_a_message_is_replaced_after_ack_wait(fresh_nats: NatsServer,
                                                                       max_deliver: int) -> None:
    """Replica A takes the message and dies before acking (its task is cancelled and its
    connection closed); replica B, on the same durable consumer, gets it after ack_wait and
    handles it — or, when that death was the last allowed attempt, fails the diagnosis
    (a crash loop must end visibly, never vanish)."""
    holding = asyncio.Event()
    held: list[asyncio.Task] = []

    async def hold_forever(env: StageEnvelope) -> StageEnvelope:
        held.append(asyncio.current_task())  # type: ignore[arg-type]
        holding.set()
        await asyncio.Event().wait()
        return env

    settings = FAST.model_copy(update={"nats_url": fresh_nats.url, "max_deliver": max_deliver})
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    bus_a = await Bus.connect(name="cloud-a", settings=settings)
    replica_a = asyncio.create_task(StageRunner(bus_a, ScriptedStage("cloud", hold_forever)).run(stop_a))
    stages = (scripted("topology"), scripted("collector"), *pipeline()[3:])  # no cloud replica in the stack
    async with stack_on(fresh_nats.url, settings, stages=stages) as st, aiohttp.ClientSession() as http:
        diagnosis_id = await post(http, st.url)
        await asyncio.wait_for(holding.wait(), 5)
        died_at = time.monotonic()
        replica_a.cancel()
        held[0].cancel()  # the in-flight handler dies before the runner could ack
        await asyncio.gather(replica_a, held[0], return_exceptions=True)
        await bus_a.close()

        bus_b = await Bus.connect(name="cloud-b", settings=settings)
        stage_b = ScriptedStage("cloud")
        replica_b = asyncio.create_task(StageRunner(bus_b, stage_b).run(stop_b))
        try:
            events = await sse_events(http, st.url, diagnosis_id, timeout=10)
            waited = time.monotonic() - died_at
        finally:
            stop_b.set()
            await replica_b
            await bus_b.close()
        doc = await get_json(http, f"{st.url}/api/v1/diagnoses/{diagnosis_id}")
    assert events[-1][0] == "result"
    assert waited >= 0.8, f"redelivered after {waited:.2f}s, before ack_wait ran out"
    assert len(await completed_events(fresh_nats.url, diagnosis_id)) == 1
    if max_deliver > 1:
        assert stage_b.calls == [diagnosis_id]
        await assert_completed_once(fresh_nats.url, doc)
    else:
        assert stage_b.calls == []
        assert doc["status"] == "failed"
        assert doc["error"] == "stage cloud failed: gave up after repeated errors"


async def test_handler_that_always_fails_ends_the_diagnosis_failed_with_the_reason(fresh_nats: NatsServer) -> None:
    async def always_fail(env: StageEnvelope) -> StageEnvelope:
        raise ConnectionError("cloud API unreachable")

    stage_box: list[ScriptedStage] = []

    def collector(_bus: Bus, _settings: Settings) -> ScriptedStage:
        stage_box.append(ScriptedStage("collector", always_fail))
        return stage_box[0]

    async with stack_on(fresh_nats.url, FAST, stages=pipeline(collector=collector)) as st, \
            aiohttp.ClientSession() as http:
        diagnosis_id = await post(http, st.url)
        events = await sse_events(http, st.url, diagnosis_id, timeout=10)
        doc = await get_json(http, f"{st.url}/api/v1/diagnoses/{diagnosis_id}")
    assert len(stage_box[0].calls) == FAST.max_deliver  # bounded: tried max_deliver times, then gave up
    assert doc["status"] == "failed"
    assert doc["result"] is None
    assert doc["error"] == "stage collector failed: ConnectionError: cloud API unreachable"
    failed = [e for n, e in events if n == "progress" and e["state"] == "failed"]
    assert failed and failed[0]["stage"] == "collector"
    assert events[-1][1]["status"] == "failed"
    assert len(await completed_events(fresh_nats.url, diagnosis_id)) == 1


async def test_gateway_restart_still_serves_stored_results(fresh_nats: NatsServer) -> None:
    async with stack_on(fresh_nats.url, gateway=False), aiohttp.ClientSession() as http:
        async with gateway_on(fresh_nats.url) as gw:
            doc = await run_to_end(http, gw.url)
        async with gateway_on(fresh_nats.url) as gw2:
            again = await get_json(http, f"{gw2.url}/api/v1/diagnoses/{doc['id']}")
            listed = await get_json(http, f"{gw2.url}/api/v1/diagnoses")
            late = await sse_events(http, gw2.url, doc["id"])  # a client arriving after completion
    assert again == doc
    assert doc["id"] in [i["id"] for i in listed["items"]]
    assert late[-1] == ("result", doc)


async def wait_ready(http: aiohttp.ClientSession, base: str, ready: bool, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{base}/readyz") as resp:
            body = await resp.json()
            if (resp.status == 200) == ready:
                assert body["ready"] is ready
                return
        assert time.monotonic() < deadline, f"/readyz never became {ready}"
        await asyncio.sleep(0.1)


async def test_nats_restart_keeps_results(fresh_nats: NatsServer) -> None:
    async with stack_on(fresh_nats.url) as st, aiohttp.ClientSession() as http:
        doc = await run_to_end(http, st.url)
        port = fresh_nats.port
        fresh_nats.stop()
        fresh_nats.start()  # same data dir, same port
        assert fresh_nats.port == port
        await wait_ready(http, st.url, True)
        assert await get_json(http, f"{st.url}/api/v1/diagnoses/{doc['id']}") == doc


async def test_nats_outage_refuses_clearly_then_resumes_without_restarts(fresh_nats: NatsServer) -> None:
    async with stack_on(fresh_nats.url) as st, aiohttp.ClientSession() as http:
        await run_to_end(http, st.url)
        fresh_nats.stop()
        await wait_ready(http, st.url, False)
        async with http.post(f"{st.url}/api/v1/diagnoses", json=REQUEST) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert "NATS" in body["error"] and "unreachable" in body["error"]
        async with http.get(f"{st.url}/healthz") as resp:
            assert resp.status == 200  # alive, only not ready
        await asyncio.sleep(1.5)  # let the stage runners hit the outage (fetch timeouts, failed pulls)
        fresh_nats.start()
        await wait_ready(http, st.url, True)
        doc = await run_to_end(http, st.url, timeout=15)
    assert doc["status"] == "completed", doc
    assert len(await completed_events(fresh_nats.url, doc["id"])) == 1
