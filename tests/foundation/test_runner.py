"""The stage runner's guarantees beyond retries: a slow handler is kept alive past ack_wait,
an unparseable event fails its diagnosis visibly, and changed settings reach an existing
durable consumer."""

from __future__ import annotations

import asyncio

import aiohttp

from shared.bus import STREAM, SUBJECT_TOPOLOGY, Bus
from shared.config import Settings
from shared.natsserver import NatsServer
from shared.schemas import StageEnvelope
from shared.stage import StageRunner
from tests.foundation.helpers import (
    REQUEST,
    completed_events,
    get_json,
    pipeline,
    post,
    run_to_end,
    scripted,
    stack_on,
)


async def test_a_handler_slower_than_ack_wait_is_not_redelivered(fresh_nats: NatsServer) -> None:
    calls: list[str] = []

    async def slow(env: StageEnvelope) -> StageEnvelope:
        calls.append(env.id)
        await asyncio.sleep(2.5)  # 2.5 x ack_wait: only the in-progress heartbeat keeps the message
        return env

    settings = Settings(ack_wait_s=1.0, max_deliver=2)
    async with stack_on(fresh_nats.url, settings, stages=pipeline(collector=scripted("collector", slow))) as st, \
            aiohttp.ClientSession() as http:
        doc = await run_to_end(http, st.url, timeout=20)
    assert doc["status"] == "completed", doc
    assert calls == [doc["id"]]  # handled once: no redelivery while it was working
    assert len(await completed_events(fresh_nats.url, doc["id"])) == 1


async def test_an_unparseable_event_fails_its_diagnosis_instead_of_leaving_it_queued(
        fresh_nats: NatsServer) -> None:
    # no topology stage runs, so the requested event waits; we then put a broken topology event
    # for the same diagnosis in front of the collector
    stages = pipeline()[1:]
    async with stack_on(fresh_nats.url, Settings(), stages=stages) as st, aiohttp.ClientSession() as http:
        diagnosis_id = await post(http, st.url, REQUEST)
        bus = await Bus.connect(fresh_nats.url, name="test-writer", settings=Settings(nats_url=fresh_nats.url))
        try:
            await bus.js.publish(SUBJECT_TOPOLOGY, b'{"id": "%s", "request": "not a request"}' % diagnosis_id.encode())
        finally:
            await bus.close()
        for _ in range(100):
            doc = await get_json(http, f"{st.url}/api/v1/diagnoses/{diagnosis_id}")
            if doc["status"] != "queued":
                break
            await asyncio.sleep(0.05)
    assert doc["status"] == "failed", doc
    assert "invalid event" in doc["error"]


async def test_changed_settings_reach_an_existing_durable_consumer(fresh_nats: NatsServer) -> None:
    bus = await Bus.connect(fresh_nats.url, name="test", settings=Settings(nats_url=fresh_nats.url))
    try:
        for ack_wait, max_deliver in ((5.0, 3), (9.0, 6)):
            bus.settings = Settings(nats_url=fresh_nats.url, ack_wait_s=ack_wait, max_deliver=max_deliver)
            stage = scripted("topology")(bus, bus.settings)
            stop = asyncio.Event()
            task = asyncio.create_task(StageRunner(bus, stage).run(stop))
            await asyncio.sleep(0.3)
            stop.set()
            await task
            info = await bus.js.consumer_info(STREAM, stage.durable())
            assert info.config.ack_wait == ack_wait
            assert info.config.max_deliver == max_deliver + 3
    finally:
        await bus.close()
