"""Cloud hops in a path: where a packet crosses the cloud, what the cloud does to it.

A path crosses the cloud in three places, each evaluated by the cloud engine against the
collected inventory:
* between two nodes (src node != dst node): egress security groups, the VPC route,
  ingress security groups — on the *outer* packet when the CNI tunnels (flannel vxlan,
  calico ipip, cilium vxlan), on the pod packet itself when it routes (host-gw, terway);
  then the reply's VPC route back (security groups are stateful, routes are not): a reply
  the VPC cannot route ends the forward path at the hop `vpc:<id>:reply`, appended to it,
  and is spliced into the walk's reply paths where they cross;
* out of the cluster to a public address: security groups, then an EIP or the NAT
  gateway's SNAT;
* in from outside to the public address of an instance (an EIP, a static public IP): the gateway route
  table of an activated IPv4 gateway, the network ACL and the security groups, then the reply's way out;
* in from outside to a LoadBalancer address: the CLB (status, listener, ACL, backends); then,
  per node the CLB forwards to, the leg from that entry node to the endpoint, which crosses
  the VPC again when the endpoint is on another node (a path per entry node: endpoints on
  different nodes that disagree make the verdict AMBIGUOUS, each path with its own end);
* every other change of node along a path (node-1 → node-2 → node-1 crosses twice, a VPC hop
  each time, `vpc:<id>` then `vpc:<id>#2`).

    paths, findings, assumptions = apply_cloud(paths, report, inventory, request)

The cloud hops are inserted where the packet meets the underlay; a cloud drop ends the
path there (DROP, cause = the cloud finding), a cloud that cannot decide ends it in ABORT.
An unmodelled cloud (provider `none`, no inventory) changes nothing: the cloud stage has
already stated it as an assumption.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Any, NamedTuple

from services.simulator.cloudeval.evaluate import (
    VXLAN_PORT,
    Encapsulation,
    evaluate_internet_to_lb,
    evaluate_node_to_node,
)
from services.simulator.cloudeval.from_internet import evaluate_internet_to_instance
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.ipv4gw import public_owner
from services.simulator.cloudeval.result import CloudResult
from services.simulator.cloudeval.to_internet import evaluate_to_internet
from shared.cloud import CloudInventory
from shared.hops import node_hop
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
from shared.topology import CandidatePath, EndpointKind, TopologyReport

STAGE = "simulator"
OUTSIDE = (EndpointKind.PUBLIC, EndpointKind.UNKNOWN)  # a source no cluster object owns
# What crosses the underlay between nodes for a pod-to-pod packet, by CNI (topology's names).
TUNNELS: dict[str, tuple[Encapsulation, str | None]] = {
    "flannel-vxlan": ("vxlan", None),
    "flannel-host-gw": (None, None),
    "terway": (None, None),
    "calico": ("ipip", "calico assumed in its default IPIP mode (not vxlan or unencapsulated BGP): the cloud "
                       "checked the ipip outer packet"),
    "cilium": ("vxlan", "cilium assumed in its default vxlan tunnel mode (port 8472): the cloud checked the "
                        "outer packet"),
}
NO_MASQUERADE = {"terway"}  # pod addresses are VPC addresses (ENI IPs): no node SNAT on the way out


class CloudOutcome(NamedTuple):
    paths: list[Path]
    findings: list[Finding]
    assumptions: list[Assumption]


def apply_cloud(paths: list[Path], report: TopologyReport, inventory: CloudInventory | None,
                request: DiagnosisRequest) -> CloudOutcome:
    """Insert the cloud hops into every forward path that crosses the cloud (see the module doc)."""
    findings: list[Finding] = []
    assumptions: list[Assumption] = []
    if inventory is None or not inventory.modelled:
        return CloudOutcome(paths, findings, assumptions)
    index = CloudIndex(inventory)
    candidates = {cp.id: cp for cp in report.paths}
    lb: CloudResult | None = None
    if report.dst.kind == EndpointKind.LOAD_BALANCER_IP and report.src.kind in OUTSIDE:
        # the CLB is the first thing an outside client meets; one evaluation serves every path
        lb = evaluate_internet_to_lb(index, report.service, _request_packet(request),
                                     service_object=_service_object(report))
    inbound: CloudResult | None = None
    if lb is None and report.src.kind in OUTSIDE and public_owner(index, request.dst) is not None:
        # the public address (EIP, static public IP) of an instance: the VPC's way in decides first
        inbound = evaluate_internet_to_instance(index, _request_packet(request))
        undeclared = _undeclared_pod_eip(report, index, request)
        if undeclared is not None:
            assumptions.append(undeclared)
    out: list[Path] = []
    replies: dict[str, tuple[str, CloudResult]] = {}  # forward path id → (its source node, reply crossing)
    for original in paths:
        path = original.model_copy(deep=True)
        if path.direction != "forward":
            out.append(path)
            continue
        cp = candidates.get(path.id)
        ctx = _Context(report, index, request, findings, assumptions)
        if inbound is not None:
            _from_internet(path, inbound, ctx)
        variants = _through_lb(path, cp, lb, ctx) if lb is not None else [path]
        for variant in variants:
            crossed = _cross(variant, cp, ctx, lb is not None)
            if crossed is not None:
                replies[variant.id] = crossed
        out.extend(variants)
    for path in out:
        forward_id = path.id.rpartition(".reply")[0]
        if path.direction == "reply" and forward_id in replies:
            src_node, result = replies[forward_id]
            at = next((i for i, h in enumerate(path.hops) if i > 0 and h.node == src_node), None)
            if at is not None and path.final != FinalState.ABORT and not _dropped_before(path, at):
                _splice(path, at, copy.deepcopy(result))
    return CloudOutcome(out, findings, assumptions)


@dataclass(frozen=True, slots=True)  # not a NamedTuple: its `index` field would shadow tuple.index
class _Context:
    report: TopologyReport
    index: CloudIndex
    request: DiagnosisRequest
    findings: list[Finding]
    assumptions: list[Assumption]

    def record(self, result: CloudResult) -> None:
        _extend(self.findings, result.findings)
        _extend(self.assumptions, result.assumptions)


def _through_lb(path: Path, cp: CandidatePath | None, lb: CloudResult, ctx: _Context) -> list[Path]:
    """An outside client's path through the CLB: the CLB hop first; then, for each node the CLB
    forwards to (its serving ECS backends, NodePort), a path from that entry node to this path's
    endpoint. An entry node other than the endpoint's crosses the VPC again (kube-proxy DNATs to the
    endpoint and masquerades the client to the node address, externalTrafficPolicy Cluster; with
    Local a node only serves its own endpoints)."""
    if path.final == FinalState.ABORT or not path.hops or _dropped_before(path, 1):
        return [path]
    if not lb.passed:
        _splice(path, 1, copy.deepcopy(lb))
        ctx.record(lb)
        return [path]
    ctx.record(lb)
    endpoint_node = cp.dst_node if cp else None
    entries = sorted({t.node for t in lb.backends if t.type == "ecs" and t.node})
    local = ctx.report.service is not None and ctx.report.service.external_traffic_policy == "Local"
    if not entries or endpoint_node is None or local:
        # externalTrafficPolicy Local: a node serves only its own endpoints, no leg to another node
        if local and entries and endpoint_node not in entries:
            ctx.assumptions.append(_assume(f"externalTrafficPolicy Local and the load balancer forwards to "
                                           f"{', '.join(entries)}, not to {endpoint_node}: this endpoint receives "
                                           "no traffic through it", True))
        _splice(path, 1, copy.deepcopy(lb))
        return [path]
    variants = []
    for entry in entries:
        variant = path.model_copy(deep=True)
        _splice(variant, 1, copy.deepcopy(lb))
        if entry != endpoint_node:
            variant.id = f"{path.id}@{entry}"
            variant.description = f"{path.description or path.id} via entry node {entry}".strip()
            at = next((i for i, h in enumerate(variant.hops) if h.node == endpoint_node), len(variant.hops))
            variant.hops.insert(at, _entry_hop(ctx, entry, _packet_at(variant, at, ctx.request)))
        variants.append(variant)
    return variants


def _from_internet(path: Path, inbound: CloudResult, ctx: _Context) -> None:
    """An internet client's path to an instance's public address: the VPC hop (gateway route table, network
    ACL, security groups) right after the client; a delivered request's reply must leave the VPC again (the
    network ACL is stateless; with an activated IPv4 gateway only a route to it reaches the internet)."""
    if path.final == FinalState.ABORT or not path.hops or _dropped_before(path, 1):
        return
    ctx.record(inbound)
    _splice(path, 1, copy.deepcopy(inbound))
    if not inbound.passed or path.final != FinalState.DELIVER or not ctx.request.options.check_reply:
        return
    reply = evaluate_internet_to_instance(ctx.index, _request_packet(ctx.request), reply=True)
    _extend(ctx.assumptions, reply.assumptions)
    if not reply.passed:  # the request arrives, its answer is lost
        _splice(path, len(path.hops), reply)
        _extend(ctx.findings, reply.findings)


def _undeclared_pod_eip(report: TopologyReport, index: CloudIndex, request: DiagnosisRequest) -> Assumption | None:
    """An EIP the cloud binds to a private address that no node has and no PodEIP declares (a pod's address on an
    ENI, say, bound by hand): the cloud's way in is checked, but who answers at that address is not known."""
    owner = public_owner(index, request.dst)
    if report.dst.kind != EndpointKind.PUBLIC or owner is None:
        return None
    private = ip_address(owner.private_ip)
    if any(private in addresses for addresses in report.cluster.node_addresses.values()):
        return None
    return _assume(f"{request.dst} is {owner.how}, bound to {private} on {owner.nic.id} of {owner.instance.id}, which "
                   "no node has and no PodEIP (ack-extend-network-controller) declares: which pod or host receives it "
                   "was not checked", True)


