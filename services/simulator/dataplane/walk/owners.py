"""Who owns an address a NAT rule translates to.

An SNAT to an address the translating namespace does not own sends the reply to whoever owns it
(another node, a pod, a cloud resource), which never saw the request: the connection fails there,
not where the reply was expected. MASQUERADE and REDIRECT always pick the namespace's own address.
A DNAT to an address nobody we know owns (not a pod, node, endpoint or cloud resource) leaves the
outcome to a host the walk cannot see.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Protocol

from services.simulator.dataplane.walk.cursor import Cursor, Walk
from services.simulator.dataplane.walk.trail import NatEntry
from services.simulator.dataplane.walk.world import IPAddress, NetnsView
from shared.cloud import CloudInventory
from shared.codes import finding
from shared.hops import node_hop, pod_hop


class OwnersWalk(Walk, Protocol):
    """What the owner check reads of the walk: who holds which address (nodes, pods, the cloud)."""

    @property
    def node_ips(self) -> dict[IPAddress, str]: ...

    @property
    def pod_ips(self) -> dict[IPAddress, str]: ...

    @property
    def cloud_owners(self) -> dict[IPAddress, str]: ...

    @property
    def cloud_nodes(self) -> dict[str, str]: ...

    def virtual(self, addr: IPAddress) -> bool: ...

    def in_pod_network(self, addr: IPAddress) -> bool: ...


def cloud_owners(inventory: CloudInventory | None) -> dict[IPAddress, str]:
    """Address → the cloud resource holding it (instances, ENIs, NAT gateways, load balancers)."""
    out: dict[IPAddress, str] = {}
    if inventory is None:
        return out

    def add(addr: str | None, owner: str) -> None:
        if addr:
            with contextlib.suppress(ValueError):  # the cloud stage reports malformed entries itself
                out.setdefault(ipaddress.ip_address(addr), owner)

    for inst in inventory.instances:
        for addr in [*inst.private_ips, *inst.public_ips, inst.eip]:
            add(addr, f"ECS instance {inst.id}")
    for eni in inventory.network_interfaces:
        for addr in [eni.primary_ip, *eni.private_ips, eni.public_ip]:
            add(addr, f"network interface {eni.id}" + (f" of {eni.instance_id}" if eni.instance_id else ""))
    for nat in inventory.nat_gateways:
        for addr in nat.ips:
            add(addr, f"NAT gateway {nat.id}")
    for lb in inventory.load_balancers:
        add(lb.address, f"load balancer {lb.id}")
    return out


def owner_of(w: OwnersWalk, addr: IPAddress, view: NetnsView) -> tuple[str, str] | None:
    """(who, hop id) of the party other than `view` that holds addr, from the dumps, the cluster's
    nodes and pods, then the cloud inventory; None when nobody known does."""
    holder = w.world.netns_holding(addr)
    if holder is not None and holder.place != view.place:
        return holder.where, holder.hop_id
    if addr in w.node_ips:
        return f"node {w.node_ips[addr]}", node_hop(w.node_ips[addr])
    if addr in w.pod_ips:
        return f"pod {w.pod_ips[addr]}", pod_hop(w.pod_ips[addr])
    cloud = w.cloud_owners.get(addr)
    if cloud is not None:
        own = next((n for n, inst in w.cloud_nodes.items() if inst in cloud), None)
        return (f"{cloud} (node {own})", node_hop(own)) if own else (cloud, f"external:{addr}")
    return None


def check_nat_address(w: OwnersWalk, c: Cursor, view: NetnsView, entry: NatEntry) -> None:
    """SNAT: an address this namespace does not own is a finding naming its owner (the reply goes
    there), or an assumption when nobody known owns it. DNAT: a target nobody owns, outside the
    Service's endpoints, is an assumption."""
    addr = entry.new[0]
    if not isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address) or addr.is_loopback or \
            addr in view.local_ips or entry.kind in ("MASQUERADE", "REDIRECT"):
        return
    owner = owner_of(w, addr, view)
    if entry.rewrites_destination:
        res = w.report.service
        known = (res is not None and any(b.address == addr for b in res.backends)) or w.virtual(addr) or \
            w.in_pod_network(addr)  # a pod address: the walk follows it to its node, which says who holds it
        if owner is None and not known:
            c.trail.assume(f"{view.where}: {entry.kind} {entry.before} → {entry.after} sends the packet to {addr}, "
                           "which no pod, node, endpoint or cloud resource we know owns: what answers there is "
                           "unknown", could_change=True)
        return
    if owner is None:
        c.trail.assume(f"{view.where}: {entry.kind} {entry.before} → {entry.after} uses the source {addr}, which "
                       f"{view.where} does not own and nobody we know does: the reply comes back only if the "
                       "network routes it to this node", could_change=True)
        return
    who, hop = owner
    entry.foreign = finding("SNAT_ADDRESS_NOT_OWNED", view.hop_id, nat=f"{entry.kind} {entry.before} → {entry.after}",
                            where=view.where, side="source", address=addr, owner=who, what="reply",
                            evidence={"owner": who, "owner_hop": hop})
    if entry.foreign not in c.trail.findings:
        c.trail.findings.append(entry.foreign)
