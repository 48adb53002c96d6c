"""A rule's expressions compiled into steps, each run on a branch in order, as the kernel runs them.

A step returns (branch, result) pairs: CONT (next expression), NOMATCH (the rule stops, next rule), or
an outcome for the chain walk — ACCEPT/DROP/REJECT, RETURN, NAT (a nat statement: the base chain
accepts), ("JUMP"|"GOTO", chain). Random values (numgen, jhash) fork the branch, grouped by what the
step does with them; unmodelled expressions fork both ways and record UNSUPPORTED_RULE.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.simulator.dataplane.netfilter.model import Branch, NatRecord, RuleHit, endpoint
from services.simulator.dataplane.nftables.lookup import MISSING, Lookup, build_lookup, set_lookup
from services.simulator.dataplane.nftables.model import Interval, NftRule, NftTable
from services.simulator.dataplane.nftables.values import (
    BINOPS,
    FLAG_TYPES,
    Binop,
    Break,
    Choices,
    Concat,
    Fib,
    Hash,
    Numgen,
    Pattern,
    Unmodelled,
    Value,
    coerce,
    ct,
    meta,
    payload,
)

CONT, NOMATCH, NEXT, RETURN, NAT = "CONT", "NOMATCH", "NEXT", "RETURN", "NAT"
Result = Any  # one of the constants above, a verdict, or ("JUMP"|"GOTO", chain)

# Statements that only observe or tweak fields the path does not depend on: the rule goes on.
PASSIVE = {"counter": None, "log": None, "comment": None,
           "limit": "limit: assumed within its rate (the packet is not over the limit)",
           "quota": "quota: assumed not exhausted",
           "ct helper": None, "ct timeout": None, "ct expectation": None, "secmark": None,
           "flow": "flow offload: later packets of this flow may bypass the hooks (first packet traced)",
           "set": "set add/update from the datapath: not applied (its collected elements are used as they are)",
           "map": "map add/update from the datapath: not applied"}
# mangle keys that do not change the path
PASSIVE_MANGLE = {"priority", "nftrace", "dscp", "ttl", "hoplimit", "ecn", "tos", "secmark", "pkttype"}


class Ctx:
    """What steps need from the evaluator (kept small to avoid an import cycle)."""

    ctx: Any

    def fork_unknown(self, br: Branch, hit: RuleHit, feature: str) -> list[tuple[Branch, Result]]:
        raise NotImplementedError


def grouped(value: Value, br: Branch, ev: Ctx, classify: Callable[[Any], Any]) -> list[tuple[Branch, Any]]:
    """Read `value` and classify it; a random value forks one branch per distinct class."""
    v = value.read(br.state, ev.ctx)
    if not isinstance(v, Choices):
        return [(br, classify(v))]
    if v.note:  # every value becomes its own branch: the note is about shares, not outcomes
        br.assume(v.note, could_change=False)
    groups: dict[str, tuple[Any, float]] = {}
    for option, p in v.options:
        cls = classify(option)
        key = _group_key(cls)
        prev = groups.get(key)
        groups[key] = (cls, (prev[1] if prev else 0.0) + p)
    base = br.probability
    out = []
    for i, (cls, p) in enumerate(groups.values()):
        b = br if i == len(groups) - 1 else br.fork()
        b.probability = base * p
        out.append((b, cls))
    return out


def _group_key(cls: Any) -> str:
    try:
        return json.dumps(cls, sort_keys=True, default=str)
    except TypeError:
        return repr(cls)


# ------------------------------------------------------------------ steps


class Step:
    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:  # pragma: no cover
        raise NotImplementedError


@dataclass(slots=True)
class MatchStep(Step):
    left: Value
    op: str
    right: Any  # a coerced value, Interval, Pattern, Lookup, or a flags bitmask

    def test(self, v: Any) -> bool:
        r, op = self.right, self.op
        if op == "in" and self.left.dtype in FLAG_TYPES and isinstance(r, int):
            return (v & r) != 0
        if op in ("==", "!=", "in"):
            if isinstance(r, Lookup):
                found = r.get(v) is not MISSING
            elif isinstance(r, Interval | Pattern):
                found = v in r
            else:
                found = v == r
            return found if op != "!=" else not found
        try:
            return {"<": v < r, ">": v > r, "<=": v <= r, ">=": v >= r}[op]
        except TypeError:
            return False

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        try:
            pairs = grouped(self.left, br, ev, self.test)
        except Break:
            return [(br, NOMATCH)]
        except Unmodelled as exc:
            return ev.fork_unknown(br, hit, str(exc))
        if isinstance(self.right, Lookup) and self.right.dynamic:
            for b, _ in pairs:
                # what earlier traffic adds may decide this packet
                b.assume(f"set {self.right.name} is filled by the datapath: its collected elements are used",
                         could_change=True)
        return [(b, CONT if ok else NOMATCH) for b, ok in pairs]


def apply_verdict(br: Branch, verdict: dict[str, Any] | str, hit: RuleHit) -> Result:
    """A verdict as nft prints it ({"accept": null}, {"jump": {"target": X}}, …) → a result."""
    arg: Any  # the verdict's argument: {"target": X} for jump/goto
    kind, arg = (verdict, None) if isinstance(verdict, str) else next(iter(verdict.items()))
    if kind in ("accept", "drop"):
        br.verdict, br.decided_by = kind.upper(), hit
        return kind.upper()
    if kind == "reject":
        br.verdict, br.decided_by = "REJECT", hit
        br.reject_with = _reject_text(arg, br)
        return "REJECT"
    if kind == "continue":
        return CONT
    if kind == "return":
        return RETURN
    if kind in ("jump", "goto"):
        return (kind.upper(), arg["target"])
    raise Unmodelled(f"verdict {kind}")


def _reject_text(arg: dict[str, Any] | None, br: Branch) -> str:
    if not arg:
        return "icmp6-port-unreachable" if br.state.dst.version == 6 else "icmp-port-unreachable"
    kind = arg.get("type", "icmp")
    if kind == "tcp reset":
        return "tcp-reset"
    code = arg.get("expr", "port-unreachable")
    prefix = "icmp6" if kind in ("icmpv6", "icmp6") or (kind == "icmpx" and br.state.dst.version == 6) else "icmp"
    return f"{prefix}-{code}"


@dataclass(slots=True)
class VerdictStep(Step):
    verdict: dict[str, Any]

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        return [(br, apply_verdict(br, self.verdict, hit))]


@dataclass(slots=True)
class VmapStep(Step):
    key: Value
    lookup: Lookup

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        try:
            pairs = grouped(self.key, br, ev, self.lookup.get)
        except Break:
            return [(br, NOMATCH)]
        except Unmodelled as exc:
            return ev.fork_unknown(br, hit, str(exc))
        return [(b, NOMATCH if data is MISSING else apply_verdict(b, data, hit)) for b, data in pairs]


@dataclass(slots=True)
class MapValue(Value):
    """`KEY map @m` / `map { … }` as a value (NAT targets, mark values); a miss is the kernel's NFT_BREAK."""

    key: Value
    lookup: Lookup
    data_types: tuple[str, ...]
    dtype: str = "map"
    text: str = ""

    def _data(self, v: Any) -> Any:
        data = self.lookup.get(v)
        if data is MISSING:
            return MISSING
        if isinstance(data, dict) and "concat" in data:
            return tuple(coerce(t, d) for t, d in zip(self.data_types, data["concat"], strict=False))
        return coerce(self.data_types[0], data)

    def read(self, st: Any, ctx: Any) -> Any:
        v = self.key.read(st, ctx)
        if isinstance(v, Choices):
            return Choices([(self._data(o), p) for o, p in v.options], v.note)
        data = self._data(v)
        if data is MISSING:
            raise Break
        return data


