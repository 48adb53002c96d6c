"""The netfilter data model: a parsed ruleset, the packet/flow state a trace carries, and results.

Family-neutral: addresses are `ipaddress` objects; IPv4 and IPv6 rulesets share one model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Kernel hook order per hook (by table priority): raw -300, mangle -150, nat DNAT -100,
# filter 0, security 50, nat SNAT +100.
HOOK_TABLES: dict[str, tuple[str, ...]] = {
    "PREROUTING": ("raw", "mangle", "nat"),
    "INPUT": ("mangle", "filter", "security", "nat"),
    "FORWARD": ("mangle", "filter", "security"),
    "OUTPUT": ("raw", "mangle", "nat", "filter", "security"),
    "POSTROUTING": ("mangle", "nat"),
}
BUILTIN_CHAINS = frozenset(HOOK_TABLES)
TERMINAL_VERDICTS = frozenset({"ACCEPT", "DROP", "REJECT"})


class MatchKind(IntEnum):
    DETERMINISTIC = 0  # decided by the packet and context alone
    ASSUMED = 1  # decided under a stated assumption (recorded when the rule matches)
    PROBABILISTIC = 2  # statistic: the trace forks with probabilities
    UNKNOWN = 3  # not modelled: the trace forks, both outcomes explored


@dataclass(slots=True)
class Match:
    """One match of a rule (`-s`, `-m tcp --dport 80`, …). Subclasses implement `test`."""

    text: str
    negated: bool = False

    kind = MatchKind.DETERMINISTIC

    @property
    def assumption(self) -> str | None:
        """The text recorded when an ASSUMED match decides (its subclasses say it)."""
        return None

    def test(self, st: FlowState, ctx: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def probability(self, st: FlowState) -> float:  # for PROBABILISTIC matches
        return 1.0


@dataclass(slots=True)
class Target:
    name: str  # ACCEPT, DROP, DNAT, a user chain name, …
    options: dict[str, list[str]] = field(default_factory=dict)
    goto: bool = False  # `-g CHAIN` rather than `-j CHAIN`
    text: str = ""


@dataclass(slots=True)
class CompiledRule:
    matches: tuple[Match, ...]
    target: Target | None  # None: a rule without -j (counts only)
    unknown_target: bool
    deterministic: tuple[Match, ...]  # evaluated first, AND-ed
    forking: tuple[Match, ...]  # statistic / unknown: the trace forks


@dataclass(slots=True)
class Rule:
    """One `-A` line. Its matches and target are compiled on first use: a node's 100,000 kube-proxy
    rules load fast and a trace compiles only the few hundred it visits."""

    table: str
    chain: str
    position: int  # 1-based, as `iptables -L --line-numbers` shows
    text: str  # the `-A …` line as saved
    family: int = 4
    table_chains: dict | None = None  # the table's chains: a jump target that is none of them is a target
    compiled: CompiledRule | None = None

    compiler: ClassVar[Callable[[Rule], CompiledRule]]  # set by the parser module

    def compile(self) -> CompiledRule:
        if self.compiled is None:
            self.compiled = type(self).compiler(self)
        return self.compiled

    @property
    def matches(self) -> tuple[Match, ...]:
        return self.compile().matches

    @property
    def target(self) -> Target | None:
        return self.compile().target

    @property
    def unknown_target(self) -> bool:
        return self.compile().unknown_target

    @property
    def unsupported(self) -> bool:
        c = self.compile()
        return c.unknown_target or any(m.kind == MatchKind.UNKNOWN for m in c.matches)


@dataclass(slots=True)
class Chain:
    """A chain keeps its rules as the saved lines and builds a Rule object only when asked (`rule(i)`):
    a node's 100,000 kube-proxy rules load as plain strings, which cost little memory and nothing to
    the garbage collector's full passes, and a trace builds the few dozen rules it reaches."""

    name: str
    policy: str | None  # ACCEPT/DROP for built-in chains, None for user chains
    counters: tuple[int, int] = (0, 0)
    lines: list[str] | tuple[str, ...] = ()  # the `-A …` lines as saved, in order (a tuple once parsed)
    table: str = ""
    family: int = 4
    table_chains: dict | None = None  # the table's chains (see Rule)
    index: Any = None  # DispatchIndex for large chains (see tracer)
    built: dict[int, Rule] | None = None  # rules built so far, by 0-based index

    def rule(self, i: int) -> Rule:
        built = self.built
        if built is None:
            built = self.built = {}
        rule = built.get(i)
        if rule is None:
            rule = built[i] = Rule(table=self.table, chain=self.name, position=i + 1, text=self.lines[i],
                                   family=self.family, table_chains=self.table_chains)
        return rule

    @property
    def rules(self) -> list[Rule]:
        return [self.rule(i) for i in range(len(self.lines))]


@dataclass(slots=True)
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)


@dataclass(slots=True)
class Ruleset:
    family: int  # 4 or 6
    tables: dict[str, Table] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    indexed: bool = False  # large chains have their DispatchIndex (built once, by the first Tracer)

    def chain(self, table: str, chain: str) -> Chain | None:
        t = self.tables.get(table)
        return t.chains.get(chain) if t else None

    @property
    def rule_count(self) -> int:
        return sum(len(c.lines) for t in self.tables.values() for c in t.chains.values())

    def unsupported_rules(self) -> list[Rule]:
        return [r for t in self.tables.values() for c in t.chains.values() for r in c.rules if r.unsupported]


