"""Outbound to the internet: a packet leaving a node for a public address — egress security groups and
network ACL, then the instance's public address (EIP), or the VPC route to a NAT gateway and its SNAT entry;
with an activated IPv4 gateway, the routes to it decide (ipv4gw.py)."""

from __future__ import annotations

from services.simulator.cloudeval import ipv4gw
from services.simulator.cloudeval.hopchecks import (
    acl_step,
    fail_next_hop,
    leave_source,
    not_forwarding,
    route_step,
    sg_step,
)
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.result import CloudResult, index_of, not_modelled, packet_of
from services.simulator.cloudeval.security_groups import Flow, evaluate
from services.simulator.cloudeval.vpc import RouteDecision, route_lookup, snat_entry_for
from shared.cloud import CloudInventory, Instance, Ipv4Gateway, NatGateway, NetworkInterface
from shared.codes import finding
from shared.schemas import Finding, Hop, HopKind, Packet, Step, StepAction, StepKind
from shared.steps import NatEndpoint


def evaluate_to_internet(inv: CloudInventory | CloudIndex, src_node: str, packet: Packet) -> CloudResult:
    """A packet from `src_node` (as it leaves the node, after any node-level masquerade) to a
    public address: egress security groups and network ACL; then an EIP, or the VPC route to a NAT
    gateway and an SNAT entry covering the source. Once the VPC's IPv4 gateway is activated the
    vSwitch's route decides: to the gateway (a public address), or to a NAT gateway whose own vSwitch
    routes to the gateway (ipv4gw.py)."""
    index = index_of(inv)
    if (skip := not_modelled(index.inv)) is not None:
        return skip
    result, hop, src = leave_source(index, src_node)
    if src is None:
        return result
    flow = result.flow = Flow(packet.src, packet.dst, packet.protocol, packet.sport, packet.dport)
    nic = index.nic_for(src, flow.src)
    if not sg_step(result, hop, evaluate(index, nic, "egress", flow), flow, src):
        return result
    if not acl_step(result, index, hop, nic, None, "egress", flow):
        return result
    public = _public_ip(index, src, nic, str(flow.src))
    gateway = vpc_gateway(result, index, nic.vpc_id)
    if gateway is not None and ipv4gw.is_gone(gateway):
        return gateway_gone(result, hop, gateway, flow, nic)
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
        route_step(hop, decision, flow, False, why)
        return result.fail(hop, no_internet_route(decision, flow, nic, active, hop.id))
    if (state := not_forwarding(index, next_hop)) is not None:
        fail_next_hop(result, hop, decision, flow, state)
        return result
    kind, target = next_hop
    if kind == "local":
        route_step(hop, decision, flow, True, decision.describe())
        result.assume(f"{flow.dst} is inside the VPC: not internet traffic")
        return result
    if kind == "Ipv4Gateway" and active is not None and target == active.id:
        if public is None:  # the gateway translates public addresses only; a NAT gateway gives the others one
            route_step(hop, decision, flow, False, f"{decision.describe()}: {flow.src} has no public address")
            return result.fail(hop, finding(
                "VPC_WRONG_NEXT_HOP", hop.id, actual=f"Ipv4Gateway {target}", dst=flow.dst,
                expected=f"a NAT gateway with an SNAT entry covering {flow.src} (an IPv4 gateway translates only "
                         "addresses with a public IP; or bind an EIP)",
                evidence={"ipv4_gateway": target, "src": str(flow.src), **decision.evidence()}))
        route_step(hop, decision, flow, True, f"{decision.describe()} (the VPC's activated IPv4 gateway)")
        _leave_public(result, hop, flow, public, nic)
        return result
    route_step(hop, decision, flow, True, decision.describe())
    if kind != "NatGateway":
        state_text = "not activated" if gateway is not None and kind == "Ipv4Gateway" else "not modelled"
        result.assume(f"traffic to {flow.dst} leaves the VPC through {kind} {target} ({state_text}), which netdiag "
                      "does not evaluate", could_change_outcome=True)
        return result
    _through_nat(result, index, target, flow, src, nic, active)
    return result


