"""Service resolution: port → targetPort → the EndpointSlice endpoints kube-proxy would use.

Follows kube-proxy's semantics: endpoints are ready/serving/terminating per their slice
conditions; when no ready endpoint exists, serving-and-terminating ones are used
(ProxyTerminatingEndpoints); externalTrafficPolicy Local narrows external traffic to the
entry node's endpoints, internalTrafficPolicy Local narrows in-cluster ClusterIP traffic
to the source node's; pods and node-local sources short-circuit to the Cluster policy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from services.topology.classify import node_findings, pod_findings
from services.topology.model import (
    ClusterModel,
    Obj,
    object_key,
    parse_ip,
    service_cluster_ips,
    service_external_ips,
    service_lb_ips,
)
from shared.codes import finding
from shared.hops import service_hop
from shared.schemas import Assumption, Finding, IPAddress
from shared.topology import Endpoint, EndpointKind, ServiceBackend, ServiceResolution

STAGE = "topology"
_EXTERNAL_KINDS = {EndpointKind.PUBLIC, EndpointKind.UNKNOWN}
_IN_CLUSTER_KINDS = {EndpointKind.POD, EndpointKind.HOST_NETWORK_POD, EndpointKind.NODE}
_MAX_POD_FINDINGS = 5


@dataclass
class Resolved:
    resolution: ServiceResolution
    used: list[ServiceBackend] = field(default_factory=list)  # the endpoints this packet may reach
    entry_nodes: list[str] = field(default_factory=list)  # where kube-proxy translates the packet
    findings: list[Finding] = field(default_factory=list)
    assumptions: list[Assumption] = field(default_factory=list)


def _match_port(svc: Obj, dst: Endpoint, port: int, protocol: str) -> Obj | None:
    for sp in (svc.get("spec") or {}).get("ports") or []:
        if (sp.get("protocol") or "TCP") != protocol:
            continue
        wanted = sp.get("nodePort") if dst.kind == EndpointKind.NODE_PORT else sp.get("port")
        if wanted == port:
            return sp
    return None


def _container_port(pod: Obj | None, target: str, protocol: str) -> int | None:
    for container in ((pod or {}).get("spec") or {}).get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == target and (p.get("protocol") or "TCP") == protocol:
                return int(p["containerPort"])
    return None


def _slice_port(slice_obj: Obj, name: str, protocol: str) -> int | None:
    for p in slice_obj.get("ports") or []:
        if (p.get("name") or "") == name and (p.get("protocol") or "TCP") == protocol and p.get("port"):
            return int(p["port"])
    return None


def _backends(
    model: ClusterModel, svc: Obj, sp: Obj, family: int, protocol: str, out: Resolved
) -> list[ServiceBackend]:
    key = object_key(svc)
    target = sp.get("targetPort") or sp.get("port")
    backends: dict[IPAddress, ServiceBackend] = {}
    for slice_obj in model.slices_of(key):
        if slice_obj.get("addressType") not in (None, f"IPv{family}"):
            continue
        slice_port = _slice_port(slice_obj, sp.get("name") or "", protocol)
        for ep in slice_obj.get("endpoints") or []:
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False  # nil means ready (API semantics)
            ref = ep.get("targetRef") or {}
            pod_key = (f"{ref.get('namespace') or svc['metadata'].get('namespace')}/{ref['name']}"
                       if ref.get("kind") == "Pod" and ref.get("name") else None)
            pod = model.get("Pod", pod_key)
            port = slice_port
            if port is None:
                port = target if isinstance(target, int) else _container_port(pod, str(target), protocol)
                if port is None and pod is not None:
                    out.findings.append(finding("TARGET_PORT_NOT_FOUND", service_hop(key), service=key,
                                                target_port=target, pod=pod_key))
            for raw in ep.get("addresses") or []:
                address = parse_ip(raw)
                if address is None or address in backends:
                    continue
                node = ep.get("nodeName") or ((pod or {}).get("spec") or {}).get("nodeName")
                # every field is typed here already (a parsed address, ints, bools): validating them again was
                # most of resolving a Service's backends
                backends[address] = ServiceBackend.model_construct(
                    address=address, port=port, pod=pod_key, node=node if isinstance(node, str) else None,
                    ready=ready, serving=cond.get("serving", ready) is not False,
                    terminating=bool(cond.get("terminating")),
                )
    return [backends[a] for a in sorted(backends, key=lambda a: (a.version, a))]


def _usable(backends: list[ServiceBackend]) -> tuple[list[ServiceBackend], bool]:
    """kube-proxy's choice: ready endpoints, else serving-and-terminating ones (fallback=True)."""
    ready = [b for b in backends if b.ready]
    if ready:
        return ready, False
    return [b for b in backends if b.serving and b.terminating], True


