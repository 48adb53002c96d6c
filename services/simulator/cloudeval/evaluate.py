"""The cloud hops of a path: what the VPC, the security groups, the NAT gateway and the CLB do
to a packet, as Hops with Steps, findings and an outcome. Called by the simulator at the
node uplink (and for traffic from the internet); pure functions of the inventory.

    index = CloudIndex(inventory)            # once per diagnosis
    r = evaluate_node_to_node(index, "node-1", "node-2", packet, encapsulation="vxlan")
    r.outcome in ("pass", "drop", "abort"); r.hops; r.findings; r.assumptions

Tunnelled traffic (vxlan, ipip) is checked as the outer node-to-node packet — that is what
the VPC and the security groups see, never the inner pod packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, Literal

from services.simulator.cloudeval.clb import BackendTarget, acl_denies, backends, find_load_balancer, listener_for
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.security_groups import Flow, SgDecision, evaluate
from services.simulator.cloudeval.vpc import RouteDecision, route_lookup, snat_entry_for
from shared.cloud import CloudInventory, Instance, NetworkInterface
from shared.codes import finding
from shared.schemas import (
    Assumption,
    Finding,
    Hop,
    HopKind,
    HopStatus,
    Packet,
    Severity,
    Step,
    StepAction,
    StepKind,
)
from shared.steps import Endpoint, LbBackend, SecurityGroupRuleRef, VpcRouteEntry
from shared.topology import ServiceResolution

STAGE = "cloud"
VXLAN_PORT = 8472  # flannel's default; pass 4789 for the IANA port
Outcome = Literal["pass", "drop", "abort"]
Encapsulation = Literal["vxlan", "ipip"] | None


@dataclass
class CloudResult:
    outcome: Outcome = "pass"
    hops: list[Hop] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    assumptions: list[Assumption] = field(default_factory=list)
    flow: Flow | None = None  # the packet the cloud checked (the outer one for tunnels)
    backends: list[BackendTarget] = field(default_factory=list)  # internet → LB: where traffic goes on

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    def hop(self, hop_id: str, kind: HopKind, name: str, address: Any = None) -> Hop:
        existing = next((h for h in self.hops if h.id == hop_id), None)
        if existing is not None:
            return existing
        new = Hop(id=hop_id, kind=kind, name=name, address=address)
        self.hops.append(new)
        return new

    def fail(self, hop: Hop, f: Finding, outcome: Outcome = "drop") -> CloudResult:
        self.findings.append(f)
        hop.status = HopStatus.ERROR if outcome == "drop" else HopStatus.UNKNOWN
        self.outcome = outcome
        return self

    def warn(self, hop: Hop, f: Finding) -> None:
        self.findings.append(f)
        if hop.status == HopStatus.OK:
            hop.status = HopStatus.WARNING

    def assume(self, text: str, could_change_outcome: bool = False) -> None:
        self.assumptions.append(Assumption(stage=STAGE, text=text, could_change_outcome=could_change_outcome))


def _index(inv: CloudInventory | CloudIndex) -> CloudIndex:
    return inv if isinstance(inv, CloudIndex) else CloudIndex(inv)


def _packet(flow: Flow, **changes: Any) -> Packet | None:
    values = {"src": flow.src, "dst": flow.dst, "protocol": flow.protocol, "sport": flow.sport,
              "dport": flow.dport, **changes}
    return Packet(**values) if values["protocol"] in ("tcp", "udp", "icmp") else None


def _not_modelled(inv: CloudInventory) -> CloudResult | None:
    if inv.modelled:
        return None
    result = CloudResult()
    reason = "; ".join(inv.statements) or "cloud layer not modelled"
    result.assume(f"{reason}: security groups, VPC routes, NAT and load balancers were not checked",
                  could_change_outcome=True)
    return result


def _instance(result: CloudResult, index: CloudIndex, node: str | None, hop: Hop, role: str) -> Instance | None:
    instance = index.instance_of_node(node)
    if instance is None:
        result.fail(hop, finding("DATA_MISSING", hop.id, what=f"the ECS instance of {role} node {node}",
                                 reason="the node is not mapped to a collected instance (providerID, region)"),
                    outcome="abort")
        return None
    if instance.status != "Running":
        result.fail(hop, finding("ECS_INSTANCE_NOT_RUNNING", hop.id, instance=instance.id, node=node,
                                 status=instance.status))
        return None
    return instance


def _sg_step(result: CloudResult, hop: Hop, decision: SgDecision, flow: Flow, instance: Instance,
             peer: Instance | None = None) -> bool:
    verdict = "allowed" if decision.allowed else "denied"
    rule = decision.rule
    hop.steps.append(Step.of(
        StepKind.SECURITY_GROUP, StepAction.ALLOW if decision.allowed else StepAction.DROP,
        f"security groups {', '.join(decision.groups) or '(none)'} of {decision.nic} ({instance.id}) "
        f"{decision.direction}: {verdict} by {decision.reason}", _packet(flow),
        direction=decision.direction, instance=instance.id, nic=decision.nic, groups=decision.groups,
        group=decision.group, reason=decision.reason, shared_groups=decision.shared_groups, notes=decision.notes,
        rule=SecurityGroupRuleRef(
            id=rule.id, policy=rule.policy, priority=rule.priority, protocol=rule.protocol,
            port_range=f"{rule.port_from}/{rule.port_to}", source=rule.source_cidr or rule.source_group_id,
            destination=rule.dest_cidr or rule.dest_group_id, description=rule.description) if rule else None,
        finding=None if decision.allowed else "SG_DENY"))
    for note in decision.notes:
        result.assume(note, could_change_outcome=not decision.allowed)
    if decision.allowed:
        return True
    result.fail(hop, finding("SG_DENY", hop.id, group=decision.group or "(none)", packet=str(flow),
                             direction=decision.direction, rule=decision.reason,
                             evidence={**decision.evidence(), "instance": instance.id}))
    # sharing a group would have admitted it: say so, but only where it decided the outcome
    if decision.direction == "ingress" and decision.default and not decision.shared_groups and peer is not None:
        result.findings.append(finding("SG_NOT_SHARED", hop.id, src_instance=peer.id, dst_instance=instance.id))
    return False


def _route_step(hop: Hop, decision: RouteDecision, flow: Flow, ok: bool, detail: str) -> None:
    entry, next_hop = decision.entry, decision.next_hop
    hop.steps.append(Step.of(
        StepKind.VPC_ROUTE, StepAction.FORWARD if ok else StepAction.DROP, detail, _packet(flow),
        route_table=decision.table.id if decision.table else None,
        route_table_type=decision.table.type if decision.table else None,
        entry=VpcRouteEntry(id=entry.id, destination=entry.destination, type=entry.type,
                            next_hop_type=next_hop[0] if next_hop else None,
                            next_hop=next_hop[1] if next_hop else None) if entry else None,
        local_vswitch=decision.local.id if decision.local else None, notes=decision.notes))


def _expected_hop(index: CloudIndex, instance: Instance, hop: tuple[str, str | None]) -> bool:
    kind, hop_id = hop
    if kind == "Instance":
        return hop_id == instance.id
    if kind == "NetworkInterface":
        eni = index.enis.get(hop_id or "")
        return eni is not None and eni.instance_id == instance.id
    return False


def _leave_source(index: CloudIndex, src_node: str, reply: bool = False) -> tuple[CloudResult, Hop, Instance | None]:
    """A new result whose VPC hop the packet enters from `src_node`'s instance (None: the
    instance is missing or not running, and the result says so)."""
    result = CloudResult()
    src_instance = index.instance_of_node(src_node)
    vpc = src_instance.vpc_id if src_instance and src_instance.vpc_id else None
    hop_id, name = f"vpc:{vpc or '?'}", vpc or "VPC"
    hop = result.hop(f"{hop_id}:reply", HopKind.VPC, f"{name} (reply)") if reply else \
        result.hop(hop_id, HopKind.VPC, name)
    return result, hop, _instance(result, index, src_node, hop, "source")


def evaluate_node_to_node(inv: CloudInventory | CloudIndex, src_node: str, dst_node: str | None, packet: Packet,
                          encapsulation: Encapsulation = None, vxlan_port: int = VXLAN_PORT,
                          reply: bool = False) -> CloudResult:
    """A packet leaving `src_node`'s uplink for `dst_node` (or for the VPC address `packet.dst`
    when dst_node is None): egress security groups, the VPC route, ingress security groups.
    `reply`: the answer of an allowed connection (hop `vpc:<id>:reply`) — security groups are
    stateful and let it pass, but VPC routes are not: a route that exists one way only
    (host-gw pod CIDRs) delivers the request and loses every reply."""
    index = _index(inv)
    if (skip := _not_modelled(index.inv)) is not None:
        return skip
    result, hop, src = _leave_source(index, src_node, reply)
    if src is None:
        return result
    owner = index.eni_by_ip.get(packet.dst)
    if dst_node is None and owner is not None and owner.instance_id:
        dst_node = next((n for n, i in index.inv.nodes.items() if i == owner.instance_id), None)
        dst = index.instances.get(owner.instance_id)
    else:
        dst = _instance(result, index, dst_node, hop, "destination")
    if dst is None:
        if result.outcome == "pass":
            result.fail(hop, finding("DATA_MISSING", hop.id, what=f"the owner of {packet.dst} in the VPC",
                                     reason="no collected ENI holds that address"), outcome="abort")
        return result
    if encapsulation is not None:
        outer_src, outer_dst = index.primary_eni(src).primary_ip, index.primary_eni(dst).primary_ip
        if not outer_src or not outer_dst:
            return result.fail(hop, finding("DATA_MISSING", hop.id, what="the primary private IPs of the tunnel "
                                            "endpoints", reason="not in the inventory"), outcome="abort")
        flow = (Flow(ip_address(outer_src), ip_address(outer_dst), "udp", None, vxlan_port)
                if encapsulation == "vxlan" else Flow(ip_address(outer_src), ip_address(outer_dst), "ipip"))
        hop.steps.append(Step.of(StepKind.ENCAP, StepAction.INFO,
                                 f"{encapsulation} tunnel: the VPC and the security groups see the outer "
                                 f"packet {flow}, not the pod packet {packet}", packet, _packet(flow),
                                 encapsulation=encapsulation, outer_src=flow.src, outer_dst=flow.dst,
                                 outer_dport=flow.dport))
        if encapsulation == "vxlan":
            result.assume("vxlan outer source port is a per-flow hash: security-group rules restricting the "
                          "source port are treated as not matching")
    else:
        flow = Flow(packet.src, packet.dst, packet.protocol, packet.sport, packet.dport)
    result.flow = flow
    src_nic, dst_nic = index.nic_for(src, flow.src), index.nic_for(dst, flow.dst)
    if reply:
        hop.steps.append(Step.of(StepKind.SECURITY_GROUP, StepAction.ALLOW,
                                 "security groups are stateful: the reply of the allowed request passes",
                                 _packet(flow), stateful_reply=True))
        _route(result, index, hop, src_nic, flow, dst, dst_node)
        return result
    if not _sg_step(result, hop, evaluate(index, src_nic, "egress", flow), flow, src):
        return result
    if not _route(result, index, hop, src_nic, flow, dst, dst_node):
        return result
    peer_eni = index.eni_by_ip.get(flow.src)
    peer = index.instances.get(peer_eni.instance_id or "") if peer_eni else None
    if not _sg_step(result, hop, evaluate(index, dst_nic, "ingress", flow), flow, dst, peer=peer):
        return result
    result.assume("security groups are stateful: the replies of an allowed connection are allowed")
    return result


def _route(result: CloudResult, index: CloudIndex, hop: Hop, nic: NetworkInterface, flow: Flow, dst: Instance,
           dst_node: str | None) -> bool:
    decision = route_lookup(index, nic, flow.dst)
    owner = index.eni_by_ip.get(flow.dst)
    next_hop = decision.next_hop
    expected = f"{dst.id} (node {dst_node})" if dst_node else dst.id
    if next_hop is not None and next_hop[0] == "local" and owner is not None:
        _route_step(hop, decision, flow, True, f"{decision.describe()}: {flow.dst} is {owner.id} of "
                                               f"{owner.instance_id}")
        return True
    if next_hop is not None and _expected_hop(index, dst, next_hop):
        _route_step(hop, decision, flow, True, f"{decision.describe()} (the instance of node {dst_node})")
        return True
    table = decision.table.id if decision.table else f"(none for {nic.vswitch_id})"
    if next_hop is None or decision.is_default or next_hop[0] == "local":
        why = decision.describe() + (" (only the default route matches)" if decision.is_default else "")
        _route_step(hop, decision, flow, False, why)
        result.fail(hop, finding("VPC_NO_ROUTE", hop.id, dst=flow.dst, route_table=table,
                                 evidence={"expected_next_hop": expected, **decision.evidence()}))
        return False
    _route_step(hop, decision, flow, False, f"{decision.describe()}: expected next hop {expected}")
    result.fail(hop, finding("VPC_WRONG_NEXT_HOP", hop.id, actual=f"{next_hop[0]} {next_hop[1]}", dst=flow.dst,
                             expected=expected, evidence={"route_table": table, **decision.evidence()}))
    return False


def evaluate_to_internet(inv: CloudInventory | CloudIndex, src_node: str, packet: Packet) -> CloudResult:
    """A packet from `src_node` (as it leaves the node, after any node-level masquerade) to a
    public address: egress security groups, then an EIP, or the VPC route to a NAT gateway
    and an SNAT entry covering the source."""
    index = _index(inv)
    if (skip := _not_modelled(index.inv)) is not None:
        return skip
    result, hop, src = _leave_source(index, src_node)
    if src is None:
        return result
    flow = result.flow = Flow(packet.src, packet.dst, packet.protocol, packet.sport, packet.dport)
    nic = index.nic_for(src, flow.src)
    if not _sg_step(result, hop, evaluate(index, nic, "egress", flow), flow, src):
        return result
    public = _public_ip(src, nic, str(flow.src))
    internet = None
    if public is not None:
        hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"{flow.src} leaves through its public address "
                                 f"{public}", _packet(flow), _packet(flow, src=public), type="SNAT",
                                 original=Endpoint(address=flow.src), translated=Endpoint(address=public),
                                 nic=nic.id))
        internet = result.hop("internet", HopKind.INTERNET, "internet")
    else:
        decision = route_lookup(index, nic, flow.dst)
        next_hop = decision.next_hop
        table = decision.table.id if decision.table else f"(none for {nic.vswitch_id})"
        if next_hop is None:
            _route_step(hop, decision, flow, False, decision.describe())
            return result.fail(hop, finding("VPC_NO_ROUTE", hop.id, dst=flow.dst, route_table=table,
                                            evidence=decision.evidence()))
        _route_step(hop, decision, flow, True, decision.describe())
        if next_hop[0] == "local":
            result.assume(f"{flow.dst} is inside the VPC: not internet traffic")
            return result
        if next_hop[0] != "NatGateway":
            result.assume(f"traffic to {flow.dst} leaves the VPC through {next_hop[0]} {next_hop[1]}, which "
                          "netdiag does not model", could_change_outcome=True)
            return result
        nat = index.nats.get(next_hop[1] or "")
        nat_hop = result.hop(f"nat:{next_hop[1]}", HopKind.NAT_GATEWAY, nat.name or nat.id if nat else str(next_hop[1]))
        if nat is None:
            return result.fail(nat_hop, finding("DATA_MISSING", nat_hop.id, what=f"NAT gateway {next_hop[1]}",
                                                reason="not in the inventory"), outcome="abort")
        entry = snat_entry_for(index, nat, flow.src, nic)
        if entry is None:
            nat_hop.steps.append(Step.of(
                StepKind.NAT, StepAction.DROP, f"no SNAT entry of {nat.id} covers {flow.src} (vSwitch "
                f"{nic.vswitch_id})", _packet(flow), type="SNAT", original=Endpoint(address=flow.src),
                nat_gateway=nat.id, finding="NAT_NO_SNAT",
                snat_entries=[f"{e.id} {e.source_cidr or e.source_vswitch_id} → {e.snat_ip}"
                              for e in nat.snat_entries]))
            return result.fail(nat_hop, finding("NAT_NO_SNAT", nat_hop.id, nat_gateway=nat.id, src=flow.src,
                                                evidence={"vswitch": nic.vswitch_id, "instance": src.id}))
        snat_ip = entry.snat_ip.split(",")[0]
        nat_hop.steps.append(Step.of(
            StepKind.NAT, StepAction.REWRITE, f"SNAT entry {entry.id} of {nat.id} translates {flow.src} to {snat_ip}",
            _packet(flow), _packet(flow, src=snat_ip) if snat_ip else None, type="SNAT",
            original=Endpoint(address=flow.src), translated=Endpoint(address=snat_ip) if snat_ip else None,
            nat_gateway=nat.id, snat_entry=entry.id))
        if nat.status != "Available":
            result.assume(f"NAT gateway {nat.id} is {nat.status}, not Available", could_change_outcome=True)
        internet = result.hop("internet", HopKind.INTERNET, "internet")
    internet.steps.append(Step.of(StepKind.ROUTE, StepAction.FORWARD, f"to the internet: {flow.dst}",
                                  destination=flow.dst))
    return result


def _public_ip(instance: Instance, nic: NetworkInterface, src: str) -> str | None:
    """An EIP (or fixed public IP) serves the primary private address it is bound to."""
    if nic.public_ip and src == nic.primary_ip:
        return nic.public_ip
    if nic.type == "Primary" and instance.private_ips and src == instance.private_ips[0]:
        return instance.eip or (instance.public_ips[0] if instance.public_ips else None)
    return None


def evaluate_internet_to_lb(inv: CloudInventory | CloudIndex, service: ServiceResolution | None, packet: Packet,
                            service_object: dict[str, Any] | None = None) -> CloudResult:
    """A packet from the internet to a LoadBalancer Service's CLB: status, listener, listener
    status, ACL, then every backend against the Service and its health. `result.backends`
    are the healthy backends the traffic continues to (NodePort on nodes, or pod ENIs)."""
    index = _index(inv)
    if (skip := _not_modelled(index.inv)) is not None:
        return skip
    result = CloudResult(flow=Flow(packet.src, packet.dst, packet.protocol, packet.sport, packet.dport))
    lb_ips = [str(ip) for ip in service.load_balancer_ips] if service else []
    lb, how = find_load_balancer(index, packet.dst, service_object, lb_ips)
    if lb is None:
        hop = result.hop(f"lb:{packet.dst}", HopKind.LOAD_BALANCER, str(packet.dst), packet.dst)
        return result.fail(hop, finding("DATA_MISSING", hop.id, what=f"the load balancer of {packet.dst}",
                                        reason=how), outcome="abort")
    hop = result.hop(f"lb:{lb.id}", HopKind.LOAD_BALANCER, lb.name or lb.id, lb.address)
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.INFO, f"CLB {lb.id} ({lb.address_type}) found by "
                             f"{how}", packet, lb=lb.id, status=lb.status, address=lb.address))
    if lb.status != "active":
        return _lb_drop(result, hop, finding("LB_NOT_ACTIVE", hop.id, lb=lb.id, status=lb.status), lb=lb.id,
                        status=lb.status)
    listener = listener_for(lb, packet.dport, packet.protocol)
    if listener is None:
        return _lb_drop(result, hop, finding("LB_NO_LISTENER", hop.id, port=packet.dport, protocol=packet.protocol,
                                             lb=lb.id, evidence={"listeners": [f"{li.port}/{li.protocol}"
                                                                               for li in lb.listeners]}),
                        lb=lb.id, listeners=[f"{li.port}/{li.protocol}" for li in lb.listeners])
    if listener.status != "running":
        return _lb_drop(result, hop, finding("LB_LISTENER_NOT_RUNNING", hop.id, lb=lb.id, port=listener.port,
                                             status=listener.status, evidence={"protocol": listener.protocol}),
                        lb=lb.id, listener_port=listener.port, status=listener.status)
    if listener.acl_status == "on":
        acl = index.acls.get(listener.acl_id or "")
        if acl is None:
            return result.fail(hop, finding("DATA_MISSING", hop.id, what=f"ACL {listener.acl_id} of listener "
                                            f"{listener.port}", reason="not in the inventory"), outcome="abort")
        if acl_denies(listener, acl, packet.src):
            return _lb_drop(result, hop, finding("LB_ACL_DENY", hop.id, acl=acl.name or acl.id, port=listener.port,
                                                 lb=lb.id, src=packet.src,
                                                 evidence={"acl_type": listener.acl_type, "entries": acl.entries}),
                            lb=lb.id, listener_port=listener.port)
        hop.steps.append(Step.of(StepKind.POLICY, StepAction.ALLOW, f"{listener.acl_type}list ACL {acl.id} admits "
                                 f"{packet.src}", acl=acl.id, acl_type=listener.acl_type))
    _check_backends(result, index, hop, lb.id, listener.port, backends(index, lb, listener), service)
    result.assume("security groups of the CLB backends were not evaluated for load-balanced traffic",
                  could_change_outcome=False)
    return result


def _lb_drop(result: CloudResult, hop: Hop, f: Finding, **info: Any) -> CloudResult:
    """The load balancer drops: a step (`info`: LoadBalancerInfo fields) and the finding."""
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.DROP, f.message, finding=f.code, **info))
    return result.fail(hop, f)


def _check_backends(result: CloudResult, index: CloudIndex, hop: Hop, lb_id: str, port: int,
                    targets: list[BackendTarget], service: ServiceResolution | None) -> None:
    service_name = service.service if service else "?"
    evidence = {"backends": [t.__dict__ for t in targets]}
    if not targets:
        _lb_drop(result, hop, finding("LB_BACKEND_MISMATCH", hop.id, lb=lb_id, port=port, service=service_name,
                                      detail="the listener has no backend servers"), lb=lb_id, listener_port=port)
        return
    if service is not None:
        wrong = _mismatched(targets, service)
        if wrong:
            result.warn(hop, finding("LB_BACKEND_MISMATCH", hop.id, lb=lb_id, port=port, service=service_name,
                                     detail="; ".join(wrong), evidence=evidence))
    healthy = [t for t in targets if t.health == "normal"]
    unknown = [t for t in targets if t.health == "unknown"]
    for t in unknown:
        result.assume(f"the health of backend {t.label} port {t.port} of {lb_id} was not reported",
                      could_change_outcome=not healthy)
    for t in targets:
        if t.health not in ("normal", "unknown"):
            f = finding("LB_BACKEND_UNHEALTHY", hop.id, backend=t.label, port=t.port, status=t.health, lb=lb_id,
                        severity=Severity.WARNING if healthy or unknown else Severity.ERROR,
                        evidence={"node": t.node, "type": t.type})
            result.findings.append(f)
    ok = bool(healthy or unknown)
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.FORWARD if ok else StepAction.DROP,
                             f"{len(healthy)} of {len(targets)} backends healthy on listener {port}", lb=lb_id,
                             listener_port=port, backends=[LbBackend(**t.__dict__) for t in targets]))
    result.backends = healthy + unknown
    if not ok:
        hop.status, result.outcome = HopStatus.ERROR, "drop"
    elif len(healthy) < len(targets) and hop.status == HopStatus.OK:
        hop.status = HopStatus.WARNING


def _mismatched(targets: list[BackendTarget], service: ServiceResolution) -> list[str]:
    wrong = []
    pod_ports = {(str(b.address), b.port) for b in service.backends}
    for t in targets:
        if t.type == "ecs" and service.node_port is not None and t.port != service.node_port:
            wrong.append(f"{t.label} port {t.port}, expected NodePort {service.node_port}")
        elif t.type == "eni" and pod_ports and (t.ip, t.port) not in pod_ports:
            wrong.append(f"{t.label} port {t.port} is not an endpoint of the service")
    return wrong
