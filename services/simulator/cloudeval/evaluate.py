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

from services.simulator.cloudeval import ipv4gw, netacl
from services.simulator.cloudeval.clb import (
    BackendTarget,
    acl_denies,
    backends,
    find_load_balancer,
    listener_acl_ids,
    listener_for,
)
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.security_groups import Flow, SgDecision, evaluate
from services.simulator.cloudeval.vpc import RouteDecision, route_lookup, snat_entry_for
from shared.cloud import CloudInventory, Instance, Ipv4Gateway, Listener, NatGateway, NetworkInterface
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
from shared.steps import LbBackend, NatEndpoint, SecurityGroupRuleRef, VpcRouteEntry
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
        new = Assumption(stage=STAGE, text=text, could_change_outcome=could_change_outcome)
        if new not in self.assumptions:
            self.assumptions.append(new)


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
        undecided=decision.undecided or None,
        rule=SecurityGroupRuleRef(
            id=rule.id, policy=rule.policy, priority=rule.priority, protocol=rule.protocol,
            port_range=(f"port list {rule.port_range_list_id}" if rule.port_range_list_id else
                        f"{rule.port_from}/{rule.port_to}"),
            source=rule.source_cidr or rule.source_group_id or rule.source_prefix_list_id,
            destination=rule.dest_cidr or rule.dest_group_id or rule.dest_prefix_list_id,
            description=rule.description) if rule else None,
        finding=None if decision.allowed else "SG_DENY"))
    for note in decision.notes:
        result.assume(note, could_change_outcome=not decision.allowed)
    for note in decision.undecided:
        result.assume(f"security group rule not decidable: {note}; it would have "
                      f"{'allowed' if not decision.allowed else 'denied'} the packet", could_change_outcome=True)
    if decision.allowed:
        return True
    deny = finding("SG_DENY", hop.id, group=decision.group or "(none)", packet=str(flow),
                   direction=decision.direction, rule=decision.reason,
                   evidence={**decision.evidence(), "instance": instance.id})
    if decision.undecided:
        # a rule ahead that could not be decided would have admitted it: the drop is not known
        _undecidable(result, hop, deny, f"what security-group rule(s) {'; '.join(decision.undecided)} match")
        return False
    result.fail(hop, deny)
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


def _acl_step(result: CloudResult, index: CloudIndex, hop: Hop, nic: NetworkInterface, peer_vswitch: str | None,
              direction: str, flow: Flow) -> bool:
    """The network ACL of `nic`'s vSwitch on `flow` leaving (egress) or entering (ingress) it."""
    if index.network_acls is None:
        result.assume("network ACLs were not collected (an inventory older than their support): vSwitch ACLs "
                      "were not checked", could_change_outcome=True)
        return True
    decision = netacl.check(index, nic.vswitch_id, peer_vswitch, direction, flow)
    if decision is None:
        return True
    hop.steps.append(Step.of(
        StepKind.POLICY, StepAction.ALLOW if decision.allowed else StepAction.DROP,
        f"network ACL {decision.acl.id} of vSwitch {decision.vswitch} ({direction}, stateless): "
        f"{'allowed' if decision.allowed else 'denied'} by {decision.reason}", _packet(flow),
        direction=direction, allowed=decision.allowed, network_acl=decision.acl.id, vswitch=decision.vswitch,
        entry=decision.reason, undecided=decision.undecided or None,
        finding=None if decision.allowed else "VPC_NETWORK_ACL_DENY"))
    for note in decision.undecided:
        result.assume(f"network ACL {decision.acl.id}: {note}", could_change_outcome=True)
    for note in decision.assumed:
        result.assume(f"network ACL {decision.acl.id}: {note}")
    if decision.allowed:
        return True
    deny = finding("VPC_NETWORK_ACL_DENY", hop.id, acl=decision.acl.name or decision.acl.id,
                   vswitch=decision.vswitch, packet=str(flow), direction=direction,
                   entry=decision.reason, evidence=decision.evidence())
    if decision.undecided:
        _undecidable(result, hop, deny, f"what network ACL entries {'; '.join(decision.undecided)} match")
        return False
    result.fail(hop, deny)
    return False


def _undecidable(result: CloudResult, hop: Hop, deny: Finding, what: str) -> None:
    """A drop that an undecidable rule ahead of it could have turned into a pass: not a confident
    UNREACHABLE — the data is missing (abort), the drop is kept as a warning."""
    result.fail(hop, finding("DATA_MISSING", hop.id, what=what, reason="the list, group or port they name was "
                             "not collected, and they would have admitted the packet"), outcome="abort")
    result.findings.append(deny.model_copy(update={"severity": Severity.WARNING}))