@dataclass(slots=True)
class FlowState:
    """The packet as the trace sees it plus the conntrack entry it belongs to."""

    src: IPAddress
    dst: IPAddress
    protocol: str  # tcp, udp, sctp, icmp, icmpv6, or a number
    sport: int | None = None
    dport: int | None = None
    mark: int = 0
    iif: str | None = None
    oif: str | None = None
    tcp_flags: frozenset[str] = frozenset({"SYN"})
    icmp_type: int | None = None
    icmp_code: int | None = None
    ctstate: str = "NEW"  # NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED
    ctmark: int = 0
    ct_dnat: bool = False
    ct_snat: bool = False
    orig_src: IPAddress | None = None
    orig_dst: IPAddress | None = None
    orig_sport: int | None = None
    orig_dport: int | None = None

    def __post_init__(self) -> None:
        self.orig_src = self.orig_src or self.src
        self.orig_dst = self.orig_dst or self.dst
        self.orig_sport = self.orig_sport if self.orig_sport is not None else self.sport
        self.orig_dport = self.orig_dport if self.orig_dport is not None else self.dport

    def describe(self) -> str:
        sp = f":{self.sport}" if self.sport is not None else ""
        dp = f":{self.dport}" if self.dport is not None else ""
        mark = f" mark {self.mark:#x}" if self.mark else ""
        return f"{self.protocol} {_fmt_host(self.src)}{sp} -> {_fmt_host(self.dst)}{dp}{mark}"


def _fmt_host(a: IPAddress) -> str:
    return f"[{a}]" if a.version == 6 else str(a)


def endpoint(addr: IPAddress, port: int | None) -> str:
    """`10.0.0.1:80` / `[fd00::1]:80`, as kube-proxy's tests print endpoints."""
    if port is None:
        return str(addr)
    return f"{_fmt_host(addr)}:{port}"


@dataclass(slots=True, frozen=True)
class RuleHit:
    hook: str
    table: str
    chain: str
    position: int  # 0 = the chain's policy
    rule: str
    family: str = ""  # a native nftables rule's family (inet, ip, bridge …); "" for iptables

    @property
    def label(self) -> str:
        """The table as people read it: `nat` for iptables, `inet guard` for nftables."""
        return f"{self.family} {self.table}" if self.family else self.table

    def as_dict(self) -> dict[str, Any]:
        return {"hook": self.hook, "table": self.label, "chain": self.chain, "position": self.position,
                "rule": self.rule}


@dataclass(slots=True, frozen=True)
class NatRecord:
    kind: str  # DNAT, SNAT, MASQUERADE, REDIRECT
    before: str
    after: str
    hit: RuleHit


@dataclass(slots=True)
class Branch:
    """One possible outcome of a trace (statistic/unknown matches fork the trace)."""

    state: FlowState
    probability: float = 1.0
    verdict: str | None = None  # ACCEPT, DROP, REJECT once decided
    decided_by: RuleHit | None = None  # the rule (or policy, position 0) that decided
    reject_with: str | None = None
    hits: list[RuleHit] = field(default_factory=list)
    nat: list[NatRecord] = field(default_factory=list)
    # what the trace took for granted → whether it could change the outcome (set by whoever assumes)
    assumptions: dict[str, bool] = field(default_factory=dict)
    unsupported: list[RuleHit] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)

    def fork(self) -> Branch:
        st = self.state
        return Branch(
            state=FlowState(**{k: getattr(st, k) for k in st.__slots__}),
            probability=self.probability, verdict=self.verdict, decided_by=self.decided_by,
            reject_with=self.reject_with, hits=list(self.hits), nat=list(self.nat),
            assumptions=dict(self.assumptions), unsupported=list(self.unsupported), hooks=list(self.hooks),
        )

    def assume(self, text: str, *, could_change: bool) -> None:
        """State an assumption; `could_change`: the outcome may differ if it is wrong (decided at each call
        site, never read back from the text)."""
        self.assumptions[text] = self.assumptions.get(text, False) or could_change

    @property
    def dnat_destination(self) -> str | None:
        dn = [n for n in self.nat if n.kind in ("DNAT", "REDIRECT")]
        return dn[-1].after if dn else None

    @property
    def masquerade(self) -> bool:
        return any(n.kind in ("MASQUERADE", "SNAT") for n in self.nat)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "probability": round(self.probability, 10),
            "packet": self.state.describe(),
            "dnat": self.dnat_destination,
            "masquerade": self.masquerade,
            "snat": [n.after for n in self.nat if n.kind in ("MASQUERADE", "SNAT")],
            "decided_by": self.decided_by.as_dict() if self.decided_by else None,
            "reject_with": self.reject_with,
            "hooks": self.hooks,
            "rules": [h.as_dict() for h in self.hits],
            "nat": [{"kind": n.kind, "before": n.before, "after": n.after, **n.hit.as_dict()} for n in self.nat],
            "assumptions": list(self.assumptions),
            "unsupported": [h.as_dict() for h in self.unsupported],
        }
