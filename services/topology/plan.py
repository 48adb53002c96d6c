"""The collection plan: classify both ends, resolve the Service, list candidate paths, the
nodes to collect from and the object slice the simulator needs (built from indexes only:
no scan over all pods per diagnosis)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from services.topology.classify import Classification, classify
from services.topology.detect import Detector
from services.topology.event import event_objects
from services.topology.model import KINDS, ClusterModel
from services.topology.podeip import pod_eip_target
from services.topology.services import Resolved, resolve_service
from shared.schemas import Assumption, DiagnosisRequest, Finding, IPAddress
from shared.topology import (
    NODE_ADDRESSES,
    CandidatePath,
    ClusterObjects,
    Endpoint,
    EndpointKind,
    TopologyReport,
    service_path,
)

STAGE = "topology"
# Past this many nodes the every-node address map (ClusterInfo.node_addresses) is most of a report and the same
# for every diagnosis: it travels once through the object store (StageEnvelope.node_addresses) instead.
INLINE_NODE_ADDRESSES = 64
_HOSTED = {EndpointKind.POD, EndpointKind.HOST_NETWORK_POD, EndpointKind.NODE, EndpointKind.NODE_PORT,
           EndpointKind.POD_EIP}
_OBJECT_FIELDS = {
    "Pod": "pods", "Namespace": "namespaces", "Node": "nodes", "Service": "services",
    "NetworkPolicy": "networkpolicies",
}


@dataclass
class Planner:
    """Holds the model and its cached detection; one per source, shared by diagnoses. `notes` say what
    loading the source left out (a snapshot's skipped kinds and unusable objects): every report states them."""

    model: ClusterModel
    source: str
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.detector = Detector(self.model)

    def plan(self, request: DiagnosisRequest) -> TopologyReport:
        report = build_report(self.model, self.detector, request, self.source)
        report.assumptions += [Assumption(stage=STAGE, text=note) for note in self.notes]
        return report


def _unique(items: Iterable[str | None]) -> list[str]:
    return sorted({i for i in items if i})


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str | None, str]] = set()
    out = []
    for f in findings:
        key = (f.code, f.hop, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _paths(src: Endpoint, dst: Endpoint, port: int, resolved: Resolved | None,
           bound_to: IPAddress | None = None) -> list[CandidatePath]:
    """`bound_to`: the private address a pod's EIP serves (the path's destination after the cloud's translation)."""
    if resolved is None:
        return [CandidatePath(id="p0", src_node=src.node, dst_node=dst.node, dst_address=bound_to or dst.address,
                              dst_port=port, dst_pod=dst.pod, description=f"{src.description} → {dst.description}")]
    paths = []
    entry_default = resolved.entry_nodes[0] if len(resolved.entry_nodes) == 1 else None
    index = {id(b): i for i, b in enumerate(resolved.resolution.backends)}  # `used` holds the same objects
    for i, b in enumerate(resolved.used):
        entry = entry_default or (b.node if b.node in resolved.entry_nodes or not resolved.entry_nodes else None)
        paths.append(service_path(f"p{i}", src, resolved.resolution, index[id(b)], entry))
    return paths


def full_objects(model: ClusterModel) -> ClusterObjects:
    """Every object, for a whole-cluster policy matrix."""
    with model.lock:
        return ClusterObjects(**{_OBJECT_FIELDS[k]: list(model.objects[k].values())
                                 for k in KINDS if k in _OBJECT_FIELDS})


def _ambiguity(role: str, found: Classification) -> list[Assumption]:
    if not found.ambiguous:
        return []
    return [Assumption(stage=STAGE, could_change_outcome=True, text=(
        f"{role} address {found.endpoint.address} is claimed by several objects: using "
        f"{found.endpoint.pod or found.endpoint.service}, also {', '.join(found.ambiguous)}"))]


def build_report(model: ClusterModel, detector: Detector, request: DiagnosisRequest, source: str) -> TopologyReport:
    protocol = request.protocol.upper()
    detection = detector.detect()
    with model.lock:
        src = classify(model, request.src, role="src")
        dst = classify(model, request.dst, port=request.port, protocol=protocol, role="dst",
                       service_cidrs=detection.info.service_cidrs)
        bound_to: IPAddress | None = None
        if dst.kind == EndpointKind.PUBLIC and (pod_eip := pod_eip_target(model, request.dst)) is not None:
            dst, bound_to = pod_eip
        resolved: Resolved | None = None
        if dst.service is not None:
            resolved = resolve_service(model, dst.service, src=src.endpoint, dst=dst.endpoint, port=request.port,
                                       protocol=protocol)
            if request.dst in detection.info.cluster_dns:
                dst.endpoint.description += " (cluster DNS)"
        paths = _paths(src.endpoint, dst.endpoint, request.port, resolved, bound_to)
        # an unknown address inside a node's pod CIDR is that node's to route: collect it too
        hosted = [e.node for e in (src.endpoint, dst.endpoint) if e.kind in _HOSTED or e.kind == EndpointKind.UNKNOWN]
        if resolved is not None:
            hosted += [*(b.node for b in resolved.used), *resolved.entry_nodes]
        nodes = _unique(hosted)
        # a cloud load balancer may forward to any node (its backends): the cloud stage maps them all
        lb_nodes = sorted(model.objects["Node"]) if dst.kind == EndpointKind.LOAD_BALANCER_IP else nodes
        objects = event_objects(
            model, sender=src.endpoint.pod, service=resolved.resolution.service if resolved else None,
            receivers=[dst.endpoint.pod, *(b.pod for b in resolved.resolution.backends)] if resolved
            else [dst.endpoint.pod], nodes=lb_nodes)
    findings = src.findings + dst.findings + (resolved.findings if resolved else [])
    assumptions = [*detection.assumptions, *_ambiguity("source", src), *_ambiguity("destination", dst),
                   *(resolved.assumptions if resolved else [])]
    if src.kind == EndpointKind.PUBLIC and dst.kind not in (EndpointKind.LOAD_BALANCER_IP, EndpointKind.NODE_PORT,
                                                             EndpointKind.SERVICE_EXTERNAL_IP, EndpointKind.POD_EIP):
        assumptions.append(Assumption(stage=STAGE, could_change_outcome=True, text=(
            f"source {request.src} is outside the cluster and {dst.endpoint.description} is not exposed through "
            "a LoadBalancer, NodePort or externalIP: reachability depends on routing outside the cluster")))
    return TopologyReport(
        source=source, src=src.endpoint, dst=dst.endpoint, service=resolved.resolution if resolved else None,
        paths=paths, nodes_to_collect=nodes, cluster=detection.info, objects=objects,
        findings=_dedupe(findings), assumptions=assumptions,
    )


_last_detached: tuple[object, bytes] | None = None


def detach_node_addresses(report: TopologyReport) -> tuple[TopologyReport, bytes | None]:
    """The report without its node address map when that is big, and the map as JSON bytes to put in the object
    store (None: it stays inline). The bytes of one detection are encoded once (every diagnosis has them)."""
    global _last_detached
    addresses = report.cluster.node_addresses
    if len(addresses) <= INLINE_NODE_ADDRESSES:
        return report, None
    if _last_detached is None or _last_detached[0] is not addresses:
        _last_detached = (addresses, NODE_ADDRESSES.dump_json(addresses))
    cluster = report.cluster.model_copy(update={"node_addresses": {}})  # the detection's own stays whole
    return report.model_copy(update={"cluster": cluster}), _last_detached[1]
