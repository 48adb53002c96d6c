"""Walk a packet through a parsed ruleset exactly as the kernel would, returning every branch.

* Tables per hook in kernel priority order; nat only for conntrack NEW packets.
* `-j CHAIN` calls (RETURN / fall-through comes back), `-g CHAIN` replaces the current frame (its
  RETURN goes to our caller), built-in chains end in their policy.
* statistic matches fork the trace with probabilities; an unmodelled match or target forks it both
  ways and records UNSUPPORTED_RULE evidence.
* Large chains (KUBE-SERVICES, KUBE-NODEPORTS) get a dispatch index on their necessary
  (destination host, protocol, destination port) conditions, so a lookup does not scan 10,000 rules.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.simulator.dataplane.netfilter.ipset import IpsetStore
from services.simulator.dataplane.netfilter.matches import MissingSet
from services.simulator.dataplane.netfilter.model import (
    HOOK_TABLES,
    TERMINAL_VERDICTS,
    Branch,
    Chain,
    FlowState,
    IPAddress,
    Match,
    MatchKind,
    Rule,
    RuleHit,
    Ruleset,
)
from services.simulator.dataplane.netfilter.parser import DispatchKey, dispatch_key
from services.simulator.dataplane.netfilter.targets import CONTINUE, NAT, RETURN, apply_target

INDEX_MIN_RULES = 64
MAX_DEPTH = 64  # iptables' own limit on chain nesting is lower; this guards against loops
MAX_BRANCHES = 4096
LOOPBACK_NETS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


AddressSets = tuple[frozenset[IPAddress], frozenset[IPAddress]]


def address_sets(addresses: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]) -> AddressSets:
    """The local addresses and the IPv4 broadcast addresses of these devices' addresses."""
    return (frozenset(i.ip for ifs in addresses.values() for i in ifs),
            frozenset(i.network.broadcast_address for ifs in addresses.values() for i in ifs
                      if i.version == 4 and i.network.prefixlen < 31))


@dataclass
class TraceContext:
    """What the rules may ask about the node beyond the packet itself."""

    addresses: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = field(default_factory=dict)
    ipsets: IpsetStore | None = None
    bridged: bool = False
    physdev_in: str | None = None
    physdev_out: str | None = None
    rpfilter_ok: bool | None = None
    reply: bool = False
    # node addresses when per-device addresses are unknown (the `trace iptables --node-ip` case)
    node_ips: list[IPAddress] = field(default_factory=list)
    # address_sets(addresses), when the caller has it already: the walk makes a context at every hook over
    # the same addresses, and rebuilding the sets each time was a sizeable share of a walk
    sets: AddressSets | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        local, self._broadcast = self.sets or address_sets(self.addresses)
        self._local = local | set(self.node_ips) if self.node_ips else local

    @classmethod
    def from_strings(cls, addresses: dict[str, list[str]] | None = None, node_ips: Iterable[str] = (),
                     **kw: Any) -> TraceContext:
        return cls(addresses={d: [ipaddress.ip_interface(a) for a in al] for d, al in (addresses or {}).items()},
                   node_ips=[ipaddress.ip_address(a) for a in node_ips], **kw)

    def is_local(self, addr: IPAddress) -> bool:
        return addr in self._local or any(addr.version == n.version and addr in n for n in LOOPBACK_NETS)

    def address_type(self, addr: IPAddress, dev: str | None = None) -> str:
        """The kernel's address type (LOCAL, BROADCAST, MULTICAST, UNICAST, UNSPEC) for addrtype."""
        if addr.is_unspecified:
            return "UNSPEC"
        if addr.is_multicast:
            return "MULTICAST"
        if dev is not None and self.addresses:
            # --limit-iface-*: only addresses on that device count as local
            ifs = self.addresses.get(dev, [])
            if any(i.ip == addr for i in ifs) or (dev == "lo" and self.is_local(addr)):
                return "LOCAL"
            if any(i.version == 4 and i.network.broadcast_address == addr for i in ifs):
                return "BROADCAST"
            return "UNICAST"
        if self.is_local(addr):
            return "LOCAL"
        if addr in self._broadcast or (addr.version == 4 and int(addr) == 0xFFFFFFFF):
            return "BROADCAST"
        return "UNICAST"

    def masquerade_address(self, st: FlowState) -> tuple[IPAddress | None, str | None]:
        """The source MASQUERADE picks: the out interface's first address of the family."""
        if st.oif and st.oif in self.addresses:
            for i in self.addresses[st.oif]:
                if i.version == st.dst.version and st.dst in i.network:
                    return i.ip, None  # the address in the next hop's subnet, as the kernel prefers
            for i in self.addresses[st.oif]:
                if i.version == st.dst.version:
                    return i.ip, None
            # inet_select_addr without an address on the device (e.g. a Calico cali* veth): the first
            # primary address of any device whose scope is neither host nor link, in device order
            return next((i.ip for ifs in self.addresses.values() for i in ifs if i.version == st.dst.version
                         and not (i.ip.is_loopback or i.ip.is_link_local)), None), None
        for a in self.node_ips:
            if a.version == st.dst.version:
                return a, (f"MASQUERADE: out interface unknown: the node address {a} is assumed as the new "
                           "source")
        return None, "MASQUERADE: neither the out interface nor a node address is known"

    def redirect_address(self, st: FlowState) -> IPAddress | None:
        if st.iif is None:  # locally generated (OUTPUT): REDIRECT goes to loopback
            return ipaddress.ip_address("::1" if st.dst.version == 6 else "127.0.0.1")
        for i in self.addresses.get(st.iif, []):
            if i.version == st.dst.version:
                return i.ip
        return next((a for a in self.node_ips if a.version == st.dst.version), None)


