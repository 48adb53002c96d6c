"""Typed iptables matches, built from the options the parser collected per module.

Each match's `test` says whether the packet/flow matches, honouring `!`. Matches that cannot be
decided from the packet are either ASSUMED (decided under a stated assumption), PROBABILISTIC
(statistic: the trace forks) or UNKNOWN (not modelled: the trace forks both ways).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.simulator.dataplane.netfilter.model import FlowState, IPAddress, IPNetwork, Match, MatchKind

PROTO_NUMBERS = {"1": "icmp", "4": "ipencap", "6": "tcp", "17": "udp", "58": "icmpv6", "132": "sctp",
                 "ipv6-icmp": "icmpv6", "icmp6": "icmpv6"}
ALL_ONES = 0xFFFFFFFF


def parse_int(text: str) -> int:
    return int(text, 0)


def parse_value_mask(text: str) -> tuple[int, int]:
    value, _, mask = text.partition("/")
    return parse_int(value), (parse_int(mask) if mask else ALL_ONES)


def parse_network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


def iface_matcher(name: str) -> Callable[[str | None], bool]:
    if name.endswith("+"):
        prefix = name[:-1]
        return lambda dev: dev is not None and dev.startswith(prefix)
    return lambda dev: dev == name


def parse_port_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    return (int(lo) if lo else 0, int(hi) if hi else (65535 if _ else int(lo)))


# ---------------------------------------------------------------- core matches


@dataclass(slots=True)
class AddressMatch(Match):
    source: bool = True
    network: IPNetwork = field(kw_only=True)

    def test(self, st: FlowState, ctx: Any) -> bool:
        addr = st.src if self.source else st.dst
        inside = addr.version == self.network.version and addr in self.network
        return inside != self.negated


@dataclass(slots=True)
class InterfaceMatch(Match):
    inbound: bool = True
    name: str = ""
    _fn: Callable[[str | None], bool] = field(init=False)

    def __post_init__(self) -> None:
        self._fn = iface_matcher(self.name)

    def test(self, st: FlowState, ctx: Any) -> bool:
        return self._fn(st.iif if self.inbound else st.oif) != self.negated


@dataclass(slots=True)
class ProtocolMatch(Match):
    protocol: str = ""

    def test(self, st: FlowState, ctx: Any) -> bool:
        if self.protocol == "all":
            return not self.negated
        return (st.protocol == self.protocol) != self.negated


@dataclass(slots=True)
class FragmentMatch(Match):
    def test(self, st: FlowState, ctx: Any) -> bool:
        return self.negated  # we trace first fragments / unfragmented packets only


# ---------------------------------------------------------------- protocol modules


@dataclass(slots=True)
class PortMatch(Match):
    """--sport/--dport (tcp, udp, sctp) and multiport --sports/--dports/--ports."""

    protocol: str | None = None
    which: str = "dport"  # sport, dport, any
    ranges: tuple[tuple[int, int], ...] = ()

    def test(self, st: FlowState, ctx: Any) -> bool:
        if self.protocol is not None and st.protocol != self.protocol:
            return False  # -m tcp only ever matches tcp, `!` or not
        ports = (st.sport,) if self.which == "sport" else (st.dport,) if self.which == "dport" else (
            st.sport, st.dport)
        hit = any(p is not None and lo <= p <= hi for p in ports for lo, hi in self.ranges)
        return hit != self.negated


@dataclass(slots=True)
class TcpFlagsMatch(Match):
    mask: frozenset[str] = frozenset()
    comp: frozenset[str] = frozenset()

    def test(self, st: FlowState, ctx: Any) -> bool:
        if st.protocol != "tcp":
            return False
        return ((st.tcp_flags & self.mask) == self.comp) != self.negated


@dataclass(slots=True)
class IcmpTypeMatch(Match):
    protocol: str = "icmp"
    icmp_type: int | None = None  # None = any
    icmp_code: int | None = None

    def test(self, st: FlowState, ctx: Any) -> bool:
        if st.protocol != self.protocol:
            return False
        hit = self.icmp_type is None or (
            st.icmp_type == self.icmp_type and (self.icmp_code is None or st.icmp_code == self.icmp_code))
        return hit != self.negated


ICMP_TYPES = {
    "any": (None, None), "echo-reply": (0, None), "pong": (0, None), "destination-unreachable": (3, None),
    "network-unreachable": (3, 0), "host-unreachable": (3, 1), "protocol-unreachable": (3, 2),
    "port-unreachable": (3, 3), "fragmentation-needed": (3, 4), "source-quench": (4, None),
    "redirect": (5, None), "echo-request": (8, None), "ping": (8, None), "time-exceeded": (11, None),
    "ttl-exceeded": (11, 0), "parameter-problem": (12, None), "timestamp-request": (13, None),
    "timestamp-reply": (14, None),
}
ICMPV6_TYPES = {
    "destination-unreachable": (1, None), "no-route": (1, 0), "port-unreachable": (1, 4),
    "packet-too-big": (2, None), "time-exceeded": (3, None), "parameter-problem": (4, None),
    "echo-request": (128, None), "ping": (128, None), "echo-reply": (129, None), "pong": (129, None),
    "router-solicitation": (133, None), "router-advertisement": (134, None),
    "neighbour-solicitation": (135, None), "neighbor-solicitation": (135, None),
    "neighbour-advertisement": (136, None), "neighbor-advertisement": (136, None),
}


def parse_icmp_type(text: str, v6: bool) -> tuple[int | None, int | None]:
    names = ICMPV6_TYPES if v6 else ICMP_TYPES
    if text in names:
        return names[text]
    t, _, c = text.partition("/")
    return int(t), (int(c) if c else None)


# ---------------------------------------------------------------- state-based matches


@dataclass(slots=True)
class MarkMatch(Match):
    value: int = 0
    mask: int = ALL_ONES
    conn: bool = False  # connmark

    def test(self, st: FlowState, ctx: Any) -> bool:
        mark = st.ctmark if self.conn else st.mark
        return ((mark & self.mask) == self.value) != self.negated


@dataclass(slots=True)
class ConntrackMatch(Match):
    """conntrack/state. Each option is one AND-ed condition with its own `!`."""

    states: frozenset[str] | None = None
    states_negated: bool = False
    statuses: frozenset[str] | None = None
    statuses_negated: bool = False
    addresses: tuple[tuple[str, IPNetwork, bool], ...] = ()  # (field, net, negated)
    ports: tuple[tuple[str, tuple[int, int], bool], ...] = ()
    direction: str | None = None

    def test(self, st: FlowState, ctx: Any) -> bool:
        if self.states is not None:
            virt = {st.ctstate}
            if st.ct_dnat:
                virt.add("DNAT")
            if st.ct_snat:
                virt.add("SNAT")
            if (bool(virt & self.states)) == self.states_negated:
                return False
        if self.statuses is not None:
            status = {"CONFIRMED"} if st.ctstate != "NEW" else set()
            if st.ct_dnat or st.ct_snat:
                status.add("SEEN_REPLY" if st.ctstate == "ESTABLISHED" else "NONE")
            if st.ctstate == "ESTABLISHED":
                status |= {"SEEN_REPLY", "ASSURED"}
            if (bool(status & self.statuses)) == self.statuses_negated:
                return False
        for fld, net, neg in self.addresses:
            addr = {"ctorigsrc": st.orig_src, "ctorigdst": st.orig_dst,
                    "ctreplsrc": st.dst, "ctrepldst": st.src}[fld]
            if (addr is not None and addr.version == net.version and addr in net) == neg:
                return False
        for fld, (lo, hi), neg in self.ports:
            port = {"ctorigsrcport": st.orig_sport, "ctorigdstport": st.orig_dport,
                    "ctreplsrcport": st.dport, "ctrepldstport": st.sport}[fld]
            if (port is not None and lo <= port <= hi) == neg:
                return False
        if self.direction is not None:
            reply = st.ctstate == "ESTABLISHED" and getattr(ctx, "reply", False)
            if (self.direction == "REPLY") != reply:
                return False
        return True


@dataclass(slots=True)
class AddrTypeMatch(Match):
    """addrtype: --src-type tests the SOURCE address, --dst-type the DESTINATION (KubeSkoop mixed them)."""

    src_types: frozenset[str] | None = None
    src_negated: bool = False
    dst_types: frozenset[str] | None = None
    dst_negated: bool = False
    limit_in: bool = False
    limit_out: bool = False

    def test(self, st: FlowState, ctx: Any) -> bool:
        dev = st.iif if self.limit_in else st.oif if self.limit_out else None
        if self.src_types is not None and (
                ctx.address_type(st.src, dev) in self.src_types) == self.src_negated:
            return False
        return not (self.dst_types is not None and (
            ctx.address_type(st.dst, dev) in self.dst_types) == self.dst_negated)


@dataclass(slots=True)
class IprangeMatch(Match):
    src_range: tuple[IPAddress, IPAddress, bool] | None = None
    dst_range: tuple[IPAddress, IPAddress, bool] | None = None

    def test(self, st: FlowState, ctx: Any) -> bool:
        for rng, addr in ((self.src_range, st.src), (self.dst_range, st.dst)):
            if rng is not None:
                lo, hi, neg = rng
                if (lo.version == addr.version and lo <= addr <= hi) == neg:  # type: ignore[operator]  # same version
                    return False
        return True


@dataclass(slots=True)
class SetMatch(Match):
    name: str = ""
    flags: tuple[str, ...] = ("src",)

    def test(self, st: FlowState, ctx: Any) -> bool:
        store = ctx.ipsets
        ipset = store.sets.get(self.name) if store else None
        if ipset is None:
            # A rule naming a set we were not given: the caller treats this as unknown (see tracer)
            raise MissingSet(self.name)
        return ipset.test(st, list(self.flags), store) != self.negated


class MissingSet(LookupError):
    pass


@dataclass(slots=True)
class PhysdevMatch(Match):
    """physdev: bridge ports of a bridged packet (br_netfilter). Each option has its own `!`."""

    conditions: tuple[tuple[str, str | None, bool], ...] = ()  # (option, value, negated)

    def test(self, st: FlowState, ctx: Any) -> bool:
        bridged = bool(getattr(ctx, "bridged", False))
        pin, pout = getattr(ctx, "physdev_in", None), getattr(ctx, "physdev_out", None)
        for opt, value, neg in self.conditions:
            if opt == "physdev-in":
                hit = bridged and value is not None and iface_matcher(value)(pin)
            elif opt == "physdev-out":
                hit = bridged and value is not None and iface_matcher(value)(pout)
            elif opt == "physdev-is-in":
                hit = bridged and pin is not None
            elif opt == "physdev-is-out":
                hit = bridged and pout is not None
            else:  # physdev-is-bridged
                hit = bridged and pout is not None
            if hit == neg:
                return False
        return True


@dataclass(slots=True)
class RpfilterMatch(Match):
    """rpfilter: the context's reverse-path verdict if known, else assumed to pass (stated)."""

    invert: bool = False

    kind = MatchKind.ASSUMED

    def test(self, st: FlowState, ctx: Any) -> bool:
        ok = getattr(ctx, "rpfilter_ok", None)
        if ok is None:
            ok = True
        return ok != self.invert

    @property
    def assumption(self) -> str:
        return "rpfilter: the reverse path to the source is assumed valid (no route check given)"


