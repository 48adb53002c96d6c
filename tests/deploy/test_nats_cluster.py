"""Scaling past one machine is NATS clustering: a 3-node JetStream cluster (stream replicas 3),
two replicas of every stage on their own connections, real node agents, the real gateway and
result sink. 500 diagnoses go in; mid-run the stream's leader server is SIGKILLed and one
replica of a stage crashes with messages in flight. Every accepted diagnosis must complete
exactly once — one final event in the stream, one completed result — and none may be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

from services.collector.agent import NodeAgent, request_dump
from services.gateway.app import create_app
from services.gateway.store import ResultSink, ResultStore
from shared.bus import STREAM, SUBJECT_CLOUD, SUBJECT_COMPLETED, Bus
from shared.config import Settings
from shared.schemas import DiagnosisResult, DiagnosisStatus, StageEnvelope, Verdict
from shared.stage import Stage, StageRunner
from tests.deploy.natscluster import NatsCluster
from tests.foundation.helpers import STAGE_SUBJECTS, completed_in_stream

DIAGNOSES = 500
CONCURRENCY = 24
NODES = ("node-a", "node-b", "node-c")
COLLECT_EVERY = 10  # one diagnosis in ten asks a real agent for a real dump (each costs ~60 ms of CPU)
SUBJECTS = {**STAGE_SUBJECTS, "simulator": (SUBJECT_CLOUD, SUBJECT_COMPLETED)}


class LightStage(Stage):
    """A stage with the real name and subjects and trivial work; the collector asks real agents."""

    def __init__(self, name: str, bus: Bus) -> None:
        self.name = name
        self.input_subject, self.output_subject = SUBJECTS[name]
        self.bus = bus
        self.calls: Counter[str] = Counter()

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        self.calls[env.id] += 1
        if self.name == "collector" and int(env.id[-4:], 16) % COLLECT_EVERY == 0:
            node = NODES[int(env.id[-4:], 16) % len(NODES)]
            reply = await request_dump(self.bus, node, 10.0, diagnosis_id=env.id)
            assert reply.ok and reply.blob, reply.error  # an error is retried by the runner
            return env.model_copy(update={"nodes": {node: reply.blob}})
        if self.name == "simulator":
            return env.model_copy(update={"result": DiagnosisResult(
                verdict=Verdict.UNDETERMINED, summary=f"handled; nodes {sorted(env.nodes)}")})
        return env


class Replica:
    """One stage replica: its own NATS connection and runner, crashable on its own."""

    def __init__(self, bus: Bus, stage: Stage) -> None:
        self.bus, self.stage = bus, stage
        self.runner = StageRunner(bus, stage)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.runner.run(self.stop))

    async def crash(self) -> None:
        """Die with messages in flight: nothing is acked, the server redelivers after ack_wait."""
        for task in [self.task, *self.runner._tasks]:
            task.cancel()
        await asyncio.gather(self.task, *self.runner._tasks, return_exceptions=True)
        await self.bus.nc.close()

    async def shutdown(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):  # the crashed one was cancelled
            await asyncio.wait_for(self.task, 10)
        with contextlib.suppress(Exception):
            await self.bus.close()


async def submit(session: aiohttp.ClientSession, base: str, n: int, accepted: list[str], refused: Counter[str]) -> None:
    """A client that retries a refused (503) or broken request, as an operator's tool would."""
    body = {"src": f"10.244.{n // 250}.{n % 250 + 1}", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}
    for _ in range(100):
        try:
            async with session.post(f"{base}/api/v1/diagnoses", json=body) as resp:
                if resp.status == 202:
                    accepted.append((await resp.json())["id"])
                    return
                refused[str(resp.status)] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            refused[type(exc).__name__] += 1
        await asyncio.sleep(0.2)
    raise AssertionError(f"diagnosis {n} was never accepted")


