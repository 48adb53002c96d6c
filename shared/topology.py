"""The topology stage's output contract: who src and dst are, the Service in between,
the candidate paths, the nodes to collect from and every Kubernetes object the simulator
needs (the simulator never calls the API).

Kubernetes objects travel as plain JSON dicts in API form (camelCase, as `kubectl get -o
json` prints them), each in its event form: only the fields a later stage reads
(docs/topology.md says which).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from ipaddress import ip_network
from typing import Any, cast

from pydantic import (
    BaseModel,
    Field,
    IPvAnyAddress,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    field_serializer,
    model_validator,
)

from shared.findings import Assumption, Finding
from shared.steps import IPAddress

# Address space a private network numbers its own hosts from (RFC 1918, the shared/CGNAT space clouds use
# inside a VPC, IPv6 ULA): an address there that no object we know owns is someone's unknown host. Other
# non-global space (documentation, benchmarking) is not: a lab uses it to stand in for the Internet.
PRIVATE_USE = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                             "fc00::/7"))


def private_use(address: IPAddress) -> bool:
    return any(address.version == net.version and address in net for net in PRIVATE_USE)


TOPOLOGY_VERSION = 2  # 2: objects in event form, a path names its backend by index, no EndpointSlices


def isolated_directions(spec: Mapping[str, Any]) -> frozenset[str]:
    """The directions ("Ingress", "Egress") a NetworkPolicy spec isolates the pods it selects for, with the API
    server's defaulting of an absent policyTypes: Ingress always, Egress only when egress rules exist. The
    topology stage carries a policy by it, the simulator evaluates by it. TypeError: not a list (the API
    server would have rejected the policy)."""
    types = spec.get("policyTypes")
    if types is None:
        return frozenset({"Ingress", *(["Egress"] if spec.get("egress") else [])})
    if not isinstance(types, list | tuple):
        raise TypeError(f"policyTypes must be a list, not {types!r}")
    return frozenset(t for t in ("Ingress", "Egress") if t in types)


def _unless(default: Any, **kwargs: Any) -> Any:
    """A field the JSON leaves out while it holds its default (validation puts it back): most endpoints are
    ready, most of a resolution's options unset, and a Service's endpoints fill most of an event."""
    return Field(default, exclude_if=lambda value: value == default, **kwargs)


def _unless_empty(**kwargs: Any) -> Any:
    return Field(default_factory=list, exclude_if=lambda value: not value, **kwargs)


class EndpointKind(StrEnum):
    POD = "pod"
    HOST_NETWORK_POD = "host_network_pod"
    NODE = "node"
    SERVICE_CLUSTER_IP = "service_cluster_ip"
    SERVICE_EXTERNAL_IP = "service_external_ip"
    LOAD_BALANCER_IP = "load_balancer_ip"
    NODE_PORT = "node_port"  # destination only: a node address + a Service's nodePort
    POD_EIP = "pod_eip"  # destination only: a pod's own EIP (a PodEIP); the cloud translates it to the pod address
    PUBLIC = "public"  # internet address, nobody in the cluster owns it
    UNKNOWN = "unknown"  # private address nobody owns


class Endpoint(BaseModel):
    address: IPvAnyAddress
    kind: EndpointKind
    pod: str | None = _unless(None, description="namespace/name when the address is a pod's")
    node: str | None = _unless(None, description="node hosting the pod, or the node itself")
    service: str | None = _unless(None, description="namespace/name for Service addresses")
    description: str = ""


class ServiceBackend(BaseModel):
    """One endpoint of the Service after port resolution (from EndpointSlices)."""

    address: IPvAnyAddress
    port: int | None = Field(None, description="resolved target port; None when unresolvable")
    pod: str | None = _unless(None)
    node: str | None = _unless(None)
    ready: bool = _unless(True)
    serving: bool = _unless(True)
    terminating: bool = _unless(False)


class ServiceResolution(BaseModel):
    service: str  # namespace/name
    cluster_ips: list[IPvAnyAddress] = Field(default_factory=list)
    headless: bool = _unless(False)
    type: str = "ClusterIP"
    port_name: str | None = None
    port: int | None = None  # the Service port that matched (None: SERVICE_PORT_NOT_FOUND)
    node_port: int | None = _unless(None)
    protocol: str = "TCP"
    target_port: int | str | None = None
    backends: list[ServiceBackend] = Field(default_factory=list)
    external_traffic_policy: str = _unless("Cluster")
    internal_traffic_policy: str = _unless("Cluster")
    session_affinity: str = _unless("None")
    load_balancer_source_ranges: list[str] = _unless_empty()
    load_balancer_ips: list[IPvAnyAddress] = _unless_empty()
    external_ips: list[IPvAnyAddress] = _unless_empty()


class CandidatePath(BaseModel):
    """A path the packet may take according to the Kubernetes model (one per backend)."""

    id: str
    src_node: str | None = _unless(None)
    dst_node: str | None = _unless(None)
    dst_address: IPvAnyAddress  # final destination address (backend pod, node, public IP)
    dst_port: int | None = None
    dst_pod: str | None = _unless(None)
    entry_node: str | None = _unless(
        None, description="node whose kube-proxy translates the Service address (NodePort/LB/ClusterIP)"
    )
    backend: int | None = _unless(None, description="the Service endpoint this path takes, as its index in "
                                "TopologyReport.service.backends (None: not through a Service endpoint)")
    description: str = ""


class _ServicePathRef(BaseModel):
    """How a path that service_path() derives travels (TopologyReport's JSON)."""

    id: str
    entry_node: str | None = None
    backend: int

    def path(self, src: Endpoint, service: ServiceResolution) -> CandidatePath:
        return service_path(self.id, src, service, self.backend, self.entry_node)


def _compact(path: Any) -> bool:
    return isinstance(path, dict) and "dst_address" not in path


def service_path(path_id: str, src: Endpoint, service: ServiceResolution, backend: int,
                 entry_node: str | None) -> CandidatePath:
    """The path from `src` through `service` to its endpoint #`backend`: the endpoint is its destination."""
    if not 0 <= backend < len(service.backends):
        raise ValueError(f"path {path_id} names endpoint #{backend}; {service.service} has {len(service.backends)}")
    b = service.backends[backend]
    # built from validated values: nothing to validate again (a report's serialiser compares every such path)
    return CandidatePath.model_construct(
        id=path_id, src_node=src.node, dst_node=b.node, dst_address=b.address, dst_port=b.port, dst_pod=b.pod,
        entry_node=entry_node, backend=backend,
        description=f"{src.description} → {service.service} → {b.pod or b.address}:{b.port}")


class ClusterInfo(BaseModel):
    cni: str = Field("unknown", description="flannel-host-gw, flannel-vxlan, calico, terway, cilium, unknown")
    enforces_network_policy: bool | None = Field(
        None, description="None = unknown (assume enforced, stated as an assumption)"
    )
    cni_mode: str | None = Field(None, description="the plug-in's own mode when its configuration was read: "
                                 "terway eniip-veth / eniip-ipvlan / eniip-datapathv2 / eni, calico bgp / ipip / "
                                 "vxlan")
    cni_config: dict[str, Any] = Field(default_factory=dict, description=(
        "what detection read from the plug-in's configuration: Terway's eni-config (vswitches, security_groups), "
        "Calico's IPPools (cidr, encapsulation, natOutgoing), felix's effective settings (FelixConfiguration, env)"))
    kube_proxy_mode: str = Field("unknown", description="iptables, ipvs, nftables, unknown")
    pod_cidrs: list[str] = Field(default_factory=list, description="the pod network: the union of the nodes' "
                                 "podCIDRs as the fewest CIDRs (each node's own is on its Node object)")
    service_cidrs: list[str] = Field(default_factory=list)
    cluster_dns: list[IPvAnyAddress] = Field(default_factory=list)
    node_addresses: dict[str, list[IPvAnyAddress]] = Field(
        default_factory=dict, description="every Node's InternalIP/ExternalIP addresses, also of nodes off the "
        "expected path: a route may go through one, and the walk must know it is a node it has no dump of")


# ClusterInfo.node_addresses on its own: a big cluster's travels through the object store
# (StageEnvelope.node_addresses) and the simulator puts it back
NODE_ADDRESSES: TypeAdapter[dict[str, list[IPvAnyAddress]]] = TypeAdapter(dict[str, list[IPvAnyAddress]])


class ClusterObjects(BaseModel):
    """The Kubernetes objects the simulator needs, in API JSON form, each in its event form (the fields a
    later stage reads). The Service's EndpointSlices are not among them: `TopologyReport.service` carries
    their endpoints for the matched port (address, pod, node, conditions)."""

    pods: list[dict[str, Any]] = Field(default_factory=list)
    namespaces: list[dict[str, Any]] = Field(default_factory=list)
    nodes: list[dict[str, Any]] = Field(default_factory=list)
    services: list[dict[str, Any]] = Field(default_factory=list)
    networkpolicies: list[dict[str, Any]] = Field(default_factory=list)


class TopologyReport(BaseModel):
    version: int = TOPOLOGY_VERSION
    source: str = Field(description="'live:<API server>' or 'snapshot:<dir>'")
    src: Endpoint
    dst: Endpoint
    service: ServiceResolution | None = None
    paths: list[CandidatePath] = Field(default_factory=list)
    nodes_to_collect: list[str] = Field(default_factory=list)
    cluster: ClusterInfo = Field(default_factory=ClusterInfo)
    objects: ClusterObjects = Field(default_factory=ClusterObjects)
    findings: list[Finding] = Field(default_factory=list)
    assumptions: list[Assumption] = Field(default_factory=list)

    # A path to a Service endpoint that says no more than service_path() derives travels as its id, entry node
    # and endpoint index (fifteen endpoints would otherwise carry every one of them three times); validation
    # derives the rest again. Any other path travels whole.

    @field_serializer("paths", mode="wrap")
    def _compact_paths(self, paths: list[CandidatePath], handler: SerializerFunctionWrapHandler) -> Any:
        service = self.service
        derived = [service is not None and p.backend is not None
                   and p == service_path(p.id, self.src, service, p.backend, p.entry_node) for p in paths]
        whole = iter(handler([p for p, d in zip(paths, derived, strict=True) if not d]))
        return [{"id": p.id, "backend": p.backend, **({"entry_node": p.entry_node} if p.entry_node else {})}
                if d else next(whole) for p, d in zip(paths, derived, strict=True)]

    @model_validator(mode="wrap")
    @classmethod
    def _derive_paths(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> TopologyReport:
        paths = data.get("paths") if isinstance(data, dict) else None
        if not isinstance(paths, list) or not any(_compact(p) for p in paths):
            return cast(TopologyReport, handler(data))
        report = cast(TopologyReport, handler({**data, "paths": []}))
        if report.service is None:
            raise ValueError("a path names a Service endpoint but the report has no Service")
        report.paths = [_ServicePathRef.model_validate(p).path(report.src, report.service) if _compact(p)
                        else CandidatePath.model_validate(p) for p in paths]
        report._check_backends()
        return report

    @model_validator(mode="after")
    def _backends_exist(self) -> TopologyReport:
        self._check_backends()
        return self

    def _check_backends(self) -> None:
        count = len(self.service.backends) if self.service is not None else 0
        for path in self.paths:
            if path.backend is not None and not 0 <= path.backend < count:
                raise ValueError(f"path {path.id} names backend #{path.backend}; the Service has {count}")

    def backend_of(self, path: CandidatePath) -> ServiceBackend | None:
        """The Service endpoint `path` takes (None: the path does not go through one)."""
        return None if path.backend is None or self.service is None else self.service.backends[path.backend]