def _entry_hop(ctx: _Context, node: str, packet: Packet) -> Hop:
    """The CLB's backend node that is not the endpoint's: kube-proxy forwards the translated packet
    to the endpoint on another node, with the client masqueraded to this node's address."""
    hop = Hop(id=node_hop(node), kind=HopKind.NODE, name=node, node=node)
    node_ip = _node_ip(ctx.report, node, ip_address(packet.src).version)
    if node_ip is None:
        ctx.assumptions.append(_assume(f"the InternalIP of node {node} is unknown: the cloud checked the client "
                                       f"source {packet.src} on the way to the endpoint instead of the node address",
                                       True))
        after = packet
    else:
        after = packet.model_copy(update={"src": ip_address(node_ip), "sport": None})
    hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE,
                             f"the load balancer delivers to NodePort on {node}; kube-proxy forwards to the endpoint "
                             f"{packet.dst} on another node, masqueraded to {after.src} (externalTrafficPolicy "
                             "Cluster)", packet, after, type="MASQUERADE", original=NatEndpoint(address=packet.src),
                             translated=NatEndpoint(address=after.src) if after is not packet else None))
    return hop


def _cross(path: Path, cp: CandidatePath | None, ctx: _Context, through_lb: bool) -> tuple[str, CloudResult] | None:
    """Splice the cloud into a forward path; returns (source node, the reply's first crossing) when
    the packet went from node to node and arrived, for the reply paths to show it too."""
    if path.final == FinalState.ABORT or not path.hops:
        return None
    report, index, request = ctx.report, ctx.index, ctx.request
    src_node = (cp.src_node if cp else None) or report.src.node
    if not through_lb and report.dst.kind == EndpointKind.PUBLIC and src_node:
        at = next((i for i, h in enumerate(path.hops) if h.kind in (HopKind.INTERNET, HopKind.EXTERNAL)
                   and i > 0), len(path.hops))
        if _dropped_before(path, at):
            return None
        packet, notes = _leaving(report, src_node, path, at, request)
        result = evaluate_to_internet(index, src_node, packet)
        result.assumptions[:0] = notes
        if at < len(path.hops):
            _merge_internet_hop(result, path.hops[at])
        _splice(path, at, result)
        ctx.record(result)
        return None
    return _cross_nodes(path, ctx)


