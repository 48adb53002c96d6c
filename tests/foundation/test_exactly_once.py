"""Exactly once from the client's point of view: the stream stores the requested event but its ack
never reaches the gateway (a real TCP proxy between the gateway and nats-server swallows it). The
record is kept, the gateway converges on its own, a retry with the same Idempotency-Key names the
same diagnosis, and the pipeline runs it once. Whatever stays queued past its deadline is ended."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from services.gateway.store import Reconciler, ResultStore
from shared.bus import STREAM, Bus
from shared.config import Settings
from shared.natsserver import NatsServer
from shared.schemas import Diagnosis, DiagnosisRequest, DiagnosisStatus, new_id, now
from tests.foundation.helpers import REQUEST, completed_events, gateway_on, get_json, sse_events, stack_on
from tests.foundation.natsproxy import NatsProxy, stream_ack


async def _post(http: aiohttp.ClientSession, base: str, key: str) -> tuple[int, dict[str, object]]:
    async with http.post(f"{base}/api/v1/diagnoses", json=REQUEST, headers={"Idempotency-Key": key}) as r:
        return r.status, await r.json()


async def test_a_lost_publish_ack_neither_loses_nor_duplicates_the_diagnosis(fresh_nats: NatsServer) -> None:
    proxy = await NatsProxy(fresh_nats.port).start()
    try:
        async with stack_on(fresh_nats.url, gateway=False) as st, gateway_on(proxy.url) as gw, \
                aiohttp.ClientSession() as http:
            proxy.drop_next(stream_ack(STREAM))  # the requested event's ack: stored, never confirmed
            started = time.monotonic()
            status, first = await _post(http, gw.url, "lost-ack-1")
            waited = time.monotonic() - started
            assert proxy.dropped, "the proxy did not see the publish ack"
            assert status == 202, first  # stored: the gateway owns it from here
            diagnosis_id = str(first["id"])
            again_status, again = await _post(http, gw.url, "lost-ack-1")  # the client's retry all the same
            assert again_status == 202 and again["id"] == diagnosis_id
            events = await sse_events(http, gw.url, diagnosis_id, timeout=15)
            doc = await get_json(http, f"{gw.url}/api/v1/diagnoses/{diagnosis_id}")
            topology = next(r for r in st.runners if r.stage.name == "topology")
    finally:
        await proxy.stop()
    assert waited >= 4, "the ack was not lost after all"
    assert events[-1][0] == "result"
    assert doc["status"] == "completed" and doc["result"]["verdict"], doc
    assert topology.handled == 1  # the re-publishes were de-duplicated by the stream
    assert len(await completed_events(fresh_nats.url, diagnosis_id)) == 1


async def test_a_publish_lost_on_the_way_is_republished_without_a_client_retry(fresh_nats: NatsServer) -> None:
    """The stream never got the requested event and the client does not retry: the gateway, which
    kept the record, re-publishes it until the stream confirms, and the diagnosis runs once."""
    proxy = await NatsProxy(fresh_nats.port).start()
    try:
        async with stack_on(fresh_nats.url, gateway=False) as st, gateway_on(proxy.url) as gw, \
                aiohttp.ClientSession() as http:
            proxy.drop_next_sent(lambda line, _payload: b"netdiag.diagnosis.requested" in line)
            status, first = await _post(http, gw.url, "lost-pub-1")
            assert proxy.dropped, "the proxy did not see the publish"
            assert status == 202, first
            events = await sse_events(http, gw.url, str(first["id"]), timeout=20)
            doc = await get_json(http, f"{gw.url}/api/v1/diagnoses/{first['id']}")
            topology = next(r for r in st.runners if r.stage.name == "topology")
    finally:
        await proxy.stop()
    assert events[-1][0] == "result" and doc["status"] == "completed", doc
    assert topology.handled == 1
    assert len(await completed_events(fresh_nats.url, str(first["id"]))) == 1


async def test_the_reconciler_ends_what_stays_queued_past_its_deadline(fresh_nats: NatsServer) -> None:
    bus = await Bus.connect(fresh_nats.url, name="gateway", settings=Settings(nats_url=fresh_nats.url))
    try:
        store = ResultStore(bus)
        request = DiagnosisRequest.model_validate(REQUEST)
        stuck = Diagnosis(id=new_id(), request=request, status=DiagnosisStatus.QUEUED, created_at=now())
        await store.create(stuck)  # stored, never queued: the gateway died in between
        reconciler = Reconciler(store, deadline_s=0.5, interval_s=0.2)
        assert await reconciler.sweep() == 0  # not overdue yet
        await asyncio.sleep(0.6)
        assert await reconciler.sweep() == 1
        assert await Reconciler(ResultStore(bus), deadline_s=0.5, interval_s=0.2).sweep() == 0  # another replica
        failed = await ResultStore(bus).get(stuck.id)
    finally:
        await bus.close()
    assert failed is not None and failed.status == DiagnosisStatus.FAILED
    assert failed.error and "no result within 0.5s" in failed.error


async def test_the_gateway_runs_the_reconciler(fresh_nats: NatsServer) -> None:
    settings = Settings(pipeline_deadline_s=0.5, reconcile_interval_s=0.2)
    async with stack_on(fresh_nats.url, settings, stages=()) as st, aiohttp.ClientSession() as http:
        async with http.post(f"{st.url}/api/v1/diagnoses", json=REQUEST) as r:
            diagnosis_id = (await r.json())["id"]
        for _ in range(50):  # no stage runs: only the reconciler can end it
            doc = await get_json(http, f"{st.url}/api/v1/diagnoses/{diagnosis_id}")
            if doc["status"] != "queued":
                break
            await asyncio.sleep(0.1)
    assert doc["status"] == "failed" and "a stage is not running" in doc["error"], doc
