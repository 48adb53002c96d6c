"""The collected dataplane as one searchable world: every node dump, its namespaces, who owns which
address, and per-namespace engines (router, netfilter tracers) built lazily and cached."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.simulator.dataplane.netfilter import (
    IpsetStore,
    Ruleset,
    TraceContext,
    parse_ipset_save,
    parse_iptables_save,
)
from services.simulator.dataplane.netfilter.tracer import AddressSets, address_sets
from services.simulator.dataplane.nftables import NftParseError, NftRuleset, parse_nft_json
from services.simulator.dataplane.routing import Router
from services.simulator.dataplane.walk import gaps
from shared.hops import node_hop, pod_hop
from shared.netstack import Link, NetnsDump, NodeDump

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
HOST = "host"
IPVS_DEVICE = "kube-ipvs0"  # kube-proxy's IPVS mode binds every Service address to it, on every node


DOWN_STATES = frozenset({"DOWN", "LOWERLAYERDOWN", "NOTPRESENT"})


def link_up(link: object) -> bool:
    return bool(getattr(link, "admin_up", True)) and getattr(link, "state", "UNKNOWN") not in DOWN_STATES


@dataclass(frozen=True)
class Place:
    """A network namespace of a node: `netns` is a NetnsDump.id ('host' or 'netns:<inode>')."""

    node: str
    netns: str


@dataclass
class NetnsView:
    node: str
    dump: NetnsDump

    @property
    def place(self) -> Place:
        return Place(self.node, self.dump.id)

    @property
    def is_host(self) -> bool:
        return self.dump.id == HOST

    @property
    def hop_id(self) -> str:
        return pod_hop(self.dump.pod) if self.dump.pod and not self.is_host else node_hop(self.node)

    @property
    def where(self) -> str:
        """How findings name this namespace."""
        if self.is_host:
            return f"node {self.node}"
        if self.dump.pod:
            return f"pod {self.dump.pod}"
        # a pod namespace nobody named (a node collected on demand, off the model's path): its address says which
        held = sorted(str(ip) for ip in self.local_ips if not ip.is_loopback and not ip.is_link_local)
        return f"netns {self.dump.id}{' (' + ', '.join(held) + ')' if held else ''} on {self.node}"

    @cached_property
    def links(self) -> dict[str, Link]:
        return {link.name: link for link in self.dump.links}

    @cached_property
    def links_by_index(self) -> dict[int, Link]:
        return {link.index: link for link in self.dump.links}

    @cached_property
    def addresses(self) -> dict[str, list[IPInterface]]:
        out: dict[str, list[IPInterface]] = {}
        for link in self.dump.links:
            out[link.name] = [ipaddress.ip_interface(a) for a in link.addresses]
        return out

    @cached_property
    def local_ips(self) -> set[IPAddress]:
        return {i.ip for ifs in self.addresses.values() for i in ifs}

    @cached_property
    def owned_ips(self) -> set[IPAddress]:
        """The addresses the underlay can deliver to this namespace: Service addresses on kube-ipvs0
        are local to every node, owned by none."""
        return {i.ip for name, ifs in self.addresses.items() if name != IPVS_DEVICE for i in ifs}

    def link_of_address(self, addr: IPAddress) -> Link | None:
        return next((self.links[name] for name, ifs in self.addresses.items() if any(i.ip == addr for i in ifs)),
                    None)

    @cached_property
    def router(self) -> Router:
        return Router(self.dump.routes, self.dump.rules, self.addresses)

    @cached_property
    def rulesets(self) -> list[tuple[str, Ruleset]]:
        """Every iptables backend holding rules: both run when a node mixes them (both hook in)."""
        states = [s for s in self.dump.netfilter.iptables if s.has_rules] or self.dump.netfilter.iptables[:1]
        return [(s.backend, parse_iptables_save(s.save, 4)) for s in states]

    @cached_property
    def _nft(self) -> tuple[NftRuleset | None, str | None]:
        """Native nftables (tables iptables-nft owns come through the iptables save text), or why not."""
        try:
            rs = parse_nft_json(self.dump.netfilter.nft_ruleset)
        except NftParseError as exc:
            return None, f"the nftables ruleset of {self.where} could not be read ({exc}): it is not simulated"
        for owned in self.dump.netfilter.nft_tables_via_iptables:
            family, _, name = owned.partition(" ")
            rs.tables.pop((family, name), None)
        return (rs if rs.tables else None), None

    @property
    def nft(self) -> NftRuleset | None:
        return self._nft[0]

    @cached_property
    def unmodelled_netfilter(self) -> str | None:
        """What of this namespace's packet filtering the walk cannot see, said once per trail."""
        if self._nft[1]:
            return self._nft[1]
        if self.is_host and not self.dump.netfilter.iptables and self.nft is None:
            return f"no iptables state was collected for {self.where}: its netfilter hooks are taken as ACCEPT"
        return None

    @cached_property
    def ipsets(self) -> IpsetStore | None:
        text = self.dump.netfilter.ipsets
        return parse_ipset_save(text) if text else None

    def context(self, **kw: Any) -> TraceContext:
        return TraceContext(addresses=self.addresses, ipsets=self.ipsets, sets=self.address_sets, **kw)

    @cached_property
    def address_sets(self) -> AddressSets:
        return address_sets(self.addresses)

    def unread(self, *parts: str) -> list[str]:
        """The agent's errors that leave any of these parts of this namespace unknown (gaps.py)."""
        return gaps.unread(self.dump.errors, parts) if self.dump.errors else []

    def sysctl(self, key: str, default: str | None = None) -> str | None:
        return self.dump.sysctls.get(key, default)

    def forwarding(self, dev: str) -> tuple[bool, str]:
        """IPv4 forwarding as the kernel decides it: the ingress device's `forwarding` flag."""
        for key in (f"ipv4/conf/{dev}/forwarding", "ipv4/conf/all/forwarding", "ipv4/ip_forward"):
            value = self.sysctl(key)
            if value is not None:
                return value.strip() == "1", "net." + key.replace("/", ".")
        return True, "net.ipv4.ip_forward"

    def rp_filter(self, dev: str) -> int:
        """The effective mode is the maximum of conf/all and conf/<dev>."""
        values = [self.sysctl(f"ipv4/conf/{k}/rp_filter") for k in ("all", dev)]
        return max((int(v) for v in values if v and v.strip().isdigit()), default=0)

    def route_localnet(self, dev: str) -> tuple[bool, str]:
        """127.0.0.0/8 on a non-loopback device is routable only with route_localnet on conf/all or the device."""
        for key in (f"ipv4/conf/{dev}/route_localnet", "ipv4/conf/all/route_localnet"):
            if (self.sysctl(key) or "0").strip() == "1":
                return True, "net." + key.replace("/", ".")
        return False, f"net.ipv4.conf.{dev}.route_localnet"

    def bridge_nf(self) -> bool:
        return self.sysctl("bridge/bridge-nf-call-iptables", "1") == "1"

    def bridge_ports(self, bridge: str) -> list[Link]:
        return [link for link in self.dump.links if link.master == bridge]


