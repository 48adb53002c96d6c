"""The cluster summary: what the UI's pickers offer (pods, Services, nodes, the cluster DNS).

The topology stage owns the cluster model; it publishes this compact view of it to a
JetStream KV bucket when the model is first loaded (snapshot) or synced (live) and again
when it changes, and the gateway serves it at `GET /api/v1/cluster` without importing the
topology service. Each list is capped (sorted by namespace/name, `truncated` says so) so
the value always fits one NATS message; `counts` keeps the true totals.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from shared.schemas import IPAddress

CLUSTER_BUCKET = "netdiag-cluster"
SUMMARY_KEY = "summary"
MAX_ITEMS = 5_000  # per list (pods, Services, nodes); lowered further if the value would not fit


class PodSummary(BaseModel):
    namespace: str
    name: str
    ips: list[IPAddress] = Field(description="pod IPs (hostNetwork pods: the node's)")
    node: str | None = None
    phase: str = "Unknown"
    ready: bool = False
    host_network: bool = False


class ServicePortSummary(BaseModel):
    name: str | None = None
    port: int
    protocol: str = Field("TCP", description="as in the Service spec: TCP, UDP or SCTP")
    node_port: int | None = None
    target_port: int | str | None = None


class ServiceSummary(BaseModel):
    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: list[IPAddress] = Field(default_factory=list, description="empty for headless/ExternalName")
    external_ips: list[IPAddress] = Field(default_factory=list)
    lb_ips: list[IPAddress] = Field(default_factory=list, description="status.loadBalancer.ingress IPs")
    ports: list[ServicePortSummary] = Field(default_factory=list)


class NodeAddressSummary(BaseModel):
    type: str = Field(description="InternalIP, ExternalIP, ...")
    address: IPAddress


class NodeSummary(BaseModel):
    name: str
    addresses: list[NodeAddressSummary] = Field(default_factory=list)
    ready: bool = False


class SummaryCounts(BaseModel):
    """True totals in the model (pods: those with an IP), whatever the lists hold."""

    pods: int = 0
    services: int = 0
    nodes: int = 0


class ClusterSummary(BaseModel):
    source: str = Field(description='"live:<API server>" or "snapshot:<dir>"')
    generated_at: datetime
    dns: list[IPAddress] = Field(default_factory=list, description="ClusterIP(s) of the cluster DNS Service")
    pods: list[PodSummary] = Field(default_factory=list, description="pods that have an IP")
    services: list[ServiceSummary] = Field(default_factory=list)
    nodes: list[NodeSummary] = Field(default_factory=list)
    counts: SummaryCounts = Field(default_factory=SummaryCounts)
    truncated: bool = Field(False, description="a list was cut at the cap: counts has the totals")
    notes: list[str] = Field(default_factory=list, description="what loading the source left out: a snapshot's "
                             "skipped kinds (counted) and unusable objects")