def _not_forwarding(index: CloudIndex, hop: tuple[str, str | None]) -> str | None:
    """Why a route's next hop does not forward (a stopped instance, a detached ENI), or None.
    An ECS instance can be reached only while it is Running (instance lifecycle)."""
    kind, hop_id = hop
    if kind == "Instance":
        instance = index.instances.get(hop_id or "")
        return f"instance {hop_id} {instance.status}" if instance and instance.status != "Running" else None
    if kind == "NetworkInterface":
        eni = index.enis.get(hop_id or "")
        if eni is None:
            return None
        if not eni.instance_id or eni.status not in ("InUse", ""):
            return f"ENI {hop_id} {eni.status or 'detached'} (attached to no instance)"
        owner = index.instances.get(eni.instance_id)
        if owner is not None and owner.status != "Running":
            return f"ENI {hop_id} on instance {owner.id} {owner.status}"
    return None


def _fail_next_hop(result: CloudResult, hop: Hop, decision: RouteDecision, flow: Flow, state: str) -> None:
    next_hop = decision.next_hop or ("?", None)
    table = decision.table.id if decision.table else "(no table)"
    route = decision.entry.destination if decision.entry else str(flow.dst)
    _route_step(hop, decision, flow, False, f"{decision.describe()}: the next hop does not forward ({state})")
    result.fail(hop, finding("VPC_NEXT_HOP_NOT_FORWARDING", hop.id, route=route, route_table=table,
                             next_hop=f"{next_hop[0]} {next_hop[1]}", state=state,
                             evidence={"dst": str(flow.dst), **decision.evidence()}))


def _expected_hop(index: CloudIndex, instance: Instance, hop: tuple[str, str | None]) -> bool:
    kind, hop_id = hop
    if kind == "Instance":
        return hop_id == instance.id
    if kind == "NetworkInterface":
        eni = index.enis.get(hop_id or "")
        return eni is not None and eni.instance_id == instance.id
    return False


def _leave_source(index: CloudIndex, src_node: str, reply: bool = False,
                  crossing: int = 1) -> tuple[CloudResult, Hop, Instance | None]:
    """A new result whose VPC hop the packet enters from `src_node`'s instance (None: the
    instance is missing or not running, and the result says so). `crossing` numbers the VPC
    crossings of one path (the second one is hop `vpc:<id>#2`)."""
    result = CloudResult()
    src_instance = index.instance_of_node(src_node)
    vpc = src_instance.vpc_id if src_instance and src_instance.vpc_id else None
    hop_id, name = f"vpc:{vpc or '?'}", vpc or "VPC"
    if crossing > 1:
        hop_id, name = f"{hop_id}#{crossing}", f"{name} (crossing {crossing})"
    hop = result.hop(f"{hop_id}:reply", HopKind.VPC, f"{name} (reply)") if reply else \
        result.hop(hop_id, HopKind.VPC, name)
    return result, hop, _instance(result, index, src_node, hop, "source")


def evaluate_node_to_node(inv: CloudInventory | CloudIndex, src_node: str, dst_node: str | None, packet: Packet,
                          encapsulation: Encapsulation = None, vxlan_port: int = VXLAN_PORT,
                          reply: bool = False, crossing: int = 1) -> CloudResult:
    """A packet leaving `src_node`'s uplink for `dst_node` (or for the VPC address `packet.dst`
    when dst_node is None): egress security groups, the VPC route, ingress security groups.
    `reply`: the answer of an allowed connection (hop `vpc:<id>:reply`) — security groups are
    stateful and let it pass, but VPC routes and network ACLs are not: a route that exists one way
    only (host-gw pod CIDRs) delivers the request and loses every reply."""
    index = _index(inv)
    if (skip := _not_modelled(index.inv)) is not None:
        return skip
    result, hop, src = _leave_source(index, src_node, reply, crossing)
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
        if _acl_step(result, index, hop, src_nic, dst_nic.vswitch_id, "egress", flow) and \
                _route(result, index, hop, src_nic, flow, dst, dst_node):
            _acl_step(result, index, hop, dst_nic, src_nic.vswitch_id, "ingress", flow)
        return result
    if not _sg_step(result, hop, evaluate(index, src_nic, "egress", flow), flow, src):
        return result
    if not _acl_step(result, index, hop, src_nic, dst_nic.vswitch_id, "egress", flow):
        return result
    if not _route(result, index, hop, src_nic, flow, dst, dst_node):
        return result
    if not _acl_step(result, index, hop, dst_nic, src_nic.vswitch_id, "ingress", flow):
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
    if next_hop is not None and (state := _not_forwarding(index, next_hop)) is not None:
        _fail_next_hop(result, hop, decision, flow, state)
        return False
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
                                 fix=f"pointing to {expected}, the instance that hosts it (a node's pod CIDR)",
                                 evidence={"expected_next_hop": expected, **decision.evidence()}))
        return False
    _route_step(hop, decision, flow, False, f"{decision.describe()}: expected next hop {expected}")
    result.fail(hop, finding("VPC_WRONG_NEXT_HOP", hop.id, actual=f"{next_hop[0]} {next_hop[1]}", dst=flow.dst,
                             expected=expected, evidence={"route_table": table, **decision.evidence()}))
    return False


