"""ipsets from `ipset save` text, and membership tests as `-m set --match-set NAME src,dst` does them.

Supported types: hash:ip, hash:net, hash:ip,port, hash:net,port, hash:ip,port,ip, hash:ip,port,net,
bitmap:port, bitmap:ip, hash:port-less variants of those, and list:set. Each dimension of an entry is
matched against the packet's source or destination according to the flag at that position.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from services.simulator.dataplane.netfilter.model import FlowState, IPAddress, IPNetwork

_PROTO_DEFAULT = "tcp"


class IpsetError(ValueError):
    pass


@dataclass(slots=True)
class _NetSet:
    """Networks by prefix length, for longest-prefix membership with `nomatch` exceptions."""

    by_len: dict[int, dict[int, bool]] = field(default_factory=dict)  # prefixlen -> {network int: nomatch}

    def add(self, net: IPNetwork, nomatch: bool) -> None:
        self.by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = nomatch

    def contains(self, addr: IPAddress) -> bool:
        value, bits = int(addr), addr.max_prefixlen
        for plen in sorted(self.by_len, reverse=True):
            key = value >> (bits - plen) << (bits - plen)
            nomatch = self.by_len[plen].get(key)
            if nomatch is not None:
                return not nomatch
        return False


@dataclass(slots=True)
class Ipset:
    name: str
    type: str  # e.g. hash:ip,port
    family: int = 4
    dims: tuple[str, ...] = ()  # ip, net, port, iface, set
    entries: set[tuple] = field(default_factory=set)  # exact entries (no net dimension)
    nets: dict[tuple, _NetSet] = field(default_factory=dict)  # rest-of-entry -> nets (one net dim)
    members: list[str] = field(default_factory=list)  # list:set

    def add(self, text: str, nomatch: bool) -> None:
        parts = text.split(",")
        if self.type == "list:set":
            self.members.append(text)
            return
        if len(parts) != len(self.dims):
            raise IpsetError(f"entry {text!r} does not fit {self.type}")
        key: list = []
        net: IPNetwork | None = None
        net_at = -1
        for i, (dim, part) in enumerate(zip(self.dims, parts, strict=True)):
            if dim == "ip":
                key.append(ipaddress.ip_address(part.split("/")[0]) if "/" not in part
                           else ipaddress.ip_network(part, strict=False))
            elif dim == "net":
                net, net_at = ipaddress.ip_network(part, strict=False), i
                key.append(None)
            elif dim == "port":
                key.append(self._port_key(part))
            else:
                key.append(part)
        if any(isinstance(k, ipaddress.IPv4Network | ipaddress.IPv6Network) for k in key):
            # hash:ip given a CIDR: store as a network dimension
            for i, k in enumerate(key):
                if isinstance(k, ipaddress.IPv4Network | ipaddress.IPv6Network):
                    net, net_at, key[i] = k, i, None
        if net is None:
            self.entries.add(tuple(key))
        else:
            self.nets.setdefault((net_at, *key), _NetSet()).add(net, nomatch)

    def _port_key(self, part: str) -> tuple[str, int]:
        proto, _, port = part.rpartition(":")
        return (self._proto_key(proto or _PROTO_DEFAULT), int(port))

    def _proto_key(self, proto: str) -> str:
        # bitmap:port members carry no protocol: any protocol's port matches
        return "*" if self.type.startswith("bitmap") else proto.lower()

    def test(self, st: FlowState, flags: list[str], store: IpsetStore, depth: int = 0) -> bool:
        if self.type == "list:set":
            if depth > 4:
                return False
            return any(store.sets[m].test(st, flags, store, depth + 1) for m in self.members if m in store.sets)
        values: list = []
        for i, dim in enumerate(self.dims):
            flag = flags[i] if i < len(flags) else flags[-1]
            src = flag == "src"
            if dim in ("ip", "net"):
                values.append(st.src if src else st.dst)
            elif dim == "port":
                values.append((self._proto_key(st.protocol), st.sport if src else st.dport))
            elif dim == "iface":
                values.append(st.iif if src else st.oif)
            else:
                values.append(None)
        if not self.nets:
            return tuple(values) in self.entries
        if tuple(values) in self.entries:
            return True
        for (net_at, *rest), nets in self.nets.items():
            if all(r is None or r == v for j, (r, v) in enumerate(zip(rest, values, strict=True)) if j != net_at) \
                    and values[net_at].version == _version_of(nets) and nets.contains(values[net_at]):
                return True
        return False


def _version_of(nets: _NetSet) -> int:
    for plen, members in nets.by_len.items():
        for value in members:
            return 6 if plen > 32 or value >= 1 << 32 else 4
    return 4




@dataclass(slots=True)
class IpsetStore:
    sets: dict[str, Ipset] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


_DIMS = {"ip": "ip", "net": "net", "port": "port", "iface": "iface", "mac": "mac", "mark": "mark"}


def parse_ipset_save(text: str) -> IpsetStore:
    """Parse `ipset save` output. Unknown set types are kept (and never match, with a warning)."""
    store = IpsetStore()
    for lineno, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "create" and len(words) >= 3:
            name, typ = words[1], words[2]
            method, _, dims = typ.partition(":")
            family = 6 if "inet6" in words[3:] else 4
            dim_names = tuple(_DIMS.get(d, d) for d in dims.split(","))
            if method not in ("hash", "bitmap", "list"):
                store.warnings.append(f"line {lineno}: unknown ipset type {typ}")
            store.sets[name] = Ipset(name=name, type=typ, family=family, dims=dim_names)
        elif words[0] == "add" and len(words) >= 3:
            s = store.sets.get(words[1])
            if s is None:
                store.warnings.append(f"line {lineno}: add to unknown set {words[1]}")
                continue
            try:
                s.add(words[2], nomatch="nomatch" in words[3:])
            except (ValueError, IpsetError) as exc:
                store.warnings.append(f"line {lineno}: {exc}")
    return store
