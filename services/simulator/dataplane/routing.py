"""Policy routing for one network namespace, over `shared.netstack.Route` / `Rule` lists.

Kernel semantics (fib_rules + fib_table_lookup):
* rules in priority order; selectors from/to/fwmark[/mask]/iif/oif/tos, `not`; actions lookup (table),
  goto, nop, blackhole/unreachable/prohibit; `suppress_prefixlength N` rejects a lookup result whose
  prefix is N or shorter; a `throw` route or no match in a table continues with the next rule;
* in a table: longest prefix, then TOS, then the lowest metric;
* route types unicast, local, broadcast, multicast, blackhole, unreachable, prohibit, throw;
* source: prefsrc, else the first address of the out device in the next hop's subnet, else its first
  address, else any non-loopback address of the namespace (the kernel's inet_select_addr order);
* ECMP (multipath): one decision per next hop, with probability weight/sum.
Family-neutral: everything is `ipaddress` objects.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.netstack import Route, Rule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TABLE_NAMES = {255: "local", 254: "main", 253: "default"}
ERROR_TYPES = frozenset({"blackhole", "unreachable", "prohibit"})
DEFAULT_RULES = (Rule(priority=0, table=255), Rule(priority=32766, table=254), Rule(priority=32767, table=253))
ALL_ONES = 0xFFFFFFFF


@dataclass(slots=True)
class RouteDecision:
    type: str  # unicast, local, broadcast, multicast, blackhole, unreachable, prohibit, no_route
    table: int | None = None
    route: str | None = None  # as `ip route` prints it
    dev: str | None = None
    gateway: IPAddress | None = None
    src: IPAddress | None = None
    onlink: bool = False
    probability: float = 1.0
    rules: list[str] = field(default_factory=list)  # the policy rules walked, as `ip rule` prints them

    @property
    def delivers_locally(self) -> bool:
        return self.type == "local"

    @property
    def drops(self) -> bool:
        return self.type in ERROR_TYPES or self.type == "no_route"

    def next_hop(self, dst: IPAddress) -> IPAddress:
        return self.gateway or dst

    def as_dict(self) -> dict:
        return {"type": self.type, "table": self.table, "route": self.route, "dev": self.dev,
                "gateway": str(self.gateway) if self.gateway else None, "src": str(self.src) if self.src else None,
                "onlink": self.onlink, "probability": self.probability, "rules": self.rules}


@dataclass(slots=True)
class _Route:
    spec: Route
    net: IPNetwork
    text: str


def _net(dst: str, family: int) -> IPNetwork:
    if dst == "default":
        return ipaddress.ip_network("::/0" if family == 6 else "0.0.0.0/0")
    return ipaddress.ip_network(dst, strict=False)


def route_text(r: Route) -> str:
    """Render a route the way `ip route show table all` does (fields that are set)."""
    dst = r.dst
    if dst != "default" and "/" in dst and dst.split("/")[1] in ("32", "128"):
        dst = dst.split("/")[0]
    parts = [] if r.type == "unicast" else [r.type]
    parts.append(dst)
    if r.gateway:
        parts += ["via", r.gateway]
    if r.dev:
        parts += ["dev", r.dev]
    if r.table != 254:
        parts += ["table", TABLE_NAMES.get(r.table, str(r.table))]
    if r.protocol not in ("boot", "unspec"):
        parts += ["proto", r.protocol]
    if r.scope != "universe":
        parts += ["scope", r.scope]
    if r.prefsrc:
        parts += ["src", r.prefsrc]
    if r.metric:
        parts += ["metric", str(r.metric)]
    if r.onlink:
        parts.append("onlink")
    for hop in r.multipath:
        parts += ["nexthop", "via", str(hop.get("gateway")), "dev", str(hop.get("dev")),
                  "weight", str(hop.get("weight", 1))]
    return " ".join(parts)


def rule_text(r: Rule) -> str:
    """Render a policy rule the way `ip rule` does."""
    parts = [f"{r.priority}:"]
    if r.invert:
        parts.append("not")
    parts += ["from", r.src or "all"]
    if r.dst:
        parts += ["to", r.dst]
    if r.tos:
        parts += ["tos", hex(r.tos)]
    if r.fwmark is not None:
        mask = r.fwmask if r.fwmask is not None else ALL_ONES
        parts += ["fwmark", hex(r.fwmark) + ("" if mask == ALL_ONES else f"/{mask:#x}")]
    if r.iif:
        parts += ["iif", r.iif]
    if r.oif:
        parts += ["oif", r.oif]
    if r.action == "lookup":
        parts += ["lookup", TABLE_NAMES.get(r.table or 254, str(r.table))]
    elif r.action == "goto":
        parts += ["goto", str(r.goto)]
    else:
        parts.append(r.action)
    if r.suppress_prefixlength is not None:
        parts += ["suppress_prefixlength", str(r.suppress_prefixlength)]
    return " ".join(parts)


class Router:
    """Route lookups for one namespace. Build once per namespace dump, look up many packets."""

    def __init__(self, routes: Iterable[Route], rules: Iterable[Rule] = (),
                 addresses: dict[str, list[IPInterface]] | None = None) -> None:
        self.tables: dict[tuple[int, int], list[_Route]] = {}
        for r in routes:
            fam = r.family
            self.tables.setdefault((fam, r.table), []).append(_Route(r, _net(r.dst, fam), route_text(r)))
        for lst in self.tables.values():
            # longest prefix first, then the lowest metric: the first containing route wins
            lst.sort(key=lambda x: (-x.net.prefixlen, x.spec.metric))
        rules = list(rules)
        self.rules: dict[int, list[Rule]] = {}
        for fam in (4, 6):
            fam_rules = [r for r in rules if r.family == fam]
            self.rules[fam] = sorted(fam_rules or DEFAULT_RULES, key=lambda r: r.priority)
        self.addresses = addresses or {}

    @classmethod
    def from_strings(cls, routes: Iterable[Route], rules: Iterable[Rule] = (),
                     addresses: dict[str, list[str]] | None = None) -> Router:
        return cls(routes, rules, {d: [ipaddress.ip_interface(a) for a in al] for d, al in
                                   (addresses or {}).items()})

    def lookup(self, dst: IPAddress, src: IPAddress | None = None, iif: str | None = None,
               oif: str | None = None, fwmark: int = 0, tos: int = 0) -> list[RouteDecision]:
        """Decide the route of one packet. `iif=None` means locally generated (the kernel uses `lo`)."""
        fam = dst.version
        walked: list[str] = []
        rules = self.rules[fam]
        i = 0
        while i < len(rules):
            rule = rules[i]
            i += 1
            if not self._rule_matches(rule, dst, src, iif or "lo", oif, fwmark, tos):
                continue
            walked.append(rule_text(rule))
            if rule.action == "goto":
                i = next((j for j, r in enumerate(rules) if r.priority >= (rule.goto or 0)), len(rules))
                continue
            if rule.action == "nop":
                continue
            if rule.action in ERROR_TYPES:
                return [RouteDecision(type=rule.action, rules=walked)]
            table = rule.table if rule.table is not None else 254
            found = self._table_lookup(fam, table, dst, tos, oif)
            if found is None or found.spec.type == "throw":
                continue
            if rule.suppress_prefixlength is not None and found.net.prefixlen <= rule.suppress_prefixlength:
                continue
            return self._decisions(found, table, dst, walked)
        return [RouteDecision(type="no_route", rules=walked)]

    @staticmethod
    def _rule_matches(rule: Rule, dst: IPAddress, src: IPAddress | None, iif: str, oif: str | None,
                      fwmark: int, tos: int) -> bool:
        ok = True
        if rule.src and rule.src not in ("all", "default"):
            net = ipaddress.ip_network(rule.src, strict=False)
            ok = (src is not None and src.version == net.version and src in net) or net.prefixlen == 0
        if ok and rule.dst and rule.dst not in ("all", "default"):
            net = ipaddress.ip_network(rule.dst, strict=False)
            ok = dst.version == net.version and dst in net
        if ok and rule.fwmark is not None:
            mask = rule.fwmask if rule.fwmask is not None else ALL_ONES
            ok = (fwmark & mask) == rule.fwmark
        if ok and rule.iif:
            ok = rule.iif == iif
        if ok and rule.oif:
            ok = rule.oif == oif
        if ok and rule.tos:
            ok = rule.tos == tos
        return ok != rule.invert

    def _table_lookup(self, fam: int, table: int, dst: IPAddress, tos: int, oif: str | None) -> _Route | None:
        for r in self.tables.get((fam, table), ()):
            if dst in r.net and (not r.spec.tos or r.spec.tos == tos) and (
                    oif is None or r.spec.dev in (None, oif) or r.spec.multipath):
                return r
        return None

    def _decisions(self, found: _Route, table: int, dst: IPAddress, walked: list[str]) -> list[RouteDecision]:
        spec = found.spec
        if spec.type != "unicast":
            return [RouteDecision(type=spec.type, table=table, route=found.text, dev=spec.dev,
                                  src=self._src(spec, spec.dev, None, dst), rules=walked)]
        hops = spec.multipath or [{"gateway": spec.gateway, "dev": spec.dev, "weight": 1, "onlink": spec.onlink}]
        total = sum(int(h.get("weight") or 1) for h in hops)
        out = []
        for h in hops:
            gw = ipaddress.ip_address(h["gateway"]) if h.get("gateway") else None
            dev = h.get("dev") or spec.dev
            out.append(RouteDecision(type="unicast", table=table, route=found.text, dev=dev, gateway=gw,
                                     src=self._src(spec, dev, gw, dst), onlink=bool(h.get("onlink")),
                                     probability=int(h.get("weight") or 1) / total, rules=list(walked)))
        return out

    def _src(self, spec: Route, dev: str | None, gw: IPAddress | None, dst: IPAddress) -> IPAddress | None:
        if spec.prefsrc:
            return ipaddress.ip_address(spec.prefsrc)
        fam = dst.version
        target = gw or dst
        devs = self.addresses.get(dev or "", [])
        same = [a for a in devs if a.version == fam]
        for a in same:
            if target in a.network:
                return a.ip
        if same:
            return same[0].ip
        for name, addrs in self.addresses.items():
            if name == "lo":
                continue
            for a in addrs:
                if a.version == fam and not a.ip.is_loopback:
                    return a.ip
        return None