def _cross_nodes(path: Path, ctx: _Context) -> tuple[str, CloudResult] | None:
    """A VPC crossing wherever consecutive hops sit on different nodes (node-1 → node-2 → node-1
    crosses twice: a hop each time), then the replies of those crossings, in reverse. Returns the
    reply crossing the walk's reply paths should show: the one that fails, else the first."""
    report, index, request = ctx.report, ctx.index, ctx.request
    crossings: list[tuple[str, str, Packet, int]] = []  # (from node, to node, packet carried, crossing number)
    last: str | None = None
    i = 0
    while i < len(path.hops):
        node = path.hops[i].node
        if node and last and i > 0 and (node != last or _eni_to_eni(path.hops[i - 1], path.hops[i])):
            if _dropped_before(path, i):
                return None
            packet, notes = _leaving(report, last, path, i, request)
            encapsulation, tunnel_notes = _tunnel(report, packet)
            number = len(crossings) + 1
            result = evaluate_node_to_node(index, last, node, packet, encapsulation=encapsulation,
                                           vxlan_port=VXLAN_PORT, crossing=number)
            result.assumptions[:0] = notes + tunnel_notes
            _splice(path, i, result)
            ctx.record(result)
            if not result.passed:
                return None
            crossings.append((last, node, packet, number))
            i += len(result.hops)
        last = node or last
        i += 1
    # only a delivered request has a reply (a FORWARD path left the cluster)
    if not crossings or path.final != FinalState.DELIVER or not request.options.check_reply:
        return None
    first: CloudResult | None = None
    for src, dst, packet, number in reversed(crossings):
        # the reply mirrors what the VPC carried (after DNAT and masquerade)
        back = Packet(src=packet.dst, dst=packet.src, protocol=packet.protocol, sport=packet.dport,
                      dport=packet.sport)
        reply = evaluate_node_to_node(index, dst, src, back, encapsulation=_tunnel(report, back)[0],
                                      vxlan_port=VXLAN_PORT, reply=True, crossing=number)
        _extend(ctx.assumptions, reply.assumptions)
        if not reply.passed:  # the request arrives, its answer is lost: the connection fails at the reply hop
            _splice(path, len(path.hops), copy.deepcopy(reply))
            _extend(ctx.findings, reply.findings)
            return src, reply  # the walk's reply paths show it where they cross back into `src`
        if number == 1:
            first = reply
    return (crossings[0][0], first) if first is not None else None