def evaluate_to_internet(inv: CloudInventory | CloudIndex, src_node: str, packet: Packet) -> CloudResult:
    """A packet from `src_node` (as it leaves the node, after any node-level masquerade) to a
    public address: egress security groups and network ACL; then an EIP, or the VPC route to a NAT
    gateway and an SNAT entry covering the source. Once the VPC's IPv4 gateway is activated the
    vSwitch's route decides: to the gateway (a public address), or to a NAT gateway whose own vSwitch
    routes to the gateway (ipv4gw.py)."""
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
    if not _acl_step(result, index, hop, nic, None, "egress", flow):
        return result
    public = _public_ip(index, src, nic, str(flow.src))
    gateway = _gateway(result, index, nic.vpc_id)
    if gateway is not None and ipv4gw.is_gone(gateway):
        return _gateway_gone(result, hop, gateway, flow, nic)
    active = gateway if ipv4gw.is_active(gateway) else None
    if public is not None and active is None:
        # without an activated IPv4 gateway a public address reaches the internet whatever the routes say
        _leave_public(result, hop, flow, public, nic)
        return result
    decision = route_lookup(index, nic, flow.dst)
    next_hop = decision.next_hop
    if next_hop is None or (active is not None and public is not None and next_hop[0] == "NatGateway"):
        # SNAT entries do not translate an address with a public IP: with the gateway active only a route to it
        why = decision.describe() if active is None else f"{decision.describe()}: the VPC's IPv4 gateway " \
            f"{active.id} is active and this route does not lead to it"
        _route_step(hop, decision, flow, False, why)
        return result.fail(hop, _no_internet_route(decision, flow, nic, active, hop.id))
    if (state := _not_forwarding(index, next_hop)) is not None:
        _fail_next_hop(result, hop, decision, flow, state)
        return result
    kind, target = next_hop
    if kind == "local":
        _route_step(hop, decision, flow, True, decision.describe())
        result.assume(f"{flow.dst} is inside the VPC: not internet traffic")
        return result
    if kind == "Ipv4Gateway" and active is not None and target == active.id:
        if public is None:  # the gateway translates public addresses only; a NAT gateway gives the others one
            _route_step(hop, decision, flow, False, f"{decision.describe()}: {flow.src} has no public address")
            return result.fail(hop, finding(
                "VPC_WRONG_NEXT_HOP", hop.id, actual=f"Ipv4Gateway {target}", dst=flow.dst,
                expected=f"a NAT gateway with an SNAT entry covering {flow.src} (an IPv4 gateway translates only "
                         "addresses with a public IP; or bind an EIP)",
                evidence={"ipv4_gateway": target, "src": str(flow.src), **decision.evidence()}))
        _route_step(hop, decision, flow, True, f"{decision.describe()} (the VPC's activated IPv4 gateway)")
        _leave_public(result, hop, flow, public, nic)
        return result
    _route_step(hop, decision, flow, True, decision.describe())
    if kind != "NatGateway":
        state_text = "not activated" if gateway is not None and kind == "Ipv4Gateway" else "not modelled"
        result.assume(f"traffic to {flow.dst} leaves the VPC through {kind} {target} ({state_text}), which netdiag "
                      "does not evaluate", could_change_outcome=True)
        return result
    _through_nat(result, index, target, flow, src, nic, active)
    return result


def _gateway(result: CloudResult, index: CloudIndex, vpc_id: str | None) -> Ipv4Gateway | None:
    """The VPC's IPv4 gateway; an inventory that did not collect them says so (an activated one would make the
    routes decide what reaches the internet)."""
    if index.inv.ipv4_gateways is None:
        result.assume("IPv4 gateways were not collected (an inventory older than their support, or an API error): "
                      "had the VPC an activated one, only routes to it would reach the internet",
                      could_change_outcome=True)
    return ipv4gw.gateway_of(index, vpc_id)


def _leave_public(result: CloudResult, hop: Hop, flow: Flow, public: str, nic: NetworkInterface) -> None:
    hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"{flow.src} leaves through its public address "
                             f"{public}", _packet(flow), _packet(flow, src=public), type="SNAT",
                             original=NatEndpoint(address=flow.src), translated=NatEndpoint(address=public),
                             nic=nic.id))
    result.hop("internet", HopKind.INTERNET, "internet").steps.append(Step.of(
        StepKind.ROUTE, StepAction.FORWARD, f"to the internet: {flow.dst}", destination=flow.dst))


def _no_internet_route(decision: RouteDecision, flow: Flow, nic: NetworkInterface, active: Ipv4Gateway | None,
                       hop_id: str) -> Finding:
    table = decision.table.id if decision.table else f"(none for {nic.vswitch_id})"
    fix = (f"pointing to the VPC's IPv4 gateway {active.id} (0.0.0.0/0): once an IPv4 gateway is activated, "
           "instances reach the internet only through routes to it" if active is not None else
           "(0.0.0.0/0) pointing to a NAT gateway with an SNAT entry for the source, or bind an EIP to the instance")
    evidence = {"ipv4_gateway": active.id, **decision.evidence()} if active is not None else decision.evidence()
    return finding("VPC_NO_ROUTE", hop_id, dst=flow.dst, route_table=table, fix=fix, evidence=evidence)