class DispatchIndex:
    """Rule positions keyed by necessary conditions (dst host, protocol, dport); the rest scanned.

    Keys are read from the rules' text (parser.dispatch_key): building the index compiles nothing, and
    a packet compiles only the few candidate rules it is tested against."""

    def __init__(self, lines: Sequence[str]) -> None:
        keyed: dict[DispatchKey, list[int]] = {}
        unkeyed: list[int] = []
        for i, line in enumerate(lines):
            key = dispatch_key(line)
            if key is None:
                unkeyed.append(i)
            else:
                keyed.setdefault(key, []).append(i)
        # tuples of ints: nothing for the garbage collector to track
        self.keyed = {k: tuple(v) for k, v in keyed.items()}
        self.unkeyed = tuple(unkeyed)

    def candidates(self, st: FlowState, start: int) -> Iterable[int]:
        lists = [self.unkeyed]
        for d in (st.dst, None):
            for p in (st.protocol, None):
                for port in (st.dport, None):
                    if d is None and port is None:
                        continue
                    hits = self.keyed.get((d, p, port))
                    if hits:
                        lists.append(hits)
        merged = lists[0] if len(lists) == 1 else heapq.merge(*lists)
        return (i for i in merged if i >= start)


def build_indexes(rs: Ruleset, min_rules: int = INDEX_MIN_RULES) -> None:
    for t in rs.tables.values():
        for c in t.chains.values():
            c.index = DispatchIndex(c.lines) if len(c.lines) >= min_rules else None
    rs.indexed = True