def vpc_gateway(result: CloudResult, index: CloudIndex, vpc_id: str | None) -> Ipv4Gateway | None:
    """The VPC's IPv4 gateway; an inventory that did not collect them says so (an activated one would make the
    routes decide what reaches the internet)."""
    if index.inv.ipv4_gateways is None:
        result.assume("IPv4 gateways were not collected (an inventory older than their support, or an API error): "
                      "had the VPC an activated one, only routes to it would reach the internet",
                      could_change_outcome=True)
    return ipv4gw.gateway_of(index, vpc_id)


def _leave_public(result: CloudResult, hop: Hop, flow: Flow, public: str, nic: NetworkInterface) -> None:
    hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"{flow.src} leaves through its public address "
                             f"{public}", packet_of(flow), packet_of(flow, src=public), type="SNAT",
                             original=NatEndpoint(address=flow.src), translated=NatEndpoint(address=public),
                             nic=nic.id))
    result.hop("internet", HopKind.INTERNET, "internet").steps.append(Step.of(
        StepKind.ROUTE, StepAction.FORWARD, f"to the internet: {flow.dst}", destination=flow.dst))


def no_internet_route(decision: RouteDecision, flow: Flow, nic: NetworkInterface, active: Ipv4Gateway | None,
                       hop_id: str) -> Finding:
    table = decision.table.id if decision.table else f"(none for {nic.vswitch_id})"
    fix = (f"pointing to the VPC's IPv4 gateway {active.id} (0.0.0.0/0): once an IPv4 gateway is activated, "
           "instances reach the internet only through routes to it" if active is not None else
           "(0.0.0.0/0) pointing to a NAT gateway with an SNAT entry for the source, or bind an EIP to the instance")
    evidence = {"ipv4_gateway": active.id, **decision.evidence()} if active is not None else decision.evidence()
    return finding("VPC_NO_ROUTE", hop_id, dst=flow.dst, route_table=table, fix=fix, evidence=evidence)


def gateway_gone(result: CloudResult, hop: Hop, gateway: Ipv4Gateway, flow: Flow,
                  nic: NetworkInterface) -> CloudResult:
    """A VPC whose IPv4 gateway is deleted has no internet access (the feature cannot be turned off)."""
    hop.steps.append(Step.of(StepKind.VPC_ROUTE, StepAction.DROP, f"the VPC's IPv4 gateway {gateway.id} is "
                             f"{gateway.status}: the VPC has no internet access", packet_of(flow)))
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
            f"{nic.vswitch_id})", packet_of(flow), type="SNAT", original=NatEndpoint(address=flow.src),
            nat_gateway=nat.id, finding="NAT_NO_SNAT",
            snat_entries=[f"{e.id} {e.source_cidr or e.source_vswitch_id} → {e.snat_ip}" for e in nat.snat_entries]))
        result.fail(nat_hop, finding("NAT_NO_SNAT", nat_hop.id, nat_gateway=nat.id, src=flow.src,
                                     evidence={"vswitch": nic.vswitch_id, "instance": src.id}))
        return
    snat_ip = entry.snat_ip.split(",")[0]
    nat_hop.steps.append(Step.of(
        StepKind.NAT, StepAction.REWRITE, f"SNAT entry {entry.id} of {nat.id} translates {flow.src} to {snat_ip}",
        packet_of(flow), packet_of(flow, src=snat_ip) if snat_ip else None, type="SNAT",
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
        route_step(nat_hop, decision, flow, True, f"{decision.describe()}: the NAT gateway's vSwitch "
                                                   f"{nat.vswitch_id} routes to the IPv4 gateway")
        return True
    route_step(nat_hop, decision, flow, False, f"{decision.describe()}: the NAT gateway's vSwitch {nat.vswitch_id} "
                                                f"does not route to the activated IPv4 gateway {active.id}")
    result.fail(nat_hop, no_internet_route(decision, flow, where, active, nat_hop.id))
    return False


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

