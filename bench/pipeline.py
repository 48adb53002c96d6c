"""Round trip of a diagnosis through all five stages on the embedded stack, trivial stage work.

    .venv/bin/python bench/pipeline.py [--runs 200] [--clients 20] [--total 1000]

Prints p50/p95 of sequential round trips (POST → result stored), measured two ways:
`kv` (a watch on the results bucket: the pipeline's own latency) and `sse` (what a client
of /events sees, including opening the stream), then throughput with concurrent clients.
Targets on a 2-core machine: p50 < 25 ms, >= 100 diagnoses/s.

Topology, collector and cloud do pass-through work here (their real logic needs a
cluster); the bus, runner, simulator, result sink and gateway are the real ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp

from services.gateway.store import ResultSink
from services.simulator.handler import SimulatorStage
from services.stack import EmbeddedStack, StageFactory
from shared.bus import SUBJECT_CLOUD, SUBJECT_COLLECTED, SUBJECT_REQUESTED, SUBJECT_TOPOLOGY, Bus
from shared.config import Settings
from shared.schemas import StageEnvelope
from shared.stage import Stage

REQUEST = {"src": "10.244.1.5", "dst": "10.96.0.10", "port": 53, "protocol": "udp"}


class PassThrough(Stage):
    def __init__(self, name: str, input_subject: str, output_subject: str) -> None:
        self.name, self.input_subject, self.output_subject = name, input_subject, output_subject

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        return env


def trivial(name: str, input_subject: str, output_subject: str) -> StageFactory:
    return lambda _bus, _settings: PassThrough(name, input_subject, output_subject)


STAGES: tuple[StageFactory, ...] = (
    trivial("topology", SUBJECT_REQUESTED, SUBJECT_TOPOLOGY),
    trivial("collector", SUBJECT_TOPOLOGY, SUBJECT_COLLECTED),
    trivial("cloud", SUBJECT_COLLECTED, SUBJECT_CLOUD),
    SimulatorStage,
    ResultSink,
)


class Completions:
    """One KV watch on the results bucket resolves a future per diagnosis id when it leaves `queued`."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.early: dict[str, str] = {}  # completed before the POST's response arrived
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        watcher = await self.bus.kv.watchall()
        self._task = asyncio.create_task(self._run(watcher))

    async def _run(self, watcher: object) -> None:
        async for entry in watcher:  # type: ignore[attr-defined]
            if entry is None or not entry.value:
                continue
            status = json.loads(entry.value)["status"]
            if status == "queued":
                continue
            fut = self.waiting.pop(entry.key, None)
            if fut is None:
                self.early[entry.key] = status
            elif not fut.done():
                fut.set_result(status)

    async def wait(self, diagnosis_id: str, timeout: float = 30.0) -> str:
        if diagnosis_id in self.early:
            return self.early.pop(diagnosis_id)
        fut = self.waiting[diagnosis_id] = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(fut, timeout)

    def stop(self) -> None:
        if self._task:
            self._task.cancel()


async def post(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(f"{base}/api/v1/diagnoses", json=REQUEST) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


async def round_trip_kv(http: aiohttp.ClientSession, base: str, done: Completions) -> float:
    t0 = time.perf_counter()
    status = await done.wait(await post(http, base))
    assert status == "completed", status
    return (time.perf_counter() - t0) * 1000


async def round_trip_sse(http: aiohttp.ClientSession, base: str) -> float:
    t0 = time.perf_counter()
    diagnosis_id = await post(http, base)
    async with http.get(f"{base}/api/v1/diagnoses/{diagnosis_id}/events") as resp:
        async for line in resp.content:
            if line.startswith(b"event: result"):
                break
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(label: str, ms: list[float]) -> None:
    print(f"{label:<28} n={len(ms):<5} p50={pct(ms, 50):7.2f} ms  p95={pct(ms, 95):7.2f} ms  "
          f"mean={statistics.fmean(ms):7.2f} ms  max={max(ms):7.2f} ms")


async def main(runs: int, clients: int, total: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with EmbeddedStack(Settings(), stages=STAGES) as st, aiohttp.ClientSession() as http:
        watch_bus = await Bus.connect(st.nats_url, name="bench", settings=st.settings)
        done = Completions(watch_bus)
        await done.start()
        try:
            for _ in range(20):  # warm-up: connections, consumers, caches
                await round_trip_kv(http, st.url, done)

            seq = [await round_trip_kv(http, st.url, done) for _ in range(runs)]
            report("sequential (kv watch)", seq)
            sse = [await round_trip_sse(http, st.url) for _ in range(runs)]
            report("sequential (sse client)", sse)
            figures.update(p50_ms=pct(seq, 50), p95_ms=pct(seq, 95), sse_p50_ms=pct(sse, 50))

            remaining = total
            latencies: list[float] = []

            async def client() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    latencies.append(await round_trip_kv(http, st.url, done))

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            wall = time.perf_counter() - t0
            report(f"{clients} concurrent clients", latencies)
            figures["throughput_per_s"] = total / wall
            print(f"throughput: {total} diagnoses in {wall:.2f} s = {total / wall:.1f} diagnoses/s")
        finally:
            done.stop()
            await watch_bus.close()
    ok = figures["p50_ms"] < 25 and figures["throughput_per_s"] >= 100
    print(f"targets (p50 < 25 ms, >= 100/s): {'met' if ok else 'MISSED'}")
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--total", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.clients, args.total))
