"""Paths from the Kubernetes model alone: what the cluster's intent says happens to the
packet (classification, Service DNAT to each endpoint, NetworkPolicy at the source's egress
and the destination's ingress). This is the whole answer for a snapshot holding only
`kubernetes/`, and the expectation the dataplane walk is compared against otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.simulator.policy import PolicyIndex, deny_findings, policy_step
from shared.hops import external_hop, node_hop, pod_hop, service_hop
from shared.schemas import (
    Assumption,
    DiagnosisRequest,
    FinalState,
    Finding,
    Hop,
    HopKind,
    HopStatus,
    Packet,
    Path,
    Severity,
    Step,
    StepAction,
    StepKind,
)
from shared.steps import NatEndpoint
from shared.topology import CandidatePath, Endpoint, EndpointKind, TopologyReport

STAGE = "simulator"

# Topology findings that stop the packet where they are attached. POD_NOT_READY and
# NODE_NOT_READY do not: a not-ready pod still answers on its IP (readiness only removes it
# from Service endpoints, which topology has already done).
BREAKING = {
    "POD_NOT_RUNNING", "SERVICE_NO_ENDPOINT", "SERVICE_PORT_NOT_FOUND", "TARGET_PORT_NOT_FOUND",
    "NO_LOCAL_ENDPOINT", "LB_SOURCE_RANGE_DENY", "SERVICE_NOT_FOUND",
}
NOT_BREAKING_ERRORS = {"POD_NOT_READY", "NODE_NOT_READY"}


def endpoint_hop(ep: Endpoint, role: str) -> Hop:
    if ep.kind == EndpointKind.POD and ep.pod:
        return Hop(id=pod_hop(ep.pod), kind=HopKind.POD, name=ep.pod, address=ep.address, node=ep.node)
    if ep.kind in (EndpointKind.NODE, EndpointKind.HOST_NETWORK_POD, EndpointKind.NODE_PORT) and ep.node:
        name = f"{ep.node} (hostNetwork pod {ep.pod})" if ep.pod else ep.node
        return Hop(id=node_hop(ep.node), kind=HopKind.NODE, name=name, address=ep.address, node=ep.node)
    kind = HopKind.INTERNET if ep.kind == EndpointKind.PUBLIC else HopKind.EXTERNAL
    return Hop(id=external_hop(ep.address), kind=kind, name=ep.description or f"{role} {ep.address}",
               address=ep.address)


def backend_hop(cp: CandidatePath) -> Hop:
    if cp.dst_pod:
        return Hop(id=pod_hop(cp.dst_pod), kind=HopKind.POD, name=cp.dst_pod, address=cp.dst_address,
                   node=cp.dst_node)
    if cp.dst_node:
        return Hop(id=node_hop(cp.dst_node), kind=HopKind.NODE, name=cp.dst_node, address=cp.dst_address,
                   node=cp.dst_node)
    return Hop(id=external_hop(cp.dst_address), kind=HopKind.EXTERNAL, name=str(cp.dst_address),
               address=cp.dst_address)


def _through_pod_eip(dst: Hop, packet: Packet, cp: CandidatePath, eip: Endpoint) -> Packet:
    """A pod's own EIP (a PodEIP): the cloud translates it 1:1 to the private address it is bound to, which the
    VPC delivers to the pod's node (the cloud layer checks that crossing where it has the inventory)."""
    after = packet.model_copy(update={"dst": cp.dst_address})
    dst.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"{eip.description}: the cloud delivers it to "
                             f"{cp.dst_address}", packet, after, type="DNAT", original=NatEndpoint(address=packet.dst),
                             translated=NatEndpoint(address=cp.dst_address)))
    return after


@dataclass
class ModelResult:
    paths: list[Path] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    assumptions: list[Assumption] = field(default_factory=list)


def _mark(hop: Hop, findings: list[Finding]) -> None:
    """Hop status from the findings attached to it."""
    for f in findings:
        if f.hop != hop.id:
            continue
        if f.severity == Severity.ERROR and f.code not in NOT_BREAKING_ERRORS:
            hop.status = HopStatus.ERROR
        elif hop.status == HopStatus.OK:
            hop.status = HopStatus.WARNING


def _breaking(findings: list[Finding], hop_ids: set[str]) -> Finding | None:
    return next((f for f in findings if f.code in BREAKING and f.severity == Severity.ERROR
                 and f.hop in hop_ids), None)


