"""The node-collection contract: `netdiag.node.<node>.collect` request/reply, and its client side.

The node agent (services/collector/agent.py) answers it; the collector stage asks the nodes the
Kubernetes model expects on the path, and the simulator asks on demand for a node the packet really
reaches that was not collected (a stale DNAT, a route to an unexpected node).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, ValidationError

from shared.bus import Bus, node_collect_subject
from shared.schemas import BlobRef, DiagnosisOptions


class CollectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str = Field(min_length=1, max_length=253)
    diagnosis_id: str | None = Field(None, max_length=64)
    pod_ips: dict[IPvAnyAddress, str] = Field(
        default_factory=dict, max_length=100_000, description="pod IP → 'namespace/name', to name pod namespaces")
    deadline: float | None = Field(None, description="epoch seconds after which the requester no longer waits")


class CollectReply(BaseModel):
    node: str
    ok: bool
    blob: BlobRef | None = None
    error: str | None = None
    retryable: bool = Field(False, description="the failure was the bus's (a timeout, a disconnection), not the "
                            "node's: the requester retries rather than report missing data")
    duration_ms: float = 0.0
    namespaces: int = 0
    size: int = Field(0, description="uncompressed JSON bytes")


async def request_dump(bus: Bus, node: str, timeout: float, *, diagnosis_id: str | None = None,
                       pod_ips: dict[str, str] | None = None) -> CollectReply:
    """Ask node's agent for a dump (client side). Raises TimeoutError / NoRespondersError when
    nobody answers in time; an invalid reply becomes a failed CollectReply. The request carries
    the moment this side stops waiting, so the agent skips it if it only gets to it later."""
    await bus.ensure_node_bucket(node)  # where the agent writes: it may not create it itself
    request = CollectRequest(node=node, diagnosis_id=diagnosis_id, pod_ips=pod_ips or {},
                             deadline=time.time() + timeout)
    msg = await bus.nc.request(node_collect_subject(node), request.model_dump_json().encode(), timeout=timeout)
    try:
        return CollectReply.model_validate_json(msg.data)
    except ValidationError as exc:
        return CollectReply(node=node, ok=False, error=f"invalid reply: {exc.errors()[:2]}")


def pod_ips_on(pods: list[dict[str, Any]], nodes: set[str]) -> dict[str, str]:
    """Pod IP → 'namespace/name' for the (non-hostNetwork) pods on `nodes`: names pod namespaces."""
    ips: dict[str, str] = {}
    for pod in pods:
        spec, status, meta = pod.get("spec", {}), pod.get("status", {}), pod.get("metadata", {})
        if spec.get("hostNetwork") or spec.get("nodeName") not in nodes:
            continue
        key = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
        for entry in status.get("podIPs") or [{"ip": status.get("podIP")}]:
            if entry.get("ip"):
                ips[entry["ip"]] = key
    return ips


def collect_timeout_s(options: DiagnosisOptions, default: float) -> float:
    """A diagnosis' deadline for node agents: the request's own when it set one, else the deployment's."""
    return options.collect_timeout_s if "collect_timeout_s" in options.model_fields_set else default