@dataclass(slots=True)
class Const(Value):
    value: Any
    dtype: str = "integer"
    text: str = ""

    def read(self, st: Any, ctx: Any) -> Any:
        return self.value


@dataclass(slots=True)
class NatStep(Step):
    kind: str  # dnat, snat, masquerade, redirect
    addr: Value | None
    port: Value | None

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        try:
            pairs = grouped(self.addr, br, ev, lambda v: v) if self.addr else [(br, None)]
        except Break:
            return [(br, NOMATCH)]
        except Unmodelled as exc:
            return ev.fork_unknown(br, hit, str(exc))
        out: list[tuple[Branch, Result]] = []
        for b, addr in pairs:
            if addr is MISSING:
                out.append((b, NOMATCH))
                continue
            port = None
            if isinstance(addr, tuple):  # a map to `addr . port`
                addr, port = addr
            if self.port is not None:
                port = self.port.read(b.state, ev.ctx)
            out.append(self._apply(b, ev, hit, addr, port))
        return out

    def _apply(self, b: Branch, ev: Ctx, hit: RuleHit, addr: Any, port: Any) -> tuple[Branch, Result]:
        st = b.state
        if isinstance(addr, Interval):
            b.assume(f"{self.kind} to the range {addr.low}-{addr.high}: the first address {addr.low} is shown",
                     could_change=self.kind == "dnat")
            addr = addr.low
        if isinstance(port, Interval):
            b.assume(f"{self.kind} to ports {port.low}-{port.high}: the first port {port.low} is shown",
                     could_change=self.kind in ("dnat", "redirect"))
            port = port.low
        if self.kind == "masquerade":
            addr, how = ev.ctx.masquerade_address(st)
            if how:  # a guessed source is harmless; a drop for want of one is not
                b.assume(how, could_change=addr is None)
        elif self.kind == "redirect":
            addr = ev.ctx.redirect_address(st)
        if addr is None and self.kind in ("masquerade", "redirect"):
            b.assume(f"{self.kind}: no usable address on the interface: the kernel drops the packet",
                     could_change=False)
            b.verdict, b.decided_by = "DROP", hit
            return b, "DROP"
        if self.kind in ("dnat", "redirect"):
            before = endpoint(st.dst, st.dport)
            if addr is not None:
                st.dst = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
            if port is not None:
                st.dport = int(port)
            st.ct_dnat = True
            after = endpoint(st.dst, st.dport)
        else:
            before = endpoint(st.src, st.sport)
            if addr is not None:
                st.src = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
            if port is not None:
                st.sport = int(port)
            st.ct_snat = True
            after = endpoint(st.src, st.sport)
        b.nat.append(NatRecord(kind=self.kind.upper(), before=before, after=after, hit=hit))
        return b, NAT