def _eni_to_eni(before: Hop, after: Hop) -> bool:
    """The walk sent the packet out of one pod's own ENI (Terway's exclusive mode) into the VPC, which delivered
    it to the other pod's ENI: the VPC is crossed even when both pods sit on one node. (A model path without a
    walk names no devices: two pods back to back there are a same-node pair, not a crossing.)"""
    return before.kind == after.kind == HopKind.POD and before.id != after.id and any(
        s.kind == StepKind.LINK and s.action == StepAction.FORWARD and getattr(s.info, "peer_where", None) ==
        f"pod {after.name}" for s in before.steps)


def _splice(path: Path, at: int, result: CloudResult) -> None:
    """Put the cloud hops at `at`; a cloud drop or abort ends the path at the cloud."""
    path.hops[at:at] = result.hops
    if result.outcome == "pass":
        return
    del path.hops[at + len(result.hops):]
    decisive = next((f for f in result.findings if f.severity == Severity.ERROR), None) or \
        (result.findings[0] if result.findings else None)
    path.final = FinalState.DROP if result.outcome == "drop" else FinalState.ABORT
    path.cause = decisive.code if decisive else None


def _dropped_before(path: Path, at: int) -> bool:
    """The packet never reaches the cloud when an earlier hop already dropped it."""
    if path.final != FinalState.DROP:
        return False
    hit = next((i for i, h in enumerate(path.hops) if h.status == HopStatus.ERROR
                or any(s.action == StepAction.DROP for s in h.steps)), None)
    return hit is None or hit < at


def _packet_at(path: Path, at: int, request: DiagnosisRequest) -> Packet:
    """The packet as the hops before `at` left it (after Service DNAT, for instance)."""
    packet = _request_packet(request)
    for hop in path.hops[:at]:
        for step in hop.steps:
            packet = step.packet_out or step.packet_in or packet
    return packet


