"""Inbound from the internet to an instance: a packet to an EIP or public IP — translated to the private
address it is bound to (a secondary private IP of an ENI included), through an activated IPv4 gateway's
gateway route table, then the network ACL and the security groups of the NIC that holds the address;
and the reply's way back out. A public IP of a NAT gateway goes through its DNAT table (dnat.py)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from services.simulator.cloudeval import dnat, ipv4gw
from services.simulator.cloudeval.hopchecks import (
    acl_step,
    expected_hop,
    fail_next_hop,
    not_forwarding,
    route_step,
    sg_step,
)
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.result import CloudResult, index_of, not_modelled, packet_of
from services.simulator.cloudeval.security_groups import Flow, evaluate
from services.simulator.cloudeval.to_internet import gateway_gone, no_internet_route, vpc_gateway
from services.simulator.cloudeval.vpc import route_lookup
from shared.cloud import CloudInventory, Instance, Ipv4Gateway, NetworkInterface
from shared.codes import finding
from shared.schemas import Hop, HopKind, Packet, Step, StepAction, StepKind
from shared.steps import NatEndpoint


def evaluate_internet_to_instance(inv: CloudInventory | CloudIndex, packet: Packet,
                                  reply: bool = False) -> CloudResult:
    """A packet from the internet to the public address of an instance (an EIP, a static public IP):
    translated to the private IP it serves; with an activated IPv4 gateway, the gateway route table
    decides where it enters (Local: the vSwitch; an ECS instance or ENI: a firewall first); then the
    network ACL and the security groups of the NIC. `reply=True`: the answer of the same request (hop
    `vpc:<id>:reply`) — the security groups are stateful, but the network ACL is not, and with an
    activated IPv4 gateway the reply reaches the internet only through a vSwitch route to it."""
    index = index_of(inv)
    if (skip := not_modelled(index.inv)) is not None:
        return skip
    result = CloudResult()
    owner = ipv4gw.public_owner(index, packet.dst)
    if owner is None and not reply and (nat := dnat.nat_of_public(index, packet.dst)) is not None:
        return dnat.evaluate_internet_to_dnat(index, nat, packet)
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
    gateway = vpc_gateway(result, index, instance.vpc_id)
    if reply:
        return _reply_to_internet(result, index, hop, nic, inbound, packet.dst, gateway)
    result.flow = inbound
    hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"{packet.dst} is {owner.how} of {instance.id}: "
                             f"delivered to its private address {private}", packet, packet_of(inbound), type="DNAT",
                             original=NatEndpoint(address=packet.dst), translated=NatEndpoint(address=private),
                             nic=nic.id))
    if ipv4gw.is_active(gateway) and gateway is not None and \
            not _gateway_route_step(result, index, hop, gateway, inbound, instance):
        return result
    if not acl_step(result, index, hop, nic, None, "ingress", inbound):
        return result
    if sg_step(result, hop, evaluate(index, nic, "ingress", inbound), inbound, instance):
        result.assume("security groups are stateful: the replies of an allowed connection are allowed")
    return result


def _gateway_route_step(result: CloudResult, index: CloudIndex, hop: Hop, gateway: Ipv4Gateway, flow: Flow,
                        instance: Instance) -> bool:
    """Where the gateway route table of an activated IPv4 gateway delivers traffic entering the VPC."""
    decision = ipv4gw.gateway_route(index, gateway, flow.dst)
    if decision is None:
        hop.steps.append(Step.of(StepKind.VPC_ROUTE, StepAction.FORWARD, f"IPv4 gateway {gateway.id} has no gateway "
                                 "route table: traffic entering the VPC goes to the vSwitch", packet_of(flow)))
        if gateway.route_table_id:
            result.assume(f"the gateway route table {gateway.route_table_id} of IPv4 gateway {gateway.id} was not "
                          "collected: it could steer the traffic to a firewall first", could_change_outcome=True)
        return True
    table = decision.table.id if decision.table else "?"
    next_hop = decision.next_hop
    if decision.entry is None or next_hop is None:
        route_step(hop, decision, flow, True, f"{decision.describe()} (gateway route table of {gateway.id})")
        result.assume(f"gateway route table {table} of {gateway.id} has no entry for {flow.dst} (each vSwitch CIDR "
                      "has a system route there): delivery to its vSwitch is assumed", could_change_outcome=True)
        return True
    if next_hop[0].lower() == "local" or expected_hop(index, instance, next_hop):
        route_step(hop, decision, flow, True, f"{decision.describe()} (gateway route table of {gateway.id}): "
                                               "delivered to the vSwitch")
        return True
    if (state := not_forwarding(index, next_hop)) is not None:
        fail_next_hop(result, hop, decision, flow, state)
        return False
    route_step(hop, decision, flow, True, f"{decision.describe()} (gateway route table of {gateway.id}): "
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
                             "security groups are stateful: the reply of the allowed request passes", packet_of(back),
                             stateful_reply=True))
    if not acl_step(result, index, hop, nic, None, "egress", back):
        return result
    if gateway is not None and ipv4gw.is_gone(gateway):
        return gateway_gone(result, hop, gateway, back, nic)
    if ipv4gw.is_active(gateway) and gateway is not None:
        decision = route_lookup(index, nic, back.dst)
        next_hop = decision.next_hop
        if next_hop is not None and (state := not_forwarding(index, next_hop)) is not None:
            fail_next_hop(result, hop, decision, back, state)
            return result
        if next_hop == ("Ipv4Gateway", gateway.id):
            route_step(hop, decision, back, True, f"{decision.describe()} (the VPC's activated IPv4 gateway)")
        elif next_hop is not None and next_hop[0] in ("Instance", "NetworkInterface"):
            route_step(hop, decision, back, True, f"{decision.describe()}: the reply goes through an appliance")
            result.assume(f"the reply to {back.dst} leaves through {next_hop[0]} {next_hop[1]}, which netdiag does not "
                          "evaluate (it must forward it to the IPv4 gateway)", could_change_outcome=True)
        else:
            route_step(hop, decision, back, False, f"{decision.describe()}: the VPC's IPv4 gateway {gateway.id} is "
                                                    "active and this route does not lead to it")
            return result.fail(hop, no_internet_route(decision, back, nic, gateway, hop.id))
    hop.steps.append(Step.of(StepKind.NAT, StepAction.REWRITE, f"the reply leaves from {public}", packet_of(back),
                             packet_of(back, src=public), type="SNAT", original=NatEndpoint(address=back.src),
                             translated=NatEndpoint(address=public), nic=nic.id))
    return result

