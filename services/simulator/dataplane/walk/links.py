"""Crossing between namespaces: veth peers, Linux bridges (br_netfilter, hairpin), vxlan
encapsulation and the node uplink into the underlay (VPC), where another node or the outside
world takes the packet."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from services.simulator.dataplane.netfilter import FlowState
from services.simulator.dataplane.routing import RouteDecision
from services.simulator.dataplane.walk.cursor import Cursor, Expectation, Walk
from services.simulator.dataplane.walk.devices import DeviceHooks
from services.simulator.dataplane.walk.eni import PodEni, eni_devices, eni_owner, exclusive_owner, pod_eni
from services.simulator.dataplane.walk.reply import reply_leaves
from services.simulator.dataplane.walk.trail import Trail, copy_state, packet, route_info
from services.simulator.dataplane.walk.world import IPAddress, NetnsView, link_up
from shared.codes import finding
from shared.hops import external_hop, node_hop, pod_hop
from shared.netstack import Link
from shared.schemas import FinalState, Finding, HopKind, Severity, StepAction, StepKind
from shared.topology import EndpointKind

BAD_NEIGHBOR = frozenset({"FAILED", "INCOMPLETE"})
STATIC_NEIGHBOR = frozenset({"PERMANENT", "NOARP"})
# an Alibaba Cloud vSwitch answers ARP for every address in the VPC with this MAC
GATEWAY_MACS = frozenset({"ee:ff:ff:ff:ff:ff"})
IPIP_PROTOCOL = "ipencap"  # IP protocol 4 as iptables names it (`-p 4` / `-p ipencap`)


@dataclass(frozen=True)
class Encap:
    """How one overlay wraps the inner packet and which device on the remote node unwraps it."""

    what: str  # the encapsulating device and the entry that chose the remote end, for the step
    encapsulation: Literal["vxlan", "ipip"]
    tunnel: str  # the encapsulating device
    vni: int | None
    label: str  # the outer header, e.g. "udp", "ipip (protocol 4)"
    protocol: str
    dport: int | None
    local: IPAddress | None  # the tunnel's fixed local address, else the route's source
    decap: Callable[[NetnsView, FlowState], Link | None]
    device: str  # what is missing when no device decapsulates


def _ipip_receiver(node: NetnsView, outer: FlowState) -> Link | None:
    """ip_tunnel_lookup: an ipip device whose local/remote fit the outer packet, the most specific
    first (both, then local only, then remote only, then the catch-all tunl0)."""
    best: tuple[int, Link] | None = None
    for lk in node.dump.links:
        if lk.kind != "ipip":
            continue
        conf = lk.tunnel or {}
        local, remote = conf.get("local"), conf.get("remote")
        if (local and ipaddress.ip_address(local) != outer.dst) or (remote and ipaddress.ip_address(remote) !=
                                                                      outer.src):
            continue
        rank = (2 if remote else 0) + (1 if local else 0)
        if best is None or rank > best[0]:
            best = (rank, lk)
    return best[1] if best else None


class CrossingWalk(Walk, Protocol):
    """What a crossing may do to the walk: hand the packet to the next namespace's routing, run a
    hook on a bridge or a tunnel's outer packet, end a branch; and what it reads to find the next
    namespace (the cluster's addresses, the Service)."""

    @property
    def devices(self) -> DeviceHooks: ...

    @property
    def expect(self) -> Expectation: ...

    @property
    def node_ips(self) -> dict[IPAddress, str]: ...

    @property
    def pod_ips(self) -> dict[IPAddress, str]: ...

    def node_ip(self, node: str) -> IPAddress | None: ...

    def node_for_pod_network(self, addr: IPAddress) -> str | None: ...

    def in_pod_network(self, addr: IPAddress) -> bool: ...

    def collection_failed(self, node: str) -> Finding | None: ...

    def pod_route_missing(self, view: NetnsView, dst: IPAddress, route: str, d: RouteDecision) -> Finding | None: ...

    def has_endpoints(self) -> bool: ...

    def virtual(self, addr: IPAddress) -> bool: ...

    def service_vip(self, st: FlowState) -> bool: ...

    def routed_in(self, c: Cursor, view: NetnsView) -> list[Cursor]: ...

    def hook(self, c: Cursor, view: NetnsView, hook: str, nat: bool = True, **ctx: object) -> list[Cursor]: ...

    def rules_missing(self, c: Cursor, view: NetnsView, hook: str) -> None: ...

    def no_endpoint(self, c: Cursor, view: NetnsView, detail: str) -> list: ...

    def unreadable_netns(self, c: Cursor, view: NetnsView, netns_ids: list[str | None], what: str) -> bool: ...

    def external(self, c: Cursor, hop_kind: HopKind, describe: Callable[[], str]) -> list: ...

    def end_trail(self, trail: Trail, final: FinalState, cause: str | None = None,
                  found: Finding | None = None) -> None: ...


class Crossing:
    def __init__(self, walker: CrossingWalk) -> None:
        self.w = walker
        self.world = walker.world

    # ------------------------------------------------------------ out of a namespace

    def transmit(self, c: Cursor, view: NetnsView, d: RouteDecision) -> list[Cursor]:
        nh = d.gateway or c.st.dst
        link = view.links.get(d.dev or "")
        if link is None:
            found = finding("DATA_MISSING", view.hop_id, what=f"device {d.dev} in {view.where}",
                            reason="the route names a device the dump does not list")
            return self.w.drop(c, found, view, f"out device {d.dev} unknown", device=d.dev)
        if not self.w.devices.egress(c, view, link.name):
            return []
        if link.kind == "bridge":
            return self._to_port(c, view, link, nh)
        if link.kind == "vxlan":
            return self._vxlan(c, view, link, nh, d)
        if link.kind == "ipip":
            return self._ipip(c, view, link, nh, d)
        namespaces = self.world.nodes[view.node].namespaces
        if link.kind == "veth" and self.w.unreadable_netns(c, view, [link.peer_netns], f"out veth {link.name}"):
            return []
        if link.kind == "veth" and link.peer_missing:
            return self.w.drop(c, finding("VETH_PEER_MISSING", view.hop_id, link=link.name, where=view.where),
                               view, f"veth {link.name} has no peer", device=link.name)
        if link.kind == "veth" and link.peer_netns in namespaces and link.peer_netns != view.dump.id:
            return self._veth(c, view, link, nh)
        return self._uplink(c, view, link, nh, d)

    def _veth(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress) -> list[Cursor]:
        peer_view = self.world.nodes[view.node].namespaces[str(link.peer_netns)]
        peer = (peer_view.links_by_index.get(link.peer_index) if link.peer_index is not None else None) \
            or peer_view.links.get(link.peer_name or "")
        if peer is None:
            return self.w.drop(c, finding("VETH_PEER_MISSING", view.hop_id, link=link.name, where=view.where),
                               view, f"veth {link.name}: its peer is not in {peer_view.where}", device=link.name,
                               peer_where=peer_view.where)
        if not peer.admin_up:
            return self._link_down(c, peer_view, peer)
        if not link_up(link):
            return self._link_down(c, view, link)
        if not link_up(peer):
            return self._link_down(c, peer_view, peer)
        if not peer.master and nh not in peer_view.local_ips:
            unanswered = self._proxy_arp(c, view, link, peer_view, peer, nh)
            if unanswered is not None:
                return unanswered
        c.trail.step(c.trail.hop(view), StepKind.LINK, StepAction.FORWARD,
                     f"out {link.name} (veth) → {peer.name} in {peer_view.where}", packet(c.st, c.iif, link.name),
                     device=link.name, peer=peer.name, peer_where=peer_view.where, next_hop=nh)
        st = copy_state(c.st)
        st.iif, st.oif = peer.name, None
        return [Cursor(peer_view.place, st, peer.name, c.trail, l2_dst=nh)]

    def _proxy_arp(self, c: Cursor, view: NetnsView, link: Link, peer_view: NetnsView, peer: Link,
                   nh: IPAddress) -> list[Cursor] | None:
        """A next hop the routed peer does not own (Calico's 169.254.1.1 behind a cali* veth): the frame
        leaves only if the sender holds a usable neighbour entry for it, or the peer answers its ARP request
        by proxy (arp_process → arp_fwd_proxy: proxy_arp on conf/all or the device, and a route to the next
        hop out of another device). A usable entry with another MAC than the peer's: the peer discards the
        frame as addressed to another host (Terway's static 169.254.1.1 entry gone stale). None = the frame goes."""
        entry = next((n for n in view.dump.neighbors if n.dev == link.name and ipaddress.ip_address(n.dst) == nh
                      and n.lladdr and n.state.upper() not in BAD_NEIGHBOR), None)
        if entry is not None and entry.lladdr and peer.mac and entry.lladdr.lower() != peer.mac.lower():
            found = finding("NEIGHBOR_FAILED", view.hop_id, neighbor=nh, device=link.name, where=view.where,
                            state=f"{entry.state} at {entry.lladdr}, but the veth peer {peer.name} in "
                                  f"{peer_view.where} is {peer.mac}: the frames are discarded there",
                            evidence={"lladdr": entry.lladdr, "peer_mac": peer.mac})
            return self.w.drop(c, found, view, f"neighbour {nh} on {link.name} is {entry.lladdr}, not the peer's "
                               f"{peer.mac}", StepKind.NEIGHBOR, address=nh, device=link.name, lladdr=entry.lladdr)
        if entry is not None:
            return None
        values = {k: peer_view.sysctl(f"ipv4/conf/{k}/proxy_arp") for k in ("all", peer.name)}
        if values[peer.name] is None:
            c.trail.assume(f"proxy_arp of {peer.name} in {peer_view.where} was not collected: it is assumed to "
                           f"answer ARP for {nh}", could_change=True)
            return None
        sysctl = f"net.ipv4.conf.{peer.name}.proxy_arp"
        if not any((v or "0").strip() == "1" for v in values.values()):
            found = finding("PROXY_ARP_DISABLED", peer_view.hop_id, where=peer_view.where, device=peer.name,
                            gateway=nh, source=view.where, sysctl=sysctl)
            return self.w.drop(c, found, peer_view, f"nothing answers ARP for {nh} from {view.where}: "
                               f"{sysctl}=0 (and conf.all)", StepKind.SYSCTL, name=sysctl, value=0, device=peer.name)
        d = peer_view.router.lookup(nh, src=c.st.src, iif=peer.name)[0]
        if d.drops or d.dev == peer.name:
            found = finding("NEIGHBOR_FAILED", view.hop_id, neighbor=nh, device=link.name, where=view.where,
                            state=f"unanswered: {peer_view.where} proxies ARP on {peer.name} only for addresses it "
                                  f"routes out of another device ({d.route or d.type})")
            return self.w.drop(c, found, view, f"no proxy ARP answer for {nh}", StepKind.NEIGHBOR, address=nh,
                               device=link.name)
        return None

    def _link_down(self, c: Cursor, view: NetnsView, link: Link) -> list[Cursor]:
        state = "administratively down" if not link.admin_up else f"operstate {link.state}"
        return self.w.drop(c, finding("LINK_DOWN", view.hop_id, link=link.name, where=view.where,
                                      evidence={"state": link.state, "admin_up": link.admin_up}),
                           view, f"link {link.name} is {state}", device=link.name, state=link.state,
                           admin_up=link.admin_up)

    # ------------------------------------------------------------ bridges

    def bridge_in(self, c: Cursor, view: NetnsView, port: Link) -> list[Cursor]:
        """A frame entering a bridge port: up to the host stack, or L2-forwarded to another port."""
        bridge = view.links.get(port.master or "")
        if bridge is None:
            return self.w.routed_in(c, view)
        if not self.w.devices.port_forwards(c, view, bridge, port, "frame received"):
            return []
        nh = c.l2_dst or c.st.dst
        hop = c.trail.hop(view)
        if nh in view.local_ips:
            c.trail.step(hop, StepKind.BRIDGE, StepAction.FORWARD, f"{bridge.name}: frame from port {port.name} "
                         f"for the node's own address {nh}: up to the IP stack", packet(c.st, port.name),
                         bridge=bridge.name, port_in=port.name, next_hop=nh)
            c.iif, c.port_in = bridge.name, port.name
            return self.w.routed_in(c, view)
        target = self._port_towards(view, bridge, nh)
        if target is None:
            return self._no_port(c, view, bridge, nh)
        cursors = [c]
        if view.bridge_nf():
            c.st.iif, c.st.oif = bridge.name, bridge.name
            ctx_in: dict[str, Any] = {"bridged": True, "physdev_in": port.name}
            ctx_all = {**ctx_in, "physdev_out": target.name}
            cursors = [c2 for c1 in self.w.hook(c, view, "PREROUTING", **ctx_in)
                       for c2 in self.w.hook(c1, view, "FORWARD", **ctx_all)]
            cursors = [c2 for c1 in cursors for c2 in self.w.hook(c1, view, "POSTROUTING", **ctx_all)]
        else:
            c.trail.bridged_without_nf.add(view.place)
            c.trail.step(hop, StepKind.BRIDGE, StepAction.INFO, f"{bridge.name}: bridged {port.name} → "
                         f"{target.name}; bridge-nf-call-iptables=0, so iptables does not see it",
                         packet(c.st, port.name), bridge=bridge.name, port_in=port.name, port_out=target.name,
                         next_hop=nh, bridge_nf_call_iptables=False)
        out: list[Cursor] = []
        for ci in cursors:
            ci.port_in = port.name
            out.extend(self._port_out(ci, view, bridge, target, nh))
        return out

    def _to_port(self, c: Cursor, view: NetnsView, bridge: Link, nh: IPAddress) -> list[Cursor]:
        """Routed traffic sent out of a bridge device: the port whose peer holds the next hop."""
        if not link_up(bridge) and not bridge.admin_up:
            return self._link_down(c, view, bridge)
        target = self._port_towards(view, bridge, nh)
        if target is None:
            return self._no_port(c, view, bridge, nh)
        return self._port_out(c, view, bridge, target, nh)

    def _port_out(self, c: Cursor, view: NetnsView, bridge: Link, port: Link, nh: IPAddress) -> list[Cursor]:
        if port.name == c.port_in and not port.hairpin:
            peer = self.world.nodes[view.node].namespaces.get(str(port.peer_netns))
            pod = peer.dump.pod if peer else None
            return self.w.drop(c, finding("HAIRPIN_DISABLED", view.hop_id, port=port.name, bridge=bridge.name,
                                          where=view.where, pod=pod or "?"),
                               view, f"{bridge.name}: the frame must go back out of port {port.name}, the port it "
                               "came in through, and hairpin is off", StepKind.BRIDGE, bridge=bridge.name,
                               port_in=port.name, port_out=port.name, next_hop=nh, hairpin=False)
        if not self.w.devices.port_forwards(c, view, bridge, port, "frame sent"):
            return []
        c.trail.step(c.trail.hop(view), StepKind.BRIDGE, StepAction.FORWARD, f"{bridge.name}: to port {port.name} "
                     f"(towards {nh})", packet(c.st, c.st.iif, bridge.name), bridge=bridge.name, port_out=port.name,
                     next_hop=nh, hairpin=port.hairpin if port.name == c.port_in else None)
        c.port_in = None
        if not self.w.devices.egress(c, view, port.name):
            return []
        return self._veth(c, view, port, nh)

    def _port_towards(self, view: NetnsView, bridge: Link, nh: IPAddress) -> Link | None:
        namespaces = self.world.nodes[view.node].namespaces
        ports = view.bridge_ports(bridge.name)
        for port in ports:
            peer = namespaces.get(str(port.peer_netns)) if port.peer_netns else None
            if peer is not None and peer is not view and nh in peer.local_ips:
                return port
        # not a local veth peer: the neighbour's MAC in the bridge FDB names the port
        mac = next((n.lladdr for n in view.dump.neighbors if n.dev == bridge.name and n.lladdr
                    and ipaddress.ip_address(n.dst) == nh), None)
        dev = next((f.dev for f in view.dump.fdb if mac and f.mac.lower() == mac.lower() and f.master == bridge.name),
                   None)
        return next((p for p in ports if p.name == dev), None)

    def _no_port(self, c: Cursor, view: NetnsView, bridge: Link, nh: IPAddress) -> list[Cursor]:
        what = f"{bridge.name}: no port known to lead to {nh}"
        if self.w.unreadable_netns(c, view, [p.peer_netns for p in view.bridge_ports(bridge.name)], what) or \
                self.w.blind(c, view, ("neighbors", "fdb"), "the neighbour table and bridge FDB"):
            return []
        pod = self.w.pod_ips.get(nh)
        if pod is not None:
            hop = c.trail.hop_by_id(pod_hop(pod), kind=HopKind.POD, name=pod)
            found = finding("VETH_PEER_MISSING", hop.id, link=f"eth0 (veth to {bridge.name} on {view.node})",
                            where=f"pod {pod}")
            c.trail.step(hop, StepKind.LINK, StepAction.DROP, f"no port of {bridge.name} on {view.node} leads to "
                         f"pod {pod} ({nh}): its veth pair is gone", packet(c.st), device=bridge.name, next_hop=nh,
                         peer_where=f"pod {pod}", finding=found.code)
            return self.w.finish(c, FinalState.DROP, found.code, found)
        unknown = self.w.expect.code_at("UNKNOWN_ADDRESS") if not self.w.reply and nh == self.w.request.dst else None
        if unknown is not None:  # the destination itself is a free address of this node's pod network
            found = unknown.model_copy(update={"hop": view.hop_id, "severity": Severity.ERROR, "message": (
                f"{unknown.message}: it is in {view.node}'s pod network, but no pod on {view.node} has it "
                f"(no port of {bridge.name} leads to it)"), "evidence": {**unknown.evidence, "refines": unknown.hop}})
            return self.w.drop(c, found, view, f"{bridge.name}: no pod on {view.node} has {nh}", StepKind.BRIDGE)
        return self.w.drop(c, finding("NEIGHBOR_FAILED", view.hop_id, neighbor=nh, device=bridge.name,
                                      where=view.where, state="unresolvable (no bridge port leads to it)"),
                           view, f"{bridge.name}: no port leads to {nh}", StepKind.BRIDGE, bridge=bridge.name,
                           next_hop=nh)

    # ------------------------------------------------------------ the underlay

    def _neighbor_failed(self, c: Cursor, view: NetnsView, dev: str, nh: IPAddress,
                         owner: NetnsView | None = None) -> Finding | None:
        """An unresolved entry, or a static one (PERMANENT/NOARP: the kernel never re-resolves it)
        whose MAC no interface of the owner of nh has — frames to it go nowhere. A learned entry
        with another MAC is left alone: the kernel re-resolves it, and VRRP/proxy ARP are legitimate."""
        for n in view.dump.neighbors:
            if n.dev != dev or ipaddress.ip_address(n.dst) != nh:
                continue
            state = n.state.upper()
            if state in BAD_NEIGHBOR:
                return finding("NEIGHBOR_FAILED", view.hop_id, neighbor=nh, device=dev, where=view.where,
                               state=n.state)
            macs = {link.mac.lower() for link in owner.links.values() if link.mac} if owner else set()
            if n.lladdr and macs and n.lladdr.lower() not in macs | GATEWAY_MACS and \
                    STATIC_NEIGHBOR & set(state.split("|")):
                return finding("NEIGHBOR_FAILED", view.hop_id, neighbor=nh, device=dev, where=view.where,
                               state=f"{n.state} at {n.lladdr}, a MAC no interface of node "
                                     f"{owner.node if owner else '?'} has "
                                     f"(a stale static entry: replace or delete it)",
                               evidence={"lladdr": n.lladdr, "owner_macs": sorted(macs)})
        return None

    def _uncollected(self, c: Cursor, addr: IPAddress) -> list[Cursor] | None:
        """A next hop owned by a Kubernetes node whose dump is missing: the walk cannot continue. A node
        asked that did not answer has the collector's COLLECTOR_UNAVAILABLE; a node off the path the
        Kubernetes model expects (a transit hop) was never asked."""
        node = self.w.node_ips.get(addr)
        if node is None or node in self.world.nodes:
            return None
        hop = c.trail.hop_by_id(node_hop(node), kind=HopKind.NODE, name=node)
        found = self._not_collected(node, f"the packet goes through it ({addr})")
        c.trail.step(hop, StepKind.ASSUMPTION, StepAction.ABORT, f"node {node}'s network state was not collected: "
                     "the walk cannot follow the packet there", packet(c.st),
                     missing=f"the network state of node {node}", finding=found.code)
        return self.w.finish(c, FinalState.ABORT, found.code, found)

    def _not_collected(self, node: str, how: str) -> Finding:
        """Why a node's dump is missing: the collector's finding for a node asked that did not answer,
        else DATA_MISSING (a node off the path the Kubernetes model expects was never asked), and the
        node is wanted: the simulator asks its agent on demand and walks again."""
        found = self.w.collection_failed(node)
        if found is not None:
            return found
        self.world.wanted.add(node)  # asked for on demand (assemble.py), then walked again
        why = ("it was not collected (see the collector's findings)" if node in self.w.report.nodes_to_collect
               else f"{how}, but it is off the path the Kubernetes model expects, so its agent was not asked")
        return finding("DATA_MISSING", node_hop(node), what=f"the network state of node {node}", reason=why)

    def _uplink(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress, d: RouteDecision) -> list[Cursor]:
        if not link_up(link):
            return self._link_down(c, view, link)
        local = self.w.pod_route_missing(view, c.st.dst, d.route or "", d)
        if local is not None:  # a node sends its own routed pod's address away: the per-pod route is gone
            return self.w.drop(c, local, view, f"{c.st.dst} is a pod on {view.node}, but the route sends it out "
                               f"{link.name}", StepKind.ROUTE, destination=c.st.dst, **route_info(d))
        wrong = self._wrong_eni(c, view, link)
        if wrong is not None:
            return wrong
        for addr in (nh, c.st.dst):
            missing = self._uncollected(c, addr)
            if missing is not None:
                return missing
        owner = self.world.node_owning(nh) or (self.world.node_owning(c.st.dst) if nh != c.st.dst else None)
        eni = eni_owner(self.world, c.st.dst) if owner is None else None
        if eni is not None:
            return self._to_eni(c, view, link, nh, *eni)
        exclusive = exclusive_owner(self.world, c.st.dst) if owner is None else None
        if exclusive is not None:
            return self._to_pod_eni(c, view, link, nh, *exclusive)
        if owner is None or owner.node == view.node:
            return self._leave_cluster(c, view, link, nh, d)
        in_link = owner.link_of_address(nh) or owner.link_of_address(c.st.dst)
        if in_link is None or not link_up(in_link):
            return self._link_down(c, owner, in_link or link)
        # the MAC check needs nh to be the owner's own address (not a router in front of it)
        bad = self._neighbor_failed(c, view, link.name, nh, owner if self.world.node_owning(nh) is owner else None)
        if bad is not None:
            return self.w.drop(c, bad, view, f"neighbour {nh} on {link.name} does not reach node {owner.node}",
                               StepKind.NEIGHBOR, address=nh, device=link.name)
        c.trail.step(c.trail.hop(view), StepKind.LINK, StepAction.FORWARD, f"out {link.name} into the underlay → "
                     f"node {owner.node} ({in_link.name})", packet(c.st, c.iif, link.name), device=link.name,
                     peer=in_link.name, peer_where=f"node {owner.node}", next_hop=nh)
        st = copy_state(c.st)
        st.iif, st.oif = in_link.name, None
        return [Cursor(owner.place, st, in_link.name, c.trail)]

    def _wrong_eni(self, c: Cursor, view: NetnsView, link: Link) -> list[Cursor] | None:
        """The VPC forwards only what an interface sends from its own addresses: a local pod's packet (its
        address an ENI's secondary IP) leaving by another device than an ENI is dropped beyond the node, and
        so is a node's packet from a pod's exclusive ENI address (Terway masquerades all it sends on)."""
        exclusive = exclusive_owner(self.world, c.st.src) if view.is_host else None
        if exclusive is not None:
            pod_view, eni = exclusive
            found = finding("ENI_POD_SOURCE_NOT_MASQUERADED", view.hop_id, where=view.where, src=c.st.src,
                            pod=pod_view.dump.pod or pod_view.where, eni=eni.name, device=link.name)
            return self.w.drop(c, found, view, f"{c.st.src} (pod {pod_view.dump.pod}'s own ENI) leaves "
                               f"{view.where} by {link.name} unmasqueraded: the VPC drops it", device=link.name)
        enis = eni_devices(view)
        pod = self.w.pod_ips.get(c.st.src)
        if not enis or link.name in enis or pod is None or self.world.pod_netns(view.node, pod) is None:
            return None
        intended = pod_eni(view, c.st.src)
        if intended is not None and intended.device is not None and not link_up(intended.device):
            return self._link_down(c, view, intended.device)  # its table's routes went with the link
        found = finding("POD_EGRESS_WRONG_ENI", view.hop_id, where=view.where, pod=pod, src=c.st.src,
                        device=link.name, enis=", ".join(f"{dev} (table {t})" for dev, t in sorted(enis.items())))
        return self.w.drop(c, found, view, f"{c.st.src} leaves by {link.name}, not by its ENI: the VPC drops it",
                           device=link.name)

    def _to_eni(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress, owner: NetnsView,
                eni: PodEni) -> list[Cursor]:
        """Into the VPC, which delivers a pod address (an ENI's secondary IP) to the ENI owning it."""
        dev = eni.device
        assert dev is not None
        return self._into_vpc(
            c, view, link, nh, owner, dev, peer_where=f"node {owner.node}",
            delivered=f"{c.st.dst} is a secondary IP of node {owner.node}'s ENI {dev.name} (its rule "
                      f"{eni.rule.priority}: from {c.st.dst} lookup {eni.table})",
            assumed=f"the VPC delivers {c.st.dst} to node {owner.node}'s ENI {dev.name}, the device its policy "
                    "rule names (the ENI's secondary IPs, security groups and vSwitch are the cloud layer's)")

    def _to_pod_eni(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress, owner: NetnsView,
                    eni: Link) -> list[Cursor]:
        """Into the VPC, which delivers an exclusive ENI's address to the ENI itself, inside its pod: the
        packet never crosses that pod's node (its netfilter, routes, veths)."""
        return self._into_vpc(
            c, view, link, nh, owner, eni, peer_where=owner.where,
            delivered=f"{c.st.dst} is the address of the exclusive ENI {eni.name} inside {owner.where} (on node "
                      f"{owner.node})",
            assumed=f"the VPC delivers {c.st.dst} to the ENI {eni.name} of {owner.where}, bypassing node "
                    f"{owner.node} (the ENI's security groups and vSwitch are the cloud layer's)")

    def _into_vpc(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress, owner: NetnsView, dev: Link, *,
                  peer_where: str, delivered: str, assumed: str) -> list[Cursor]:
        """Out `link` to the vSwitch gateway `nh`; the VPC delivers the destination to the ENI `dev` in `owner`."""
        if not link_up(dev):
            return self._link_down(c, owner, dev)
        bad = self._neighbor_failed(c, view, link.name, nh)
        if bad is not None:
            return self.w.drop(c, bad, view, f"neighbour {nh} on {link.name} is unresolved", StepKind.NEIGHBOR,
                               address=nh, device=link.name)
        c.trail.step(c.trail.hop(view), StepKind.LINK, StepAction.FORWARD, f"out {link.name} into the VPC → "
                     f"{delivered}", packet(c.st, c.iif, link.name), device=link.name, peer=dev.name,
                     peer_where=peer_where, next_hop=nh)
        c.trail.assume(assumed, could_change=False)
        st = copy_state(c.st)
        st.iif, st.oif = dev.name, None
        return [Cursor(owner.place, st, dev.name, c.trail)]

    def _leave_cluster(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress, d: RouteDecision) -> list:
        dst = c.st.dst
        if self.w.service_vip(c.st) and not self.w.reply:
            if not self.w.has_endpoints():
                return self.w.no_endpoint(c, view, f"{dst} is a virtual address with no endpoint behind it")
            self.w.rules_missing(c, view, "routing")
            return []
        if self.w.virtual(dst) and not self.w.reply:
            return self._untranslated(c, view, dst)
        expected_node = self.w.node_for_pod_network(dst) or (
            self.w.report.dst.node if self.w.pod_ips.get(dst) else None)
        if expected_node is not None:
            expected = self.w.node_ip(expected_node) or expected_node
            return self.w.drop(c, finding("INVALID_ROUTE", view.hop_id, route=d.route, where=view.where,
                                          expected=expected, dst=dst, evidence={"route": d.as_dict()}),
                               view, f"{dst} is in the pod network of {expected_node}, but the route sends it to "
                               f"{nh}, which no node owns", StepKind.ROUTE, destination=dst, **route_info(d))
        bad = self._neighbor_failed(c, view, link.name, nh)
        if bad is not None:
            return self.w.drop(c, bad, view, f"neighbour {nh} on {link.name} is unresolved", StepKind.NEIGHBOR,
                               address=nh, device=link.name)
        c.trail.step(c.trail.hop(view), StepKind.LINK, StepAction.FORWARD, f"out {link.name} via {nh}: leaves the "
                     "cluster's nodes", packet(c.st, c.iif, link.name), device=link.name, next_hop=nh)
        if self.w.reply:
            return reply_leaves(self.w, c, view)
        c.trail.left = (view.place, copy_state(c.st), link.name)
        if self.w.in_pod_network(dst):  # a pod of a node no route here names: only the network beyond can tell
            c.trail.assume(f"{dst} is in the cluster's pod network but leaves the nodes from {view.where} via {nh}: "
                           "it reaches its pod only if the network beyond the nodes (the VPC's routes) carries it "
                           "to the pod's node, which the walk did not follow", could_change=True)
        kind = HopKind.INTERNET if dst.is_global else HopKind.EXTERNAL
        return self.w.external(c, kind, lambda: str(dst))  # the hop kind (internet/external) says where

    def _untranslated(self, c: Cursor, view: NetnsView, dst: IPAddress) -> list:
        """A Service-range address leaving the node untranslated: nothing behind it will answer."""
        known = next((f for f in self.w.expect.findings if f.code in ("SERVICE_PORT_NOT_FOUND",
                                                                       "SERVICE_NO_ENDPOINT", "SERVICE_NOT_FOUND")),
                     None)
        detail = f"{dst}:{c.st.dport}/{c.st.protocol} is a Service address no rule translated: it leaves {view.node} " \
                 "untranslated and nothing answers it"
        if known is not None:
            hop = c.trail.hop_by_id(known.hop or view.hop_id, kind=HopKind.SERVICE, name=(known.hop or "").split(
                ":", 1)[-1])
            c.trail.step(hop, StepKind.SERVICE, StepAction.DROP, detail, packet(c.st), finding=known.code)
            return self.w.finish(c, FinalState.DROP, known.code, known)
        return self.w.drop(c, finding("KUBE_PROXY_RULES_MISSING", view.hop_id, node=view.node,
                                      what=f"{dst}:{c.st.dport}/{c.st.protocol}"), view, detail, StepKind.SERVICE,
                           service=self.w.report.service.service if self.w.report.service else None)

    # ------------------------------------------------------------ vxlan

    def _vxlan(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress, d: RouteDecision) -> list[Cursor]:
        if not link_up(link):
            return self._link_down(c, view, link)
        neigh = next((n for n in view.dump.neighbors if n.dev == link.name and ipaddress.ip_address(n.dst) == nh),
                     None)
        if neigh is None and self.w.blind(c, view, ("neighbors",), "the neighbour table"):
            return []
        if neigh is None or not neigh.lladdr or neigh.state.upper() in BAD_NEIGHBOR:
            state = neigh.state if neigh else "missing"
            return self.w.drop(c, finding("NEIGHBOR_FAILED", view.hop_id, neighbor=nh, device=link.name,
                                          where=view.where, state=state), view, f"no MAC for {nh} on {link.name}",
                               StepKind.NEIGHBOR, address=nh, device=link.name, state=state)
        fdb = next((f for f in view.dump.fdb if f.dev == link.name and f.dst and f.mac.lower() ==
                    neigh.lladdr.lower()), None)
        expected_node = self.w.node_for_pod_network(c.st.dst)
        expected = self.w.node_ip(expected_node) if expected_node else None
        if fdb is None and self.w.blind(c, view, ("fdb",), "the bridge forwarding database"):
            return []
        if fdb is None or fdb.dst is None:
            return self.w.drop(c, finding("NEIGHBOR_FAILED", view.hop_id, neighbor=f"{nh} ({neigh.lladdr})",
                                          device=link.name, where=view.where, state="no FDB entry (remote VTEP "
                                          "unknown)"), view, f"no FDB entry for {neigh.lladdr} on {link.name}",
                               StepKind.NEIGHBOR, address=nh, device=link.name, lladdr=neigh.lladdr,
                               state="no FDB entry (remote VTEP unknown)")
        vtep = ipaddress.ip_address(fdb.dst)
        missing = self._uncollected(c, vtep)
        if missing is not None:
            return missing
        owner = self.world.node_owning(vtep)
        fdb_text = f"fdb {fdb.mac} dev {link.name} dst {vtep}"
        if owner is None or (expected_node is not None and owner.node != expected_node):
            return self.w.drop(c, finding("INVALID_ROUTE", view.hop_id, route=fdb_text, where=view.where,
                                          expected=expected or "?", dst=c.st.dst,
                                          evidence={"neighbor": neigh.model_dump(), "fdb": fdb.model_dump()}),
                               view, f"{link.name}: the FDB sends {c.st.dst}'s frames to VTEP {vtep}, which "
                               f"{'no node owns' if owner is None else 'is node ' + owner.node}; expected "
                               f"{expected}", StepKind.ENCAP, encapsulation="vxlan", device=link.name,
                               outer_dst=vtep)
        self._mtu_check(c, link)
        conf = link.vxlan or {}
        vni = conf.get("id")
        return self._encapsulate(c, view, vtep, owner, Encap(
            what=f"{link.name} (vni {vni}): {fdb_text}", encapsulation="vxlan", tunnel=link.name,
            vni=int(vni) if vni is not None else None, label="udp", protocol="udp",
            dport=int(conf.get("port") or 8472), local=ipaddress.ip_address(conf["local"]) if conf.get("local")
            else None, device=f"vxlan device with vni {vni}",
            decap=lambda node, _outer: next((lk for lk in node.dump.links if lk.kind == "vxlan" and
                                             (lk.vxlan or {}).get("id") == vni), None)))

    def _mtu_check(self, c: Cursor, tunnel: Link) -> None:
        """Pods whose MTU exceeds the overlay's lose full-size packets (the SYN passes; bulk data does not)."""
        for hop in c.trail.hops:
            if hop.kind != HopKind.POD:
                continue
            ns = self.world.pod_netns(hop.node, hop.name)  # a pod hop is named by its pod key
            eth = next((lk for lk in ns.dump.links if lk.kind == "veth"), None) if ns else None
            if ns is not None and eth is not None and eth.mtu > tunnel.mtu:
                found = finding("MTU_MISMATCH", hop.id, mtu=eth.mtu, link=eth.name, where=f"pod {ns.dump.pod}",
                                path_mtu=tunnel.mtu)
                if found not in c.trail.findings:
                    c.trail.findings.append(found)

    def _encapsulate(self, c: Cursor, view: NetnsView, remote_ip: IPAddress, owner: NetnsView,
                     encap: Encap) -> list[Cursor]:
        """The outer packet: out through this node's OUTPUT and POSTROUTING, across the underlay, into the
        remote node's PREROUTING and INPUT, where the tunnel device decapsulates the inner packet."""
        d = view.router.lookup(remote_ip)[0]
        local = encap.local or d.src
        if local is None or d.drops or d.dev is None:
            return self.w.drop(c, finding("NO_ROUTE", view.hop_id, dst=remote_ip, where=view.where), view,
                               f"no route to tunnel endpoint {remote_ip} for the outer packet", StepKind.ENCAP,
                               encapsulation=encap.encapsulation, device=encap.tunnel, outer_dst=remote_ip)
        outer = FlowState(src=local, dst=remote_ip, protocol=encap.protocol, sport=None, dport=encap.dport,
                          oif=d.dev)
        inner = copy_state(c.st)
        port = f":{encap.dport}" if encap.dport else ""
        c.trail.step(c.trail.hop(view), StepKind.ENCAP, StepAction.REWRITE, f"{encap.what}; outer {encap.label} "
                     f"{local} → {remote_ip}{port} via {d.dev}", packet(inner), None,
                     encapsulation=encap.encapsulation, device=encap.tunnel, vni=encap.vni, outer_src=local,
                     outer_dst=remote_ip, outer_dport=encap.dport)
        oc = Cursor(view.place, outer, None, c.trail)
        for hook in ("OUTPUT", "POSTROUTING"):
            alive = self.w.hook(oc, view, hook)
            if not alive:
                return []
            oc = alive[0]
        uplink = view.links.get(d.dev)
        in_link = owner.link_of_address(remote_ip)
        if uplink is not None and not link_up(uplink):
            return self._link_down(oc, view, uplink)
        if in_link is None or not link_up(in_link):
            return self._link_down(oc, owner, in_link or uplink or view.links[d.dev])
        oc.st.iif, oc.st.oif = in_link.name, None
        c.trail.hop(owner)
        if not self.w.devices.egress(oc, view, d.dev) or not self.w.devices.ingress(oc, owner, in_link.name):
            return []
        for hook in ("PREROUTING", "INPUT"):
            alive = self.w.hook(oc, owner, hook)
            if not alive:
                return []
            oc = alive[0]
        remote = encap.decap(owner, outer)
        if remote is None:
            return self.w.drop(oc, finding("DATA_MISSING", owner.hop_id, what=f"{encap.device} on {owner.node}",
                                           reason="none in the dump"),
                               owner, f"no {encap.device} to decapsulate into", StepKind.DECAP,
                               encapsulation=encap.encapsulation, outer_src=local, outer_dst=remote_ip)
        if not link_up(remote):
            return self._link_down(oc, owner, remote)
        inner.iif, inner.oif = remote.name, None
        c.trail.step(c.trail.hop(owner), StepKind.DECAP, StepAction.REWRITE, f"{remote.name}: decapsulated "
                     f"({encap.label} {local} → {remote_ip})", packet(inner), packet(inner, remote.name),
                     encapsulation=encap.encapsulation, device=remote.name, vni=encap.vni, outer_src=local,
                     outer_dst=remote_ip, outer_dport=encap.dport)
        return [Cursor(owner.place, inner, remote.name, c.trail)]

    # ------------------------------------------------------------ ipip

    def _ipip(self, c: Cursor, view: NetnsView, link: Link, nh: IPAddress, d: RouteDecision) -> list[Cursor]:
        """IP in IP (protocol 4): to the tunnel's fixed remote, or, for a tunnel without one (tunl0,
        flannel.ipip, calico), to the route's gateway (`podCIDR via nodeIP dev tunl0 onlink`)."""
        if not link_up(link):
            return self._link_down(c, view, link)
        conf = link.tunnel or {}
        remote_ip = ipaddress.ip_address(conf["remote"]) if conf.get("remote") else (d.gateway or None)
        route = d.route or f"{c.st.dst} dev {link.name}"
        expected_node = self.w.node_for_pod_network(c.st.dst)
        expected = self.w.node_ip(expected_node) if expected_node else None
        if remote_ip is None:
            return self.w.drop(c, finding("INVALID_ROUTE", view.hop_id, route=route, where=view.where,
                                          expected=expected or "a gateway", dst=c.st.dst,
                                          evidence={"route": d.as_dict(), "tunnel": conf}),
                               view, f"{link.name} has no remote and the route names no gateway: the kernel "
                               "cannot address the outer packet", StepKind.ENCAP, encapsulation="ipip",
                               device=link.name)
        missing = self._uncollected(c, remote_ip)
        if missing is not None:
            return missing
        owner = self.world.node_owning(remote_ip)
        if owner is None or (expected_node is not None and owner.node != expected_node):
            return self.w.drop(c, finding("INVALID_ROUTE", view.hop_id, route=route, where=view.where,
                                          expected=expected or "?", dst=c.st.dst,
                                          evidence={"route": d.as_dict(), "tunnel": conf}),
                               view, f"{link.name}: {c.st.dst} is tunnelled to {remote_ip}, which "
                               f"{'no node owns' if owner is None else 'is node ' + owner.node}; expected "
                               f"{expected}", StepKind.ENCAP, encapsulation="ipip", device=link.name,
                               outer_dst=remote_ip)
        self._mtu_check(c, link)
        local = ipaddress.ip_address(conf["local"]) if conf.get("local") else None
        return self._encapsulate(c, view, remote_ip, owner, Encap(
            what=f"{link.name} (ipip): {route}", encapsulation="ipip", tunnel=link.name, vni=None,
            label="ipip (protocol 4)", protocol=IPIP_PROTOCOL, dport=None,
            local=local, decap=_ipip_receiver, device="ipip tunnel device"))

    # ------------------------------------------------------------ traffic from outside

    def external_start(self, st: FlowState, trail: Trail) -> Cursor | None:
        """An external source: the packet enters the cluster at the node owning the destination (NodePort)
        or the node the model names as the Service's entry, through that node's uplink."""
        w = self.w
        report = w.report
        entry = next((p.entry_node for p in report.paths if p.entry_node), None) or report.dst.node
        hop = trail.hop_by_id(external_hop(st.src), kind=HopKind.EXTERNAL, name=f"client {st.src}")
        trail.step(hop, StepKind.CLASSIFY, StepAction.FORWARD, "external source: enters through the entry "
                   f"node's uplink ({entry or 'unknown'})", packet(st), endpoint="external", entry_node=entry)
        if entry is None or entry not in self.world.nodes or report.src.kind not in (
                EndpointKind.PUBLIC, EndpointKind.UNKNOWN):
            trail.assume("the walk cannot tell where an outside packet enters the cluster",
                         could_change=True)
            found = self._not_collected(entry, "outside traffic enters through it") \
                if entry and entry not in self.world.nodes else None
            w.end_trail(trail, FinalState.ABORT, found.code if found else None, found)
            return None
        view = self.world.nodes[entry].host
        self._public_address(st, view, entry, hop, trail)
        pod_address = self._pod_eip(st, hop, trail)
        if pod_address is not None and (exclusive := exclusive_owner(self.world, pod_address)) is not None:
            st.iif = exclusive[1].name  # the VPC delivers the pod address to the pod's own ENI (terway-eni)
            return Cursor(exclusive[0].place, st, st.iif, trail)
        shared = eni_owner(self.world, pod_address) if pod_address is not None else None
        if shared is not None and shared[1].device is not None:  # the node's ENI holding it (terway-eniip)
            view, in_dev = shared[0], shared[1].device.name
            st.iif = in_dev
            return Cursor(view.place, st, in_dev, trail)
        default = view.router.lookup(st.src)[0]
        in_dev = default.dev or next(iter(view.links))
        st.iif = in_dev
        return Cursor(view.place, st, in_dev, trail)

    def _pod_eip(self, st: FlowState, hop: Any, trail: Trail) -> IPAddress | None:
        """A pod's own EIP (the topology read its PodEIP): the cloud translates it 1:1 to the pod address the
        candidate path names before the VPC delivers the packet to the pod's node. Returns that address."""
        report = self.w.report
        if report.dst.kind != EndpointKind.POD_EIP or not report.paths:
            return None
        before = packet(st)
        st.dst = st.orig_dst = report.paths[0].dst_address
        trail.step(hop, StepKind.NAT, StepAction.REWRITE, f"{report.dst.description}: the cloud delivers it to "
                   f"{st.dst}", before, packet(st), type="DNAT")
        return st.dst

    def _public_address(self, st: FlowState, view: NetnsView, node: str, hop: Any, trail: Trail) -> None:
        """A Node address the node holds on no interface (an ExternalIP that is an EIP or static public IP): the
        cloud translates it 1:1 to the node's private address before the packet arrives (docs/cloud.md), so the
        node's netfilter sees that address — never the public one (kube-proxy's NodePort rules match local
        destinations only)."""
        known = self.w.report.cluster.node_addresses.get(node) or []
        if st.dst in view.local_ips or st.dst not in known:
            return
        held = [ip for ip in known if ip in view.local_ips and ip.version == st.dst.version]
        if not held:
            return
        before = packet(st)
        st.dst = st.orig_dst = held[0]
        trail.step(hop, StepKind.NAT, StepAction.REWRITE, f"{before.dst} is an address of node {node} that no "
                   f"interface of it holds (an EIP or public IP): the cloud delivers it to {held[0]}", before,
                   packet(st), type="DNAT")
        trail.assume(f"{before.dst} is taken to be a public address of node {node} that the cloud translates 1:1 to "
                     f"{held[0]} (an EIP in NAT mode, a static public IP)", could_change=False)
