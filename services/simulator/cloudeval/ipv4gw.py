"""IPv4 gateways and their gateway route tables (docs/cloud.md, "Internet egress" and "Internet →
instance"; the page tags in brackets are docs/cloud.md's sources).

* An IPv4 gateway changes nothing before it is activated; once activated, instances reach the
  internet only through routes that point to it [IPV4GW]. It translates the addresses that have a
  public IP (EIP, static public IP) [IPV4GW-OVERVIEW]; it gives no address internet access by itself,
  a NAT gateway does, with the NAT gateway's own vSwitch routed to the IPv4 gateway [IPV4GW-NAT].
* A VPC whose IPv4 gateway is deleted has no internet access [IPV4GW].
* The gateway route table bound to the gateway steers traffic entering the VPC, by destination: each
  vSwitch CIDR has a route whose next hop is Local (delivered to the vSwitch), or an ECS instance or
  ENI it was changed to (a firewall that sees the traffic first) [IPV4GW-RT, GWRT-API].
"""

from __future__ import annotations

from typing import NamedTuple

from services.simulator.cloudeval.index import IP, CloudIndex, contains, network
from services.simulator.cloudeval.vpc import RouteDecision
from shared.cloud import Instance, Ipv4Gateway, NetworkInterface, RouteEntry

GONE = ("Deleting", "Deleted")


class PublicOwner(NamedTuple):
    instance: Instance
    nic: NetworkInterface
    private_ip: str
    how: str  # "EIP eip-x" or "static public IP" (evidence)


def gateway_of(index: CloudIndex, vpc_id: str | None) -> Ipv4Gateway | None:
    """The VPC's IPv4 gateway (one per VPC), None when it has none or they were not collected."""
    return next((g for g in index.inv.ipv4_gateways or [] if g.vpc_id == vpc_id), None)


def is_gone(gateway: Ipv4Gateway) -> bool:
    return gateway.status in GONE


def is_active(gateway: Ipv4Gateway | None) -> bool:
    """Activated and not being deleted: from then on the routes decide what reaches the internet."""
    return gateway is not None and gateway.enabled and not is_gone(gateway)


def gateway_route(index: CloudIndex, gateway: Ipv4Gateway, dst: IP) -> RouteDecision | None:
    """The gateway route table's decision for traffic entering the VPC to `dst` (longest prefix over the
    Available entries); None when no gateway route table is bound to the gateway (or it was not collected)."""
    table = index.tables.get(gateway.route_table_id or "") or next(
        (t for t in index.inv.route_tables if t.vpc_id == gateway.vpc_id and t.associate_type == "Gateway"
         and not gateway.route_table_id), None)  # a snapshot that names the table only by its association
    if table is None:
        return None
    decision = RouteDecision(table=table)
    best: RouteEntry | None = None
    for entry in table.entries:
        if not contains(entry.destination, dst):
            continue
        if entry.status != "Available":
            decision.notes.append(f"gateway route entry {entry.destination} is {entry.status}, not Available: ignored")
        elif best is None or network(entry.destination).prefixlen > network(best.destination).prefixlen:
            best = entry
    decision.entry = best
    return decision


def public_owner(index: CloudIndex, address: IP) -> PublicOwner | None:
    """The instance, NIC and private IP a public address serves: an EIP bound to an instance (its primary
    private IP) or to an ENI (the private IP it names, else the ENI's primary), or a static public IP."""
    text = str(address)
    for eip in index.inv.eips or []:
        if eip.ip != text or eip.status != "InUse":
            continue
        eni = index.enis.get(eip.instance_id or "") if eip.instance_type == "NetworkInterface" else None
        instance = index.instances.get((eni.instance_id if eni else eip.instance_id) or "")
        if instance is None:
            return None  # bound to a NAT gateway, a CLB or an instance outside the inventory
        nic = eni or index.primary_eni(instance)
        private = eip.private_ip or nic.primary_ip
        return PublicOwner(instance, nic, private, f"EIP {eip.id}") if private else None
    for instance in index.inv.instances:
        if text == instance.eip or text in instance.public_ips:
            nic = index.primary_eni(instance)
            return PublicOwner(instance, nic, nic.primary_ip, "static public IP") if nic.primary_ip else None
    for eni in index.inv.network_interfaces:
        instance = index.instances.get(eni.instance_id or "")
        if eni.public_ip == text and instance is not None and eni.primary_ip:
            return PublicOwner(instance, eni, eni.primary_ip, f"public IP of {eni.id}")
    return None