@dataclass(slots=True)
class MarkStep(Step):
    target: str  # "mark" (meta mark) or "ctmark"
    value: Value

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        try:
            pairs = grouped(self.value, br, ev, lambda v: v)
        except Break:
            return [(br, NOMATCH)]
        except Unmodelled as exc:
            return ev.fork_unknown(br, hit, str(exc))
        for b, v in pairs:
            setattr(b.state, self.target, int(v) & 0xFFFFFFFF)
        return [(b, CONT) for b, _ in pairs]


@dataclass(slots=True)
class PassStep(Step):
    note: str | None = None

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        if self.note:  # counters, limits, offload: about later packets, not this one's outcome
            br.assume(self.note, could_change=False)
        return [(br, CONT)]


@dataclass(slots=True)
class NotrackStep(Step):
    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        br.state.ctstate = "UNTRACKED"
        return [(br, CONT)]


@dataclass(slots=True)
class UnknownMatch(Step):
    feature: str

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        return ev.fork_unknown(br, hit, self.feature)


@dataclass(slots=True)
class UnknownStatement(Step):
    """A statement we do not model (queue, dup, fwd, tproxy, xt …): it may continue or drop."""

    feature: str

    def run(self, br: Branch, ev: Ctx, hit: RuleHit) -> list[tuple[Branch, Result]]:
        dropped = br.fork()
        for b, outcome in ((br, "continues"), (dropped, "drops the packet")):
            b.unsupported.append(hit)
            b.assume(f"UNSUPPORTED_RULE: {hit.label}/{hit.chain} rule {hit.position} uses {self.feature}: "
                     f"assumed it {outcome}", could_change=True)
        dropped.verdict, dropped.decided_by = "DROP", hit
        return [(br, CONT), (dropped, "DROP")]


# ------------------------------------------------------------------ compilation