def _gateway_gone(result: CloudResult, hop: Hop, gateway: Ipv4Gateway, flow: Flow,
                  nic: NetworkInterface) -> CloudResult:
    """A VPC whose IPv4 gateway is deleted has no internet access (the feature cannot be turned off)."""
    hop.steps.append(Step.of(StepKind.VPC_ROUTE, StepAction.DROP, f"the VPC's IPv4 gateway {gateway.id} is "
                             f"{gateway.status}: the VPC has no internet access", _packet(flow)))
    return result.fail(hop, finding(
        "VPC_NO_ROUTE", hop.id, dst=flow.dst, route_table=f"(vSwitch {nic.vswitch_id})",
        fix=f"pointing to a new, activated IPv4 gateway: {gateway.id} is {gateway.status}, and a VPC that has used "
            "an IPv4 gateway reaches the internet only through one",
        evidence={"ipv4_gateway": gateway.id, "ipv4_gateway_status": gateway.status}))


def _through_nat(result: CloudResult, index: CloudIndex, nat_id: str | None, flow: Flow, src: Instance,
                 nic: NetworkInterface, active: Ipv4Gateway | None) -> None:
    """The NAT gateway's SNAT entry for the source; with an activated IPv4 gateway, the route of the NAT
    gateway's own vSwitch onward to it."""
    nat = index.nats.get(nat_id or "")
    nat_hop = result.hop(f"nat:{nat_id}", HopKind.NAT_GATEWAY, nat.name or nat.id if nat else str(nat_id))
    if nat is None:
        result.fail(nat_hop, finding("DATA_MISSING", nat_hop.id, what=f"NAT gateway {nat_id}",
                                     reason="not in the inventory"), outcome="abort")
        return
    entry = snat_entry_for(index, nat, flow.src, nic)
    if entry is None:
        nat_hop.steps.append(Step.of(
            StepKind.NAT, StepAction.DROP, f"no SNAT entry of {nat.id} covers {flow.src} (vSwitch "
            f"{nic.vswitch_id})", _packet(flow), type="SNAT", original=NatEndpoint(address=flow.src),
            nat_gateway=nat.id, finding="NAT_NO_SNAT",
            snat_entries=[f"{e.id} {e.source_cidr or e.source_vswitch_id} → {e.snat_ip}" for e in nat.snat_entries]))
        result.fail(nat_hop, finding("NAT_NO_SNAT", nat_hop.id, nat_gateway=nat.id, src=flow.src,
                                     evidence={"vswitch": nic.vswitch_id, "instance": src.id}))
        return
    snat_ip = entry.snat_ip.split(",")[0]
    nat_hop.steps.append(Step.of(
        StepKind.NAT, StepAction.REWRITE, f"SNAT entry {entry.id} of {nat.id} translates {flow.src} to {snat_ip}",
        _packet(flow), _packet(flow, src=snat_ip) if snat_ip else None, type="SNAT",
        original=NatEndpoint(address=flow.src), translated=NatEndpoint(address=snat_ip) if snat_ip else None,
        nat_gateway=nat.id, snat_entry=entry.id))
    if nat.status != "Available":
        result.assume(f"NAT gateway {nat.id} is {nat.status}, not Available", could_change_outcome=True)
    if active is not None and not _nat_onward(result, index, nat_hop, nat, flow, active):
        return
    result.hop("internet", HopKind.INTERNET, "internet").steps.append(Step.of(
        StepKind.ROUTE, StepAction.FORWARD, f"to the internet: {flow.dst}", destination=flow.dst))


def _nat_onward(result: CloudResult, index: CloudIndex, nat_hop: Hop, nat: NatGateway, flow: Flow,
                active: Ipv4Gateway) -> bool:
    """With an activated IPv4 gateway the NAT gateway's translated traffic must be routed to it by the route
    table of the NAT gateway's own vSwitch."""
    if nat.vswitch_id is None:
        result.assume(f"the VPC's IPv4 gateway {active.id} is active: the NAT gateway's own vSwitch must route to it "
                      "for the translated traffic to reach the internet; that vSwitch was not collected",
                      could_change_outcome=True)
        return True
    where = NetworkInterface(id=nat.id, vpc_id=nat.vpc_id, vswitch_id=nat.vswitch_id)
    decision = route_lookup(index, where, flow.dst)
    if decision.next_hop == ("Ipv4Gateway", active.id):
        _route_step(nat_hop, decision, flow, True, f"{decision.describe()}: the NAT gateway's vSwitch "
                                                   f"{nat.vswitch_id} routes to the IPv4 gateway")
        return True
    _route_step(nat_hop, decision, flow, False, f"{decision.describe()}: the NAT gateway's vSwitch {nat.vswitch_id} "
                                                f"does not route to the activated IPv4 gateway {active.id}")
    result.fail(nat_hop, _no_internet_route(decision, flow, where, active, nat_hop.id))
    return False


