"""What nft expressions read from the packet (payload, meta, ct, fib, numgen, jhash, concat, binop), and
how literals, prefixes, ranges and set elements are coerced to the same Python values.

A value is read from a `FlowState` plus the node context. `Choices` is a value the kernel draws at
random (numgen, jhash): the trace forks. `Break` is the kernel's NFT_BREAK (a missing header or
device: the rule does not match whatever its operator). `Unmodelled` is an expression we do not read:
the rule forks both ways and says so.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from services.simulator.dataplane.netfilter.model import FlowState
from services.simulator.dataplane.nftables.model import Interval

PROTO = {"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58,
         "ipv6-icmp": 58, "sctp": 132, "udplite": 136}
CT_STATE = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
CT_STATUS = {"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16, "dnat": 32,
             "dying": 512}
TCP_FLAGS = {"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32, "ecn": 64, "cwr": 128}
ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
              "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11,
              "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14}
ICMPV6_TYPES = {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
                "echo-request": 128, "echo-reply": 129, "nd-router-solicit": 133, "nd-router-advert": 134,
                "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137}
NFPROTO = {"ipv4": 2, "ipv6": 10}
ETHER = {"ip": 0x0800, "ip6": 0x86DD, "arp": 0x0806, "vlan": 0x8100}
CT_DIR = {"original": 0, "reply": 1}
FLAG_TYPES = {"ct_state": CT_STATE, "ct_status": CT_STATUS, "tcp_flag": TCP_FLAGS}
SYMBOLS = {"inet_proto": PROTO, "icmp_type": ICMP_TYPES, "icmpv6_type": ICMPV6_TYPES, "nf_proto": NFPROTO,
           "ether_type": ETHER, "ct_dir": CT_DIR, **FLAG_TYPES}
PORT_PROTOCOLS = frozenset({6, 17, 132, 136})


class Break(Exception):  # named after the kernel's NFT_BREAK
    """The expression cannot be evaluated on this packet: the rule does not match."""


class Unmodelled(Exception):
    """An expression the simulator does not model; the message names it."""


@dataclass(slots=True)
class Choices:
    """A value drawn by the kernel: each option with its probability."""

    options: list[tuple[Any, float]]
    note: str


@dataclass(slots=True)
class Pattern:
    """An interface name with nft's trailing `*` wildcard."""

    prefix: str

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value.startswith(self.prefix)


@dataclass(slots=True)
class ConcatInterval:
    """A concatenated set element where some components are intervals."""

    parts: tuple[Any, ...]

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, tuple) or len(value) != len(self.parts):
            return False
        return all(v in p if isinstance(p, Interval | Pattern) else v == p
                   for v, p in zip(value, self.parts, strict=True))


def proto_number(protocol: str | int) -> int | None:
    if isinstance(protocol, int):
        return protocol
    if protocol.isdigit():
        return int(protocol)
    return PROTO.get(protocol.lower())


# ------------------------------------------------------------------ literals


def coerce(dtype: str, raw: Any) -> Any:
    """A literal (or prefix / range / wildcard) of type `dtype` → a value, Interval or Pattern."""
    if isinstance(raw, dict):
        if "prefix" in raw:
            net = ipaddress.ip_network(f"{raw['prefix']['addr']}/{raw['prefix']['len']}", strict=False)
            return Interval(net.network_address, net.broadcast_address)
        if "range" in raw:
            lo, hi = raw["range"]
            return Interval(coerce(dtype, lo), coerce(dtype, hi))
        if "elem" in raw:
            return coerce(dtype, raw["elem"]["val"])
        raise Unmodelled(f"literal {_short(raw)}")
    if dtype in ("ipv4_addr", "ipv6_addr"):
        return ipaddress.ip_address(raw)
    if dtype in ("ifname", "iface"):
        return Pattern(raw[:-1]) if isinstance(raw, str) and raw.endswith("*") and not raw.endswith("\\*") \
            else str(raw).replace("\\*", "*")
    if dtype in FLAG_TYPES:
        names = raw if isinstance(raw, list) else [raw]
        bits = 0
        for n in names:
            bits |= n if isinstance(n, int) else FLAG_TYPES[dtype][n]
        return bits
    if dtype in SYMBOLS:
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str) and raw.isdigit():
            return int(raw)
        if raw in SYMBOLS[dtype]:
            return SYMBOLS[dtype][raw]
        raise Unmodelled(f"{dtype} value {raw!r}")
    if dtype in ("fib_addrtype", "pkt_type", "verdict", "string"):
        return raw
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        if raw.lstrip("-").isdigit():
            return int(raw)
        if raw.startswith("0x"):
            return int(raw, 16)
        if dtype == "inet_service":
            try:
                return socket.getservbyname(raw)
            except OSError as exc:
                raise Unmodelled(f"service name {raw!r}") from exc
        return raw
    raise Unmodelled(f"literal {_short(raw)}")


