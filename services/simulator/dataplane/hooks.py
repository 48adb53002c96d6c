"""One netfilter hook of one namespace, across iptables tables and nftables base chains, in kernel order.

Every iptables table and every nftables base chain registers at a hook with a priority; the kernel runs
them lowest first. iptables' priorities are fixed (raw -300, mangle -150, nat -100 where it rewrites
the destination and +100 where it rewrites the source, filter 0, security 50). `accept` ends only one
stage; `drop`/`reject` end the packet. nat stages see only a connection's first packet, and once one
nat stage has bound the connection at this hook the later nat stages of the same hook are skipped
(nf_nat runs its nat chains until one sets up a mapping).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.simulator.dataplane.netfilter.model import HOOK_TABLES, Branch
from services.simulator.dataplane.netfilter.tracer import MAX_BRANCHES, TraceContext, Tracer, TraceTooLarge
from services.simulator.dataplane.nftables import NftEvaluator, NftRuleset
from services.simulator.dataplane.nftables.model import IP_FAMILIES

IPTABLES_PRIORITY = {"raw": -300, "mangle": -150, "filter": 0, "security": 50}
NAT_PRIORITY = {"PREROUTING": -100, "OUTPUT": -100, "INPUT": 100, "POSTROUTING": 100}
# the NAT kinds that bind a connection at a hook: destination NAT before routing, source NAT after
BINDING_KINDS = {"PREROUTING": ("DNAT", "REDIRECT"), "OUTPUT": ("DNAT", "REDIRECT"),
                 "INPUT": ("SNAT", "MASQUERADE"), "POSTROUTING": ("SNAT", "MASQUERADE")}


@dataclass(frozen=True)
class Stage:
    priority: int
    name: str  # "iptables nat" / "nft ip kube-proxy nat-prerouting", for reports and tests
    nat: bool
    run: Callable[[list[Branch]], list[Branch]]


def stages(iptables: Sequence[Tracer], nft: NftEvaluator | None, hook: str, version: int) -> list[Stage]:
    """Every stage of `hook` for IP version `version`, in the order the kernel runs them."""
    found: list[Stage] = []
    for tracer in iptables:
        for table in HOOK_TABLES[hook]:
            if tracer.rs.chain(table, hook) is None:
                continue
            prio = NAT_PRIORITY[hook] if table == "nat" else IPTABLES_PRIORITY[table]
            found.append(Stage(prio, f"iptables {table}", table == "nat",
                               functools.partial(tracer.run_table, hook=hook, table=table)))
    if nft is not None:
        for chain in nft.rs.base_chains(hook.lower(), IP_FAMILIES[version]):
            found.append(Stage(chain.priority, f"nft {chain.family} {chain.table} {chain.name}", chain.type == "nat",
                               functools.partial(nft.run_chain, chain=chain)))
    return sorted(found, key=lambda s: s.priority)  # stable: iptables first at equal priority


def run_hook(iptables: Tracer | Sequence[Tracer] | None, nft: NftRuleset | NftEvaluator | None,
             branches: list[Branch], hook: str, family: int | None = None,
             ctx: TraceContext | None = None) -> list[Branch]:
    """Run `hook` (PREROUTING, INPUT, FORWARD, OUTPUT, POSTROUTING) over every iptables backend's tables
    and every nftables base chain of the namespace; decided (dropped/rejected) branches pass through.

    `family` (4 or 6) picks the nft table families (ip/ip6 + inet); default: each branch's destination.
    `ctx` is the node context for nftables (default: the first tracer's).
    """
    tracers = [] if iptables is None else [iptables] if isinstance(iptables, Tracer) else list(iptables)
    if ctx is None:
        ctx = tracers[0].ctx if tracers else TraceContext()
    evaluator = NftEvaluator(nft, ctx) if isinstance(nft, NftRuleset) else nft
    plans: dict[int, list[Stage]] = {}
    out: list[Branch] = []
    for br in branches:
        if br.verdict in ("DROP", "REJECT"):
            out.append(br)
            continue
        version = family or br.state.dst.version
        if version not in plans:
            plans[version] = stages(tracers, evaluator, hook, version)
        br.verdict = None
        br.hooks.append(hook)
        _note_unmodelled(br, evaluator, hook, ctx)
        base = len(br.nat)  # forks share the records before this index
        pending = [br]
        for stage in plans[version]:
            if stage.nat:
                bound = [b for b in pending if _bound(b, base, hook)]
                free = [b for b in pending if not _bound(b, base, hook)]
                pending = bound + (stage.run(free) if free else [])
            else:
                pending = stage.run(pending)
        for b in pending:
            if b.verdict is None:
                b.verdict = "ACCEPT"
        out.extend(pending)
        if len(out) > MAX_BRANCHES:
            raise TraceTooLarge(f"more than {MAX_BRANCHES} branches at {hook}")
    return out


def _bound(b: Branch, base: int, hook: str) -> bool:
    kinds = BINDING_KINDS[hook]
    return any(n.kind in kinds for n in b.nat[base:])


def _note_unmodelled(br: Branch, ev: NftEvaluator | None, hook: str, ctx: TraceContext) -> None:
    """Base chains a packet meets that this function does not run: say so rather than pass silently."""
    if ev is None:
        return
    if hook == "PREROUTING" and any(c.rules for c in ev.rs.base_chains("ingress", ("netdev", "inet"))):
        br.assume("nftables ingress chains (netdev/inet family) exist but are not evaluated", could_change=True)
    if ctx.bridged and any(c.rules for c in ev.rs.base_chains(hook.lower(), ("bridge",))):
        br.assume(f"nftables bridge-family {hook.lower()} chains exist but are not evaluated", could_change=True)