class ModelSimulator:
    def __init__(self, report: TopologyReport, request: DiagnosisRequest) -> None:
        self.report = report
        self.request = request
        self.policies = PolicyIndex.build(report.objects)
        self.enforced = report.cluster.enforces_network_policy

    def _packet(self) -> Packet:
        r = self.request
        return Packet(src=r.src, dst=r.dst, protocol=r.protocol, dport=r.port)

    def run(self) -> ModelResult:
        out = ModelResult(findings=list(self.report.findings), assumptions=list(self.report.assumptions))
        candidates = self.report.paths
        if not candidates:
            # e.g. a Service with no usable endpoint: the packet dies at the Service hop
            candidates = [CandidatePath(id="p0", src_node=self.report.src.node, dst_address=self.request.dst,
                                        dst_port=self.request.port, description="no endpoint to reach")]
        for cp in candidates:
            out.paths.append(self._path(cp, out))
        if self.request.protocol not in ("tcp", "udp"):
            out.assumptions.append(Assumption(stage=STAGE, text="NetworkPolicy not evaluated for this protocol"))
        return out

    def _path(self, cp: CandidatePath, out: ModelResult) -> Path:
        report, packet = self.report, self._packet()
        src = endpoint_hop(report.src, "source")
        path = Path(id=cp.id, description=cp.description, hops=[src])
        hops = path.hops  # pydantic copied the list: append to the path's own
        src.steps.append(Step.of(StepKind.CLASSIFY, StepAction.INFO,
                                 f"source is {report.src.description or report.src.kind.value}", packet,
                                 endpoint=report.src.kind.value))
        res, backend = report.service, report.backend_of(cp)
        if res is not None:
            svc = Hop(id=service_hop(res.service), kind=HopKind.SERVICE, name=res.service, address=self.request.dst)
            hops.append(svc)
            if backend is not None and backend.port is not None:
                after = packet.model_copy(update={"dst": cp.dst_address, "dport": cp.dst_port})
                svc.steps.append(Step.of(
                    StepKind.NAT, StepAction.REWRITE, f"Service DNAT to endpoint {backend.pod or ''} "
                    f"{cp.dst_address}:{cp.dst_port}", packet, after, type="DNAT",
                    original=NatEndpoint(address=packet.dst, port=packet.dport),
                    translated=NatEndpoint(address=cp.dst_address, port=cp.dst_port), backend_pod=backend.pod))
                packet = after
            else:
                svc.steps.append(Step.of(StepKind.SERVICE, StepAction.DROP, "no usable endpoint for this Service port",
                                         packet, service=res.service))
        if backend is not None or res is None:
            pod_eip = report.dst.kind == EndpointKind.POD_EIP
            dst = backend_hop(cp) if res is not None or pod_eip else endpoint_hop(report.dst, "destination")
            if dst.id != src.id or res is not None:
                hops.append(dst)
            if pod_eip:
                packet = _through_pod_eip(dst, packet, cp, report.dst)
        else:
            dst = None
        # NetworkPolicy sees the packet after kube-proxy's DNAT: a Service packet no endpoint takes is
        # rejected by kube-proxy, never policy-checked against the Service address
        translated = res is None or (backend is not None and backend.port is not None)
        # this path's own policy findings only: another endpoint's egress deny sits on the same
        # source hop id and must not mark this path's source hop failed
        relevant = [*self.report.findings, *(self._policy(packet, src, dst, out) if translated else [])]
        for hop in hops:
            _mark(hop, relevant)
        broken = _breaking(relevant, {h.id for h in hops})
        dropped = next((h for h in hops for s in h.steps if s.action == StepAction.DROP), None)
        if broken or dropped:
            path.final = FinalState.DROP
            path.cause = broken.code if broken else self._cause(dropped, relevant)
            return path
        return self._deliver(path, dst, packet, out)

    def _cause(self, hop: Hop | None, findings: list[Finding]) -> str | None:
        return next((f.code for f in findings if hop and f.hop == hop.id and f.severity == Severity.ERROR), None)

    def _policy(self, packet: Packet, src: Hop, dst: Hop | None, out: ModelResult) -> list[Finding]:
        """Policy steps on this path's hops; returns this path's deny findings (also added to `out`)."""
        if packet.protocol not in ("tcp", "udp") or packet.dport is None:
            return []
        verdict = self.policies.evaluate(packet.src, packet.dst, packet.protocol, packet.dport,
                                         enforced=self.enforced)
        for a in verdict.assumptions:
            if a not in out.assumptions:
                out.assumptions.append(a)
        if verdict.egress.isolated or not verdict.egress.allowed:
            src.steps.append(policy_step(verdict, verdict.egress))
        if dst is not None and (verdict.ingress.isolated or not verdict.ingress.allowed):
            dst.steps.append(policy_step(verdict, verdict.ingress))
        denies = deny_findings(verdict, src.id, dst.id if dst else None)
        out.findings.extend(f for f in denies if f not in out.findings)
        return denies

    def _deliver(self, path: Path, dst: Hop | None, packet: Packet, out: ModelResult) -> Path:
        kind = self.report.dst.kind
        if dst is None:
            path.final = FinalState.ABORT
            return path
        if kind == EndpointKind.UNKNOWN and self.report.service is None:
            dst.status = HopStatus.UNKNOWN
            path.final, path.cause = FinalState.ABORT, "UNKNOWN_ADDRESS"
            return path
        if dst.kind in (HopKind.INTERNET, HopKind.EXTERNAL):
            dst.steps.append(Step.of(StepKind.DELIVERY, StepAction.FORWARD,
                                     "leaves the cluster; the route out (node SNAT, NAT gateway) is "
                                     "checked by the dataplane and cloud layers", packet))
            path.final = FinalState.FORWARD
            return path
        declared = self._declared_port(path, packet)
        dst.steps.append(Step.of(StepKind.DELIVERY, StepAction.DELIVER,
                                 f"delivered to {dst.name} port {packet.dport}/{packet.protocol}" + declared, packet))
        path.final = FinalState.DELIVER
        return path

    def _declared_port(self, path: Path, packet: Packet) -> str:
        pod = next((p for p in self.report.objects.pods if path.hops[-1].kind == HopKind.POD
                    and f"{p['metadata'].get('namespace')}/{p['metadata']['name']}" == path.hops[-1].name), None)
        if pod is None:
            return ""
        ports = [(cp.get("containerPort"), cp.get("protocol", "TCP")) for c in pod.get("spec", {}).get(
            "containers", []) for cp in c.get("ports", []) or []]
        if (packet.dport, packet.protocol.upper()) in ports:
            return " (a declared container port)"
        return " (not a declared container port; declaring is optional, the listener decides)"

