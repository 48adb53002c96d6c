"""Collection on demand: the collector asks the nodes the Kubernetes model expects on the path; the
real rules may send the packet elsewhere (a stale DNAT to a pod on another node, a route to an
unexpected node). When the walk reaches such a node, the simulator asks that node's agent itself,
over the same `netdiag.node.<node>.collect` request/reply (shared/collect.py), within what is left
of the diagnosis' collection deadline, and walks again. Only an agent that does not answer gives
COLLECTOR_UNAVAILABLE (one that fails, DATA_MISSING). In snapshot mode the node's dump is read from
`<snapshot>/nodes/<node>.json` when the snapshot has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from services.simulator.dataplane.walk import NodeView
from shared import metrics
from shared.bus import BlobUnreadable, Bus
from shared.codes import finding
from shared.collect import pod_ips_on, request_dump
from shared.hops import node_hop
from shared.logs import log_context
from shared.netstack import decode_dump
from shared.schemas import Assumption, BlobRef, Finding, StageEnvelope
from shared.topology import TopologyReport

log = logging.getLogger("netdiag.simulator")
STAGE = "simulator"
MAX_ROUNDS = 4  # walks that may each discover further nodes (a chain of unexpected hops)


@dataclass
class Fetched:
    views: dict[str, NodeView] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    assumptions: list[Assumption] = field(default_factory=list)


@dataclass
class OnDemand:
    """One diagnosis' on-demand collection: a shared deadline, each node asked at most once."""

    env: StageEnvelope
    report: TopologyReport
    bus: Bus | None
    snapshot: Path | None
    timeout_s: float
    load: Callable[[BlobRef], Awaitable[NodeView]]  # a stored dump → its view (assemble's decode cache)
    asked: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout_s

    @property
    def possible(self) -> bool:
        return self.bus is not None or self.snapshot is not None

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    async def fetch(self, nodes: list[str]) -> Fetched:
        out = Fetched()
        todo = [n for n in nodes if n not in self.asked]
        self.asked.update(todo)
        if not todo:
            return out
        results = await asyncio.gather(*(self._one(n) for n in todo))
        for node, (view, problem) in zip(todo, results, strict=True):
            if view is not None:
                out.views[node] = view
                out.assumptions.append(Assumption(stage=STAGE, could_change_outcome=False, text=(
                    f"node {node} is off the path the Kubernetes model expects, but the packet goes there: its "
                    "network state was collected on demand")))
            elif problem is not None:
                out.findings.append(problem)
        return out

    async def _one(self, node: str) -> tuple[NodeView | None, Finding | None]:
        await self._progress(f"the packet goes to {node}, which was not collected: asking its agent on demand",
                             node=node, on_demand=True)
        started = time.perf_counter()
        view, problem = await (self._from_snapshot(node) if self.snapshot is not None else self._from_agent(node))
        ms = round((time.perf_counter() - started) * 1000, 1)
        done = f"{node} collected on demand in {ms:.0f} ms" if view is not None else \
            f"{node} could not be collected on demand: {problem.message if problem else 'unknown'}"
        await self._progress(done, node=node, on_demand=True, ms=ms, ok=view is not None)
        return view, problem

    async def _from_agent(self, node: str) -> tuple[NodeView | None, Finding | None]:
        """Like the collector: only the agent's silence while the bus works is COLLECTOR_UNAVAILABLE; a
        bus that does not answer (or an agent that could not reach it) is raised, and the stage runner
        retries the diagnosis."""
        assert self.bus is not None
        timeout = max(0.05, self.left_s())
        try:
            reply = await request_dump(self.bus, node, timeout, diagnosis_id=self.env.id,
                                       pod_ips=pod_ips_on(self.report.objects.pods, {node}))
        except (TimeoutError, nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            if not await self.bus.round_trip():
                raise TimeoutError(f"no answer from NATS while asking {node} on demand") from exc
            metrics.COLLECTOR_TIMEOUTS.labels(node).inc()
            log.warning("node %s did not answer an on-demand collection (%s)", node, type(exc).__name__,
                        extra=log_context(diagnosis_id=self.env.id, stage=STAGE, node=node))
            return None, finding("COLLECTOR_UNAVAILABLE", node_hop(node), node=node, timeout_s=round(timeout, 2),
                                 evidence={"on_demand": True, "reason": "no agent subscribed" if isinstance(
                                     exc, nats.errors.NoRespondersError) else "timeout"})
        if not reply.ok and reply.retryable:
            raise TimeoutError(f"the agent on {node} could not reach NATS: {reply.error}")
        if not reply.ok or reply.blob is None:
            return None, self._missing(node, f"the agent on {node} failed: {reply.error}")
        try:
            return await self.load(reply.blob), None
        except (BlobUnreadable, ValueError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, TimeoutError):  # an OSError too, but the bus's, not the data's
                raise
            return None, self._missing(node, f"its dump could not be read: {type(exc).__name__}: {exc}")

    async def _from_snapshot(self, node: str) -> tuple[NodeView | None, Finding | None]:
        assert self.snapshot is not None
        path = self.snapshot / "nodes" / f"{node}.json"
        try:
            dump = decode_dump(await asyncio.to_thread(path.read_bytes))
        except FileNotFoundError:
            return None, self._missing(node, f"the packet goes there, but the snapshot has no {path.name} under "
                                       "nodes/")
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            return None, self._missing(node, f"{path} is not a valid node dump: {str(exc)[:300]}")
        if dump.node != node:
            return None, self._missing(node, f"{path} holds the dump of node {dump.node!r}")
        return NodeView.build(dump), None

    @staticmethod
    def _missing(node: str, reason: str) -> Finding:
        return finding("DATA_MISSING", node_hop(node), what=f"the network state of node {node}", reason=reason,
                       evidence={"on_demand": True})

    async def _progress(self, message: str, **detail: Any) -> None:
        if self.bus is not None:
            await self.bus.progress(self.env, STAGE, "progress", message, **detail)
