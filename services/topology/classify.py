"""Who an address is: pod, hostNetwork pod, node, Service address, NodePort, public, unknown.

Lookups are index hits on the ClusterModel; the health of what is found (pod phase,
container readiness, node Ready) becomes findings here, so every caller reports it alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_network

from services.topology.model import (
    ClusterModel,
    Obj,
    is_host_network,
    object_key,
    pod_phase,
)
from shared.codes import finding
from shared.hops import external_hop, node_hop, pod_hop
from shared.schemas import Finding, IPAddress
from shared.topology import Endpoint, EndpointKind


@dataclass
class Classification:
    endpoint: Endpoint
    findings: list[Finding] = field(default_factory=list)
    service: Obj | None = None  # the Service the address (and port) belongs to
    ambiguous: list[str] = field(default_factory=list)  # other owners of the same address

    @property
    def kind(self) -> EndpointKind:
        return self.endpoint.kind


def not_ready_containers(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    names = [c.get("name") for c in status.get("containerStatuses") or [] if not c.get("ready")]
    if names:
        return [str(n) for n in names]
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") != "True":
        return [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []] or ["?"]
    return []


def pod_findings(pod: Obj) -> list[Finding]:
    key = object_key(pod)
    phase = pod_phase(pod)
    if phase != "Running":
        reason = (pod.get("status") or {}).get("reason")
        return [finding("POD_NOT_RUNNING", pod_hop(key), pod=key, phase=phase + (f", {reason}" if reason else ""))]
    containers = not_ready_containers(pod)
    if containers:
        return [finding("POD_NOT_READY", pod_hop(key), pod=key, containers=", ".join(containers))]
    return []


def node_ready(node: Obj) -> tuple[bool, str]:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            ok = cond.get("status") == "True"
            return ok, str(cond.get("reason") or cond.get("message") or f"Ready={cond.get('status')}")
    return False, "no Ready condition reported"


def node_findings(node: Obj) -> list[Finding]:
    ok, reason = node_ready(node)
    name = object_key(node)
    return [] if ok else [finding("NODE_NOT_READY", node_hop(name), node=name, reason=reason)]


def _best_pod(pods: list[Obj]) -> Obj:
    """Several pods can carry one IP (a Completed pod keeps its old IP): prefer Running."""
    return next((p for p in pods if pod_phase(p) == "Running"), pods[0])


def pod_endpoint(model: ClusterModel, address: IPAddress, pod: Obj) -> Classification:
    key = object_key(pod)
    node = (pod.get("spec") or {}).get("nodeName")
    services = model.services_of_pod(key)
    desc = f"pod {key}" + (f" on node {node}" if node else "")
    if services:
        desc += f" (endpoint of {', '.join(services)})"
    kind = EndpointKind.HOST_NETWORK_POD if is_host_network(pod) else EndpointKind.POD
    findings = pod_findings(pod)
    node_obj = model.get("Node", node)
    if node_obj is not None:
        findings += node_findings(node_obj)
    return Classification(Endpoint(address=address, kind=kind, pod=key, node=node, description=desc), findings)


def _host_network_pod_on(model: ClusterModel, node: str, port: int | None, protocol: str) -> Obj | None:
    """The hostNetwork pod of `node` that declares `port`: what a node-address dst really hits."""
    if port is None:
        return None
    for key in model.pods_on_node(node):
        pod = model.objects["Pod"].get(key)
        if pod is None or not is_host_network(pod) or pod_phase(pod) != "Running":
            continue
        for container in (pod.get("spec") or {}).get("containers") or []:
            for p in container.get("ports") or []:
                if p.get("containerPort") == port and (p.get("protocol") or "TCP") == protocol:
                    return pod
    return None


def classify(
    model: ClusterModel, address: IPAddress, *, port: int | None = None, protocol: str = "TCP",
    role: str = "dst", service_cidrs: list[str] | None = None,
) -> Classification:
    """Classify `address`; `port`/`protocol` matter for the destination (NodePort, hostNetwork);
    `service_cidrs` (detected) name an address in the Service range that no Service has."""
    with model.lock:
        return _classify(model, address, port, protocol.upper(), role, service_cidrs or [])


def _classify(model: ClusterModel, address: IPAddress, port: int | None, protocol: str, role: str,
              service_cidrs: list[str]) -> Classification:
    if role == "dst":
        how, services = model.services_by_ip(address)
        if services:
            svc = services[0]
            key = object_key(svc)
            kind = {"cluster_ip": EndpointKind.SERVICE_CLUSTER_IP, "external_ip": EndpointKind.SERVICE_EXTERNAL_IP,
                    "lb_ip": EndpointKind.LOAD_BALANCER_IP}[how]
            label = {"cluster_ip": "ClusterIP", "external_ip": "externalIP", "lb_ip": "LoadBalancer ingress IP"}[how]
            return Classification(
                Endpoint(address=address, kind=kind, service=key, description=f"{label} of service {key}"),
                service=svc, ambiguous=[object_key(s) for s in services[1:]],
            )

    pods = model.pods_at(address)
    pod_network = [p for p in pods if not is_host_network(p)]
    running = [p for p in pod_network if pod_phase(p) == "Running"]
    if running:
        found = pod_endpoint(model, address, running[0])
        found.ambiguous = [object_key(p) for p in running[1:]]
        return found

    nodes = model.nodes_at(address)
    if nodes:
        node = nodes[0]
        name = object_key(node)
        findings = node_findings(node)
        if role == "dst" and port is not None:
            node_port_svcs = model.services_with_node_port(port, protocol)
            if node_port_svcs:
                svc = node_port_svcs[0]
                key = object_key(svc)
                return Classification(
                    Endpoint(address=address, kind=EndpointKind.NODE_PORT, node=name, service=key,
                             description=f"NodePort {port}/{protocol} of service {key} on node {name}"),
                    findings, service=svc,
                )
            host_pod = _host_network_pod_on(model, name, port, protocol)
            if host_pod is not None:
                found = pod_endpoint(model, address, host_pod)
                found.endpoint.description += f" (hostNetwork, in node {name}'s network namespace)"
                return found
        return Classification(Endpoint(address=address, kind=EndpointKind.NODE, node=name,
                                       description=f"node {name}"), findings)

    host_network = [p for p in pods if is_host_network(p)]
    if host_network:  # a hostNetwork pod whose IP is not among its node's listed addresses
        return pod_endpoint(model, address, _best_pod(host_network))
    if pod_network:  # only pods that are not running hold this IP
        return pod_endpoint(model, address, _best_pod(pod_network))

    if address.is_global:
        return Classification(Endpoint(address=address, kind=EndpointKind.PUBLIC,
                                       description="public address outside the cluster"))
    return _unowned(model, address, role, service_cidrs)


def _in_cidr(address: IPAddress, cidrs: list[str]) -> str | None:
    for cidr in cidrs:
        try:
            net = ip_network(cidr, strict=False)
        except ValueError:
            continue
        if net.version == address.version and address in net:
            return cidr
    return None


def _unowned(model: ClusterModel, address: IPAddress, role: str, service_cidrs: list[str]) -> Classification:
    """A private address no object holds, said as precisely as the cluster allows: a free address in a
    node's pod CIDR is that node's to route (so the node is collected and the walk follows the packet
    there), an address in the Service CIDR that no Service has answers to nothing."""
    hop = external_hop(address)  # the hop the simulator gives an unknown address
    for node in model.objects["Node"].values():
        spec = node.get("spec") or {}
        cidr = _in_cidr(address, spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
        if cidr is not None:
            name = object_key(node)
            return Classification(
                Endpoint(address=address, kind=EndpointKind.UNKNOWN, node=name,
                         description=f"unknown address in node {name}'s pod CIDR {cidr} (no pod has it)"),
                [finding("UNKNOWN_ADDRESS", hop, address=address,
                         evidence={"pod_cidr": cidr, "node": name})])
    cidr = _in_cidr(address, service_cidrs) if role == "dst" else None
    if cidr is not None:
        return Classification(
            Endpoint(address=address, kind=EndpointKind.UNKNOWN,
                     description=f"unknown address in the Service CIDR {cidr} (no Service has it)"),
            [finding("SERVICE_NOT_FOUND", hop, address=address, cidr=cidr)])
    return Classification(
        Endpoint(address=address, kind=EndpointKind.UNKNOWN,
                 description="private address owned by no pod, node or Service"),
        [finding("UNKNOWN_ADDRESS", hop, address=address)],
    )
