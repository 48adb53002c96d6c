"""The bus edge: what arrives is checked before anything uses it. An id of 5,000 characters (longer
than the server's control line once in a subject), wildcard ids, unknown ids, a forged or a second
final event — each is refused and counted, and nothing stops: the stages and the result store keep
serving. A connection closed for good is noticed within seconds and ends the process."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import nats
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from services.gateway.app import create_app
from services.gateway.store import ResultSink
from services.simulator.handler import SimulatorStage
from shared.bus import SUBJECT_COMPLETED, SUBJECT_REQUESTED, SUBJECT_TOPOLOGY, Bus
from shared.config import Settings
from shared.health import Health
from shared.natsserver import NatsServer
from shared.schemas import StageEnvelope, new_id, now
from shared.security import SIGNATURE_HEADER, sign_event
from shared.service import BusLost, serve
from shared.stage import STALL_S, StageRunner
from tests.foundation.helpers import REQUEST, ScriptedStage, get_json, run_to_end, stack_on
from tests.foundation.natsproxy import NatsProxy

BAD_IDS = ["x" * 5000, "*", "a.>", "../../etc/passwd", "with space", "0" * 31, "0" * 32 + ".x"]


def envelope(diagnosis_id: str, **extra: object) -> bytes:
    return json.dumps({"id": diagnosis_id, "request": REQUEST, "created_at": now().isoformat(), **extra}).encode()


def runner(st: object, name: str) -> StageRunner:
    return next(r for r in st.runners if r.stage.name == name)  # type: ignore[attr-defined]


async def test_invalid_ids_are_refused_and_nothing_stops(fresh_nats: NatsServer) -> None:
    async with stack_on(fresh_nats.url) as st, aiohttp.ClientSession() as http:
        writer = await Bus.connect(fresh_nats.url, name="test-writer", settings=Settings(nats_url=fresh_nats.url))
        try:
            for bad in BAD_IDS:  # in front of the collector and in front of the result store
                await writer.js.publish(SUBJECT_TOPOLOGY, envelope(bad))
                await writer.js.publish(SUBJECT_COMPLETED, envelope(bad, error="forged"))
        finally:
            await writer.close()
        for _ in range(100):
            if runner(st, "collector").rejected == runner(st, "gateway-store").rejected == len(BAD_IDS):
                break
            await asyncio.sleep(0.05)
        assert runner(st, "collector").rejected == len(BAD_IDS)
        assert runner(st, "gateway-store").rejected == len(BAD_IDS)
        doc = await run_to_end(http, st.url)  # every stage and the store still work
        listing = await get_json(http, f"{st.url}/api/v1/diagnoses?limit=200")
        async with http.get(f"{st.url}/healthz") as resp:
            assert resp.status == 200
    assert doc["status"] == "completed"
    assert not any(b.lost.is_set() for b in st._buses)
    assert [item["id"] for item in listing["items"]] == [doc["id"]]  # nothing else got stored


def rejected(reason: str) -> float:
    labels = {"stage": "gateway-store", "reason": reason}
    return REGISTRY.get_sample_value("netdiag_rejected_events_total", labels) or 0.0


async def test_forged_unknown_and_repeated_final_events_are_not_stored(fresh_nats: NatsServer) -> None:
    before = {r: rejected(r) for r in ("unsigned", "terminal", "unknown")}
    async with stack_on(fresh_nats.url) as st, aiohttp.ClientSession() as http:
        doc = await run_to_end(http, st.url)
        key = st.settings.signing_key()
        assert key is not None
        writer = await Bus.connect(fresh_nats.url, name="test-writer", settings=Settings(nats_url=fresh_nats.url))
        forged = {"result": {"verdict": "UNREACHABLE", "summary": "forged"}}
        try:
            # unsigned, and signed with another key: a verdict over the existing diagnosis
            await writer.js.publish(SUBJECT_COMPLETED, envelope(doc["id"], **forged))
            data = envelope(doc["id"], **forged)
            await writer.js.publish(SUBJECT_COMPLETED, data, headers={SIGNATURE_HEADER: sign_event(b"guess", data)})
            # properly signed, but the diagnosis is finished already / was never accepted
            for diagnosis_id in (doc["id"], new_id()):
                data = envelope(diagnosis_id, **forged)
                await writer.js.publish(SUBJECT_COMPLETED, data, headers={SIGNATURE_HEADER: sign_event(key, data)})
        finally:
            await writer.close()
        sink = runner(st, "gateway-store")
        for _ in range(100):
            if sink.rejected >= 2 and sink.handled >= 3:
                break
            await asyncio.sleep(0.05)
        after = await get_json(http, f"{st.url}/api/v1/diagnoses/{doc['id']}")
        listing = await get_json(http, f"{st.url}/api/v1/diagnoses?limit=200")
    assert sink.rejected == 2  # the unsigned and the wrongly signed: refused before handling
    # and the signed ones the store refused: one for a finished diagnosis, one for an unknown id
    assert {r: rejected(r) - n for r, n in before.items()} == {"unsigned": 2, "terminal": 1, "unknown": 1}
    assert after["result"] == doc["result"] and after["status"] == "completed"
    assert [item["id"] for item in listing["items"]] == [doc["id"]]


def test_an_envelope_id_must_be_the_gateways_format() -> None:
    with pytest.raises(ValueError, match="id"):
        StageEnvelope.model_validate_json(envelope("x" * 5000))
    assert StageEnvelope.model_validate_json(envelope(new_id())).id


async def test_a_connection_closed_for_good_ends_a_stage_process_within_seconds(fresh_nats: NatsServer) -> None:
    """The server (here: the proxy, as the server would on a protocol error) ends the connection in a way
    nats-py does not reconnect from; the service notices at once and exits for its restart."""
    proxy = await NatsProxy(fresh_nats.port).start()
    try:
        settings = Settings(nats_url=proxy.url)
        task = asyncio.create_task(serve(SimulatorStage, settings, asyncio.Event()))
        await asyncio.sleep(1.0)  # connected, pulling
        assert not task.done()
        started = time.monotonic()
        await proxy.inject(b"-ERR 'forced by the test'\r\n")
        with pytest.raises(BusLost):
            await asyncio.wait_for(task, 5)
        noticed = time.monotonic() - started
    finally:
        await proxy.stop()
    assert noticed < 3, noticed


async def test_the_gateways_probes_fail_once_its_connection_is_gone(fresh_nats: NatsServer) -> None:
    proxy = await NatsProxy(fresh_nats.port).start()
    bus = await Bus.connect(proxy.url, name="gateway", settings=Settings(nats_url=proxy.url))
    sink_bus = await Bus.connect(fresh_nats.url, name="gateway-store", settings=Settings(nats_url=fresh_nats.url))
    sink = StageRunner(sink_bus, ResultSink(sink_bus))
    stop = asyncio.Event()
    sink_task = asyncio.create_task(sink.run(stop))
    web_runner = web.AppRunner(create_app(bus, Health([bus, sink_bus], [sink])), access_log=None)
    await web_runner.setup()
    await web.TCPSite(web_runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{web_runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, path
            started = time.monotonic()
            await proxy.inject(b"-ERR 'forced by the test'\r\n")
            while time.monotonic() - started < 5:
                async with http.get(base + "/healthz") as resp:
                    if resp.status == 503:
                        body = await resp.json()
                        break
                await asyncio.sleep(0.05)
            noticed = time.monotonic() - started
            async with http.get(base + "/readyz") as resp:
                assert resp.status == 503 and resp.headers["Retry-After"]
    finally:
        stop.set()
        await sink_task
        await web_runner.cleanup()
        await sink_bus.close()
        await bus.close()
        await proxy.stop()
    assert noticed < 2, noticed
    assert "closed for good" in body["reason"]


async def all_threads_stopped(pid: int, timeout: float = 5.0) -> None:
    """kill(SIGSTOP) returns before every thread has stopped; a server thread still running can answer
    one more PING. Wait until /proc shows each one in state T."""
    from pathlib import Path

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        states = {(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in Path(f"/proc/{pid}/task").iterdir()}
        if states == {"T"}:
            return
        assert asyncio.get_running_loop().time() < deadline, states
        await asyncio.sleep(0.01)


async def test_a_frozen_server_fails_readiness_not_liveness(fresh_nats: NatsServer) -> None:
    import os
    import signal

    bus = await Bus.connect(fresh_nats.url, name="probe", settings=Settings(nats_url=fresh_nats.url))
    health = Health([bus])
    try:
        assert (await health.ready())[0]
        assert fresh_nats.proc is not None
        os.kill(fresh_nats.proc.pid, signal.SIGSTOP)
        try:
            await all_threads_stopped(fresh_nats.proc.pid)
            ready, reason = await health.ready()
            alive, _ = health.alive()
        finally:
            os.kill(fresh_nats.proc.pid, signal.SIGCONT)
    finally:
        await bus.close()
    assert not ready and "does not answer" in reason
    assert alive  # a restart would not bring NATS back: the client reconnects by itself


async def test_nothing_publishes_on_a_subject_built_from_an_invalid_id(fresh_nats: NatsServer) -> None:
    bus = await Bus.connect(fresh_nats.url, name="t", settings=Settings(nats_url=fresh_nats.url))
    try:
        await bus.progress("x" * 5000, "simulator", "started")  # refused quietly, the connection lives
        with pytest.raises(ValueError):
            await bus.publish_model("netdiag." + "x" * 5000, StageEnvelope.model_validate_json(envelope(new_id())))
        assert await bus.round_trip()
    finally:
        await bus.close()
    assert not bus.lost.is_set()
    assert nats  # the client library itself is real: no stub anywhere above


async def test_a_replica_busy_with_every_slot_is_alive(fresh_nats: NatsServer) -> None:
    """All max_inflight messages in long handlers (a collector waiting on slow agents): the fetch loop
    waits for a slot, which is load, not death; liveness must not restart it. A loop that stopped
    turning with free slots is wedged, and not alive."""
    release = asyncio.Event()

    async def slow(env: StageEnvelope) -> StageEnvelope:
        await release.wait()
        return env

    settings = Settings(nats_url=fresh_nats.url, max_inflight=1)
    bus = await Bus.connect(name="topology-busy", settings=settings)
    busy = StageRunner(bus, ScriptedStage("topology", slow))
    stop = asyncio.Event()
    task = asyncio.create_task(busy.run(stop))
    try:
        await bus.publish_model(SUBJECT_REQUESTED, StageEnvelope.model_validate_json(envelope(new_id())))
        for _ in range(100):
            if busy._awaiting_slot:
                break
            await asyncio.sleep(0.05)
        busy.last_poll -= STALL_S + 1  # as if the loop had waited that long for the slot
        assert busy.alive
        release.set()
        for _ in range(100):
            if not busy._awaiting_slot:
                break
            await asyncio.sleep(0.05)
        busy.last_poll -= STALL_S + 1  # now free to pull, yet the loop has not turned that long: wedged
        assert not busy.alive
    finally:
        release.set()
        stop.set()
        await task
        await bus.close()