def _is_external(src: Endpoint, dst: Endpoint) -> bool:
    """Whether kube-proxy applies externalTrafficPolicy to this packet."""
    if dst.kind in (EndpointKind.SERVICE_CLUSTER_IP,):
        return False
    if src.kind in _EXTERNAL_KINDS:
        return True
    if dst.kind == EndpointKind.NODE_PORT:
        # pods short-circuit (cluster-CIDR local detector); the node itself is a LOCAL source
        return src.kind != EndpointKind.POD and src.node != dst.node
    return False  # LB IP / externalIP from inside the cluster is intercepted on the source node


def resolve_service(
    model: ClusterModel, svc: Obj, *, src: Endpoint, dst: Endpoint, port: int, protocol: str
) -> Resolved:
    protocol = protocol.upper()
    with model.lock:
        return _resolve(model, svc, src, dst, port, protocol)


def _resolve(model: ClusterModel, svc: Obj, src: Endpoint, dst: Endpoint, port: int, protocol: str) -> Resolved:
    key = object_key(svc)
    namespace, name = key.split("/", 1)
    spec = svc.get("spec") or {}
    resolution = ServiceResolution(
        service=key, cluster_ips=service_cluster_ips(svc), headless=spec.get("clusterIP") == "None",
        type=spec.get("type") or "ClusterIP", protocol=protocol,
        external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
        internal_traffic_policy=spec.get("internalTrafficPolicy") or "Cluster",
        session_affinity=spec.get("sessionAffinity") or "None",
        load_balancer_source_ranges=list(spec.get("loadBalancerSourceRanges") or []),
        load_balancer_ips=service_lb_ips(svc), external_ips=service_external_ips(svc),
    )
    out = Resolved(resolution)
    hop = service_hop(key)
    sp = _match_port(svc, dst, port, protocol)
    if sp is None:
        ports = ", ".join(f"{p.get('port')}/{p.get('protocol') or 'TCP'}"
                          + (f" (nodePort {p['nodePort']})" if p.get("nodePort") else "")
                          for p in spec.get("ports") or []) or "none"
        out.findings.append(finding("SERVICE_PORT_NOT_FOUND", hop, service=key, port=port, protocol=protocol,
                                    ports=ports))
        return out
    resolution.port_name = sp.get("name")
    resolution.port = sp.get("port")
    resolution.node_port = sp.get("nodePort")
    resolution.target_port = sp.get("targetPort") or sp.get("port")

    if resolution.type == "ExternalName":
        out.assumptions.append(Assumption(stage=STAGE, could_change_outcome=True, text=(
            f"service {key} is ExternalName ({spec.get('externalName')}): resolved by DNS, not by kube-proxy")))
        return out

    _check_source_ranges(src, dst, resolution, out)
    backends = _backends(model, svc, sp, dst.address.version, protocol, out)
    resolution.backends = backends
    external = _is_external(src, dst)
    out.entry_nodes = _entry_nodes(model, src, dst, external)

    policy_local = None
    if external and resolution.external_traffic_policy == "Local":
        policy_local = "externalTrafficPolicy"
    elif not external and dst.kind == EndpointKind.SERVICE_CLUSTER_IP and resolution.internal_traffic_policy == "Local":
        policy_local = "internalTrafficPolicy"

    cluster_usable, _ = _usable(backends)
    if policy_local and out.entry_nodes:
        local = [b for b in backends if b.node in out.entry_nodes]
        used, fallback = _usable(local)
        if not used:
            for node in out.entry_nodes:
                out.findings.append(finding("NO_LOCAL_ENDPOINT", hop, service=key, node=node, policy=policy_local))
    elif policy_local:  # external LB traffic with ETP Local: the LB sends only to nodes with endpoints
        used, fallback = _usable(backends)
        out.entry_nodes = sorted({b.node for b in used if b.node})
    else:
        used, fallback = _usable(backends)
    out.used = used

    if not cluster_usable:
        not_ready = [b for b in backends if not b.ready]
        detail = " (no EndpointSlices)" if not model.slices_of(key) else (
            f" ({len(backends)} endpoints, {len(not_ready)} not ready)" if backends else " (EndpointSlices are empty)")
        out.findings.append(finding("SERVICE_NO_ENDPOINT", hop, service=key, namespace=namespace, name=name,
                                    detail=detail))
        for b in not_ready[:_MAX_POD_FINDINGS]:
            pod = model.get("Pod", b.pod)
            if pod is not None:
                out.findings.extend(pod_findings(pod))
    if fallback and used:
        out.assumptions.append(Assumption(stage=STAGE, text=(
            f"service {key} has no ready endpoint; kube-proxy falls back to {len(used)} serving terminating "
            "endpoint(s)"), could_change_outcome=True))
    _check_backends(model, used, out)
    if external and resolution.external_traffic_policy == "Cluster" and dst.kind == EndpointKind.LOAD_BALANCER_IP:
        out.assumptions.append(Assumption(stage=STAGE, text=(
            f"the load balancer of {key} may deliver to any node (externalTrafficPolicy Cluster); the "
            "nodes hosting endpoints are modelled as entry nodes"), could_change_outcome=False))
    return out


