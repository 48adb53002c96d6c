"""A bounded chaos run against netdiag as it is deployed: separate OS processes (a nats-server, two
replicas of each stage, a gateway), clients retrying with Idempotency-Keys, stage replicas SIGKILLed
and restarted every 1-2 s, and the nats-server itself SIGKILLed and restarted once.

It reports what an SRE asks after such a run: was anything lost or duplicated, did every diagnosis
end (and with the verdict a calm run gives), how long after the last fault until everything had
settled, the latency under chaos, and how soon a killed replica's message came back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from shared.bus import PROGRESS_PREFIX, STREAM, Bus
from shared.config import Settings
from shared.natsserver import NatsServer
from tests.deploy.natscluster import free_port
from tests.foundation.helpers import completed_in_stream

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "snapshots" / "shop"
CASES = [  # tests/e2e/cases.py SHOP_CASES: a Service, a policy deny and allow, DNS
    {"src": "10.244.1.2", "dst": "10.96.0.100", "port": 80, "protocol": "tcp"},
    {"src": "10.244.1.2", "dst": "10.244.2.3", "port": 5432, "protocol": "tcp"},
    {"src": "10.244.1.3", "dst": "10.244.2.3", "port": 5432, "protocol": "tcp"},
    {"src": "10.244.1.2", "dst": "10.96.0.10", "port": 53, "protocol": "udp"},
]
STAGES = ("topology", "collector", "cloud", "simulator")
ACK_WAIT_S = 3.0
EXTRA_CHAOS_S = 20.0


@dataclass
class Report:
    accepted: int = 0
    completed: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    finals_per_id: Counter[str] = field(default_factory=Counter)
    wrong_verdicts: list[str] = field(default_factory=list)
    never_finished: list[str] = field(default_factory=list)
    ids_per_key: dict[str, set[str]] = field(default_factory=dict)
    replica_kills: int = 0
    nats_restarts: int = 0
    settle_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    redelivery_s: list[float] = field(default_factory=list)
    startup_s: float = 0.0
    submit_s: float = 0.0
    total_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        red = sorted(self.redelivery_s)
        return {
            "diagnoses": self.accepted, "completed": self.completed, "replica_kills": self.replica_kills,
            "nats_restarts": self.nats_restarts, "settle_after_last_fault_s": round(self.settle_s, 2),
            "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
            "latency_max_s": round(lat[-1], 3) if lat else None,
            "redeliveries_after_kills": len(red),
            "redelivery_p50_s": round(statistics.median(red), 2) if red else None,
            "redelivery_max_s": round(red[-1], 2) if red else None,
            "startup_s": round(self.startup_s, 1), "submit_s": round(self.submit_s, 1),
            "total_s": round(self.total_s, 1),
        }


class Deployment:
    """The processes, each started as `python -m services.<name>` with the chart's kind of settings."""

    def __init__(self, workdir: Path, replicas: int = 2) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.nats = NatsServer(workdir / "nats")
        self.gateway_port = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> None:
        self.nats.start()
        self.env = {**os.environ, "NETDIAG_NATS_URL": self.nats.url, "NETDIAG_SNAPSHOT": str(SHOP),
                    "NETDIAG_ACK_WAIT_S": str(ACK_WAIT_S), "NETDIAG_MAX_DELIVER": "10",
                    "NETDIAG_RESULT_KEY": secrets.token_hex(16), "NETDIAG_LOG_LEVEL": "WARNING",
                    "PYTHONPATH": str(ROOT)}
        for stage in STAGES:
            for i in range(self.replicas):
                self.spawn(f"{stage}-{i}")
        self.spawn("gateway")

    def spawn(self, name: str) -> None:
        stage = name.rsplit("-", 1)[0]
        args = [sys.executable, "-m", f"services.{stage}"]
        if stage == "gateway":
            args += ["--host", "127.0.0.1", "--port", str(self.gateway_port)]
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=log, stderr=log)

    def kill(self, name: str) -> int:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    def restart_nats(self, down_s: float) -> None:
        assert self.nats.proc is not None
        self.nats.proc.send_signal(signal.SIGKILL)
        self.nats.proc.wait()
        self.nats.proc = None
        time.sleep(down_s)
        self.nats.start()  # the same port and store

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.nats.stop()


async def _ready(dep: Deployment, admin: Bus, http: aiohttp.ClientSession, timeout: float = 60) -> None:
    """The gateway answers /readyz and every stage's consumer has a replica pulling."""
    deadline = time.monotonic() + timeout
    consumers = [f"netdiag-{s}" for s in STAGES] + ["netdiag-gateway-store"]
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(f"{dep.url}/readyz") as resp:
                if resp.status == 200:
                    waiting = []
                    for c in consumers:
                        try:
                            waiting.append((await admin.js.consumer_info(STREAM, c)).num_waiting or 0)
                        except Exception:  # not created yet
                            waiting.append(0)
                    if all(waiting):
                        return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the deployment did not become ready; logs in {dep.workdir}")