def evaluate_internet_to_instance(inv: CloudInventory | CloudIndex, packet: Packet,
                                  reply: bool = False) -> CloudResult:
    """A packet from the internet to the public address of an instance (an EIP, a static public IP):
    translated to the private IP it serves; with an activated IPv4 gateway, the gateway route table
    decides where it enters (Local: the vSwitch; an ECS instance or ENI: a firewall first); then the
    network ACL and the security groups of the NIC. `reply=True`: the answer of the same request (hop
    `vpc:<id>:reply`) — the security groups are stateful, but the network ACL is not, and with an
    activated IPv4 gateway the reply reaches the internet only through a vSwitch route to it."""
    index = _index(inv)
    if (skip := _not_modelled(index.inv)) is not None:
        return skip
    result = CloudResult()
    owner = ipv4gw.public_owner(index, packet.dst)
    if owner is None:
        result.assume(f"{packet.dst} is not the EIP or public IP of a collected instance: the cloud path from the "
                      "internet to it was not checked", could_change_outcome=True)
        return result
    instance, nic, private = owner.instance, owner.nic, ip_address(owner.private_ip)
    vpc = instance.vpc_id or "?"
    hop = result.hop(f"vpc:{vpc}:reply", HopKind.VPC, f"{vpc} (reply)") if reply else \
        result.hop(f"vpc:{vpc}", HopKind.VPC, vpc)
    node = next((n for n, i in index.inv.nodes.items() if i == instance.id), instance.id)
    if instance.status != "Running":
        return result.fail(hop, finding("ECS_INSTANCE_NOT_RUNNING", hop.id, instance=instance.id, node=node,
                                        status=instance.status))
    inbound = Flow(packet.src, private, packet.protocol, packet.sport, packet.dport)
    gateway = _gateway(result, index, instance.vpc_id)
    if reply:
        return _reply_to_internet(result, index, hop, nic, inbound, packet.dst, gateway)
    result.flow = inbound
    hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"{packet.dst} is {owner.how} of {instance.id}: "
                             f"delivered to its private address {private}", packet, _packet(inbound), type="DNAT",
                             original=NatEndpoint(address=packet.dst), translated=NatEndpoint(address=private),
                             nic=nic.id))
    if ipv4gw.is_active(gateway) and gateway is not None and \
            not _gateway_route_step(result, index, hop, gateway, inbound, instance):
        return result
    if not _acl_step(result, index, hop, nic, None, "ingress", inbound):
        return result
    if _sg_step(result, hop, evaluate(index, nic, "ingress", inbound), inbound, instance):
        result.assume("security groups are stateful: the replies of an allowed connection are allowed")
    return result


def _gateway_route_step(result: CloudResult, index: CloudIndex, hop: Hop, gateway: Ipv4Gateway, flow: Flow,
                        instance: Instance) -> bool:
    """Where the gateway route table of an activated IPv4 gateway delivers traffic entering the VPC."""
    decision = ipv4gw.gateway_route(index, gateway, flow.dst)
    if decision is None:
        hop.steps.append(Step.of(StepKind.VPC_ROUTE, StepAction.FORWARD, f"IPv4 gateway {gateway.id} has no gateway "
                                 "route table: traffic entering the VPC goes to the vSwitch", _packet(flow)))
        if gateway.route_table_id:
            result.assume(f"the gateway route table {gateway.route_table_id} of IPv4 gateway {gateway.id} was not "
                          "collected: it could steer the traffic to a firewall first", could_change_outcome=True)
        return True
    table = decision.table.id if decision.table else "?"
    next_hop = decision.next_hop
    if decision.entry is None or next_hop is None:
        _route_step(hop, decision, flow, True, f"{decision.describe()} (gateway route table of {gateway.id})")
        result.assume(f"gateway route table {table} of {gateway.id} has no entry for {flow.dst} (each vSwitch CIDR "
                      "has a system route there): delivery to its vSwitch is assumed", could_change_outcome=True)
        return True
    if next_hop[0].lower() == "local" or _expected_hop(index, instance, next_hop):
        _route_step(hop, decision, flow, True, f"{decision.describe()} (gateway route table of {gateway.id}): "
                                               "delivered to the vSwitch")
        return True
    if (state := _not_forwarding(index, next_hop)) is not None:
        _fail_next_hop(result, hop, decision, flow, state)
        return False
    _route_step(hop, decision, flow, True, f"{decision.describe()} (gateway route table of {gateway.id}): "
                                           f"redirected to {next_hop[0]} {next_hop[1]} first")
    appliance = f"{next_hop[0]} {next_hop[1]}"
    result.warn(hop, finding("VPC_GATEWAY_ROUTE_REDIRECT", hop.id, dst=flow.dst, route_table=table,
                             gateway=gateway.id, route=decision.entry.destination, next_hop=appliance,
                             evidence=decision.evidence()))
    result.assume(f"internet traffic to {flow.dst} passes {appliance} (gateway route table {table}): whether that "
                  "appliance forwards it to the vSwitch, and routes the reply back, is its own configuration, which "
                  "netdiag does not evaluate", could_change_outcome=True)
    return True


