"""Links, addresses, routes, rules, neighbours and the bridge FDB of the calling thread's
network namespace, read over rtnetlink and turned into the dump contract.

Message layouts and attribute numbers are the kernel's uapi (linux/rtnetlink.h,
if_link.h, if_addr.h, fib_rules.h, neighbour.h, net_namespace.h)."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

from services.collector.reader import netlink as nl
from shared.netstack import BRIDGE_PORT_STATES, BridgePort, FdbEntry, Link, Neighbor, Route, Rule, XdpProgram

IFF_UP = 0x1
RTNH_F_ONLINK = 0x4
FIB_RULE_INVERT = 0x2
BRPORT_MODE_HAIRPIN = 1
NO_SUPPRESS = 0xFFFFFFFF
AF_BRIDGE = 7

RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE, RTM_GETNEIGH, RTM_GETRULE, RTM_GETNSID = 18, 22, 26, 30, 34, 90
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_LINK_NETNSID, IFLA_XDP = 16, 18, 37, 43
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_BRPORT_STATE, IFLA_BRPORT_MODE, IFLA_BRPORT_LEARNING, IFLA_BRPORT_UNICAST_FLOOD = 1, 4, 8, 9
IFLA_BR_VLAN_FILTERING = 7
IFLA_XDP_ATTACHED, IFLA_XDP_PROG_ID, IFLA_XDP_DRV_PROG_ID, IFLA_XDP_SKB_PROG_ID, IFLA_XDP_HW_PROG_ID = 2, 4, 5, 6, 7
XDP_MODES = {IFLA_XDP_DRV_PROG_ID: "driver", IFLA_XDP_SKB_PROG_ID: "generic", IFLA_XDP_HW_PROG_ID: "offload"}
XDP_ATTACHED = {1: "driver", 2: "generic", 3: "offload", 4: "multi"}
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT, IFLA_VXLAN_GROUP6, IFLA_VXLAN_LOCAL6 = 7, 15, 16, 17
IFLA_IPTUN_LINK, IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE = 1, 2, 3
IFLA_GRE_LINK, IFLA_GRE_LOCAL, IFLA_GRE_REMOTE = 1, 6, 7
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 7, 9, 15
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_GOTO, FRA_PRIORITY, FRA_FWMARK = 1, 2, 3, 4, 6, 10
FRA_SUPPRESS_PREFIXLEN, FRA_TABLE, FRA_FWMASK, FRA_OIFNAME = 14, 15, 16, 17
NDA_DST, NDA_LLADDR, NDA_VLAN, NDA_MASTER = 1, 2, 5, 9
NETNSA_NSID, NETNSA_FD = 1, 3

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
_RTNH = struct.Struct("=HBBi")  # len, flags, hops, ifindex
_GENMSG = struct.Struct("=Bxxx")

OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
TUNNEL_KINDS = {"ipip": (IFLA_IPTUN_LINK, IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE),
                "sit": (IFLA_IPTUN_LINK, IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE),
                "ip6tnl": (IFLA_IPTUN_LINK, IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE),
                "gre": (IFLA_GRE_LINK, IFLA_GRE_LOCAL, IFLA_GRE_REMOTE),
                "ip6gre": (IFLA_GRE_LINK, IFLA_GRE_LOCAL, IFLA_GRE_REMOTE),
                "gretap": (IFLA_GRE_LINK, IFLA_GRE_LOCAL, IFLA_GRE_REMOTE)}
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
    xdp: list[XdpProgram] = field(default_factory=list)
    # ifindex → the nsid (as this namespace numbers it) holding the veth peer; absent: same namespace
    peer_nsids: dict[int, int] = field(default_factory=dict)
    # key → nsid this namespace gives the namespace at a path (read_rtnl's `lookups`); -1: none
    nsids: dict[str, int] = field(default_factory=dict)


def _nud_state(state: int) -> str:
    names = [name for bit, name in NUD_STATES.items() if state & bit]
    return "|".join(names) or "NONE"


def _link(body: bytes, names: dict[int, str], state: RtnlState) -> Link:
    _, _, index, flags, _ = _IFINFO.unpack_from(body)
    a = nl.attrs(body, _IFINFO.size)
    info = nl.attrs(a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
    data = nl.attrs(info[IFLA_INFO_DATA]) if IFLA_INFO_DATA in info else {}
    slave = nl.attrs(info[IFLA_INFO_SLAVE_DATA]) if IFLA_INFO_SLAVE_DATA in info else {}
    name = names[index]
    kind = nl.text(info.get(IFLA_INFO_KIND)) or ("loopback" if name == "lo" else "device")
    operstate = nl.u8(a.get(IFLA_OPERSTATE)) or 0
    link = Link(index=index, name=name, kind=kind,
                state=OPERSTATES[operstate] if operstate < len(OPERSTATES) else str(operstate),
                admin_up=bool(flags & IFF_UP), mtu=nl.u32(a.get(IFLA_MTU)) or 0, mac=nl.mac(a.get(IFLA_ADDRESS)))
    master = nl.u32(a.get(IFLA_MASTER))
    if master:
        link.master = names.get(master, str(master))
    if IFLA_BRPORT_MODE in slave:
        link.hairpin = nl.u8(slave[IFLA_BRPORT_MODE]) == BRPORT_MODE_HAIRPIN
    if nl.text(info.get(IFLA_INFO_SLAVE_KIND)) == "bridge" and IFLA_BRPORT_STATE in slave:
        port_state = nl.u8(slave[IFLA_BRPORT_STATE]) or 0
        link.bridge_port = BridgePort(
            state=BRIDGE_PORT_STATES[port_state] if port_state < len(BRIDGE_PORT_STATES) else str(port_state),
            learning=bool(nl.u8(slave.get(IFLA_BRPORT_LEARNING))),
            flooding=bool(nl.u8(slave.get(IFLA_BRPORT_UNICAST_FLOOD))))
    if kind == "bridge":
        link.vlan_filtering = bool(nl.u8(data.get(IFLA_BR_VLAN_FILTERING)))
    if IFLA_XDP in a:
        state.xdp += _xdp(nl.attrs(a[IFLA_XDP]), name)
    if kind == "veth":
        peer = nl.u32(a.get(IFLA_LINK))
        nsid = nl.i32(a.get(IFLA_LINK_NETNSID))
        link.peer_index = peer or None
        if nsid is not None and nsid >= 0:
            state.peer_nsids[index] = nsid
        elif peer:
            link.peer_name = names.get(peer)
        link.peer_missing = not peer
    elif kind == "vxlan":
        dev = nl.u32(data.get(IFLA_VXLAN_LINK))
        link.vxlan = {"id": nl.u32(data.get(IFLA_VXLAN_ID)), "port": nl.be16(data.get(IFLA_VXLAN_PORT)),
                      "local": nl.ip(data.get(IFLA_VXLAN_LOCAL)) or nl.ip(data.get(IFLA_VXLAN_LOCAL6)),
                      "group": nl.ip(data.get(IFLA_VXLAN_GROUP)) or nl.ip(data.get(IFLA_VXLAN_GROUP6)),
                      "dev": names.get(dev) if dev else None, "learning": bool(nl.u8(data.get(IFLA_VXLAN_LEARNING)))}
    elif kind in TUNNEL_KINDS:
        dev_attr, local, remote = TUNNEL_KINDS[kind]
        dev = nl.u32(data.get(dev_attr))
        link.tunnel = {"local": nl.ip(data.get(local)), "remote": nl.ip(data.get(remote)),
                       "dev": names.get(dev) if dev else None}
    return link


def _xdp(x: nl.Attrs, dev: str) -> list[XdpProgram]:
    """rtnl_xdp_fill: one program id per attached mode (IFLA_XDP_PROG_ID alone when a single mode)."""
    attached = nl.u8(x.get(IFLA_XDP_ATTACHED)) or 0
    if not attached:
        return []
    per_mode = [XdpProgram(dev=dev, mode=mode, prog_id=nl.u32(x[attr]) or 0)
                for attr, mode in XDP_MODES.items() if attr in x]
    if per_mode:
        return per_mode
    return [XdpProgram(dev=dev, mode=XDP_ATTACHED.get(attached, str(attached)),
                       prog_id=nl.u32(x.get(IFLA_XDP_PROG_ID)) or 0)]


def _cidr(addr: str | None, plen: int, family: int) -> str:
    if addr is None:
        return "default" if plen == 0 else ("0.0.0.0" if family == socket.AF_INET else "::") + f"/{plen}"
    return f"{addr}/{plen}"


def _multipath(data: bytes, names: dict[int, str]) -> list[dict[str, object]]:
    hops: list[dict[str, object]] = []
    offset = 0
    while offset + _RTNH.size <= len(data):
        length, flags, weight, oif = _RTNH.unpack_from(data, offset)
        if length < _RTNH.size:
            break
        gateway = nl.ip(nl.attrs(data[offset + _RTNH.size:offset + length]).get(RTA_GATEWAY))
        hops.append({"gateway": gateway, "dev": names.get(oif, str(oif)), "weight": weight + 1,
                     "onlink": bool(flags & RTNH_F_ONLINK)})
        offset += (length + 3) & ~3
    return hops


def _route(body: bytes, names: dict[int, str]) -> Route:
    family, dst_len, _, tos, table, proto, scope, kind, flags = _RTMSG.unpack_from(body)
    a = nl.attrs(body, _RTMSG.size)
    oif = nl.u32(a.get(RTA_OIF))
    dst = nl.ip(a.get(RTA_DST))
    return Route(
        table=nl.u32(a.get(RTA_TABLE)) or table, family=FAMILIES.get(family, family),
        type=ROUTE_TYPES.get(kind, str(kind)),
        dst=_cidr(dst, dst_len, family) if dst_len or dst else "default",
        dev=names.get(oif, str(oif)) if oif else None, gateway=nl.ip(a.get(RTA_GATEWAY)),
        prefsrc=nl.ip(a.get(RTA_PREFSRC)), metric=nl.u32(a.get(RTA_PRIORITY)) or 0,
        scope=SCOPES.get(scope, str(scope)), protocol=PROTOCOLS.get(proto, str(proto)),
        onlink=bool(flags & RTNH_F_ONLINK), tos=tos,
        multipath=_multipath(a[RTA_MULTIPATH], names) if RTA_MULTIPATH in a else [],
    )


def _rule(body: bytes) -> Rule:
    family, dst_len, src_len, tos, table, _, _, action, flags = _RTMSG.unpack_from(body)
    a = nl.attrs(body, _RTMSG.size)
    suppress = nl.u32(a.get(FRA_SUPPRESS_PREFIXLEN))
    src, dst = nl.ip(a.get(FRA_SRC)), nl.ip(a.get(FRA_DST))
    return Rule(
        priority=nl.u32(a.get(FRA_PRIORITY)) or 0, family=FAMILIES.get(family, family),
        action=RULE_ACTIONS.get(action, str(action)),
        table=(nl.u32(a.get(FRA_TABLE)) or table or None) if action == 1 else None,
        goto=nl.u32(a.get(FRA_GOTO)),
        src=_cidr(src, src_len, family) if src else None, dst=_cidr(dst, dst_len, family) if dst else None,
        iif=nl.text(a.get(FRA_IIFNAME)), oif=nl.text(a.get(FRA_OIFNAME)), fwmark=nl.u32(a.get(FRA_FWMARK)),
        fwmask=nl.u32(a.get(FRA_FWMASK)), tos=tos or None, invert=bool(flags & FIB_RULE_INVERT),
        suppress_prefixlength=None if suppress in (None, NO_SUPPRESS) else suppress,
    )


def _nsid(sock: nl.Netlink, path: str) -> int:
    """RTM_GETNSID only looks the id up (peernet2id): it never allocates one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # the process holding that namespace exited
        return -1
    try:
        request = _GENMSG.pack(socket.AF_UNSPEC) + struct.pack("=HHI", 8, NETNSA_FD, fd)
        replies = list(sock.request(RTM_GETNSID, request, dump=False))
    except nl.NetlinkError:  # EINVAL: the namespace is being torn down (labs come and go concurrently)
        return -1
    finally:
        os.close(fd)
    nsid = nl.i32(nl.attrs(replies[0][1], _GENMSG.size).get(NETNSA_NSID)) if replies else None
    return -1 if nsid is None else nsid


