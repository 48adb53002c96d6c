"""TopologyStage: SUBJECT_REQUESTED → SUBJECT_TOPOLOGY.

The cluster model is built once per process and shared: a snapshot directory is loaded
once, a live cluster is followed by list+watch caches; a diagnosis only reads it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from services.topology.plan import Planner
from services.topology.sources.live import close_shared_live_source, shared_live_source
from services.topology.sources.snapshot import load_snapshot
from shared.bus import SUBJECT_REQUESTED, SUBJECT_TOPOLOGY, Bus
from shared.config import Settings
from shared.schemas import StageEnvelope
from shared.stage import Stage

log = logging.getLogger("netdiag.topology")
LIVE_SYNC_TIMEOUT_S = 30.0
_planners: dict[str, Planner] = {}
_planners_lock = threading.Lock()


def _key(settings: Settings) -> str:
    return f"snapshot:{settings.snapshot}" if settings.snapshot else f"live:{settings.kubeconfig or ''}"


def planner_for(settings: Settings) -> Planner:
    """The process-wide planner for this source (built, and for live synced, on first use). Blocking."""
    key = _key(settings)
    with _planners_lock:
        planner = _planners.get(key)
        if planner is None:
            if settings.snapshot:
                load = load_snapshot(settings.snapshot)
                log.info("snapshot %s: %s in %.2fs", settings.snapshot, dict(load.loaded), load.seconds)
                planner = Planner(load.model, f"snapshot:{settings.snapshot}")
            else:
                planner = Planner(shared_live_source(settings.kubeconfig).model, "live")
            _planners[key] = planner
    if not settings.snapshot:
        source = shared_live_source(settings.kubeconfig)
        if not source.wait_synced(LIVE_SYNC_TIMEOUT_S):
            # an infrastructure fault: the runner retries, then fails the diagnosis with this text
            raise RuntimeError(f"Kubernetes API cache not synced after {LIVE_SYNC_TIMEOUT_S}s: {source.errors()}")
    return planner


class TopologyStage(Stage):
    name = "topology"
    input_subject = SUBJECT_REQUESTED
    output_subject = SUBJECT_TOPOLOGY

    def __init__(self, bus: Bus, settings: Settings) -> None:
        self.bus = bus
        self.settings = settings

    async def close(self) -> None:
        """Stop the live watches: they would otherwise retry against an API that is gone."""
        with _planners_lock:
            _planners.pop(_key(self.settings), None)
        if not self.settings.snapshot:
            await asyncio.to_thread(close_shared_live_source, self.settings.kubeconfig)

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        started = time.perf_counter()
        planner = await asyncio.to_thread(planner_for, self.settings)
        await self.bus.progress(env.id, self.name, "progress", f"classifying {env.request.describe()}")
        report = await asyncio.to_thread(planner.plan, env.request)
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        await self.bus.progress(
            env.id, self.name, "progress",
            f"{report.src.kind} → {report.dst.kind}: {len(report.paths)} path(s), "
            f"nodes {', '.join(report.nodes_to_collect) or 'none'}",
            elapsed_ms=elapsed, nodes=report.nodes_to_collect, findings=[f.code for f in report.findings],
        )
        return env.model_copy(update={"topology": report.model_dump(mode="json")})