def _entry_nodes(model: ClusterModel, src: Endpoint, dst: Endpoint, external: bool) -> list[str]:
    if dst.kind == EndpointKind.NODE_PORT:
        return [dst.node] if dst.node else []
    if not external:
        return [src.node] if src.node else []
    if dst.kind == EndpointKind.SERVICE_EXTERNAL_IP:
        return sorted({str(n["metadata"]["name"]) for n in model.nodes_at(dst.address)})
    return []  # external traffic to an LB IP: decided from the endpoints' nodes


def _check_source_ranges(src: Endpoint, dst: Endpoint, resolution: ServiceResolution, out: Resolved) -> None:
    if dst.kind != EndpointKind.LOAD_BALANCER_IP or not resolution.load_balancer_source_ranges:
        return
    if src.kind == EndpointKind.NODE:
        return  # kube-proxy admits the nodes' own traffic to the LB IP
    nets = []
    for r in resolution.load_balancer_source_ranges:
        try:
            nets.append(ipaddress.ip_network(r.strip(), strict=False))
        except ValueError:
            out.assumptions.append(Assumption(stage=STAGE, text=f"loadBalancerSourceRanges entry {r!r} is invalid"))
    if not any(src.address in n for n in nets if n.version == src.address.version):
        out.findings.append(finding("LB_SOURCE_RANGE_DENY", service_hop(resolution.service), src=src.address,
                                    ranges=", ".join(resolution.load_balancer_source_ranges),
                                    service=resolution.service))


def _check_backends(model: ClusterModel, used: list[ServiceBackend], out: Resolved) -> None:
    """Endpoints the packet may reach are checked like a dst pod (DNS pods included)."""
    reported: set[str] = set()
    for b in used:
        pod = model.get("Pod", b.pod)
        # a terminating endpoint is used only as kube-proxy's fallback (stated as an assumption)
        if pod is not None and not b.terminating and len(reported) < _MAX_POD_FINDINGS:
            for f in pod_findings(pod):
                if f.hop not in reported:
                    reported.add(str(f.hop))
                    out.findings.append(f)
        node = model.get("Node", b.node)
        if node is not None:
            for f in node_findings(node):
                if f.hop not in reported:
                    reported.add(str(f.hop))
                    out.findings.append(f)