def _request_packet(request: DiagnosisRequest) -> Packet:
    return Packet(src=request.src, dst=request.dst, protocol=request.protocol, dport=request.port)


def _pod_networks(report: TopologyReport) -> list[Any]:
    cidrs = set(report.cluster.pod_cidrs)
    for node in report.objects.nodes:
        spec = node.get("spec") or {}
        cidrs.update(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    return [ip_network(c, strict=False) for c in sorted(cidrs)]


def _in_pod_network(report: TopologyReport, address: Any) -> bool:
    ip = ip_address(address)
    return any(ip.version == net.version and ip in net for net in _pod_networks(report))


def _node_ip(report: TopologyReport, node: str, family: int) -> str | None:
    for obj in report.objects.nodes:
        if (obj.get("metadata") or {}).get("name") == node:
            for addr in (obj.get("status") or {}).get("addresses") or []:
                if addr.get("type") == "InternalIP" and ip_address(addr["address"]).version == family:
                    return str(addr["address"])
    return None


def _leaving(report: TopologyReport, node: str, path: Path, at: int,
             request: DiagnosisRequest) -> tuple[Packet, list[Assumption]]:
    """The packet as it leaves `node`'s uplink. A path the dataplane walk followed through the node's
    netfilter already carries what the node's POSTROUTING did (masquerade or not); a path from the
    Kubernetes model alone assumes the CNI's usual masquerade of a pod source going to a non-pod
    address (flannel/calico ip-masq), except on terway."""
    packet = _packet_at(path, at, request)
    walked = any(s.kind == StepKind.NETFILTER for h in path.hops[:at] for s in h.steps)
    if walked or not _in_pod_network(report, packet.src) or _in_pod_network(report, packet.dst) \
            or report.cluster.cni in NO_MASQUERADE:
        return packet, []
    node_ip = _node_ip(report, node, ip_address(packet.src).version)
    if node_ip is None:
        return packet, [_assume(f"the InternalIP of node {node} is unknown: the cloud checked the pod source "
                                f"{packet.src} instead of the masqueraded node address", True)]
    note = _assume(f"pod traffic to {packet.dst} leaves {node} masqueraded to the node address {node_ip} "
                   f"(CNI ip-masq, {report.cluster.cni}): the cloud checked that source")
    return packet.model_copy(update={"src": ip_address(node_ip), "sport": None}), [note]


def _tunnel(report: TopologyReport, packet: Packet) -> tuple[Encapsulation, list[Assumption]]:
    """How the pod packet crosses the underlay, by CNI; an unknown CNI is checked unencapsulated
    and said to matter (a tunnel shows the VPC a different packet)."""
    if not _in_pod_network(report, packet.dst):
        return None, []  # node addresses are routed, never tunnelled
    cni = report.cluster.cni
    if cni not in TUNNELS:
        return None, [_assume(f"CNI {cni!r}: whether pod traffic is tunnelled between nodes is unknown; the "
                              f"cloud checked the pod packet {packet} as it is", True)]
    encapsulation, note = TUNNELS[cni]
    return encapsulation, [_assume(note)] if note else []


def _merge_internet_hop(result: CloudResult, destination: Hop) -> None:
    """The model path already ends in the internet hop: give it the cloud's steps."""
    cloud_internet = next((h for h in result.hops if h.kind == HopKind.INTERNET), None)
    if cloud_internet is None:
        return
    result.hops.remove(cloud_internet)
    destination.steps[:0] = cloud_internet.steps


def _service_object(report: TopologyReport) -> dict[str, Any] | None:
    if report.service is None:
        return None
    namespace, _, name = report.service.service.partition("/")
    return next((s for s in report.objects.services if (s.get("metadata") or {}).get("namespace") == namespace
                 and (s.get("metadata") or {}).get("name") == name), None)


def _assume(text: str, could_change_outcome: bool = False) -> Assumption:
    return Assumption(stage=STAGE, text=text, could_change_outcome=could_change_outcome)


def _extend(into: list[Any], more: list[Any]) -> None:
    into.extend(x for x in more if x not in into)
