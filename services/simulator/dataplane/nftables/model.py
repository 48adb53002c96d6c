"""The nftables data model: tables, base and regular chains, rules, sets and maps from `nft -j list ruleset`.

Rules keep their raw JSON expressions and compile them on first use (see `expressions.py`), so a node's
whole kube-proxy table loads fast and a trace compiles only the rules it visits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.simulator.dataplane.nftables.render import render_rule

# Hook names as nft prints them → the iptables-style names the walk uses.
HOOKS = {"prerouting": "PREROUTING", "input": "INPUT", "forward": "FORWARD", "output": "OUTPUT",
         "postrouting": "POSTROUTING", "ingress": "INGRESS", "egress": "EGRESS"}
# Which table families an IP packet of a given version meets at the IP hooks.
IP_FAMILIES = {4: ("ip", "inet"), 6: ("ip6", "inet")}


@dataclass(slots=True)
class Interval:
    """A set element covering [low, high] (a prefix or a range), compared on the coerced values."""

    low: Any
    high: Any

    def __contains__(self, value: object) -> bool:
        try:
            return self.low <= value <= self.high
        except TypeError:  # e.g. an IPv6 address against an IPv4 interval
            return False


@dataclass(slots=True)
class NftSet:
    """A named set or map. Keys are coerced per the set's declared type; `data` is the map's values
    (verdict dicts for a vmap, raw JSON for other maps)."""

    family: str
    table: str
    name: str
    key_types: tuple[str, ...]
    data_type: str | None = None  # None for a set, "verdict" for a vmap, else the data type
    flags: tuple[str, ...] = ()
    raw_elements: list[Any] = field(default_factory=list)
    exact: dict[Any, Any] | None = None  # built lazily by the lookup code
    intervals: list[tuple[Any, Any]] | None = None

    @property
    def is_map(self) -> bool:
        return self.data_type is not None

    @property
    def dynamic(self) -> bool:
        """Filled by the datapath (`update @set`, affinity): the collected elements are a snapshot."""
        return "dynamic" in self.flags or "timeout" in self.flags


@dataclass(slots=True)
class NftRule:
    family: str
    table: str
    chain: str
    position: int  # 1-based within the chain, as the trace reports it
    handle: int | None
    exprs: list[dict[str, Any]]
    comment: str | None = None
    compiled: Any = None  # expressions.CompiledRule
    _text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = render_rule(self.exprs, self.comment)
        return self._text


@dataclass(slots=True)
class NftChain:
    family: str
    table: str
    name: str
    type: str | None = None  # filter, nat, route for base chains
    hook: str | None = None  # prerouting, input, … for base chains
    priority: int = 0
    policy: str = "accept"
    rules: list[NftRule] = field(default_factory=list)


@dataclass(slots=True)
class NftTable:
    family: str
    name: str
    chains: dict[str, NftChain] = field(default_factory=dict)
    sets: dict[str, NftSet] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(slots=True)
class NftRuleset:
    tables: dict[tuple[str, str], NftTable] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def table(self, family: str, name: str) -> NftTable | None:
        return self.tables.get((family, name))

    def base_chains(self, hook: str, families: tuple[str, ...]) -> list[NftChain]:
        """Base chains at `hook` (nft spelling) in `families`, in kernel priority order."""
        found = [c for t in self.tables.values() if t.family in families for c in t.chains.values()
                 if c.hook == hook]
        return sorted(found, key=lambda c: c.priority)

    @property
    def rule_count(self) -> int:
        return sum(len(c.rules) for t in self.tables.values() for c in t.chains.values())