def _short(raw: Any) -> str:
    text = str(raw)
    return text if len(text) < 80 else text[:77] + "..."


# ------------------------------------------------------------------ packet reads


class Value:
    dtype: str = "integer"
    text: str = "?"

    def read(self, st: FlowState, ctx: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(slots=True)
class Payload(Value):
    protocol: str
    field: str
    dtype: str = "integer"
    text: str = ""

    def read(self, st: FlowState, ctx: Any) -> Any:
        p, f = self.protocol, self.field
        proto = proto_number(st.protocol)
        if p in ("ip", "ip6"):
            if st.dst.version != (4 if p == "ip" else 6):
                raise Break  # the implicit `meta nfproto` dependency fails
            if f == "saddr":
                return st.src
            if f == "daddr":
                return st.dst
            if f in ("protocol", "nexthdr"):
                return proto
            if f == "version":
                return st.dst.version
            raise Unmodelled(f"{p} {f}")
        if p == "th":
            if proto not in PORT_PROTOCOLS:
                raise Break
            return _port(st, f)
        if p in ("tcp", "udp", "sctp", "udplite"):
            if proto != PROTO[p]:
                raise Break  # the implicit `meta l4proto` dependency fails
            if f in ("sport", "dport"):
                return _port(st, f)
            if p == "tcp" and f == "flags":
                return sum(TCP_FLAGS[x.lower()] for x in st.tcp_flags if x.lower() in TCP_FLAGS)
            raise Unmodelled(f"{p} {f}")
        if p in ("icmp", "icmpv6"):
            if proto != PROTO[p]:
                raise Break
            if f == "type" and st.icmp_type is not None:
                return st.icmp_type
            if f == "code" and st.icmp_code is not None:
                return st.icmp_code
            raise Unmodelled(f"{p} {f} (not known for this packet)")
        raise Unmodelled(f"payload {p} {f}")


def _port(st: FlowState, f: str) -> int:
    value = st.sport if f == "sport" else st.dport
    if value is None:
        raise Unmodelled(f"{f} (not known for this packet)")
    return value


PAYLOAD_TYPES = {"saddr": "addr", "daddr": "addr", "protocol": "inet_proto", "nexthdr": "inet_proto",
                 "sport": "inet_service", "dport": "inet_service", "flags": "tcp_flag"}


def payload(protocol: str, field: str) -> Payload:
    dtype = PAYLOAD_TYPES.get(field, "integer")
    if dtype == "addr":
        dtype = "ipv6_addr" if protocol == "ip6" else "ipv4_addr"
    if protocol == "icmp" and field == "type":
        dtype = "icmp_type"
    if protocol == "icmpv6" and field == "type":
        dtype = "icmpv6_type"
    return Payload(protocol, field, dtype, f"{protocol} {field}")


META_TYPES = {"l4proto": "inet_proto", "nfproto": "nf_proto", "protocol": "ether_type", "iif": "ifname",
              "oif": "ifname", "iifname": "ifname", "oifname": "ifname", "mark": "mark", "pkttype": "pkt_type"}


@dataclass(slots=True)
class Meta(Value):
    key: str
    dtype: str = "integer"
    text: str = ""

    def read(self, st: FlowState, ctx: Any) -> Any:
        k = self.key
        if k == "l4proto":
            return proto_number(st.protocol)
        if k == "nfproto":
            return 2 if st.dst.version == 4 else 10
        if k == "protocol":
            return ETHER["ip"] if st.dst.version == 4 else ETHER["ip6"]
        if k in ("iif", "iifname"):
            if st.iif is None:
                raise Break  # locally generated: no input device
            return st.iif
        if k in ("oif", "oifname"):
            if st.oif is None:
                raise Break  # before routing: no output device yet
            return st.oif
        if k == "mark":
            return st.mark
        if k == "pkttype":
            if st.dst.is_multicast:
                return "multicast"
            return "broadcast" if ctx.address_type(st.dst) == "BROADCAST" else "host"
        raise Unmodelled(f"meta {k}")


def meta(key: str) -> Meta:
    return Meta(key, META_TYPES.get(key, "integer"), f"meta {key}")


CT_TYPES = {"state": "ct_state", "status": "ct_status", "mark": "mark", "direction": "ct_dir",
            "saddr": "addr", "daddr": "addr", "l3proto": "nf_proto", "protocol": "inet_proto",
            "proto-src": "inet_service", "proto-dst": "inet_service", "zone": "integer"}


@dataclass(slots=True)
class Ct(Value):
    key: str
    direction: str | None = None
    dtype: str = "integer"
    text: str = ""

    def read(self, st: FlowState, ctx: Any) -> Any:
        k = self.key
        if k == "state":
            return CT_STATE.get(st.ctstate.lower(), 0)
        if st.ctstate == "UNTRACKED":
            raise Break  # no conntrack entry to read
        if k == "status":
            status = CT_STATUS["confirmed"] if st.ctstate != "NEW" else 0
            if st.ctstate == "ESTABLISHED":
                status |= CT_STATUS["seen-reply"]
            return status | (CT_STATUS["dnat"] if st.ct_dnat else 0) | (CT_STATUS["snat"] if st.ct_snat else 0)
        if k == "mark":
            return st.ctmark
        if k == "direction":
            return CT_DIR["reply"] if ctx.reply else CT_DIR["original"]
        if k == "zone":
            return 0
        if k == "l3proto":
            return 2 if st.dst.version == 4 else 10
        if k == "protocol":
            return proto_number(st.protocol)
        if k in ("saddr", "daddr", "proto-src", "proto-dst") and self.direction in ("original", None):
            if ctx.reply:
                raise Unmodelled(f"ct original {k} of a reply packet")
            return {"saddr": st.orig_src, "daddr": st.orig_dst, "proto-src": st.orig_sport,
                    "proto-dst": st.orig_dport}[k]
        raise Unmodelled(f"ct {self.direction + ' ' if self.direction else ''}{k}")


def ct(key: str, direction: str | None, family_version: int | None) -> Ct:
    dtype = CT_TYPES.get(key, "integer")
    if dtype == "addr":
        dtype = "ipv6_addr" if family_version == 6 else "ipv4_addr"
    label = f"ct {direction + ' ' if direction else ''}{key}"
    return Ct(key, direction, dtype, label)


@dataclass(slots=True)
class Fib(Value):
    result: str
    flags: tuple[str, ...]
    dtype: str = "fib_addrtype"
    text: str = ""

    def read(self, st: FlowState, ctx: Any) -> Any:
        which = st.src if "saddr" in self.flags else st.dst
        if self.result == "type":
            dev = None
            if "iif" in self.flags:
                dev = st.iif
            elif "oif" in self.flags:
                dev = st.oif
            return ctx.address_type(which, dev).lower()
        if self.result in ("oif", "oifname") and set(self.flags) >= {"saddr", "iif"}:
            # the rpfilter idiom: `fib saddr . iif oif missing` → false when the reverse route fails
            if ctx.rpfilter_ok is None:
                raise Unmodelled("fib saddr . iif oif (reverse-path lookup; rp_filter result unknown)")
            return st.iif if ctx.rpfilter_ok else False
        raise Unmodelled(f"fib {' . '.join(self.flags)} {self.result} (needs a route lookup)")


@dataclass(slots=True)
class Numgen(Value):
    mode: str
    mod: int
    offset: int = 0
    dtype: str = "integer"
    text: str = ""

    def read(self, st: FlowState, ctx: Any) -> Choices:
        note = ("" if self.mode == "random" else
                f"numgen {self.mode}: the counter's position is unknown: each value is taken as equally likely")
        return Choices([(self.offset + i, 1.0 / self.mod) for i in range(self.mod)], note)


@dataclass(slots=True)
class Hash(Value):
    kind: str
    mod: int
    offset: int = 0
    dtype: str = "integer"
    text: str = ""

    def read(self, st: FlowState, ctx: Any) -> Choices:
        return Choices([(self.offset + i, 1.0 / self.mod) for i in range(self.mod)],
                       f"{self.kind}: the kernel's hash of this flow is not computed: each bucket is a branch")


@dataclass(slots=True)
class Concat(Value):
    parts: tuple[Value, ...]
    dtype: str = "concat"
    text: str = ""

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(p.dtype for p in self.parts)

    def read(self, st: FlowState, ctx: Any) -> Any:
        values = [p.read(st, ctx) for p in self.parts]
        if not any(isinstance(v, Choices) for v in values):
            return tuple(values)
        combos: list[tuple[tuple[Any, ...], float]] = [((), 1.0)]
        notes = []
        for v in values:
            opts = v.options if isinstance(v, Choices) else [(v, 1.0)]
            if isinstance(v, Choices) and v.note:
                notes.append(v.note)
            combos = [((*c, o), p * q) for c, p in combos for o, q in opts]
        return Choices(combos, "; ".join(notes))


BINOPS = {"&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
          "<<": lambda a, b: a << b, ">>": lambda a, b: a >> b}


@dataclass(slots=True)
class Binop(Value):
    op: str
    left: Value
    right: Any  # coerced literal
    dtype: str = "integer"
    text: str = ""

    def read(self, st: FlowState, ctx: Any) -> Any:
        v = self.left.read(st, ctx)
        fn = BINOPS[self.op]
        if isinstance(v, Choices):
            return Choices([(fn(o, self.right), p) for o, p in v.options], v.note)
        return fn(v, self.right)
