"""The cloud stage: SUBJECT_COLLECTED → SUBJECT_CLOUD.

Collects the cloud inventory around the nodes on the path (live, through the configured
provider) or reads `<snapshot>/cloud/` (a snapshot without one, with a provider configured,
is completed from the live cloud), stores it in the object store and sets `env.cloud`
to its reference. With the `none` provider the envelope carries an unmodelled inventory
inline plus an explicit assumption. A cloud that cannot be read is a diagnosis problem (an
abort-class finding and an assumption), never an exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from services.cloud.factory import make_provider
from services.cloud.provider import CloudError, CloudProvider
from shared.blobcache import ContentBlobs
from shared.bus import SUBJECT_CLOUD, SUBJECT_COLLECTED, Bus
from shared.cloud import LB_ID_ANNOTATION, CloudInventory, empty_inventory, load_inventory
from shared.codes import finding
from shared.config import Settings
from shared.schemas import Assumption, Finding, StageEnvelope
from shared.stage import Stage
from shared.topology import EndpointKind, TopologyReport

log = logging.getLogger("netdiag.cloud")


class CloudStage(Stage):
    name = "cloud"
    input_subject = SUBJECT_COLLECTED
    output_subject = SUBJECT_CLOUD

    def __init__(self, bus: Bus, settings: Settings, provider: CloudProvider | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self._provider = provider
        self._blobs = ContentBlobs(bus, "cloud")
        # snapshot mode: the cloud/ files' (name, mtime, size) → (inventory, its JSON): every diagnosis
        # of an unchanged snapshot shares one inventory, read and serialised once
        self._snapshot: tuple[tuple[tuple[str, int, int], ...], CloudInventory, bytes] | None = None

    @property
    def provider(self) -> CloudProvider:
        if self._provider is None:
            self._provider = make_provider(self.settings)
        return self._provider

    async def handle(self, env: StageEnvelope) -> StageEnvelope:
        started = time.perf_counter()
        assumptions: list[Assumption] = []
        findings: list[Finding] = []
        snapshot_cloud = self.settings.snapshot / "cloud" if self.settings.snapshot is not None else None
        # a snapshot's own cloud/ wins; without one, a configured provider reads the cloud live
        from_snapshot = snapshot_cloud is not None and (snapshot_cloud.is_dir()
                                                        or self.settings.cloud_provider == "none")
        if from_snapshot:
            assert snapshot_cloud is not None
            inventory = await self._from_snapshot(snapshot_cloud, findings)
        elif self.settings.cloud_provider == "none":
            inventory = empty_inventory("none", "cloud provider is 'none'")
        else:
            inventory = await self._collect(env, findings)
        if not inventory.modelled:
            # provider "none" is the operator saying there is no cloud layer (bare metal, the lab):
            # a statement, not a gap; a cloud we failed to read is a gap
            explicit_none = inventory.provider == "none"
            assumptions.append(Assumption(
                stage=self.name, could_change_outcome=not explicit_none,
                text="; ".join(inventory.statements) + ": security groups, VPC routes, NAT gateway and load "
                     "balancers were not checked"))
        assumptions += [Assumption(stage=self.name, text=s) for s in inventory.statements if inventory.modelled]
        assumptions += [Assumption(stage=self.name, text=f"cloud inventory incomplete: {e}", could_change_outcome=True)
                        for e in inventory.errors]
        if inventory.modelled:
            data = (self._snapshot[2] if from_snapshot and self._snapshot and self._snapshot[1] is inventory
                    else inventory.model_dump_json().encode())
            # a snapshot's inventory is the same for every diagnosis: stored once, by content
            cloud: Any = (await self._blobs.put(data) if from_snapshot
                          else await self.bus.put_blob(f"{env.id}/cloud.json", data))
        else:
            cloud = inventory.model_dump(mode="json")
        await self.bus.progress(env, self.name, "progress",
                                f"cloud inventory: {len(inventory.instances)} instances, "
                                f"{len(inventory.security_groups)} security groups, "
                                f"{len(inventory.load_balancers)} load balancers",
                                ms=round((time.perf_counter() - started) * 1000, 1))
        return env.model_copy(update={
            "cloud": cloud, "assumptions": [*env.assumptions, *assumptions], "findings": [*env.findings, *findings]})

    async def _collect(self, env: StageEnvelope, findings: list[Finding]) -> CloudInventory:
        if env.topology is None:
            return empty_inventory(self.settings.cloud_provider, "no topology to find the nodes on the path")
        topology = env.topology
        nodes, addresses, lb_ids = _targets(topology)
        try:
            return await asyncio.to_thread(self.provider.collect, nodes, addresses, lb_ids)
        except CloudError as exc:
            log.warning("cloud inventory not collected: %s", exc)
            reason = str(exc)
        except Exception as exc:  # a provider's unexpected failure is missing cloud data, never a failed diagnosis
            log.exception("cloud provider %s failed", self.settings.cloud_provider)
            reason = f"the provider failed: {type(exc).__name__}: {exc}"
        return _unreadable(self.settings.cloud_provider, "the cloud inventory", reason, findings)

    async def _from_snapshot(self, directory: Path, findings: list[Finding]) -> CloudInventory:
        """The snapshot's cloud/: a file that is not an inventory degrades like a corrupt node dump does
        (DATA_MISSING, the cloud layer unmodelled and said so), instead of failing every diagnosis."""
        try:
            stamp = _stamp(directory)
            if self._snapshot is not None and self._snapshot[0] == stamp:
                return self._snapshot[1]
            inventory = await asyncio.to_thread(load_inventory, directory)
        except (OSError, ValueError) as exc:  # pydantic's ValidationError and JSON errors are ValueErrors
            text = str(exc)
            return _unreadable("snapshot", f"the cloud inventory in {directory}",
                               text if len(text) < 300 else text[:300] + "…", findings)
        self._snapshot = (stamp, inventory, inventory.model_dump_json().encode())
        return inventory


def _stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What load_inventory reads, as (name, mtime, size) per file: a changed, added or removed file
    changes it."""
    if not directory.is_dir():
        return ()
    stats = ((path.name, path.stat()) for path in sorted(directory.glob("*.json")))
    return tuple((name, st.st_mtime_ns, st.st_size) for name, st in stats)


def _unreadable(provider: str, what: str, reason: str, findings: list[Finding]) -> CloudInventory:
    findings.append(finding("DATA_MISSING", None, what=what, reason=reason))
    return empty_inventory(provider, f"the cloud could not be read: {reason}")


def _targets(topology: TopologyReport) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The Node objects on the path and the load balancers of interest."""
    names = set(topology.nodes_to_collect)
    for path in topology.paths:
        names |= {n for n in (path.src_node, path.dst_node) if n}
    addresses = [str(ip) for ip in topology.service.load_balancer_ips] if topology.service else []
    if topology.dst.kind == EndpointKind.LOAD_BALANCER_IP:
        addresses.append(str(topology.dst.address))
        names |= {n.get("metadata", {}).get("name", "") for n in topology.objects.nodes}  # every node is a backend
    nodes = [n for n in topology.objects.nodes if n.get("metadata", {}).get("name") in names]
    lb_ids = []
    if topology.service is not None:
        namespace, _, name = topology.service.service.partition("/")
        for svc in topology.objects.services:
            meta = svc.get("metadata", {})
            if meta.get("namespace") == namespace and meta.get("name") == name:
                lb_id = (meta.get("annotations") or {}).get(LB_ID_ANNOTATION)
                lb_ids += [lb_id] if lb_id else []
    return nodes, sorted(set(addresses)), lb_ids