def _reply_to_internet(result: CloudResult, index: CloudIndex, hop: Hop, nic: NetworkInterface, request: Flow,
                       public: Any, gateway: Ipv4Gateway | None) -> CloudResult:
    """The answer of an internet client's request to a public address: stateless network ACL egress; with an
    activated IPv4 gateway, a vSwitch route to it (or to the appliance the request came through)."""
    back = Flow(request.dst, request.src, request.protocol, request.dport, request.sport)
    result.flow = back
    hop.steps.append(Step.of(StepKind.SECURITY_GROUP, StepAction.ALLOW,
                             "security groups are stateful: the reply of the allowed request passes", _packet(back),
                             stateful_reply=True))
    if not _acl_step(result, index, hop, nic, None, "egress", back):
        return result
    if gateway is not None and ipv4gw.is_gone(gateway):
        return _gateway_gone(result, hop, gateway, back, nic)
    if ipv4gw.is_active(gateway) and gateway is not None:
        decision = route_lookup(index, nic, back.dst)
        next_hop = decision.next_hop
        if next_hop is not None and (state := _not_forwarding(index, next_hop)) is not None:
            _fail_next_hop(result, hop, decision, back, state)
            return result
        if next_hop == ("Ipv4Gateway", gateway.id):
            _route_step(hop, decision, back, True, f"{decision.describe()} (the VPC's activated IPv4 gateway)")
        elif next_hop is not None and next_hop[0] in ("Instance", "NetworkInterface"):
            _route_step(hop, decision, back, True, f"{decision.describe()}: the reply goes through an appliance")
            result.assume(f"the reply to {back.dst} leaves through {next_hop[0]} {next_hop[1]}, which netdiag does not "
                          "evaluate (it must forward it to the IPv4 gateway)", could_change_outcome=True)
        else:
            _route_step(hop, decision, back, False, f"{decision.describe()}: the VPC's IPv4 gateway {gateway.id} is "
                                                    "active and this route does not lead to it")
            return result.fail(hop, _no_internet_route(decision, back, nic, gateway, hop.id))
    hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"the reply leaves from {public}", _packet(back),
                             _packet(back, src=public), type="SNAT", original=NatEndpoint(address=back.src),
                             translated=NatEndpoint(address=public), nic=nic.id))
    return result


def _public_ip(index: CloudIndex, instance: Instance, nic: NetworkInterface, src: str) -> str | None:
    """An EIP (or fixed public IP) serves the private address it is bound to: an ENI's secondary
    private IP when the EIP names it (DescribeEipAddresses PrivateIpAddress), otherwise the primary one."""
    eip = (index.eips or {}).get(src)
    if eip is not None and (eip.instance_id in (nic.id, instance.id) or eip.instance_type == "NetworkInterface"):
        return eip.ip
    if nic.public_ip and src == nic.primary_ip:
        return nic.public_ip
    if nic.type == "Primary" and instance.private_ips and src == instance.private_ips[0]:
        # an EIP bound to the instance itself (no PrivateIpAddress) serves its primary private IP
        bound = (index.eips or {}).get(instance.id)
        return instance.eip or (bound.ip if bound else None) or next(iter(instance.public_ips), None)
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
        ids = listener_acl_ids(listener)
        missing = [i for i in ids if i not in index.acls]
        if missing or not ids:
            return result.fail(hop, finding("DATA_MISSING", hop.id, what=f"ACL {', '.join(missing) or '(none named)'} "
                                            f"of listener {listener.port}", reason="not in the inventory"),
                               outcome="abort")
        acls = [index.acls[i] for i in ids]
        names = ", ".join(a.name or a.id for a in acls)
        entries = [e for a in acls for e in a.entries]
        if acl_denies(listener, acls, packet.src):
            return _lb_drop(result, hop, finding("LB_ACL_DENY", hop.id, acl=names, port=listener.port,
                                                 lb=lb.id, src=packet.src,
                                                 evidence={"acl_type": listener.acl_type, "entries": entries}),
                            lb=lb.id, listener_port=listener.port)
        hop.steps.append(Step.of(StepKind.POLICY, StepAction.ALLOW, (
            f"{listener.acl_type}list ACL {names} admits {packet.src}" if entries else
            f"{listener.acl_type}list ACL {names} has no entries: access control does not take effect"),
            acl=", ".join(ids), acl_type=listener.acl_type))
    targets = backends(index, lb, listener)
    _check_backends(result, index, hop, lb.id, listener, targets, service, packet)
    _backend_security_groups(result, index, lb.id, packet)
    _clb_and_ipv4_gateway(result, index, lb.id, lb.vpc_id)
    return result