class Tracer:
    """Traces packets through one ruleset (one network namespace)."""

    def __init__(self, ruleset: Ruleset, ctx: TraceContext) -> None:
        self.rs = ruleset
        self.ctx = ctx
        if not ruleset.indexed:  # the walk makes a Tracer per hook: index once, not per hook
            build_indexes(ruleset)

    # -------------------------------------------------------------- hooks

    def run_hook(self, branches: list[Branch], hook: str) -> list[Branch]:
        """Run every table of `hook` on the still-undecided branches; decided ones pass through."""
        out: list[Branch] = []
        for br in branches:
            if br.verdict in ("DROP", "REJECT"):
                out.append(br)
                continue
            br.verdict = None
            br.hooks.append(hook)
            pending = [br]
            for table in HOOK_TABLES[hook]:
                pending = self.run_table(pending, hook, table)
            for b in pending:
                if b.verdict is None:
                    b.verdict = "ACCEPT"
            out.extend(pending)
        if len(out) > MAX_BRANCHES:
            raise TraceTooLarge(f"more than {MAX_BRANCHES} branches at {hook}")
        return out

    def run_table(self, branches: list[Branch], hook: str, table: str) -> list[Branch]:
        """One table's built-in chain of `hook` as a stage of that hook (hooks.run_hook interleaves these
        with nftables base chains by priority)."""
        chain = self.rs.chain(table, hook)
        if chain is None:
            return branches
        nxt: list[Branch] = []
        for b in branches:
            if b.verdict in ("DROP", "REJECT"):
                nxt.append(b)
                continue
            if table == "nat" and b.state.ctstate != "NEW":
                nxt.append(b)  # nat rules see only a connection's first packet
                continue
            b.verdict = None
            for nb, outcome in self._walk(b, chain, 0, hook, 0):
                if outcome in (None, RETURN):  # fell off the built-in chain: its policy
                    policy = chain.policy or "ACCEPT"
                    nb.verdict = policy
                    if policy != "ACCEPT":
                        nb.decided_by = RuleHit(hook, table, hook, 0, f":{hook} {policy}")
                elif outcome == NAT:
                    nb.verdict = "ACCEPT"
                nxt.append(nb)
        return nxt

    # -------------------------------------------------------------- chains

    def _walk(self, br: Branch, chain: Chain, start: int, hook: str, depth: int) -> list[tuple[Branch, str | None]]:
        """Run `br` through `chain` from rule `start`. Returns (branch, outcome) with outcome None/RETURN
        (back to the caller), NAT, or a verdict."""
        if depth > MAX_DEPTH:
            br.assume(f"chain nesting deeper than {MAX_DEPTH} at {chain.name}: treated as DROP (loop?)",
                      could_change=True)
            br.verdict = "DROP"
            return [(br, "DROP")]
        positions: Iterable[int] = chain.index.candidates(br.state, start) if chain.index else range(
            start, len(chain.lines))
        for i in positions:
            rule = chain.rule(i)
            forks = self._evaluate(br, rule, hook)
            if forks is None:
                continue
            if len(forks) == 1 and forks[0][1]:
                return self._matched(forks[0][0], chain, i, rule, hook, depth)
            results: list[tuple[Branch, str | None]] = []
            for fb, matched in forks:
                if matched:
                    results.extend(self._matched(fb, chain, i, rule, hook, depth))
                else:
                    results.extend(self._walk(fb, chain, i + 1, hook, depth))
            return results
        return [(br, None)]

    def _evaluate(self, br: Branch, rule: Rule, hook: str) -> list[tuple[Branch, bool]] | None:
        """None: the rule does not match. Otherwise the branches and whether the rule matched in each."""
        st, ctx = br.state, self.ctx
        assumed: list[str] = []
        compiled = rule.compiled or rule.compile()
        for m in compiled.deterministic:
            try:
                if not m.test(st, ctx):
                    if m.kind == MatchKind.ASSUMED and m.assumption:
                        # the assumption decided the miss: say so (a stated condition of a new connection's
                        # first packet under normal load, which is the question asked)
                        br.assume(m.assumption, could_change=False)
                    return None
            except MissingSet as exc:
                return self._fork_unknown(br, rule, hook, f"ipset {exc.args[0]} (not in the given ipset save)")
            if m.kind == MatchKind.ASSUMED and m.assumption:
                assumed.append(m.assumption)
        for a in assumed:
            br.assume(a, could_change=False)
        if not compiled.forking:
            return [(br, True)]
        unknown = [m for m in compiled.forking if m.kind == MatchKind.UNKNOWN]
        if unknown:
            return self._fork_unknown(br, rule, hook, ", ".join(_feature(m) for m in unknown))
        p = 1.0
        for m in compiled.forking:
            p *= m.probability(st)
        if p >= 1.0:
            return [(br, True)]
        if p <= 0.0:
            return None
        miss = br.fork()
        hit = br
        hit.probability, miss.probability = br.probability * p, br.probability * (1.0 - p)
        return [(hit, True), (miss, False)]

    def _fork_unknown(self, br: Branch, rule: Rule, hook: str, feature: str) -> list[tuple[Branch, bool]]:
        other = br.fork()
        for b, outcome in ((br, "matches"), (other, "does not match")):
            b.unsupported.append(self._hit(rule, hook))
            b.assume(f"UNSUPPORTED_RULE: {rule.table}/{rule.chain} rule {rule.position} uses {feature}: "
                     f"assumed it {outcome}", could_change=True)
        return [(br, True), (other, False)]

    @staticmethod
    def _hit(rule: Rule, hook: str) -> RuleHit:
        return RuleHit(hook, rule.table, rule.chain, rule.position, rule.text)

    def _matched(self, br: Branch, chain: Chain, i: int, rule: Rule, hook: str,
                 depth: int) -> list[tuple[Branch, str | None]]:
        hit = self._hit(rule, hook)
        br.hits.append(hit)
        t = rule.target
        if t is None:
            return self._walk(br, chain, i + 1, hook, depth)
        if rule.unknown_target:
            return self._unknown_target(br, chain, i, rule, hit, hook, depth)
        sub = self.rs.chain(rule.table, t.name)
        if sub is not None:
            results: list[tuple[Branch, str | None]] = []
            for sb, outcome in self._walk(br, sub, 0, hook, depth + 1):
                if outcome in (None, RETURN) and not t.goto:
                    results.extend(self._walk(sb, chain, i + 1, hook, depth))
                else:
                    # a goto's RETURN goes back to *our* caller; verdicts propagate
                    results.append((sb, outcome))
            return results
        results = []
        for nb, outcome in apply_target(br, rule, hit, self.ctx):
            if outcome == CONTINUE:
                results.extend(self._walk(nb, chain, i + 1, hook, depth))
            else:
                results.append((nb, outcome))
        return results

    def _unknown_target(self, br: Branch, chain: Chain, i: int, rule: Rule, hit: RuleHit, hook: str,
                        depth: int) -> list[tuple[Branch, str | None]]:
        assert rule.target is not None  # an unknown target is still a target
        dropped = br.fork()
        results: list[tuple[Branch, str | None]] = []
        for b, outcome in ((br, "continues"), (dropped, "drops the packet")):
            b.unsupported.append(hit)
            b.assume(f"UNSUPPORTED_RULE: {rule.table}/{rule.chain} rule {rule.position} jumps to unknown target "
                     f"{rule.target.name}: assumed it {outcome}", could_change=True)
        dropped.verdict, dropped.decided_by = "DROP", hit
        results.append((dropped, "DROP"))
        results.extend(self._walk(br, chain, i + 1, hook, depth))
        return results

    # -------------------------------------------------------------- whole-node convenience

    def trace_node(self, st: FlowState, hook: str = "PREROUTING") -> list[Branch]:
        """A packet entering (PREROUTING) or leaving (OUTPUT) the node: the hooks it crosses.

        Local delivery vs forwarding is decided by the destination after PREROUTING's DNAT (a local
        address → INPUT, else FORWARD then POSTROUTING). Routing itself is the caller's business:
        set `oif` on the packet if it is known.
        """
        branches = [Branch(state=st)]
        if hook == "PREROUTING":
            branches = self.run_hook(branches, "PREROUTING")
            local = [b for b in branches if b.verdict == "ACCEPT" and self.ctx.is_local(b.state.dst)]
            fwd = [b for b in branches if b.verdict == "ACCEPT" and not self.ctx.is_local(b.state.dst)]
            done = [b for b in branches if b.verdict in ("DROP", "REJECT")]
            return done + self.run_hook(local, "INPUT") + self.run_hook(self.run_hook(fwd, "FORWARD"),
                                                                        "POSTROUTING")
        if hook == "OUTPUT":
            branches = self.run_hook(self.run_hook(branches, "OUTPUT"), "POSTROUTING")
            local = [b for b in branches if b.verdict == "ACCEPT" and self.ctx.is_local(b.state.dst)]
            rest = [b for b in branches if not (b.verdict == "ACCEPT" and self.ctx.is_local(b.state.dst))]
            for b in local:
                b.state.iif = "lo"
            return rest + self.run_hook(local, "INPUT")
        return self.run_hook(branches, hook)


class TraceTooLarge(RuntimeError):
    pass


def _feature(m: Match) -> str:
    module = getattr(m, "module", "")
    return f"-m {module}" if module and not module.startswith("<") else f"an unparsed fragment ({m.text})"


def verdict_summary(branches: list[Branch]) -> str:
    """ACCEPT / DROP / REJECT when every branch agrees, else MIXED."""
    verdicts = {b.verdict for b in branches}
    if len(verdicts) == 1:
        v = verdicts.pop()
        return v if v in TERMINAL_VERDICTS else "ACCEPT"
    return "MIXED"
