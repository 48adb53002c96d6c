"""Parse `nft -j list ruleset` JSON into the typed model, validating each object's header with pydantic.

Rule expressions stay raw JSON until a trace compiles them; an expression we do not model is kept and
surfaces as UNSUPPORTED_RULE when a packet reaches it — the ruleset is never discarded.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.simulator.dataplane.nftables.model import NftChain, NftRule, NftRuleset, NftSet, NftTable

# Symbolic priorities as nft accepts them (for `ip`/`ip6`/`inet`; bridge's differ, see below).
PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
BRIDGE_PRIORITY_NAMES = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}
_PRIO = re.compile(r"^\s*(?P<name>[a-z]+)\s*(?P<offset>[+-]\s*\d+)?\s*$")


class NftParseError(ValueError):
    pass


class _Item(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Table(_Item):
    family: str
    name: str


class _Chain(_Item):
    family: str
    table: str
    name: str
    type: str | None = None
    hook: str | None = None
    prio: int | str | dict[str, Any] | None = None
    policy: str | None = None


class _Rule(_Item):
    family: str
    table: str
    chain: str
    handle: int | None = None
    expr: list[dict[str, Any]] = Field(default_factory=list)
    comment: str | None = None


class _Set(_Item):
    family: str
    table: str
    name: str
    type: str | list[str]
    map: str | list[str] | None = None
    flags: list[str] | str | None = None
    elem: list[Any] = Field(default_factory=list)


def _priority(family: str, prio: int | str | dict[str, Any] | None) -> int:
    if prio is None:
        return 0
    if isinstance(prio, int):
        return prio
    if isinstance(prio, dict):  # newer nft: {"keyword": "dstnat", "offset": 10}
        return _priority(family, prio.get("keyword")) + int(prio.get("offset", 0))
    if prio.lstrip("-").isdigit():
        return int(prio)
    names = BRIDGE_PRIORITY_NAMES if family == "bridge" else PRIORITY_NAMES
    m = _PRIO.match(prio)
    if m is None or m["name"] not in names:
        raise NftParseError(f"unknown chain priority {prio!r}")
    return names[m["name"]] + int((m["offset"] or "0").replace(" ", ""))


def _types(value: str | list[str]) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def parse_nft_json(doc: dict[str, Any] | list[Any] | None) -> NftRuleset:
    """`{"nftables": [metainfo, table, chain, set, map, rule, …]}` (or the bare list) → NftRuleset."""
    rs = NftRuleset()
    if not doc:
        return rs
    items = doc.get("nftables") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise NftParseError("nft JSON: expected {'nftables': [...]}")
    try:
        for item in items:
            if not isinstance(item, dict) or len(item) != 1:
                raise NftParseError(f"nft JSON: unexpected item {str(item)[:120]}")
            kind, body = next(iter(item.items()))
            if kind == "table":
                t = _Table.model_validate(body)
                rs.tables.setdefault((t.family, t.name), NftTable(t.family, t.name))
            elif kind == "chain":
                c = _Chain.model_validate(body)
                table = _table(rs, c.family, c.table)
                table.chains[c.name] = NftChain(
                    family=c.family, table=c.table, name=c.name, type=c.type, hook=c.hook,
                    priority=_priority(c.family, c.prio), policy=c.policy or "accept")
            elif kind in ("set", "map"):
                s = _Set.model_validate(body)
                flags = s.flags if isinstance(s.flags, list) else [s.flags] if s.flags else []
                data = None if s.map is None else " . ".join(_types(s.map))
                _table(rs, s.family, s.table).sets[s.name] = NftSet(
                    family=s.family, table=s.table, name=s.name, key_types=_types(s.type), data_type=data,
                    flags=tuple(flags), raw_elements=list(s.elem))
            elif kind == "rule":
                r = _Rule.model_validate(body)
                chain = _table(rs, r.family, r.table).chains.get(r.chain)
                if chain is None:
                    raise NftParseError(f"nft JSON: rule in unknown chain {r.family} {r.table} {r.chain}")
                chain.rules.append(NftRule(family=r.family, table=r.table, chain=r.chain,
                                           position=len(chain.rules) + 1, handle=r.handle, exprs=r.expr,
                                           comment=r.comment))
            elif kind in ("metainfo", "element", "flowtable", "counter", "quota", "ct helper", "limit",
                          "ct timeout", "ct expectation", "secmark", "synproxy"):
                if kind == "flowtable":
                    rs.warnings.append("flowtable present: offloaded flows bypass the hooks (not modelled)")
            else:
                rs.warnings.append(f"nft JSON: {kind} objects are not modelled")
    except ValidationError as exc:
        raise NftParseError(f"nft JSON: {exc}") from exc
    return rs


def _table(rs: NftRuleset, family: str, name: str) -> NftTable:
    # `nft -j list table` output always lists the table first; be lenient with hand-written documents
    return rs.tables.setdefault((family, name), NftTable(family, name))
