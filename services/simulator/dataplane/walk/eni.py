"""Elastic network interfaces as Terway's shared-ENI mode (eniip) programs them: a pod's traffic leaves by
the ENI owning its address through `from <pod> [iif <veth>] lookup <table>` (one table per ENI, its default
route via the vSwitch gateway), and the VPC delivers a pod address to that ENI. Read from the node dump:
the rule names the table, the table's route names the device (terway numbers the table 1000 + the ENI's
ifindex, which still names the device when its routes went with the link)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from services.simulator.dataplane.walk.world import IPAddress, NetnsView, World
from shared.netstack import Link, Rule

TERWAY_TABLE_BASE = 1000


@dataclass(frozen=True)
class PodEni:
    rule: Rule
    table: int
    device: Link | None  # None: neither the table's route nor terway's numbering names a device


def _source_rules(view: NetnsView, addr: IPAddress) -> list[Rule]:
    host = ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")
    return [r for r in view.dump.rules if r.action == "lookup" and r.table and r.src and not r.invert
            and ipaddress.ip_network(r.src, strict=False) == host]


def table_device(view: NetnsView, table: int) -> Link | None:
    for route in view.dump.routes:
        if route.table == table and route.dst == "default" and route.dev:
            return view.links.get(route.dev)
    return view.links_by_index.get(table - TERWAY_TABLE_BASE)


def pod_eni(view: NetnsView, addr: IPAddress) -> PodEni | None:
    """The ENI a source-policy rule sends `addr`'s traffic to on this node, if any."""
    rules = _source_rules(view, addr)
    if not rules:
        return None
    rule = min(rules, key=lambda r: r.priority)
    assert rule.table is not None
    return PodEni(rule, rule.table, table_device(view, rule.table))


def eni_devices(view: NetnsView) -> dict[str, int]:
    """Every ENI a per-pod source rule leads to on this node: device → table."""
    out: dict[str, int] = {}
    for rule in view.dump.rules:
        if rule.action == "lookup" and rule.table and rule.table not in (253, 254, 255) and rule.src:
            dev = table_device(view, rule.table)
            if dev is not None:
                out[dev.name] = rule.table
    return out


def eni_owner(world: World, addr: IPAddress) -> tuple[NetnsView, PodEni] | None:
    """The node whose ENI owns `addr` (a pod's secondary IP): where the VPC delivers it."""
    for node in world.nodes.values():
        found = pod_eni(node.host, addr)
        if found is not None and found.device is not None:
            return node.host, found
    return None


# An exclusive ENI (Terway's terway-eni mode) is a NIC moved into the pod: neither a veth to the node nor a
# bridge, tunnel or ipvlan slave (a macvlan stands for it in the lab). The VPC delivers its primary IP to it.
EXCLUSIVE_ENI_KINDS = frozenset({"", "macvlan", "device"})


def exclusive_eni(view: NetnsView, addr: IPAddress) -> Link | None:
    """The pod namespace's own ENI holding `addr`, if `view` is a pod namespace with one."""
    if view.is_host:
        return None
    link = view.link_of_address(addr)
    if link is None or link.name == "lo" or (link.kind or "") not in EXCLUSIVE_ENI_KINDS:
        return None
    return link


def exclusive_owner(world: World, addr: IPAddress) -> tuple[NetnsView, Link] | None:
    """The pod namespace whose exclusive ENI owns `addr`: where the VPC delivers it."""
    for node in world.nodes.values():
        for view in node.namespaces.values():
            link = exclusive_eni(view, addr)
            if link is not None:
                return view, link
    return None