@dataclass(slots=True)
class CommentMatch(Match):
    comment: str = ""

    def test(self, st: FlowState, ctx: Any) -> bool:
        return True


@dataclass(slots=True)
class AssumedMatch(Match):
    """A match decided by a stated assumption (limit, socket, recent, nfacct …)."""

    result: bool = True
    why: str = ""

    kind = MatchKind.ASSUMED

    def test(self, st: FlowState, ctx: Any) -> bool:
        return self.result != self.negated

    @property
    def assumption(self) -> str:
        return self.why


@dataclass(slots=True)
class StatisticMatch(Match):
    p: float = 1.0

    kind = MatchKind.PROBABILISTIC

    def test(self, st: FlowState, ctx: Any) -> bool:
        return True

    def probability(self, st: FlowState) -> float:
        return (1.0 - self.p) if self.negated else self.p


@dataclass(slots=True)
class UnknownMatch(Match):
    module: str = ""
    options: list[str] = field(default_factory=list)

    kind = MatchKind.UNKNOWN

    def test(self, st: FlowState, ctx: Any) -> bool:
        return True


# ---------------------------------------------------------------- building from parsed options

Option = tuple[str, bool, list[str]]  # (name without dashes, negated, values)


def _ranges(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(parse_port_range(p) for p in text.split(","))


def build_module(module: str, opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match]:
    """Turn one `-m MODULE --opt …` group into matches. Unknown modules/options → UnknownMatch."""
    try:
        builder = _BUILDERS.get(module)
        if builder is not None:
            built = builder(opts, text, protocol, family)
            if built is not None:
                return built
    except (ValueError, IndexError, KeyError):
        pass
    return [UnknownMatch(text=text, module=module, options=[o for o, _, _ in opts])]


def _proto_ports(module: str) -> Callable[..., list[Match] | None]:
    def build(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
        out: list[Match] = []
        for name, neg, vals in opts:
            if name in ("dport", "destination-port", "sport", "source-port"):
                which = "dport" if name.startswith("d") else "sport"
                out.append(PortMatch(text=text, negated=neg, protocol=module, which=which,
                                     ranges=(parse_port_range(vals[0]),)))
            elif name == "tcp-flags" and module == "tcp":
                out.append(TcpFlagsMatch(text=text, negated=neg, mask=_flags(vals[0]), comp=_flags(vals[1])))
            elif name == "syn" and module == "tcp":
                out.append(TcpFlagsMatch(text=text, negated=neg, mask=frozenset({"SYN", "RST", "ACK", "FIN"}),
                                         comp=frozenset({"SYN"})))
            else:
                return None
        return out or [ProtocolMatch(text=text, protocol=module)]
    return build


def _flags(text: str) -> frozenset[str]:
    if text == "ALL":
        return frozenset({"FIN", "SYN", "RST", "PSH", "ACK", "URG"})
    return frozenset() if text == "NONE" else frozenset(text.split(","))


def _icmp(v6: bool) -> Callable[..., list[Match] | None]:
    def build(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
        out: list[Match] = []
        for name, neg, vals in opts:
            if name not in ("icmp-type", "icmpv6-type"):
                return None
            t, c = parse_icmp_type(vals[0], v6)
            out.append(IcmpTypeMatch(text=text, negated=neg, protocol="icmpv6" if v6 else "icmp",
                                     icmp_type=t, icmp_code=c))
        return out
    return build


def _multiport(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    out: list[Match] = []
    for name, neg, vals in opts:
        which = {"dports": "dport", "destination-ports": "dport", "sports": "sport", "source-ports": "sport",
                 "ports": "any"}.get(name)
        if which is None:
            return None
        out.append(PortMatch(text=text, negated=neg, protocol=protocol, which=which, ranges=_ranges(vals[0])))
    return out


def _mark(conn: bool) -> Callable[..., list[Match] | None]:
    def build(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
        out: list[Match] = []
        for name, neg, vals in opts:
            if name != "mark":
                return None
            v, m = parse_value_mask(vals[0])
            out.append(MarkMatch(text=text, negated=neg, value=v, mask=m, conn=conn))
        return out
    return build


def _conntrack(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    m = ConntrackMatch(text=text)
    addresses, ports = [], []
    for name, neg, vals in opts:
        if name in ("ctstate", "state"):
            m.states, m.states_negated = frozenset(vals[0].split(",")), neg
        elif name == "ctstatus":
            m.statuses, m.statuses_negated = frozenset(vals[0].split(",")), neg
        elif name in ("ctorigsrc", "ctorigdst", "ctreplsrc", "ctrepldst"):
            addresses.append((name, parse_network(vals[0]), neg))
        elif name in ("ctorigsrcport", "ctorigdstport", "ctreplsrcport", "ctrepldstport"):
            ports.append((name, parse_port_range(vals[0]), neg))
        elif name == "ctdir":
            m.direction = vals[0]
        elif name == "ctproto":
            continue  # the protocol of the flow equals the packet's: -p already covers it
        else:
            return None
    m.addresses, m.ports = tuple(addresses), tuple(ports)
    return [m]


def _addrtype(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    m = AddrTypeMatch(text=text)
    for name, neg, vals in opts:
        if name == "src-type":
            m.src_types, m.src_negated = frozenset(vals[0].split(",")), neg
        elif name == "dst-type":
            m.dst_types, m.dst_negated = frozenset(vals[0].split(",")), neg
        elif name == "limit-iface-in":
            m.limit_in = True
        elif name == "limit-iface-out":
            m.limit_out = True
        else:
            return None
    return [m]


def _iprange(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    m = IprangeMatch(text=text)
    for name, neg, vals in opts:
        lo, _, hi = vals[0].partition("-")
        rng = (ipaddress.ip_address(lo), ipaddress.ip_address(hi or lo), neg)
        if name == "src-range":
            m.src_range = rng
        elif name == "dst-range":
            m.dst_range = rng
        else:
            return None
    return [m]


def _set(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    out: list[Match] = []
    for name, neg, vals in opts:
        if name == "match-set":
            out.append(SetMatch(text=text, negated=neg, name=vals[0], flags=tuple(vals[1].split(","))))
        elif name in ("return-nomatch", "update-counters", "update-subcounters", "packets-eq", "bytes-eq"):
            continue  # counters bookkeeping; does not decide the first packet
        else:
            return None
    return out


def _physdev(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    conds = []
    for name, neg, vals in opts:
        if name not in ("physdev-in", "physdev-out", "physdev-is-in", "physdev-is-out", "physdev-is-bridged"):
            return None
        conds.append((name, vals[0] if vals else None, neg))
    return [PhysdevMatch(text=text, conditions=tuple(conds))]


def _rpfilter(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    names = {n for n, _, _ in opts}
    if names - {"loose", "validmark", "accept-local", "invert"}:
        return None
    return [RpfilterMatch(text=text, invert="invert" in names)]


def _comment(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    return [CommentMatch(text=text, comment=" ".join(v for _, _, vals in opts for v in vals))]


def _statistic(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    d = {n: (neg, vals) for n, neg, vals in opts}
    mode = d["mode"][1][0]
    if mode == "random":
        neg, vals = d["probability"]
        return [StatisticMatch(text=text, negated=neg, p=float(vals[0]))]
    if mode == "nth":
        neg, vals = d["every"]
        # every n-th packet: over many connections each slot is hit 1/n of the time
        return [StatisticMatch(text=text, negated=neg, p=1.0 / int(vals[0]))]
    return None


def _assumed(result: bool, why: str) -> Callable[..., list[Match] | None]:
    def build(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
        neg = any(n for _, n, _ in opts)
        return [AssumedMatch(text=text, negated=neg, result=result, why=why)]
    return build


def _recent(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    names = {n for n, _, _ in opts}
    neg = any(n for _, n, _ in opts)
    if "set" in names or "remove" in names:
        return [AssumedMatch(text=text, negated=neg, result=True, why="recent --set always matches")]
    return [AssumedMatch(text=text, negated=neg, result=False,
                         why="recent: no earlier entry for this client (first connection; session affinity "
                             "not yet established)")]


def _owner(opts: list[Option], text: str, protocol: str | None, family: int) -> list[Match] | None:
    return [UnknownMatch(text=text, module="owner", options=[o for o, _, _ in opts])]


_BUILDERS: dict[str, Callable[..., list[Match] | None]] = {
    "tcp": _proto_ports("tcp"), "udp": _proto_ports("udp"), "sctp": _proto_ports("sctp"),
    "icmp": _icmp(False), "icmp6": _icmp(True), "icmpv6": _icmp(True),
    "multiport": _multiport, "mark": _mark(False), "connmark": _mark(True),
    "conntrack": _conntrack, "state": _conntrack, "addrtype": _addrtype, "iprange": _iprange,
    "set": _set, "physdev": _physdev, "rpfilter": _rpfilter, "comment": _comment,
    "statistic": _statistic, "recent": _recent, "owner": _owner,
    "limit": _assumed(True, "limit: the rate limit is assumed not exceeded"),
    "hashlimit": _assumed(True, "hashlimit: the rate limit is assumed not exceeded"),
    "socket": _assumed(False, "socket: no local socket is assumed to own this packet (no TPROXY)"),
    "nfacct": _assumed(True, "nfacct only counts (always matches)"),
}
