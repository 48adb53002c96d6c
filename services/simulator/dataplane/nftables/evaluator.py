"""Run packets through nftables base chains exactly as the kernel would, returning every branch.

* A base chain is one stage of its hook; `hooks.run_hook` orders the stages of all tables (and of
  iptables) by priority. `accept` ends only the base chain; `drop`/`reject` end the packet.
* `jump` calls a chain (fall-through or `return` resumes after the rule), `goto` replaces the frame;
  a base chain ends in its policy. nat-type chains see only a connection's first packet.
* Verdict maps, sets and maps are hash lookups; numgen/jhash fork the branch with probabilities;
  unmodelled expressions fork both ways with UNSUPPORTED_RULE evidence.
"""

from __future__ import annotations

from typing import Any

from services.simulator.dataplane.netfilter.model import Branch, RuleHit
from services.simulator.dataplane.netfilter.tracer import MAX_DEPTH, TraceContext
from services.simulator.dataplane.nftables.model import HOOKS, NftChain, NftRule, NftRuleset
from services.simulator.dataplane.nftables.statements import (
    CONT,
    NAT,
    NEXT,
    NOMATCH,
    RETURN,
    Compiler,
    Ctx,
    Result,
    Step,
    UnknownMatch,
    UnknownStatement,
)

FINAL = frozenset({"DROP", "REJECT"})


class NftEvaluator(Ctx):
    """Evaluates one namespace's nftables ruleset."""

    def __init__(self, ruleset: NftRuleset, ctx: TraceContext | None = None) -> None:
        self.rs = ruleset
        self.ctx = ctx or TraceContext()
        self._compilers = {key: Compiler(t) for key, t in ruleset.tables.items()}

    # -------------------------------------------------------------- a base chain as a hook stage

    def run_chain(self, branches: list[Branch], chain: NftChain) -> list[Branch]:
        """Run one base chain on the still-undecided branches; decided (dropped) ones pass through."""
        hook = HOOKS.get(chain.hook or "", (chain.hook or "").upper())
        out: list[Branch] = []
        for br in branches:
            if br.verdict in FINAL or (chain.type == "nat" and br.state.ctstate != "NEW"):
                out.append(br)  # nat chains see only a connection's first packet
                continue
            br.verdict = None
            for nb, outcome in self._walk(br, chain, 0, hook, 0):
                if outcome in (None, RETURN):
                    nb.verdict = chain.policy.upper()
                    if nb.verdict != "ACCEPT":
                        nb.decided_by = RuleHit(hook, chain.table, chain.name, 0, f"policy {chain.policy}",
                                                 chain.family)
                elif outcome == NAT:
                    nb.verdict = "ACCEPT"
                out.append(nb)
        return out

    # -------------------------------------------------------------- chains

    def _walk(self, br: Branch, chain: NftChain, start: int, hook: str,
              depth: int) -> list[tuple[Branch, str | None]]:
        if depth > MAX_DEPTH:
            br.assume(f"chain nesting deeper than {MAX_DEPTH} at {chain.name}: treated as DROP (loop?)",
                      could_change=True)
            br.verdict = "DROP"
            return [(br, "DROP")]
        rules = chain.rules
        i = start
        while i < len(rules):
            results = self._rule(br, rules[i], hook)
            if len(results) == 1 and results[0][1] in (NOMATCH, NEXT):
                br = results[0][0]
                i += 1
                continue
            out: list[tuple[Branch, str | None]] = []
            for b, res in results:
                out.extend(self._follow(b, res, chain, i, hook, depth))
            return out
        return [(br, None)]

    def _follow(self, b: Branch, res: Result, chain: NftChain, i: int, hook: str,
                depth: int) -> list[tuple[Branch, str | None]]:
        if res in (NOMATCH, NEXT):
            return self._walk(b, chain, i + 1, hook, depth)
        if res == RETURN:
            return [(b, None)]
        if isinstance(res, tuple):
            kind, target = res
            sub = self.rs.tables[(chain.family, chain.table)].chains.get(target)
            if sub is None:
                return self._missing_chain(b, kind, target, chain, i, hook, depth)
            results = self._walk(b, sub, 0, hook, depth + 1)
            if kind == "GOTO":
                return results  # the goto'd chain's return goes back to *our* caller
            out: list[tuple[Branch, str | None]] = []
            for sb, outcome in results:
                if outcome is None:
                    out.extend(self._walk(sb, chain, i + 1, hook, depth))
                else:
                    out.append((sb, outcome))
            return out
        return [(b, res)]  # ACCEPT / DROP / REJECT / NAT

    def _missing_chain(self, b: Branch, kind: str, target: str, chain: NftChain, i: int, hook: str,
                       depth: int) -> list[tuple[Branch, str | None]]:
        """A jump/goto to a chain the collected table lacks (nft refuses to load one, so the read was
        partial): what it does is unknown, so both outcomes are explored, as for an unknown target."""
        dropped = b.fork()
        for x, outcome in ((b, "returns"), (dropped, "drops the packet")):
            x.assume(f"{kind.lower()} to chain {target}, which is not in the collected table: assumed it {outcome}",
                     could_change=True)
        dropped.verdict = "DROP"
        went_on = [(b, None)] if kind == "GOTO" else self._walk(b, chain, i + 1, hook, depth)
        return [(dropped, "DROP"), *went_on]

    def _rule(self, br: Branch, rule: NftRule, hook: str) -> list[tuple[Branch, Result]]:
        steps = self._compiled(rule)
        hit = RuleHit(hook, rule.table, rule.chain, rule.position, "", rule.family)
        out: list[tuple[Branch, Result]] = []
        work: list[tuple[Branch, int]] = [(br, 0)]
        while work:
            b, idx = work.pop()
            if idx == len(steps):
                out.append((b, NEXT))
                continue
            for nb, res in steps[idx].run(b, self, hit):
                if res == CONT:
                    work.append((nb, idx + 1))
                else:
                    out.append((nb, res))
        if len(out) == 1 and out[0][1] == NOMATCH:
            return out
        full = RuleHit(hook, hit.table, hit.chain, hit.position, rule.text, hit.family)
        for b, res in out:
            if res != NOMATCH:
                b.hits.append(full)
            if b.decided_by is hit:
                b.decided_by = full
            b.nat = [n if n.hit is not hit else type(n)(n.kind, n.before, n.after, full) for n in b.nat]
            b.unsupported = [full if u is hit else u for u in b.unsupported]
        return out

    def _compiled(self, rule: NftRule) -> list[Step]:
        if rule.compiled is None:
            rule.compiled = self._compilers[(rule.family, rule.table)].rule(rule)
        return rule.compiled

    def fork_unknown(self, br: Branch, hit: RuleHit, feature: str) -> list[tuple[Branch, Result]]:
        other = br.fork()
        for b, outcome in ((br, "matches"), (other, "does not match")):
            b.unsupported.append(hit)
            b.assume(f"UNSUPPORTED_RULE: {hit.label}/{hit.chain} rule {hit.position} uses {feature}: "
                     f"assumed it {outcome}", could_change=True)
        return [(br, CONT), (other, NOMATCH)]


def unsupported_rules(rs: NftRuleset, ctx: Any = None) -> list[NftRule]:
    """Rules holding an expression the evaluator does not model (compiles every rule: for reports)."""
    ev = NftEvaluator(rs, ctx)
    return [r for t in rs.tables.values() for c in t.chains.values() for r in c.rules
            if any(isinstance(s, UnknownMatch | UnknownStatement) for s in ev._compiled(r))]