def _clb_and_ipv4_gateway(result: CloudResult, index: CloudIndex, lb_id: str, vpc_id: str | None) -> None:
    """The IPv4 gateway pages say it translates the public addresses of ECS instances and ENIs; they do not say
    that a CLB's traffic passes it or its gateway route table. Not a verdict: stated, and said to matter where the
    gateway route table would hand a serving backend's traffic to an appliance."""
    gateway = ipv4gw.gateway_of(index, vpc_id)
    if gateway is None or not ipv4gw.is_active(gateway):
        return
    steered = []
    for t in result.backends:
        decision = ipv4gw.gateway_route(index, gateway, ip_address(t.ip)) if t.ip else None
        hop = decision.next_hop if decision is not None else None
        if hop is not None and hop[0].lower() != "local":
            steered.append(f"{t.label} → {hop[0]} {hop[1]}")
    result.assume(f"the VPC of {lb_id} has an activated IPv4 gateway {gateway.id}; the Alibaba Cloud pages read do not "
                  "say that CLB traffic passes it or its gateway route table, so it was not applied to the CLB" +
                  (f" (it would steer {'; '.join(steered)})" if steered else ""), could_change_outcome=bool(steered))


def _backend_security_groups(result: CloudResult, index: CloudIndex, lb_id: str, packet: Packet) -> None:
    """Whether the backends' security groups filter layer-4 CLB traffic is left open by the pages read
    (docs/cloud.md): the groups are not a verdict, but where one would refuse the client's packet
    that could change the outcome, and it is said."""
    refused = []
    for t in result.backends:
        instance = index.instances.get(t.server_id) or index.instances.get(
            (index.enis.get(t.server_id) or NetworkInterface(id="")).instance_id or "")
        if t.ip is None or instance is None:
            continue
        nic = index.nic_for(instance, ip_address(t.ip))
        decision = evaluate(index, nic, "ingress", Flow(packet.src, ip_address(t.ip), packet.protocol, packet.sport,
                                                        t.port))
        if not decision.allowed:
            refused.append(f"{t.label} ({decision.reason})")
    if refused:
        result.assume(f"the security groups of backends {'; '.join(refused)} of {lb_id} would refuse the client "
                      f"{packet.src} if they filter layer-4 CLB traffic, which the Alibaba Cloud pages read leave open "
                      "(docs/cloud.md)", could_change_outcome=True)
    else:
        result.assume("CLB backend security groups are not a verdict for load-balanced traffic (the Alibaba Cloud "
                      "pages read leave open whether they filter layer-4 CLB traffic; see docs/cloud.md); they would "
                      "admit this client", could_change_outcome=False)


def _lb_drop(result: CloudResult, hop: Hop, f: Finding, **info: Any) -> CloudResult:
    """The load balancer drops: a step (`info`: LoadBalancerInfo fields) and the finding."""
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.DROP, f.message, finding=f.code, **info))
    return result.fail(hop, f)


