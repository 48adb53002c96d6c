"""The topology stage's output contract: who src and dst are, the Service in between,
the candidate paths, the nodes to collect from and every Kubernetes object the simulator
needs (the simulator never calls the API).

Kubernetes objects travel as plain JSON dicts in API form (camelCase, as `kubectl get -o
json` prints them), trimmed of managedFields and annotations the diagnosis never reads.
"""

from __future__ import annotations

from enum import StrEnum
from ipaddress import ip_network
from typing import Any

from pydantic import BaseModel, Field, IPvAnyAddress, TypeAdapter

from shared.findings import Assumption, Finding
from shared.steps import IPAddress

# Address space a private network numbers its own hosts from (RFC 1918, the shared/CGNAT space clouds use
# inside a VPC, IPv6 ULA): an address there that no object we know owns is someone's unknown host. Other
# non-global space (documentation, benchmarking) is not: a lab uses it to stand in for the Internet.
PRIVATE_USE = tuple(ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                             "fc00::/7"))


def private_use(address: IPAddress) -> bool:
    return any(address.version == net.version and address in net for net in PRIVATE_USE)


TOPOLOGY_VERSION = 1


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
    pod: str | None = Field(None, description="namespace/name when the address is a pod's")
    node: str | None = Field(None, description="node hosting the pod, or the node itself")
    service: str | None = Field(None, description="namespace/name for Service addresses")
    description: str = ""


class ServiceBackend(BaseModel):
    """One endpoint of the Service after port resolution (from EndpointSlices)."""

    address: IPvAnyAddress
    port: int | None = Field(None, description="resolved target port; None when unresolvable")
    pod: str | None = None
    node: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False


class ServiceResolution(BaseModel):
    service: str  # namespace/name
    cluster_ips: list[IPvAnyAddress] = Field(default_factory=list)
    headless: bool = False
    type: str = "ClusterIP"
    port_name: str | None = None
    port: int | None = None  # the Service port that matched (None: SERVICE_PORT_NOT_FOUND)
    node_port: int | None = None
    protocol: str = "TCP"
    target_port: int | str | None = None
    backends: list[ServiceBackend] = Field(default_factory=list)
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    load_balancer_source_ranges: list[str] = Field(default_factory=list)
    load_balancer_ips: list[IPvAnyAddress] = Field(default_factory=list)
    external_ips: list[IPvAnyAddress] = Field(default_factory=list)


class CandidatePath(BaseModel):
    """A path the packet may take according to the Kubernetes model (one per backend)."""

    id: str
    src_node: str | None = None
    dst_node: str | None = None
    dst_address: IPvAnyAddress  # final destination address (backend pod, node, public IP)
    dst_port: int | None = None
    dst_pod: str | None = None
    entry_node: str | None = Field(
        None, description="node whose kube-proxy translates the Service address (NodePort/LB/ClusterIP)"
    )
    backend: ServiceBackend | None = None
    description: str = ""


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
    """Raw Kubernetes objects the simulator needs, in API JSON form."""

    pods: list[dict[str, Any]] = Field(default_factory=list)
    namespaces: list[dict[str, Any]] = Field(default_factory=list)
    nodes: list[dict[str, Any]] = Field(default_factory=list)
    services: list[dict[str, Any]] = Field(default_factory=list)
    endpointslices: list[dict[str, Any]] = Field(default_factory=list)
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
