"""Lookup tables over a cloud inventory, built once per diagnosis (or per bench run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from shared.cloud import (
    AccessControlList,
    CloudInventory,
    Eip,
    Instance,
    LoadBalancer,
    NatGateway,
    NetworkAcl,
    NetworkInterface,
    PortRangeList,
    PrefixList,
    RouteTable,
    SecurityGroup,
    Vpc,
    VSwitch,
)

IP = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


@lru_cache(maxsize=8192)
def network(cidr: str) -> Network:
    return ip_network(cidr, strict=False)


def contains(cidr: str, ip: IP) -> bool:
    net = network(cidr)
    return ip.version == net.version and ip in net


@dataclass
class CloudIndex:
    inv: CloudInventory
    instances: dict[str, Instance] = field(init=False)
    enis: dict[str, NetworkInterface] = field(init=False)
    groups: dict[str, SecurityGroup] = field(init=False)
    vpcs: dict[str, Vpc] = field(init=False)
    vswitches: dict[str, VSwitch] = field(init=False)
    tables: dict[str, RouteTable] = field(init=False)
    nats: dict[str, NatGateway] = field(init=False)
    lbs: dict[str, LoadBalancer] = field(init=False)
    acls: dict[str, AccessControlList] = field(init=False)
    eni_by_ip: dict[IP, NetworkInterface] = field(init=False)
    # None: the inventory predates these objects (not collected), as opposed to none existing
    prefix_lists: dict[str, PrefixList] | None = field(init=False)
    port_lists: dict[str, PortRangeList] | None = field(init=False)
    network_acls: dict[str, NetworkAcl] | None = field(init=False)  # by vSwitch id
    eips: dict[str, Eip] | None = field(init=False)  # by the private IP (or instance id) they serve
    members: dict[str, set[IP]] = field(init=False, repr=False)
    memo: dict[object, object] = field(init=False, repr=False, default_factory=dict)  # per-engine caches

    def __post_init__(self) -> None:
        inv = self.inv
        self.instances = {i.id: i for i in inv.instances}
        self.enis = {e.id: e for e in inv.network_interfaces}
        self.groups = {g.id: g for g in inv.security_groups}
        self.vpcs = {v.id: v for v in inv.vpcs}
        self.vswitches = {s.id: s for s in inv.vswitches}
        self.tables = {t.id: t for t in inv.route_tables}
        self.nats = {n.id: n for n in inv.nat_gateways}
        self.lbs = {lb.id: lb for lb in inv.load_balancers}
        self.acls = {a.id: a for a in inv.acls}
        self.prefix_lists = None if inv.prefix_lists is None else {p.id: p for p in inv.prefix_lists}
        self.port_lists = None if inv.port_lists is None else {p.id: p for p in inv.port_lists}
        self.network_acls = None if inv.network_acls is None else {
            vsw: acl for acl in inv.network_acls for vsw in acl.vswitch_ids}
        self.eips = None if inv.eips is None else {
            e.private_ip or e.instance_id or e.id: e for e in inv.eips if e.status == "InUse"}
        self.eni_by_ip = {}
        self.members = {}
        for eni in inv.network_interfaces:
            for raw in eni.private_ips:
                ip = ip_address(raw)
                self.eni_by_ip[ip] = eni
                for group in eni.security_group_ids:
                    self.members.setdefault(group, set()).add(ip)

    def instance_of_node(self, node: str | None) -> Instance | None:
        instance_id = self.inv.nodes.get(node or "")
        return self.instances.get(instance_id or "")

    def primary_eni(self, instance: Instance) -> NetworkInterface:
        """The instance's primary ENI; synthesised from the instance when ENIs were not listed."""
        for eni in self.inv.network_interfaces:
            if eni.instance_id == instance.id and eni.type == "Primary":
                return eni
        ips = instance.private_ips
        return NetworkInterface(id=f"{instance.id}/primary", instance_id=instance.id, vpc_id=instance.vpc_id,
                                vswitch_id=instance.vswitch_id, primary_ip=ips[0] if ips else None,
                                private_ips=ips, security_group_ids=instance.security_group_ids)

    def nic_for(self, instance: Instance, ip: IP) -> NetworkInterface:
        """The ENI that sends/receives `ip` on `instance`: the ENI owning the address (Terway
        pods on secondary ENIs), otherwise the primary ENI (routed pod CIDRs, node addresses)."""
        eni = self.eni_by_ip.get(ip)
        if eni is not None and eni.instance_id == instance.id:
            return eni
        return self.primary_eni(instance)

    def route_table_of(self, vswitch_id: str | None, vpc_id: str | None) -> RouteTable | None:
        vsw = self.vswitches.get(vswitch_id or "")
        if vsw and vsw.route_table_id in self.tables:
            return self.tables[vsw.route_table_id]
        for table in self.inv.route_tables:
            if vswitch_id in table.vswitch_ids:
                return table
        # a gateway route table steers traffic entering through an IPv4 gateway, never a vSwitch's
        return next((t for t in self.inv.route_tables if t.vpc_id == vpc_id and t.type == "System"
                     and t.associate_type != "Gateway"), None)

    @cached_property
    def vswitch_networks(self) -> list[tuple[VSwitch, Network]]:
        return [(s, network(s.cidr)) for s in self.inv.vswitches if s.cidr]