def _check_backends(result: CloudResult, index: CloudIndex, hop: Hop, lb_id: str, listener: Listener,
                    targets: list[BackendTarget], service: ServiceResolution | None, packet: Packet) -> None:
    """Which backends the listener forwards to: weight above 0, healthy (unless the health check is
    off), the primary of a primary/secondary group while it is healthy, and admitted by the network
    ACL of its vSwitch (which filters CLB-forwarded traffic too; layer-4 CLB keeps the client address)."""
    port = listener.port
    service_name = service.service if service else "?"
    evidence = {"backends": [t.__dict__ for t in targets], "scheduler": listener.scheduler,
                "health_check": listener.health_check}
    if not targets:
        _lb_drop(result, hop, finding("LB_BACKEND_MISMATCH", hop.id, lb=lb_id, port=port, service=service_name,
                                      detail="the listener has no backend servers"), lb=lb_id, listener_port=port)
        return
    if service is not None:
        wrong = _mismatched(targets, service)
        if wrong:
            result.warn(hop, finding("LB_BACKEND_MISMATCH", hop.id, lb=lb_id, port=port, service=service_name,
                                     detail="; ".join(wrong), evidence=evidence))
    # weights take effect under the weighted schedulers only: round robin ignores them (CLB server groups)
    weights_apply = listener.scheduler != "rr"
    weighted = [t for t in targets if t.weight > 0 or not weights_apply]
    for t in targets:
        if t.weight <= 0 and weights_apply:
            result.findings.append(finding("LB_BACKEND_WEIGHT_ZERO", hop.id, backend=t.label, lb=lb_id, port=port,
                                           severity=Severity.WARNING if weighted else Severity.ERROR,
                                           evidence={"node": t.node, "type": t.type,
                                                     "scheduler": listener.scheduler}))
    if not weights_apply and any(t.weight <= 0 for t in targets):
        result.assume(f"listener {port} of {lb_id} schedules round robin (rr), where backend weights do not take "
                      "effect: its backends of weight 0 still receive requests")
    if listener.health_check == "off":
        # without a health check the CLB cannot tell a dead backend: every weighted one is used
        result.assume(f"the health check of listener {port} on {lb_id} is off: the load balancer forwards to every "
                      "backend with a weight above 0, answering or not", could_change_outcome=True)
        healthy, unknown = weighted, []
    else:
        # DescribeHealthStatus "unavailable": the health check did not complete — no verdict on the backend
        healthy = [t for t in weighted if t.health == "normal"]
        unknown = [t for t in weighted if t.health in ("unknown", "unavailable")]
        for t in unknown:
            result.assume(f"the health of backend {t.label} port {t.port} of {lb_id} is "
                          f"{'not reported' if t.health == 'unknown' else 'unavailable (no completed check)'}",
                          could_change_outcome=not healthy)
        for t in weighted:
            if t.health not in ("normal", "unknown", "unavailable"):
                result.findings.append(finding(
                    "LB_BACKEND_UNHEALTHY", hop.id, backend=t.label, port=t.port, status=t.health, lb=lb_id,
                    severity=Severity.WARNING if healthy or unknown else Severity.ERROR,
                    evidence={"node": t.node, "type": t.type}))
    serving = healthy + unknown
    if any(t.server_type for t in targets):
        # primary/secondary group: the primary while its health check passes, else the secondary, which is
        # not health-checked by default (CLB server groups)
        primary = [t for t in serving if t.server_type == "Master"]
        secondary = [t for t in weighted if t.server_type == "Slave"]
        serving = primary or secondary
        if not primary and secondary:
            result.assume(f"the primary server of listener {port} on {lb_id} fails its health check: traffic goes to "
                          f"the secondary {', '.join(t.label for t in secondary)}, which the load balancer does not "
                          "health-check by default", could_change_outcome=True)
    if index.network_acls is None:
        result.assume("network ACLs were not collected (an inventory older than their support): the backends' "
                      "vSwitch ACLs were not checked", could_change_outcome=True)
    denied = [(t, d) for t in serving if (d := _backend_acl(index, t, packet)) is not None]
    serving = [t for t in serving if all(t is not other for other, _ in denied)]
    for t, decision in denied:
        result.findings.append(finding(
            "VPC_NETWORK_ACL_DENY", hop.id, acl=decision.acl.name or decision.acl.id, vswitch=decision.vswitch,
            packet=f"{packet.protocol} {packet.src} → {t.ip}:{t.port}", direction="ingress", entry=decision.reason,
            severity=Severity.WARNING if serving else Severity.ERROR,
            evidence={"backend": t.label, "lb": lb_id, **decision.evidence()}))
    ok = bool(serving)
    hop.steps.append(Step.of(StepKind.LOAD_BALANCER, StepAction.FORWARD if ok else StepAction.DROP,
                             f"{len(serving)} of {len(targets)} backends take traffic on listener {port} "
                             f"({len(weighted)} with a weight above 0, scheduler "
                             f"{listener.scheduler or 'not collected'})",
                             lb=lb_id, listener_port=port, scheduler=listener.scheduler,
                             health_check=listener.health_check, backends=[LbBackend(**t.__dict__) for t in targets],
                             serving=[t.label for t in serving]))
    result.backends = serving
    if not ok:
        hop.status, result.outcome = HopStatus.ERROR, "drop"
    elif len(serving) < len(targets) and hop.status == HopStatus.OK:
        hop.status = HopStatus.WARNING


def _backend_acl(index: CloudIndex, target: BackendTarget, packet: Packet) -> netacl.AclDecision | None:
    """The network ACL of the backend's vSwitch when it drops the forwarded packet (client address kept)."""
    if target.ip is None:
        return None
    eni = index.eni_by_ip.get(ip_address(target.ip))
    instance = index.instances.get(target.server_id)
    vswitch = eni.vswitch_id if eni else (instance.vswitch_id if instance else None)
    flow = Flow(packet.src, ip_address(target.ip), packet.protocol, packet.sport, target.port)
    decision = netacl.check(index, vswitch, None, "ingress", flow)
    return decision if decision is not None and not decision.allowed else None


def _mismatched(targets: list[BackendTarget], service: ServiceResolution) -> list[str]:
    wrong = []
    pod_ports = {(str(b.address), b.port) for b in service.backends}
    for t in targets:
        if t.type == "ecs" and service.node_port is not None and t.port != service.node_port:
            wrong.append(f"{t.label} port {t.port}, expected NodePort {service.node_port}")
        elif t.type == "eni" and pod_ports and (t.ip, t.port) not in pod_ports:
            wrong.append(f"{t.label} port {t.port} is not an endpoint of the service")
    return wrong
