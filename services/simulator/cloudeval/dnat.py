"""Inbound from the internet through a NAT gateway's DNAT table: a packet to a public IP of the NAT gateway is
forwarded by the DNAT entry matching its protocol and port from ExternalIp:ExternalPort to InternalIp:InternalPort
(IpProtocol TCP, UDP or Any; Any/Any ports: IP mapping) and the responses go back the same way (CreateForwardEntry);
then the network ACL and the security groups of the NIC that holds the internal address judge the translated packet.
Without a matching Available entry the NAT gateway forwards nothing."""

from __future__ import annotations

from ipaddress import ip_address

from services.simulator.cloudeval.hopchecks import acl_step, sg_step
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.result import CloudResult, packet_of
from services.simulator.cloudeval.security_groups import Flow, evaluate
from shared.cloud import DnatEntry, NatGateway
from shared.codes import finding
from shared.schemas import HopKind, Packet, Step, StepAction, StepKind
from shared.steps import NatEndpoint


def nat_of_public(index: CloudIndex, address: object) -> NatGateway | None:
    """The NAT gateway one of whose public IPs (or DNAT external IPs) is `address`."""
    text = str(address)
    return next((n for n in index.nats.values()
                 if text in n.ips or any(e.external_ip == text for e in n.dnat_entries)), None)


def _ports(text: str) -> tuple[int, int] | None:
    """An entry's port, "80" or a range "80/90"; None: Any (IP mapping)."""
    if text.strip().lower() in ("", "any"):
        return None
    low, _, high = text.partition("/")
    return int(low), int(high or low)


def translate(entry: DnatEntry, packet: Packet) -> int | bool | None:
    """The internal port `entry` forwards `packet` to (None: its own port, IP mapping), False: it does not match."""
    if entry.status != "Available" or entry.external_ip != str(packet.dst):
        return False
    if entry.protocol.lower() not in ("any", packet.protocol):
        return False
    external = _ports(entry.external_port)
    if external is None:
        return None
    if packet.dport is None or not external[0] <= packet.dport <= external[1]:
        return False
    internal = _ports(entry.internal_port)
    return packet.dport if internal is None else internal[0] + packet.dport - external[0]


def evaluate_internet_to_dnat(index: CloudIndex, nat: NatGateway, packet: Packet) -> CloudResult:
    result = CloudResult()
    nat_hop = result.hop(f"nat:{nat.id}", HopKind.NAT_GATEWAY, nat.name or nat.id)
    match = next(((e, port) for e in nat.dnat_entries if (port := translate(e, packet)) is not False), None)
    if match is None:
        entries = [f"{e.id} {e.protocol} {e.external_ip}:{e.external_port} → {e.internal_ip}:{e.internal_port} "
                   f"({e.status})" for e in nat.dnat_entries]
        nat_hop.steps.append(Step.of(
            StepKind.NAT, StepAction.DROP, f"no DNAT entry of {nat.id} forwards {packet.protocol} {packet.dst}:"
            f"{packet.dport} (entries: {'; '.join(entries) or 'none'})", packet, type="DNAT", nat_gateway=nat.id,
            finding="NAT_NO_DNAT"))
        return result.fail(nat_hop, finding("NAT_NO_DNAT", nat_hop.id, nat_gateway=nat.id, address=packet.dst,
                                            port=packet.dport, protocol=packet.protocol,
                                            evidence={"dnat_entries": entries}))
    entry, port = match
    internal = ip_address(entry.internal_ip)
    inbound = Flow(packet.src, internal, packet.protocol, packet.sport, packet.dport if port is None else port)
    result.flow = inbound
    nat_hop.steps.append(Step.of(
        StepKind.NAT, StepAction.REWRITE, f"DNAT entry {entry.id} of {nat.id} forwards {packet.dst}:{packet.dport} "
        f"to {internal}:{inbound.dport}", packet, packet_of(inbound), type="DNAT", nat_gateway=nat.id,
        original=NatEndpoint(address=packet.dst, port=packet.dport),
        translated=NatEndpoint(address=internal, port=inbound.dport)))
    eni = index.eni_by_ip.get(internal)
    instance = index.instances.get(eni.instance_id or "") if eni is not None else None
    if eni is None or instance is None:
        result.assume(f"{internal}, where DNAT entry {entry.id} forwards, is not a collected instance's address: its "
                      "network ACL and security groups were not checked", could_change_outcome=True)
        return result
    vpc = instance.vpc_id or nat.vpc_id
    hop = result.hop(f"vpc:{vpc}", HopKind.VPC, vpc)
    if instance.status != "Running":
        node = next((n for n, i in index.inv.nodes.items() if i == instance.id), instance.id)
        return result.fail(hop, finding("ECS_INSTANCE_NOT_RUNNING", hop.id, instance=instance.id, node=node,
                                        status=instance.status))
    if acl_step(result, index, hop, eni, None, "ingress", inbound) and \
            sg_step(result, hop, evaluate(index, eni, "ingress", inbound), inbound, instance):
        result.assume("security groups are stateful and the NAT gateway sends the responses back through the same "
                      "DNAT entry: the replies of an allowed connection are allowed")
        if any(v.id == eni.vswitch_id and v.network_acl_id for v in index.inv.vswitches):
            result.assume(f"the network ACL of vSwitch {eni.vswitch_id} is stateless: the reply leaving it was not "
                          "checked", could_change_outcome=True)
    return result