async def _submit(http: aiohttp.ClientSession, base: str, key: str, body: dict[str, Any], deadline: float) -> str:
    """POST until accepted, always with the same Idempotency-Key (what a careful client does)."""
    while True:
        try:
            async with http.post(f"{base}/api/v1/diagnoses", json=body, headers={"Idempotency-Key": key}) as r:
                if r.status == 202:
                    return str((await r.json())["id"])
                assert r.status in (429, 503), (r.status, await r.text())
        except (aiohttp.ClientError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{key} never accepted")
        await asyncio.sleep(0.2)


async def _get(http: aiohttp.ClientSession, base: str, diagnosis_id: str) -> dict[str, Any] | None:
    try:
        async with http.get(f"{base}/api/v1/diagnoses/{diagnosis_id}") as r:
            return await r.json() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


def _busy_replica(dep: Deployment, progress: list[tuple[float, dict[str, Any]]]) -> str | None:
    """The stage replica that most recently started a message it has not finished, among those whose
    sibling is up and working (has started a message itself): SIGKILL lands on work in flight, and
    what it measures is the redelivery, not a restarted process's start-up."""
    working = {str(e.get("detail", {}).get("replica", "")).rsplit(":", 1)[-1] for _, e in progress
               if e["state"] == "started"}
    alive = {name: str(p.pid) for name, p in dep.procs.items() if p.poll() is None}
    finished = set()
    for _, event in reversed(progress[-500:]):
        key = (event["id"], event["stage"])
        if event["state"] in ("done", "failed"):
            finished.add(key)
        elif event["state"] == "started" and key not in finished and event["stage"] in STAGES:
            pid = str(event.get("detail", {}).get("replica", "")).rsplit(":", 1)[-1]
            name = next((n for n, p in alive.items() if p == pid), None)
            siblings = [p for n, p in alive.items() if n != name and n.rsplit("-", 1)[0] == event["stage"]]
            if name is not None and any(p in working for p in siblings):
                return name
    return None


def _any_replica(dep: Deployment, rng: random.Random) -> str | None:
    """A live stage replica whose sibling is up: on an idle machine little is ever in flight, and a
    replica killed idle still tests that the stage recovers (its redelivery is simply not measured)."""
    alive = [n for n, p in dep.procs.items() if p.poll() is None and n.rsplit("-", 1)[0] in STAGES]
    paired = [n for n in alive if any(m != n and m.rsplit("-", 1)[0] == n.rsplit("-", 1)[0] for m in alive)]
    return rng.choice(sorted(paired)) if paired else None


def _redeliveries(kills: list[tuple[float, str, int]], progress: list[tuple[float, dict[str, Any]]],
                  nats_down: tuple[float, float]) -> list[float]:
    """For each replica kill: the messages the killed process was working on (its last event for the
    message was its own `started`), and how long until another replica started them again. Kills whose
    redelivery would fall into the NATS restart are left out: that wait is the outage's, not ack_wait's."""
    by_key: dict[tuple[str, str], list[tuple[float, str, str]]] = defaultdict(list)
    for at, event in progress:
        if event["state"] in ("started", "done", "failed"):  # a stage's own "progress" notes say nothing here
            replica = str(event.get("detail", {}).get("replica", ""))
            by_key[(event["id"], event["stage"])].append((at, event["state"], replica))
    delays = []
    down_from, down_to = nats_down
    for killed_at, stage, pid in kills:
        if down_from - ACK_WAIT_S - 1 < killed_at < down_to + 1:
            continue
        for (_, s), events in by_key.items():
            before = [e for e in events if e[0] <= killed_at]
            if s != stage or not before or before[-1][1] != "started" or not before[-1][2].endswith(f":{pid}"):
                continue
            again = next((at for at, state, _ in events if at > killed_at and state == "started"), None)
            if again is not None:
                delays.append(again - killed_at)
    return delays


async def run_chaos(workdir: Path, diagnoses: int = 200, clients: int = 12, chaos_s: float = 12.0,
                    settle_timeout_s: float = 45.0, seed: int = 16) -> Report:
    rng = random.Random(seed)
    report = Report()
    dep = Deployment(workdir)
    started = time.monotonic()
    progress: list[tuple[float, dict[str, Any]]] = []
    await asyncio.to_thread(dep.start)
    admin = await Bus.connect(name="chaos-observer", settings=Settings(nats_url=dep.nats.url))
    try:
        async def on_progress(msg: Any) -> None:
            progress.append((time.time(), json.loads(msg.data)))

        await admin.nc.subscribe(f"{PROGRESS_PREFIX}.>", cb=on_progress)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await _ready(dep, admin, http)
            # the calm run: each case once, no faults
            calm: dict[int, str] = {}
            for n, body in enumerate(CASES):
                diagnosis_id = await _submit(http, dep.url, f"calm-{n}", body, time.monotonic() + 30)
                while (doc := await _get(http, dep.url, diagnosis_id)) is None or doc["status"] == "queued":
                    await asyncio.sleep(0.1)
                assert doc["status"] == "completed", doc
                calm[n] = doc["result"]["verdict"]

            kills: list[tuple[float, str, int]] = []
            nats_down: list[float] = [0.0, 0.0]
            report.startup_s = time.monotonic() - started
            faults_done = asyncio.Event()
            last_fault = time.monotonic()

            async def chaos() -> None:
                nonlocal last_fault
                begin = time.monotonic()
                restarted = False
                def more() -> bool:
                    """Until chaos_s; then on for a while (clients keep submitting) until at least one kill
                    caught a message in flight and its redelivery was seen: a run that measured none proves
                    nothing about recovery."""
                    elapsed = time.monotonic() - begin
                    if elapsed < chaos_s:
                        return True
                    measured = _redeliveries(kills, progress, (nats_down[0], nats_down[1]))
                    return not measured and elapsed < chaos_s + EXTRA_CHAOS_S

                while more():
                    await asyncio.sleep(rng.uniform(1.0, 2.0))
                    if not restarted and time.monotonic() - begin > chaos_s / 3:
                        down_from = time.time()
                        await asyncio.to_thread(dep.restart_nats, 1.0)
                        nats_down[:] = [down_from, time.time()]
                        report.nats_restarts += 1
                        restarted = True
                    else:
                        victim = _busy_replica(dep, progress) or _any_replica(dep, rng)
                        if victim is None:  # no stage has two replicas up: wait
                            continue
                        killed_at = time.time()
                        pid = await asyncio.to_thread(dep.kill, victim)
                        kills.append((killed_at, victim.rsplit("-", 1)[0], pid))
                        dep.spawn(victim)
                        report.replica_kills += 1
                    last_fault = time.monotonic()
                faults_done.set()

            slots = asyncio.Semaphore(clients)
            accepted: dict[str, tuple[str, int]] = {}

            async def client(n: int) -> None:
                key, case = f"chaos-{n}", n % len(CASES)
                # arrivals spread over the chaos window: a steady load, so every fault meets work in flight
                await asyncio.sleep(n * chaos_s / diagnoses)
                async with slots:
                    diagnosis_id = await _submit(http, dep.url, key, CASES[case], time.monotonic() + 120)
                    # the client retries once more anyway: it must name the same diagnosis
                    again = await _submit(http, dep.url, key, CASES[case], time.monotonic() + 120)
                    report.ids_per_key[key] = {diagnosis_id, again}
                    accepted[diagnosis_id] = (key, case)

            chaos_task = asyncio.create_task(chaos())
            submitting = time.monotonic()
            await asyncio.gather(*(client(n) for n in range(diagnoses)))
            report.submit_s = time.monotonic() - submitting
            await chaos_task
            report.accepted = len(accepted)

            pending = set(accepted)
            docs: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + settle_timeout_s
            while pending and time.monotonic() < deadline:
                for diagnosis_id in list(pending):
                    doc = await _get(http, dep.url, diagnosis_id)
                    if doc is not None and doc["status"] != "queued":
                        docs[diagnosis_id] = doc
                        pending.discard(diagnosis_id)
                if pending:
                    await asyncio.sleep(0.25)
            report.settle_s = time.monotonic() - last_fault
            report.never_finished = sorted(pending)
            for diagnosis_id, doc in docs.items():
                report.statuses[doc["status"]] += 1
                case = accepted[diagnosis_id][1]
                if doc["status"] == "completed":
                    report.completed += 1
                    if doc["result"]["verdict"] != calm[case]:
                        findings = [f"{f['code']}: {f['message']}" for f in doc["result"]["findings"]]
                        report.wrong_verdicts.append(f"{diagnosis_id} {calm[case]} → {doc['result']['verdict']}: "
                                                     f"{findings}")
                    report.latencies_s.append((datetime.fromisoformat(doc["completed_at"])
                                               - datetime.fromisoformat(doc["created_at"])).total_seconds())
            report.finals_per_id = Counter(env.id for env in await completed_in_stream(admin))
            report.redelivery_s = _redeliveries(kills, progress, (nats_down[0], nats_down[1]))
            # for a post-mortem: what happened when, next to the processes' logs
            (workdir / "events.json").write_text(json.dumps({"kills": kills, "nats_down": nats_down,
                                                             "progress": progress}))
    finally:
        await admin.close()
        await asyncio.to_thread(dep.stop)
    report.total_s = time.monotonic() - started
    return report