async def test_diagnoses_survive_a_nats_server_and_a_replica_dying(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path).start()
    # ack_wait 2 s: a crashed replica's messages come back quickly; max_deliver is generous
    # because a publish during the stream leader's re-election fails and is retried, which is
    # recovery, not a poison message
    settings = Settings(nats_url=cluster.url, stream_replicas=3, ack_wait_s=2.0, max_deliver=30, max_inflight=8)
    replicas: list[Replica] = []
    agents: list[tuple[Bus, NodeAgent]] = []
    web_runner: web.AppRunner | None = None
    gateway_bus: Bus | None = None
    admin = await cluster.connect_when_ready(settings, "test-admin")
    try:
        info = await admin.js.stream_info(STREAM)
        assert info.config.num_replicas == 3

        for name in SUBJECTS:
            for i in range(2):
                bus = await Bus.connect(name=f"{name}-{i}", settings=settings)
                replicas.append(Replica(bus, LightStage(name, bus)))
        for i in range(2):
            bus = await Bus.connect(name=f"gateway-store-{i}", settings=settings)
            replicas.append(Replica(bus, ResultSink(bus, settings)))
        for node in NODES:
            bus = await Bus.connect_agent(node, settings)
            agent = NodeAgent(bus, node)
            await agent.start()
            agents.append((bus, agent))
        gateway_bus = await Bus.connect(name="gateway", settings=settings)
        web_runner = web.AppRunner(create_app(gateway_bus), access_log=None, shutdown_timeout=1.0)
        await web_runner.setup()
        await web.TCPSite(web_runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{web_runner.addresses[0][1]}"

        accepted: list[str] = []
        refused: Counter[str] = Counter()
        slots = asyncio.Semaphore(CONCURRENCY)
        placement = (await admin.js.stream_info(STREAM)).cluster
        assert placement is not None and placement.leader, placement  # a clustered stream has a leader
        victim_server = placement.leader
        victim_replica = next(r for r in replicas if r.stage.name == "cloud")
        started = time.perf_counter()

        async def one(n: int, session: aiohttp.ClientSession) -> None:
            async with slots:
                await submit(session, base, n, accepted, refused)

        async def faults() -> None:
            while len(accepted) < DIAGNOSES // 3:
                await asyncio.sleep(0.05)
            cluster.kill(victim_server)
            while len(accepted) < DIAGNOSES // 2:
                await asyncio.sleep(0.05)
            await victim_replica.crash()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            await asyncio.gather(faults(), *(one(n, session) for n in range(DIAGNOSES)))
        submitted_s = time.perf_counter() - started

        store = ResultStore(gateway_bus)
        pending = set(accepted)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            done = await asyncio.gather(*(store.get(i) for i in pending), return_exceptions=True)
            pending = {i for i, d in zip(list(pending), done, strict=True)
                       if isinstance(d, BaseException) or d is None or d.status == DiagnosisStatus.QUEUED}
            if pending:
                await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - started

        results = await asyncio.gather(*(store.get(i) for i in accepted))
        finals = Counter(env.id for env in await completed_in_stream(admin))  # final events per diagnosis
        stage_calls = {name: sum((r.stage.calls for r in replicas if isinstance(r.stage, LightStage)
                                  and r.stage.name == name), Counter[str]())
                       for name in SUBJECTS}
        # every handling beyond the first of a diagnosis in a stage is a redelivery (a NAK after a
        # failed publish during the leader election, or ack_wait expiring after the crash)
        redelivered = {name: calls.total() - len(calls) for name, calls in stage_calls.items()}
        collected = sum(1 for d in results if d and d.result and "node-" in d.result.summary)
        print(f"\nNATS cluster failure run: {len(accepted)} diagnoses accepted in {submitted_s:.1f} s, "
              f"all settled after {elapsed:.1f} s ({len(accepted) / elapsed:.0f} diagnoses/s end to end); "
              f"killed server {victim_server} (stream leader) and one cloud replica mid-run; "
              f"client retries {dict(refused)}; redeliveries per stage {redelivered}; "
              f"{collected} diagnoses carried a real node dump; "
              f"handled per replica {[(r.stage.name, r.runner.handled) for r in replicas]}")

        assert len(accepted) == DIAGNOSES == len(set(accepted))
        assert not pending, f"{len(pending)} diagnoses never completed: {sorted(pending)[:5]}"
        statuses = Counter(d.status for d in results if d)
        assert statuses == {DiagnosisStatus.COMPLETED: DIAGNOSES}, statuses
        assert {i: n for i, n in finals.items() if n != 1} == {}, "a diagnosis completed more than once"
        assert set(finals) == set(accepted)
        assert collected >= DIAGNOSES // COLLECT_EVERY // 2
        assert victim_replica.runner.handled < stage_calls["cloud"].total()  # the survivor took over
    finally:
        if web_runner:
            await web_runner.cleanup()
        await asyncio.gather(*(r.shutdown() for r in replicas))
        for bus, agent in agents:
            await agent.stop()
            await bus.close()
        if gateway_bus:
            await gateway_bus.close()
        await admin.close()
        cluster.stop()
