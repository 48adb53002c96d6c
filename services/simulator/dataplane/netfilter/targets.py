"""Targets: what a matching rule does to the packet (rewrites really rewrite it) and to the walk.

`apply_target` returns one or more (branch, outcome) pairs: outcome CONTINUE (next rule), RETURN,
ACCEPT / DROP / REJECT (verdicts), or NAT (the nat table's walk ends for this hook, like ACCEPT).
Jumps and gotos to user chains are handled by the tracer.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from services.simulator.dataplane.netfilter.matches import ALL_ONES, parse_int, parse_value_mask
from services.simulator.dataplane.netfilter.model import Branch, IPAddress, NatRecord, Rule, RuleHit, endpoint

CONTINUE, RETURN, NAT = "CONTINUE", "RETURN", "NAT"

# Targets that only observe or tweak non-routing fields: the walk continues.
PASSIVE = frozenset({"LOG", "NFLOG", "ULOG", "TRACE", "AUDIT", "CHECKSUM", "TCPMSS", "DSCP", "TOS", "TTL", "HL",
                     "CLASSIFY", "SET", "NETMAP_NOOP", "IDLETIMER", "LED", "SECMARK", "CONNSECMARK", "TEE"})
KNOWN_TARGETS = PASSIVE | {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "MARK",
                           "CONNMARK", "NOTRACK", "CT"}
# Past this many addresses in a NAT range we stop fanning out and state the choice.
MAX_NAT_FANOUT = 16


def apply_target(br: Branch, rule: Rule, hit: RuleHit, ctx: Any) -> list[tuple[Branch, str]]:
    t = rule.target
    assert t is not None  # the tracer applies only rules that have a target
    name = t.name
    opts = t.options
    st = br.state
    if name in ("ACCEPT", "DROP"):
        br.verdict, br.decided_by = name, hit
        return [(br, name)]
    if name == "REJECT":
        default = "icmp6-port-unreachable" if st.dst.version == 6 else "icmp-port-unreachable"
        br.verdict, br.decided_by = "REJECT", hit
        br.reject_with = (opts.get("reject-with") or [default])[0]
        return [(br, "REJECT")]
    if name == "RETURN":
        return [(br, RETURN)]
    if name == "MARK":
        st.mark = _mark_op(st.mark, opts)
        return [(br, CONTINUE)]
    if name == "CONNMARK":
        _connmark(br, opts)
        return [(br, CONTINUE)]
    if name in ("NOTRACK",) or (name == "CT" and "notrack" in opts):
        st.ctstate = "UNTRACKED"
        return [(br, CONTINUE)]
    if name == "CT":
        return [(br, CONTINUE)]  # zone/helper/timeout settings do not change the path
    if name in PASSIVE:
        return [(br, CONTINUE)]
    if name == "DNAT":
        return _dnat(br, opts.get("to-destination", [""]), hit, random="random" in opts or "persistent" in opts)
    if name == "REDIRECT":
        return _redirect(br, opts, hit, ctx)
    if name == "SNAT":
        return _snat(br, opts.get("to-source", [""])[0], hit, "SNAT")
    if name == "MASQUERADE":
        return _masquerade(br, opts, hit, ctx)
    raise AssertionError(f"unhandled target {name}")  # the tracer routes unknown targets elsewhere


def _mark_op(mark: int, opts: dict[str, list[str]]) -> int:
    if "set-xmark" in opts:
        v, m = parse_value_mask(opts["set-xmark"][0])
        return (mark & ~m & ALL_ONES) ^ v
    if "set-mark" in opts:
        v, m = parse_value_mask(opts["set-mark"][0])
        return (mark & ~m & ALL_ONES) | v
    if "or-mark" in opts:
        return mark | parse_int(opts["or-mark"][0])
    if "and-mark" in opts:
        return mark & parse_int(opts["and-mark"][0])
    if "xor-mark" in opts:
        return mark ^ parse_int(opts["xor-mark"][0])
    return mark


def _connmark(br: Branch, opts: dict[str, list[str]]) -> None:
    st = br.state
    nfmask = parse_int(opts["nfmask"][0]) if "nfmask" in opts else ALL_ONES
    ctmask = parse_int(opts["ctmask"][0]) if "ctmask" in opts else ALL_ONES
    if "mask" in opts:
        nfmask = ctmask = parse_int(opts["mask"][0])
    if "save-mark" in opts:
        st.ctmark = (st.ctmark & ~ctmask & ALL_ONES) ^ (st.mark & nfmask)
    elif "restore-mark" in opts:
        st.mark = (st.mark & ~nfmask & ALL_ONES) ^ (st.ctmark & ctmask)
    else:
        st.ctmark = _mark_op(st.ctmark, opts)


def parse_nat_spec(spec: str) -> tuple[list[IPAddress], tuple[int, int] | None]:
    """`10.0.0.1-10.0.0.3:80-90`, `[fd00::1]:80`, `:8080` → (addresses, port range)."""
    addr_part, ports = spec, None
    if spec.startswith("["):
        close = spec.index("]")
        addr_part, rest = spec[1:close], spec[close + 1:]
        ports = rest[1:] if rest.startswith(":") else None
    elif spec.count(":") == 1:
        addr_part, ports = spec.split(":")
    addrs: list[IPAddress] = []
    if addr_part:
        lo, _, hi = addr_part.partition("-")
        first = ipaddress.ip_address(lo)
        last = ipaddress.ip_address(hi) if hi else first
        count = int(last) - int(first) + 1
        addrs = [first + i for i in range(min(count, MAX_NAT_FANOUT))]
    port_range = None
    if ports:
        plo, _, phi = ports.partition("-")
        port_range = (int(plo), int(phi or plo))
    return addrs, port_range


def _nat_branches(br: Branch, addrs: list[IPAddress], ports: tuple[int, int] | None,
                  note: str) -> list[tuple[Branch, IPAddress | None, int | None]]:
    out: list[tuple[Branch, IPAddress | None, int | None]] = []
    choices: list[IPAddress | None] = [*addrs] or [None]
    for i, a in enumerate(choices):
        b = br if i == len(choices) - 1 else br.fork()
        b.probability = br.probability / len(choices)
        port = ports[0] if ports else None
        if ports and ports[0] != ports[1]:
            # every port of a source range is as good; a destination port range may reach another socket
            b.assume(f"{note}: port range {ports[0]}-{ports[1]}: the first port {ports[0]} is shown",
                     could_change=note == "DNAT")
        out.append((b, a, port))
    if len(addrs) == MAX_NAT_FANOUT:
        br.assume(f"{note}: address range truncated to its first {MAX_NAT_FANOUT} addresses", could_change=True)
    return out


def _dnat(br: Branch, specs: list[str], hit: RuleHit, random: bool) -> list[tuple[Branch, str]]:
    out = []
    addrs, ports = parse_nat_spec(specs[0])
    if random and len(addrs) > 1:
        br.assume("DNAT --random/--persistent: the kernel's choice is not predictable: every address is a branch",
                  could_change=False)
    kind = "DNAT"
    for b, addr, port in _nat_branches(br, addrs, ports, kind):
        st = b.state
        before = endpoint(st.dst, st.dport)
        if addr is not None:
            st.dst = addr
        if port is not None:
            st.dport = port
        st.ct_dnat = True
        b.nat.append(NatRecord(kind=kind, before=before, after=endpoint(st.dst, st.dport), hit=hit))
        out.append((b, NAT))
    return out


def _redirect(br: Branch, opts: dict[str, list[str]], hit: RuleHit, ctx: Any) -> list[tuple[Branch, str]]:
    st = br.state
    before = endpoint(st.dst, st.dport)
    addr = ctx.redirect_address(st)
    if addr is None:
        br.assume("REDIRECT: the incoming interface has no address: the kernel drops the packet", could_change=False)
        br.verdict, br.decided_by = "DROP", hit
        return [(br, "DROP")]
    st.dst = addr
    if "to-ports" in opts:
        lo, _, hi = opts["to-ports"][0].partition("-")
        st.dport = int(lo)
        if hi:
            br.assume(f"REDIRECT: port range {lo}-{hi}: the first port {lo} is shown", could_change=True)
    st.ct_dnat = True
    br.nat.append(NatRecord(kind="REDIRECT", before=before, after=endpoint(st.dst, st.dport), hit=hit))
    return [(br, NAT)]


def _snat(br: Branch, spec: str, hit: RuleHit, kind: str) -> list[tuple[Branch, str]]:
    out = []
    addrs, ports = parse_nat_spec(spec)
    for b, addr, port in _nat_branches(br, addrs, ports, kind):
        st = b.state
        before = endpoint(st.src, st.sport)
        if addr is not None:
            st.src = addr
        if port is not None:
            st.sport = port
        st.ct_snat = True
        b.nat.append(NatRecord(kind=kind, before=before, after=endpoint(st.src, st.sport), hit=hit))
        out.append((b, NAT))
    return out


def _masquerade(br: Branch, opts: dict[str, list[str]], hit: RuleHit, ctx: Any) -> list[tuple[Branch, str]]:
    st = br.state
    addr, how = ctx.masquerade_address(st)
    if how:  # a guessed source is harmless; a drop for want of one is not
        br.assume(how, could_change=addr is None)
    if addr is None:
        br.assume("MASQUERADE: no address on the out interface: the kernel drops the packet", could_change=False)
        br.verdict, br.decided_by = "DROP", hit
        return [(br, "DROP")]
    before = endpoint(st.src, st.sport)
    st.src = addr
    if "to-ports" in opts:
        st.sport = int(opts["to-ports"][0].partition("-")[0])
    st.ct_snat = True
    br.nat.append(NatRecord(kind="MASQUERADE", before=before, after=endpoint(st.src, st.sport), hit=hit))
    return [(br, NAT)]
