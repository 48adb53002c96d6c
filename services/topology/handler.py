"""TopologyStage: SUBJECT_REQUESTED → SUBJECT_TOPOLOGY.

The cluster model is built once per process and shared: a snapshot directory is loaded
once, a live cluster is followed by list+watch caches; a diagnosis only reads it. The stage
also loads it at start and publishes its summary (shared/cluster.py) for the gateway's UI,
again whenever the model changes (checked every SUMMARY_INTERVAL_S).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import nats

from services.topology.plan import Planner, detach_node_addresses
from services.topology.sources.live import close_shared_live_source, shared_live_source
from services.topology.sources.snapshot import load_notes, load_snapshot
from services.topology.summary import model_stamp, summary_within
from shared.blobcache import ContentBlobs
from shared.bus import SUBJECT_REQUESTED, SUBJECT_TOPOLOGY, Bus
from shared.cluster import SUMMARY_KEY
from shared.config import Settings
from shared.offload import Offload
from shared.schemas import StageEnvelope
from shared.stage import Stage

log = logging.getLogger("netdiag.topology")
LIVE_SYNC_TIMEOUT_S = 30.0
SUMMARY_INTERVAL_S = 2.0  # the summary is rebuilt at most this often
LOAD_RETRY_S = 5.0
_planners: dict[str, Planner] = {}
_planners_lock = threading.Lock()


def _key(settings: Settings) -> str:
    return f"snapshot:{settings.snapshot}" if settings.snapshot else f"live:{settings.kubeconfig or ''}"


def _planner(settings: Settings) -> Planner:
    """The process-wide planner for this source, built on first use (a live one may not be synced yet)."""
    key = _key(settings)
    with _planners_lock:
        planner = _planners.get(key)
        if planner is None:
            if settings.snapshot:
                load = load_snapshot(settings.snapshot)
                log.info("snapshot %s: %s in %.2fs", settings.snapshot, dict(load.loaded), load.seconds)
                planner = Planner(load.model, f"snapshot:{settings.snapshot}", load_notes(load))
            else:
                source = shared_live_source(settings.kubeconfig)
                planner = Planner(source.model, source.name)
            _planners[key] = planner
    return planner


def _loaded(settings: Settings) -> Planner | None:
    """The planner if its model is loaded (snapshot) or synced (live), else None. Blocking."""
    planner = _planner(settings)
    return planner if settings.snapshot or shared_live_source(settings.kubeconfig).synced else None


def planner_for(settings: Settings) -> Planner:
    """The process-wide planner for this source (built, and for live synced, on first use). Blocking."""
    planner = _planner(settings)
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
        self._node_addresses = ContentBlobs(bus, "node-addresses", size=4)
        self._plans = Offload()
        self._stopping = asyncio.Event()
        self._summaries = asyncio.get_running_loop().create_task(self._publish_summaries())

    async def close(self) -> None:
        """Stop the summary task, then the live watches: they would otherwise retry against an API
        that is gone."""
        self._stopping.set()
        await self._summaries  # it ends within one step; cancelling could orphan a thread mid-load
        with _planners_lock:
            _planners.pop(_key(self.settings), None)
        if not self.settings.snapshot:
            await asyncio.to_thread(close_shared_live_source, self.settings.kubeconfig)

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        started = time.perf_counter()
        # a loaded snapshot's planner is a dict look-up: no thread hop for it (the first request,
        # and every live one, may block on a load or a sync)
        planner = _planners.get(_key(self.settings)) if self.settings.snapshot else None
        if planner is None:
            planner = await asyncio.to_thread(planner_for, self.settings)
        await self.bus.progress(env, self.name, "progress", f"classifying {env.request.describe()}")
        report = await self._plans(planner.plan, env.request)  # inline while plans are quick
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        await self.bus.progress(
            env, self.name, "progress",
            f"{report.src.kind} → {report.dst.kind}: {len(report.paths)} path(s), "
            f"nodes {', '.join(report.nodes_to_collect) or 'none'}",
            elapsed_ms=elapsed, nodes=report.nodes_to_collect, findings=[f.code for f in report.findings],
        )
        report, addresses = detach_node_addresses(report)
        ref = await self._node_addresses.put(addresses) if addresses is not None else None
        return env.model_copy(update={"topology": report, "node_addresses": ref})

    # ------------------------------------------------------------ cluster summary

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless closing; True when the stage is closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _loaded_planner(self) -> Planner | None:
        """The planner once its model is loaded (snapshot) or synced (live); None when closing."""
        failures = 0
        while not self._stopping.is_set():
            try:
                planner = await asyncio.to_thread(_loaded, self.settings)
                if planner is not None:
                    return planner
                delay = 0.2
            except Exception as exc:  # a missing kubeconfig, an unreadable snapshot: diagnoses report it
                log.log(logging.DEBUG if failures else logging.WARNING, "cluster model not loaded yet: %s", exc)
                failures, delay = failures + 1, LOAD_RETRY_S
            if await self._pause(delay):
                break
        return None

    async def _publish_summaries(self) -> None:
        planner = await self._loaded_planner()
        stamp, published = None, None
        while planner is not None:
            current = model_stamp(planner.model)  # read first: a change while building shows next round
            if current != stamp:
                try:
                    content, payload = await asyncio.to_thread(self._summary, planner)
                    if content != published:
                        kv = await self.bus.cluster_kv()
                        await kv.put(SUMMARY_KEY, await self.bus.pack("cluster-summary", payload))
                        published = content
                    stamp = current
                except (TimeoutError, nats.errors.Error) as exc:  # NATS away: try again next round
                    log.debug("cluster summary not published: %s", exc)
                except Exception:  # an odd object must not stop the diagnoses; say so, retry on change
                    log.warning("cluster summary not built", exc_info=True)
                    stamp = current
            if await self._pause(SUMMARY_INTERVAL_S):
                break

    def _summary(self, planner: Planner) -> tuple[str, bytes]:
        """(what to compare with the last publish: all but generated_at, the value to publish). Blocking."""
        dns = planner.detector.detect().info.cluster_dns
        summary = summary_within(planner.model, planner.source, list(dns), self.bus.nc.max_payload,
                                 notes=planner.notes)
        return summary.model_dump_json(exclude={"generated_at"}), summary.model_dump_json().encode()