@dataclass
class NodeView:
    dump: NodeDump
    namespaces: dict[str, NetnsView] = field(default_factory=dict)

    @classmethod
    def build(cls, dump: NodeDump) -> NodeView:
        view = cls(dump)
        for ns in [dump.host, *dump.pods]:
            view.namespaces[ns.id] = NetnsView(dump.node, ns)
        return view

    @property
    def host(self) -> NetnsView:
        return self.namespaces[HOST]

    @cached_property
    def unreadable(self) -> dict[str, str]:
        """Namespaces of this node the agent found but could not read: id → its error."""
        return gaps.unreadable_namespaces(self.dump.errors)


class World:
    """All node dumps of a diagnosis."""

    def __init__(self, dumps: dict[str, NodeDump], views: dict[str, NodeView] | None = None) -> None:
        # `views`: NodeViews built earlier from these same (unchanged) dumps, whose parsed rulesets,
        # routers and indexes the caller reuses across diagnoses (services/simulator/assemble.py)
        known = views or {}
        self.nodes = {name: known[name] if name in known and known[name].dump is d else NodeView.build(d)
                      for name, d in dumps.items()}
        self.wanted: set[str] = set()  # nodes the packet reaches whose dump is missing: collect on demand

    def netns(self, place: Place) -> NetnsView:
        return self.nodes[place.node].namespaces[place.netns]

    def pod_netns(self, node: str | None, pod: str) -> NetnsView | None:
        views = [self.nodes[node]] if node in self.nodes else list(self.nodes.values())
        return next((ns for v in views for ns in v.namespaces.values() if ns.dump.pod == pod and not ns.is_host),
                    None)

    def netns_holding(self, addr: IPAddress, node: str | None = None) -> NetnsView | None:
        """The namespace with `addr` on one of its links (a pod first, then a host), excluding loopback."""
        if addr.is_loopback:
            return None
        views = [self.nodes[node]] if node in self.nodes else list(self.nodes.values())
        found = [ns for v in views for ns in v.namespaces.values() if addr in ns.local_ips]
        return next((ns for ns in found if not ns.is_host), found[0] if found else None)

    def node_owning(self, addr: IPAddress) -> NetnsView | None:
        """The host namespace of the node that owns `addr` (its uplink/underlay address)."""
        return next((v.host for v in self.nodes.values() if addr in v.host.owned_ips), None)