def _dump(sock: nl.Netlink, msg_type: int, header: bytes) -> list[bytes]:
    return [body for _, body in sock.dump(msg_type, header)]


def read_rtnl(lookups: dict[str, str] | None = None) -> RtnlState:
    """Read the calling thread's namespace (the netlink socket binds to it at creation), and
    the nsid it gives each namespace in `lookups` (key → nsfs path) to resolve veth peers."""
    state = RtnlState()
    with nl.Netlink(nl.NETLINK_ROUTE) as sock:
        state.nsids = {key: _nsid(sock, path) for key, path in (lookups or {}).items()}
        msgs = _dump(sock, RTM_GETLINK, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        names = {}
        for body in msgs:
            index = _IFINFO.unpack_from(body)[2]
            names[index] = nl.text(nl.attrs(body, _IFINFO.size).get(IFLA_IFNAME)) or str(index)
        state.links = [_link(body, names, state) for body in msgs]
        by_index = {link.index: link for link in state.links}
        for body in _dump(sock, RTM_GETADDR, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            _, prefixlen, _, _, index = _IFADDR.unpack_from(body)
            link = by_index.get(index)
            if link is not None:
                a = nl.attrs(body, _IFADDR.size)
                link.addresses.append(f"{nl.ip(a.get(IFA_LOCAL)) or nl.ip(a.get(IFA_ADDRESS))}/{prefixlen}")
        # multicast-routing families (RTNL_FAMILY_IPMR …) and multicast neighbours/FDB entries
        # never decide a unicast path: leaving them out keeps a 100-pod dump small
        for family in FAMILIES:
            state.routes += [_route(body, names)
                             for body in _dump(sock, RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))]
        state.rules = [_rule(body) for body in _dump(sock, RTM_GETRULE, _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0))
                       if body[0] in FAMILIES]
        for body in _dump(sock, RTM_GETNEIGH, _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            family, ifindex, nud, _, _ = _NDMSG.unpack_from(body)
            a = nl.attrs(body, _NDMSG.size)
            dst = nl.ip(a.get(NDA_DST))
            if family not in FAMILIES or not dst or ipaddress.ip_address(dst).is_multicast:
                continue
            state.neighbors.append(Neighbor(dst=dst, dev=names.get(ifindex, str(ifindex)),
                                            lladdr=nl.mac(a.get(NDA_LLADDR)), state=_nud_state(nud)))
        # only bridges and vxlan devices have forwarding databases worth a dump (pods have neither)
        if any(link.kind in ("bridge", "vxlan") for link in state.links):
            state.fdb = _fdb(sock, names)
    return state


def _fdb(sock: nl.Netlink, names: dict[int, str]) -> list[FdbEntry]:
    entries = []
    for body in _dump(sock, RTM_GETNEIGH, _NDMSG.pack(AF_BRIDGE, 0, 0, 0, 0)):
        _, ifindex, nud, _, _ = _NDMSG.unpack_from(body)
        a = nl.attrs(body, _NDMSG.size)
        lladdr = a.get(NDA_LLADDR)
        if not lladdr or lladdr[0] & 1:  # group bit: multicast/broadcast
            continue
        master = nl.u32(a.get(NDA_MASTER))
        entries.append(FdbEntry(mac=nl.mac(lladdr) or "", dev=names.get(ifindex, str(ifindex)),
                                dst=nl.ip(a.get(NDA_DST)), master=names.get(master) if master else None,
                                vlan=nl.u16(a.get(NDA_VLAN)), state=_nud_state(nud)))
    return entries
