"""Links, addresses, routes, rules, neighbours and the bridge FDB of the calling thread's
network namespace, read over rtnetlink (pyroute2) and turned into the dump contract."""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from shared.netstack import FdbEntry, Link, Neighbor, Route, Rule

IFF_UP = 0x1
RTNH_F_ONLINK = 0x4
FIB_RULE_INVERT = 0x2
BRPORT_MODE_HAIRPIN = 1
NO_SUPPRESS = 0xFFFFFFFF

ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast", 6: "blackhole",
               7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
SCOPES = {0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra", 10: "mrt",
             11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp", 42: "babel",
             186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}
RULE_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable", 8: "prohibit"}
NUD_STATES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
              0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}


@dataclass
class RtnlState:
    links: list[Link] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    neighbors: list[Neighbor] = field(default_factory=list)
    fdb: list[FdbEntry] = field(default_factory=list)
    # ifindex → the nsid (as this namespace numbers it) holding the veth peer; absent: same namespace
    peer_nsids: dict[int, int] = field(default_factory=dict)
    # key → nsid this namespace gives the namespace at a path (read_rtnl's `lookups`); -1: none
    nsids: dict[str, int] = field(default_factory=dict)


def _nud_state(state: int) -> str:
    names = [name for bit, name in NUD_STATES.items() if state & bit]
    return "|".join(names) or "NONE"


def _info(msg: Any) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """(kind, kind-specific data, bridge-port data) from IFLA_LINKINFO."""
    info = msg.get("IFLA_LINKINFO")
    if not info:
        return None, {}, {}
    data = info.get("IFLA_INFO_DATA")
    slave = info.get("IFLA_INFO_SLAVE_DATA")
    as_dict = lambda nla: dict(nla["attrs"]) if nla and not isinstance(nla, str) else {}  # noqa: E731
    return info.get("IFLA_INFO_KIND"), as_dict(data), as_dict(slave)


def _link(msg: Any, names: dict[int, str], state: RtnlState) -> Link:
    kind, data, slave = _info(msg)
    index = msg["index"]
    name = msg.get("IFLA_IFNAME")
    if kind is None:
        kind = "loopback" if name == "lo" else "device"
    link = Link(index=index, name=name, kind=kind, state=msg.get("IFLA_OPERSTATE") or "UNKNOWN",
                admin_up=bool(msg["flags"] & IFF_UP), mtu=msg.get("IFLA_MTU") or 0,
                mac=msg.get("IFLA_ADDRESS"))
    master = msg.get("IFLA_MASTER")
    if master:
        link.master = names.get(master, str(master))
    if "IFLA_BRPORT_MODE" in slave:
        link.hairpin = slave["IFLA_BRPORT_MODE"] == BRPORT_MODE_HAIRPIN
    if kind == "veth":
        peer = msg.get("IFLA_LINK")
        nsid = msg.get("IFLA_LINK_NETNSID")
        link.peer_index = peer or None
        if nsid is not None and nsid >= 0:
            state.peer_nsids[index] = nsid
        elif peer:
            link.peer_name = names.get(peer)
        link.peer_missing = not peer
    elif kind == "vxlan":
        dev = data.get("IFLA_VXLAN_LINK")
        link.vxlan = {"id": data.get("IFLA_VXLAN_ID"), "port": data.get("IFLA_VXLAN_PORT"),
                      "local": data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6"),
                      "group": data.get("IFLA_VXLAN_GROUP") or data.get("IFLA_VXLAN_GROUP6"),
                      "dev": names.get(dev) if dev else None, "learning": bool(data.get("IFLA_VXLAN_LEARNING"))}
    elif kind in ("ipip", "gre", "sit", "ip6tnl", "ip6gre", "gretap"):
        dev = data.get("IFLA_IPTUN_LINK") or data.get("IFLA_GRE_LINK")
        link.tunnel = {"local": data.get("IFLA_IPTUN_LOCAL") or data.get("IFLA_GRE_LOCAL"),
                       "remote": data.get("IFLA_IPTUN_REMOTE") or data.get("IFLA_GRE_REMOTE"),
                       "dev": names.get(dev) if dev else None}
    return link


def _cidr(addr: str | None, plen: int, family: int) -> str:
    if addr is None:
        return "default" if plen == 0 else ("0.0.0.0" if family == socket.AF_INET else "::") + f"/{plen}"
    return f"{addr}/{plen}"


