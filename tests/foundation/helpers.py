"""Shared pieces of the foundation tests: trivial stage work, a real gateway, SSE and stream readers.

Only the *work* of topology/collector/cloud is chosen here (pass-through, or a scripted
fault); the bus, the runner, the simulator, the result sink and the gateway are the real ones.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from nats.js.api import DeliverPolicy

from services.gateway.app import create_app
from services.gateway.store import ResultSink
from services.simulator.handler import SimulatorStage
from services.stack import EmbeddedStack, StageFactory
from shared.bus import (
    SUBJECT_CLOUD,
    SUBJECT_COLLECTED,
    SUBJECT_COMPLETED,
    SUBJECT_REQUESTED,
    SUBJECT_TOPOLOGY,
    Bus,
)
from shared.config import Settings
from shared.schemas import StageEnvelope
from shared.stage import Stage

REQUEST = {"src": "10.244.1.5", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}
STAGE_SUBJECTS = {
    "topology": (SUBJECT_REQUESTED, SUBJECT_TOPOLOGY),
    "collector": (SUBJECT_TOPOLOGY, SUBJECT_COLLECTED),
    "cloud": (SUBJECT_COLLECTED, SUBJECT_CLOUD),
}
TIMED_STAGES = ("topology", "collector", "cloud", "simulator")  # the sink has no output, hence no timing

Handler = Callable[[StageEnvelope], Awaitable[StageEnvelope | None]]


class ScriptedStage(Stage):
    """A stage with the real name and subjects whose work is a given coroutine (default: pass-through)."""

    def __init__(self, name: str, work: Handler | None = None) -> None:
        self.name = name
        self.input_subject, self.output_subject = STAGE_SUBJECTS[name]
        self.work = work
        self.calls: list[str] = []

    async def handle(self, env: StageEnvelope) -> StageEnvelope | None:
        self.calls.append(env.id)
        return await self.work(env) if self.work else env


def scripted(name: str, work: Handler | None = None) -> StageFactory:
    """A stage factory for EmbeddedStack(stages=...)."""
    return lambda _bus, _settings: ScriptedStage(name, work)


def pipeline(**overrides: StageFactory) -> tuple[StageFactory, ...]:
    """The five services; topology/collector/cloud pass-through unless overridden."""
    middle = tuple(overrides.get(name, scripted(name)) for name in STAGE_SUBJECTS)
    return (*middle, SimulatorStage, ResultSink)


def stack_on(nats_url: str, settings: Settings | None = None, **kw: Any) -> EmbeddedStack:
    return EmbeddedStack(settings or Settings(), nats_url=nats_url, **{"stages": pipeline(), **kw})


async def post(session: aiohttp.ClientSession, base: str, body: dict[str, Any] | None = None) -> str:
    async with session.post(f"{base}/api/v1/diagnoses", json=body or REQUEST) as resp:
        doc = await resp.json()
        assert resp.status == 202, doc
        assert resp.headers["Location"] == f"/api/v1/diagnoses/{doc['id']}"
        return str(doc["id"])


async def sse_events(session: aiohttp.ClientSession, base: str, diagnosis_id: str,
                     timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
    """Read the SSE stream to its end: [(event name, data)], the last one being `result`."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with session.get(f"{base}/api/v1/diagnoses/{diagnosis_id}/events",
                           timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        name, buffer = None, b""
        # chunks, not `async for line`: aiohttp's line reader refuses lines past its buffer (a result of MBs)
        async for chunk in resp.content.iter_any():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = raw.decode()
                if line.startswith("event: "):
                    name = line[len("event: "):]
                elif line.startswith("data: ") and name:
                    events.append((name, json.loads(line[len("data: "):])))
                    if name == "result":
                        return events
    return events


async def run_to_end(session: aiohttp.ClientSession, base: str, body: dict[str, Any] | None = None,
                     timeout: float = 10.0) -> dict[str, Any]:
    """POST a diagnosis, wait for its result over SSE, return what GET serves."""
    diagnosis_id = await post(session, base, body)
    events = await sse_events(session, base, diagnosis_id, timeout)
    assert events and events[-1][0] == "result", events
    return await get_json(session, f"{base}/api/v1/diagnoses/{diagnosis_id}")


async def get_json(session: aiohttp.ClientSession, url: str, status: int = 200) -> dict[str, Any]:
    async with session.get(url) as resp:
        doc = await resp.json()
        assert resp.status == status, (resp.status, doc)
        return doc


async def completed_in_stream(bus: Bus, idle_s: float = 1.0) -> list[StageEnvelope]:
    """Every final event the stream holds (the completed subject, read back from the start through an
    ordered JetStream consumer until none comes for `idle_s`). Also used by tests/chaos and tests/deploy."""
    found: list[StageEnvelope] = []
    sub = await bus.js.subscribe(SUBJECT_COMPLETED, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_s)
            except TimeoutError:
                break
            found.append(StageEnvelope.model_validate_json(msg.data))
    finally:
        await sub.unsubscribe()
    return found


async def completed_events(nats_url: str, diagnosis_id: str) -> list[StageEnvelope]:
    """Every message on the completed subject for this id."""
    bus = await Bus.connect(nats_url, name="test-reader", settings=Settings(nats_url=nats_url))
    try:
        return [env for env in await completed_in_stream(bus, idle_s=0.3) if env.id == diagnosis_id]
    finally:
        await bus.close()


class Gateway:
    """The real gateway app on its own NATS connection, restartable on its own."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.bus: Bus | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Gateway:
        self.bus = await Bus.connect(self.nats_url, name="gateway", settings=Settings(nats_url=self.nats_url))
        self.runner = web.AppRunner(create_app(self.bus), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
        if self.bus:
            await self.bus.close()


@contextlib.asynccontextmanager
async def gateway_on(nats_url: str) -> AsyncIterator[Gateway]:
    gw = await Gateway(nats_url).start()
    try:
        yield gw
    finally:
        await gw.stop()


class ThreadedStack:
    """An embedded stack serving from its own thread and event loop, for synchronous HTTP
    clients (schemathesis uses `requests`), which would otherwise block the test loop."""

    def __init__(self, stack: EmbeddedStack) -> None:
        self.stack = stack
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="netdiag-stack", daemon=True)

    def __enter__(self) -> EmbeddedStack:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.stack.start(), self.loop).result(30)
        return self.stack

    async def _stop(self) -> None:
        await self.stack.stop()
        # what the clients left behind (idle keep-alive connections) ends with the loop
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def parse_source(path: Path) -> ast.Module:
    """`ast.parse` with the collector held off: CPython 3.11.7 raises "AST constructor recursion depth
    mismatch" when a finaliser (an earlier test's abandoned asyncio task logging its destruction) runs
    in the middle of building the tree."""
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        gc.enable()
