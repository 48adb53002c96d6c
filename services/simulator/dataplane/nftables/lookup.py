"""Set and map membership: exact elements in a dict (kube-proxy's service-ips map with 10,000 Services
is one hash lookup), prefixes, ranges, wildcards and partly-interval concatenations scanned."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.simulator.dataplane.nftables.model import Interval, NftSet
from services.simulator.dataplane.nftables.values import ConcatInterval, Pattern, coerce

MISSING = object()


@dataclass(slots=True)
class Lookup:
    exact: dict[Any, Any] = field(default_factory=dict)
    ranged: list[tuple[Any, Any]] = field(default_factory=list)  # (Interval | Pattern | ConcatInterval, data)
    dynamic: bool = False  # elements are added by the datapath: the collected ones are a snapshot
    name: str = ""

    def get(self, value: Any) -> Any:
        """The element's data (True for a plain set), or MISSING."""
        try:
            found = self.exact.get(value, MISSING)
        except TypeError:  # unhashable
            found = MISSING
        if found is not MISSING:
            return found
        for element, data in self.ranged:
            if value in element:
                return data
        return MISSING

    def __len__(self) -> int:
        return len(self.exact) + len(self.ranged)


def _key(dtypes: tuple[str, ...], raw: Any) -> Any:
    if isinstance(raw, dict) and "elem" in raw:
        raw = raw["elem"]["val"]
    if isinstance(raw, dict) and "concat" in raw:
        parts = raw["concat"]
        if len(dtypes) != len(parts):
            dtypes = (dtypes + (dtypes[-1],) * len(parts))[: len(parts)]
        values = tuple(coerce(t, p) for t, p in zip(dtypes, parts, strict=True))
        return ConcatInterval(values) if any(isinstance(v, Interval | Pattern) for v in values) else values
    return coerce(dtypes[0], raw)


def build_lookup(dtypes: tuple[str, ...], elements: list[Any], is_map: bool, name: str = "",
                 dynamic: bool = False) -> Lookup:
    """Elements as `nft -j` prints them: values, {"prefix"}, {"range"}, {"concat"}, {"elem": {"val"}},
    and for maps `[key, data]` pairs (data kept raw)."""
    lk = Lookup(name=name, dynamic=dynamic)
    for el in elements:
        if is_map:
            raw_key, data = el
        else:
            raw_key, data = el, True
        key = _key(dtypes, raw_key)
        if isinstance(key, Interval | Pattern | ConcatInterval):
            lk.ranged.append((key, data))
        else:
            lk.exact[key] = data
    return lk


def set_lookup(s: NftSet) -> Lookup:
    if s.exact is None:
        lk = build_lookup(_named_types(s.key_types), s.raw_elements, s.is_map, f"@{s.name}", s.dynamic)
        s.exact, s.intervals = lk.exact, lk.ranged
    return Lookup(s.exact, s.intervals or [], s.dynamic, f"@{s.name}")


def _named_types(types: tuple[str, ...]) -> tuple[str, ...]:
    # a set's declared types use our value-type vocabulary except for these
    alias = {"iface_index": "ifname", "ether_addr": "string"}
    return tuple(alias.get(t, t) for t in types)