def _route(msg: Any, names: dict[int, str]) -> Route:
    family = msg["family"]
    oif = msg.get("RTA_OIF")
    hops = []
    for hop in msg.get("RTA_MULTIPATH") or []:
        attrs = dict(hop["attrs"])
        hops.append({"gateway": attrs.get("RTA_GATEWAY"), "dev": names.get(hop["oif"], str(hop["oif"])),
                     "weight": hop["hops"] + 1, "onlink": bool(hop["flags"] & RTNH_F_ONLINK)})
    dst_len = msg["dst_len"]
    return Route(
        table=msg.get("RTA_TABLE") or msg["table"], family=FAMILIES.get(family, family),
        type=ROUTE_TYPES.get(msg["type"], str(msg["type"])),
        dst=_cidr(msg.get("RTA_DST"), dst_len, family) if dst_len or msg.get("RTA_DST") else "default",
        dev=names.get(oif, str(oif)) if oif else None, gateway=msg.get("RTA_GATEWAY"),
        prefsrc=msg.get("RTA_PREFSRC"), metric=msg.get("RTA_PRIORITY") or 0,
        scope=SCOPES.get(msg["scope"], str(msg["scope"])), protocol=PROTOCOLS.get(msg["proto"], str(msg["proto"])),
        onlink=bool(msg["flags"] & RTNH_F_ONLINK), tos=msg["tos"], multipath=hops,
    )


def _rule(msg: Any) -> Rule:
    family = msg["family"]
    suppress = msg.get("FRA_SUPPRESS_PREFIXLEN")
    return Rule(
        priority=msg.get("FRA_PRIORITY") or 0, family=FAMILIES.get(family, family),
        action=RULE_ACTIONS.get(msg["action"], str(msg["action"])),
        table=(msg.get("FRA_TABLE") or msg["table"] or None) if msg["action"] == 1 else None,
        goto=msg.get("FRA_GOTO"),
        src=_cidr(msg.get("FRA_SRC"), msg["src_len"], family) if msg.get("FRA_SRC") else None,
        dst=_cidr(msg.get("FRA_DST"), msg["dst_len"], family) if msg.get("FRA_DST") else None,
        iif=msg.get("FRA_IIFNAME"), oif=msg.get("FRA_OIFNAME"), fwmark=msg.get("FRA_FWMARK"),
        fwmask=msg.get("FRA_FWMASK"), tos=msg["tos"] or None, invert=bool(msg["flags"] & FIB_RULE_INVERT),
        suppress_prefixlength=None if suppress in (None, NO_SUPPRESS, -1) else suppress,
    )


def _nsid(ipr: IPRoute, path: str) -> int:
    """RTM_GETNSID only looks the id up (peernet2id): it never allocates one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # the process holding that namespace exited
        return -1
    try:
        found = ipr.get_netnsid(fd=fd)
    except NetlinkError:  # EINVAL: the namespace is being torn down (labs come and go concurrently)
        return -1
    finally:
        os.close(fd)
    nsid = found.get("nsid") if found else None
    return -1 if nsid is None else nsid


def read_rtnl(lookups: dict[str, str] | None = None) -> RtnlState:
    """Read the calling thread's namespace (the netlink socket binds to it at creation), and
    the nsid it gives each namespace in `lookups` (key → nsfs path) to resolve veth peers."""
    state = RtnlState()
    with IPRoute() as ipr:
        state.nsids = {key: _nsid(ipr, path) for key, path in (lookups or {}).items()}
        msgs = list(ipr.get_links())
        names = {m["index"]: m.get("IFLA_IFNAME") for m in msgs}
        state.links = [_link(m, names, state) for m in msgs]
        by_index = {link.index: link for link in state.links}
        for a in ipr.get_addr():
            link = by_index.get(a["index"])
            if link is not None:
                link.addresses.append(f"{a.get('IFA_LOCAL') or a.get('IFA_ADDRESS')}/{a['prefixlen']}")
        # multicast-routing families (RTNL_FAMILY_IPMR …) and multicast neighbours/FDB entries
        # never decide a unicast path: leaving them out keeps a 100-pod dump small
        state.routes = [_route(m, names) for m in ipr.get_routes() if m["family"] in FAMILIES]
        state.rules = [_rule(m) for m in ipr.get_rules() if m["family"] in FAMILIES]
        for n in ipr.get_neighbours(family=socket.AF_UNSPEC):
            dst = n.get("NDA_DST")
            if n["family"] not in FAMILIES or not dst or ipaddress.ip_address(dst).is_multicast:
                continue
            state.neighbors.append(Neighbor(dst=n.get("NDA_DST"), dev=names.get(n["ifindex"], str(n["ifindex"])),
                                            lladdr=n.get("NDA_LLADDR"), state=_nud_state(n["state"])))
        # only bridges and vxlan devices have forwarding databases worth a dump (pods have neither)
        has_fdb = any(link.kind in ("bridge", "vxlan") for link in state.links)
        for f in ipr.get_neighbours(family=socket.AF_BRIDGE) if has_fdb else ():
            mac = f.get("NDA_LLADDR") or ""
            if mac and int(mac[:2], 16) & 1:  # group bit: multicast/broadcast
                continue
            master = f.get("NDA_MASTER")
            state.fdb.append(FdbEntry(mac=mac, dev=names.get(f["ifindex"], str(f["ifindex"])),
                                      dst=f.get("NDA_DST"), master=names.get(master) if master else None,
                                      vlan=f.get("NDA_VLAN"), state=_nud_state(f["state"])))
    return state