@dataclass(slots=True)
class Compiler:
    table: NftTable

    @property
    def version(self) -> int | None:
        return {"ip": 4, "ip6": 6}.get(self.table.family)

    def rule(self, rule: NftRule) -> list[Step]:
        steps: list[Step] = []
        for expr in rule.exprs:
            try:
                steps.append(self.step(expr))
            except Unmodelled as exc:
                is_match = isinstance(expr, dict) and "match" in expr
                steps.append(UnknownMatch(str(exc)) if is_match else UnknownStatement(str(exc)))
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # malformed or unexpected shape
                steps.append(UnknownMatch(f"expression {_short(expr)} ({type(exc).__name__})"))
        return steps

    def step(self, expr: dict[str, Any]) -> Step:
        kind, body = next(iter(expr.items()))
        if kind == "match":
            left = self.value(body["left"])
            return MatchStep(left, body.get("op", "=="), self.right(left, body["right"]))
        if kind in ("accept", "drop", "continue", "return", "jump", "goto", "reject"):
            return VerdictStep({kind: body})
        if kind == "vmap":
            key = self.value(body["key"])
            return VmapStep(key, self.lookup(key, body["data"], is_map=True))
        if kind in ("dnat", "snat", "masquerade", "redirect"):
            body = body or {}
            addr = self.nat_value(body["addr"]) if "addr" in body else None
            port = self.nat_value(body["port"], "inet_service") if "port" in body else None
            return NatStep(kind, addr, port)
        if kind == "mangle":
            key = body["key"]
            if "meta" in key and key["meta"]["key"] == "mark":
                return MarkStep("mark", self.operand(body["value"], "mark"))
            if "ct" in key and key["ct"]["key"] == "mark":
                return MarkStep("ctmark", self.operand(body["value"], "mark"))
            inner = next(iter(key.values()))
            if (inner.get("key") or inner.get("field")) in PASSIVE_MANGLE:
                return PassStep()
            raise Unmodelled(f"{_short(key)} set")
        if kind == "notrack":
            return NotrackStep()
        if kind in PASSIVE:
            return PassStep(PASSIVE[kind])
        if kind == "xt":
            raise Unmodelled(f"xt {body.get('type', '')} {body.get('name', '')} (an iptables-nft compat expression)")
        raise Unmodelled(f"statement {kind}")

    # -- values

    def value(self, expr: Any) -> Value:
        if not isinstance(expr, dict):
            raise Unmodelled(f"value {_short(expr)}")
        kind, body = next(iter(expr.items()))
        if kind == "payload":
            if "protocol" not in body:
                raise Unmodelled(f"raw payload {_short(body)}")
            return payload(body["protocol"], body["field"])
        if kind == "meta":
            return meta(body["key"])
        if kind == "ct":
            key = body["key"]
            version = self.version
            if key.startswith(("ip ", "ip6 ")):  # `ct original ip saddr` in inet tables
                fam, key = key.split(" ", 1)
                version = 4 if fam == "ip" else 6
            return ct(key, body.get("dir"), version)
        if kind == "fib":
            flags = body.get("flags", [])
            flags = tuple(flags if isinstance(flags, list) else [flags])
            return Fib(body["result"], flags, "fib_addrtype" if body["result"] == "type" else "ifname",
                       f"fib {' . '.join(flags)} {body['result']}")
        if kind == "numgen":
            return Numgen(body["mode"], int(body["mod"]), int(body.get("offset", 0)), text="numgen")
        if kind in ("jhash", "symhash"):
            return Hash(kind, int(body["mod"]), int(body.get("offset", 0)), text=kind)
        if kind == "concat":
            return Concat(tuple(self.value(p) for p in body), text="concat")
        if kind in BINOPS:
            left = self.value(body[0])
            return Binop(kind, left, coerce(left.dtype, body[1]), left.dtype, left.text)
        if kind == "map":
            key = self.value(body["key"])
            lk = self.lookup(key, body["data"], is_map=True)
            data_types = self._data_types(body["data"])
            return MapValue(key, lk, data_types, text="map")
        raise Unmodelled(f"{kind} expression")

    def operand(self, expr: Any, dtype: str) -> Value:
        """A statement argument: a literal of `dtype` or an expression."""
        if isinstance(expr, dict) and not ({"prefix", "range"} & expr.keys()):
            return self.value(expr)
        return Const(coerce(dtype, expr), dtype)

    def nat_value(self, expr: Any, dtype: str | None = None) -> Value:
        if dtype is None:
            dtype = "ipv6_addr" if self.version == 6 else "ipv4_addr"
        return self.operand(expr, dtype)

    def _data_types(self, data: Any) -> tuple[str, ...]:
        if isinstance(data, str) and data.startswith("@"):
            s = self.table.sets.get(data[1:])
            if s is None or s.data_type is None:
                raise Unmodelled(f"map {data} (not in the collected table)")
            return tuple(t.strip() for t in s.data_type.split("."))
        addr = "ipv6_addr" if self.version == 6 else "ipv4_addr"
        return (addr, "inet_service")  # anonymous NAT maps: addresses, or `addr . port`

    # -- right-hand sides and sets

    def right(self, left: Value, raw: Any) -> Any:
        dtypes = left.dtypes if isinstance(left, Concat) else (left.dtype,)
        if isinstance(raw, str) and raw.startswith("@"):
            return self.lookup(left, raw, is_map=False)
        if isinstance(raw, dict) and "set" in raw:
            return self.lookup(left, raw, is_map=False)
        if isinstance(raw, list) and left.dtype not in FLAG_TYPES:
            return build_lookup(dtypes, raw, is_map=False)
        if isinstance(raw, dict) and "concat" in raw:
            return build_lookup(dtypes, [raw], is_map=False)
        return coerce(left.dtype, raw)

    def lookup(self, key: Value, data: Any, is_map: bool) -> Lookup:
        dtypes = key.dtypes if isinstance(key, Concat) else (key.dtype,)
        if isinstance(data, str) and data.startswith("@"):
            s = self.table.sets.get(data[1:])
            if s is None:
                raise Unmodelled(f"set {data} (not in the collected table)")
            return set_lookup(s)
        elements = data["set"] if isinstance(data, dict) else data
        if not isinstance(elements, list):
            elements = [elements]
        return build_lookup(dtypes, elements, is_map)


def _short(raw: Any) -> str:
    text = json.dumps(raw, default=str) if not isinstance(raw, str) else raw
    return text if len(text) < 100 else text[:97] + "..."
