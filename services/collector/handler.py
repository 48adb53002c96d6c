"""The collector stage: topology event → every node on the path dumped → collected event.

Agents are asked in parallel and joined with one deadline; a node that does not answer in
time is a COLLECTOR_UNAVAILABLE finding (ABORT class) and the diagnosis goes on with the
nodes that did. In snapshot mode the dumps come from `<snapshot>/nodes/<node>.json`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats

from shared import metrics
from shared.blobcache import ContentBlobs
from shared.bus import SUBJECT_COLLECTED, SUBJECT_TOPOLOGY, Bus
from shared.codes import finding
from shared.collect import collect_timeout_s, pod_ips_on, request_dump
from shared.config import Settings
from shared.hops import node_hop
from shared.logs import log_context
from shared.netstack import decode_dump, encode_dump
from shared.schemas import Assumption, BlobRef, Finding, StageEnvelope
from shared.stage import Stage
from shared.topology import TopologyReport

log = logging.getLogger("netdiag.collector")


def pod_ips_for(report: TopologyReport) -> dict[str, str]:
    """Pod IP → 'namespace/name' for pods on the nodes being collected (names pod namespaces)."""
    nodes = set(report.nodes_to_collect)
    ips = pod_ips_on(report.objects.pods, nodes)
    for ep in (report.src, report.dst):
        if ep.pod and ep.node in nodes:
            ips.setdefault(str(ep.address), ep.pod)
    return ips


@dataclass
class NodeOutcome:
    """What asking (or reading) one node produced: a blob, or a finding and maybe an assumption."""

    node: str
    blob: BlobRef | None = None
    finding: Finding | None = None
    assumption: Assumption | None = None
    ms: float = 0.0


class CollectorStage(Stage):
    name = "collector"
    input_subject = SUBJECT_TOPOLOGY
    output_subject = SUBJECT_COLLECTED

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings
        # snapshot mode: node → ((mtime, size), encoded dump or why it is unusable)
        self._snapshot_dumps: dict[str, tuple[tuple[int, int], bytes | str]] = {}
        self._snapshot_blobs = ContentBlobs(bus, "snapshot-nodes")

    def timeout_s(self, env: StageEnvelope) -> float:
        return collect_timeout_s(env.request.options, self.settings.collect_timeout_s)

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        if env.topology is None:
            note = Assumption(stage=self.name, text="no topology: no node state was collected",
                              could_change_outcome=True)
            return env.model_copy(update={"assumptions": [*env.assumptions, note]})
        report = env.topology
        nodes = list(dict.fromkeys(report.nodes_to_collect))
        if self.settings.snapshot is not None:
            outcomes = await asyncio.gather(*(self._from_snapshot(env, n) for n in nodes))
        else:
            outcomes = await self._from_agents(env, nodes, pod_ips_for(report))
        return env.model_copy(update={
            "nodes": {**env.nodes, **{o.node: o.blob for o in outcomes if o.blob}},
            "findings": [*env.findings, *(o.finding for o in outcomes if o.finding)],
            "assumptions": [*env.assumptions, *(o.assumption for o in outcomes if o.assumption)],
        })

    # ------------------------------------------------------------ live: the node agents

    async def _from_agents(self, env: StageEnvelope, nodes: list[str], pod_ips: dict[str, str]) -> list[NodeOutcome]:
        timeout = self.timeout_s(env)
        deadline = time.monotonic() + timeout
        return list(await asyncio.gather(*(self._ask(env, n, pod_ips, deadline, timeout) for n in nodes)))

    async def _ask(self, env: StageEnvelope, node: str, pod_ips: dict[str, str], deadline: float,
                   timeout: float) -> NodeOutcome:
        started = time.perf_counter()
        try:
            reply = await request_dump(self.bus, node, max(0.05, deadline - time.monotonic()),
                                       diagnosis_id=env.id, pod_ips=pod_ips)
        except (TimeoutError, nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            if not await self.bus.round_trip():
                # not the agent's silence: the bus itself is away or frozen, which says nothing about
                # the node; the stage runner retries the diagnosis once NATS answers again
                raise TimeoutError(f"no answer from NATS while asking {node}") from exc
            ms = (time.perf_counter() - started) * 1000
            metrics.COLLECTOR_TIMEOUTS.labels(node).inc()
            log.warning("node %s did not answer (%s)", node, type(exc).__name__,
                        extra=log_context(diagnosis_id=env.id, stage=self.name, node=node))
            await self.bus.progress(env, self.name, "progress", f"{node} did not answer", node=node,
                                    ms=round(ms, 1), ok=False)
            return NodeOutcome(node, ms=ms, finding=finding(
                "COLLECTOR_UNAVAILABLE", node_hop(node), node=node, timeout_s=timeout,
                evidence={"reason": "no agent subscribed" if isinstance(exc, nats.errors.NoRespondersError)
                          else "timeout"}))
        ms = (time.perf_counter() - started) * 1000
        await self.bus.progress(env, self.name, "progress", f"{node} answered in {ms:.0f} ms", node=node,
                                ms=round(ms, 1), ok=reply.ok)
        if not reply.ok and reply.retryable:
            raise TimeoutError(f"the agent on {node} could not reach NATS: {reply.error}")
        if not reply.ok or reply.blob is None:
            log.warning("the agent on %s failed: %s", node, reply.error,
                        extra=log_context(diagnosis_id=env.id, stage=self.name, node=node))
            return self._missing(node, f"the agent on {node} failed: {reply.error}", ms)
        return NodeOutcome(node, blob=reply.blob, ms=ms)

    def _missing(self, node: str, reason: str, ms: float = 0.0) -> NodeOutcome:
        what = f"network state of node {node}"
        return NodeOutcome(
            node, ms=ms, finding=finding("DATA_MISSING", node_hop(node), what=what, reason=reason),
            assumption=Assumption(stage=self.name, text=f"{what} is unknown ({reason}); hops on {node} "
                                  "cannot be simulated", could_change_outcome=True))

    # ------------------------------------------------------------ snapshot: nodes/<node>.json

    async def _from_snapshot(self, env: StageEnvelope, node: str) -> NodeOutcome:
        """The node's file, validated and stored once while it is unchanged (same mtime and size):
        every diagnosis of a snapshot then carries the same content-addressed blob."""
        assert self.settings.snapshot is not None
        path = self.settings.snapshot / "nodes" / f"{node}.json"
        started = time.perf_counter()
        try:
            stat = path.stat()
        except FileNotFoundError:
            return self._missing(node, f"the snapshot has no {path.name} under nodes/")
        except OSError as exc:
            return self._missing(node, f"{path} is not a valid node dump: {_short(exc)}")
        key = (stat.st_mtime_ns, stat.st_size)
        known = self._snapshot_dumps.get(node)
        if known is None or known[0] != key:
            known = self._snapshot_dumps[node] = (key, await asyncio.to_thread(_read_dump, path, node))
        encoded = known[1]
        if isinstance(encoded, str):
            return self._missing(node, encoded)
        ref = await self._snapshot_blobs.put(encoded)
        ms = (time.perf_counter() - started) * 1000
        await self.bus.progress(env, self.name, "progress", f"{node} read from the snapshot", node=node,
                                ms=round(ms, 1), ok=True)
        return NodeOutcome(node, blob=ref, ms=ms)


def _read_dump(path: Path, node: str) -> bytes | str:
    """The object-store form of a snapshot's node file, or why it cannot be used."""
    try:
        dump = decode_dump(path.read_bytes())
    except FileNotFoundError:
        return f"the snapshot has no {path.name} under nodes/"
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        return f"{path} is not a valid node dump: {_short(exc)}"
    if dump.node != node:
        return f"{path} holds the dump of node {dump.node!r}"
    return encode_dump(dump)


def _short(exc: Any) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "…"
