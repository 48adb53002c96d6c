"""Whether an assumption could change the outcome is decided where the assumption is made (never read
back from its text), and each one that could keeps the verdict off REACHABLE. Also: a route through a
cluster node nobody collected (a transit node) stops the walk instead of a confident INVALID_ROUTE.
On the recorded basic lab's dumps (fixtures/walk)."""

from __future__ import annotations

import ipaddress
from typing import Any

from services.simulator.assemble import overall_verdict
from services.simulator.dataplane.hooks import run_hook
from services.simulator.dataplane.netfilter import Branch, FlowState, TraceContext
from services.simulator.dataplane.nftables import parse_nft_json
from services.simulator.dataplane.walk import WalkResult
from shared.codes import finding
from shared.schemas import FinalState, Verdict
from tests.simulator.dataplane.helpers import Case, forward, ipvs_case, virtual_server

NODE_ADDRESSES = {"node-1": ["172.30.0.11"], "node-2": ["172.30.0.12"], "node-3": ["172.30.0.13"]}


def verdict(result: WalkResult) -> Verdict:
    return overall_verdict(result.paths, result.findings, result.assumptions)


def decisive(result: WalkResult, needle: str, expected: Verdict = Verdict.UNDETERMINED) -> None:
    """The assumption is stated, flagged as able to change the outcome, and the verdict is off REACHABLE:
    UNDETERMINED where every path delivers (overall_verdict), AMBIGUOUS where the walk explored both outcomes."""
    matching = [a for a in result.assumptions if needle in a.text]
    assert matching and all(a.could_change_outcome for a in matching), [
        (a.text, a.could_change_outcome) for a in result.assumptions]
    assert verdict(result) == expected, [(p.final, p.cause) for p in result.paths]


def nft_table(family: str, chains: dict[str, tuple[str, int, list[list[dict[str, Any]]]]]) -> dict[str, Any]:
    """A `nft -j list ruleset` document: one table `t` with base chains name → (hook, priority, rules)."""
    items: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}},
                                   {"table": {"family": family, "name": "t", "handle": 1}}]
    for name, (hook, prio, _rules) in chains.items():
        chain = {"family": family, "table": "t", "name": name, "type": "filter", "hook": hook, "prio": prio,
                 "policy": "accept"}
        if family == "netdev":
            chain["dev"] = "eth0"
        items.append({"chain": chain})
    for name, (_hook, _prio, rules) in chains.items():
        items += [{"rule": {"family": family, "table": "t", "chain": name, "expr": expr}} for expr in rules]
    return {"nftables": items}


def reroute(case: Case, node: str, dst: str, gateway: str) -> None:
    route = next(r for r in case.host(node).routes if r.table == 254 and r.dst == dst)
    route.gateway = gateway


def test_a_healthy_walk_states_nothing_that_could_change_it() -> None:
    result = Case("basic", "pod-cross-node").run()
    assert not [a for a in result.assumptions if a.could_change_outcome]
    assert verdict(result) == Verdict.REACHABLE


def test_unevaluated_nftables_ingress_chains_could_change_the_outcome() -> None:
    case = Case("basic", "pod-cross-node")
    case.host("node-2").netfilter.nft_ruleset = nft_table("netdev", {"in": ("ingress", 0, [[{"drop": None}]])})
    result = case.run()
    assert [p.final for p in forward(result)] == [FinalState.DELIVER]  # the walk does not run ingress chains
    decisive(result, "ingress chains (netdev/inet family) exist but are not evaluated")
    assert verdict(result) == Verdict.UNDETERMINED


def test_a_jump_to_a_chain_missing_from_the_dump_explores_both_outcomes() -> None:
    case = Case("basic", "pod-cross-node")
    case.host("node-2").netfilter.nft_ruleset = nft_table(
        "ip", {"fwd": ("forward", 0, [[{"jump": {"target": "gone"}}]])})
    result = case.run()
    assert sorted(p.final for p in forward(result)) == [FinalState.DELIVER, FinalState.DROP]
    decisive(result, "jump to chain gone, which is not in the collected table", Verdict.AMBIGUOUS)


def test_an_unmodelled_ipvs_forwarding_method_could_change_the_outcome() -> None:
    case = ipvs_case()
    for real in virtual_server(case, "node-1")["reals"]:
        real["forward"] = "route"  # direct routing
    result = case.run()
    assert {p.final for p in forward(result)} == {FinalState.ABORT}
    decisive(result, "IPVS forwarding method route")


def test_a_reply_that_cannot_be_followed_could_change_the_outcome() -> None:
    case = Case("basic", "pod-cross-node")
    case.report.cluster.node_addresses = NODE_ADDRESSES  # type: ignore[assignment]
    reroute(case, "node-2", "10.244.1.0/24", "172.30.0.13")  # the reply goes back through node-3
    result = case.run()
    assert [p.final for p in forward(result)] == [FinalState.DELIVER]
    assert [p.final for p in result.paths if p.direction == "reply"] == [FinalState.ABORT]
    decisive(result, "the reply path could not be followed to the client")
    assert verdict(result) == Verdict.UNDETERMINED


# ---------------------------------------------------------------- transit nodes


def test_a_route_through_an_uncollected_cluster_node_stops_the_walk() -> None:
    case = Case("basic", "pod-cross-node")
    reroute(case, "node-1", "10.244.2.0/24", "172.30.0.13")
    (before,) = forward(case.run())  # without every node's addresses: nothing says 172.30.0.13 is a node
    assert before.final == FinalState.DROP and before.cause == "INVALID_ROUTE"
    case.report.cluster.node_addresses = NODE_ADDRESSES  # type: ignore[assignment]
    result = case.run()
    (path,) = forward(result)
    assert path.final == FinalState.ABORT and path.cause == "DATA_MISSING"
    assert path.hops[-1].id == "node:node-3"
    (missing,) = [f for f in result.findings if f.code == "DATA_MISSING"]
    assert missing.hop == "node:node-3" and "node node-3" in missing.message and "not asked" in missing.message
    assert not [f for f in result.findings if f.code == "INVALID_ROUTE"]
    assert verdict(result) == Verdict.UNDETERMINED


def test_a_route_to_an_address_no_node_owns_is_still_invalid() -> None:
    case = Case("basic", "pod-cross-node")
    case.report.cluster.node_addresses = NODE_ADDRESSES  # type: ignore[assignment]
    reroute(case, "node-1", "10.244.2.0/24", "172.30.0.99")
    (path,) = forward(case.run())
    assert path.final == FinalState.DROP and path.cause == "INVALID_ROUTE"


def test_a_node_asked_that_did_not_answer_keeps_the_collectors_finding() -> None:
    case = Case("basic", "pod-cross-node", nodes=("node-1",))
    case.report.cluster.node_addresses = NODE_ADDRESSES  # type: ignore[assignment]
    (path,) = forward(case.run())
    assert path.final == FinalState.ABORT and path.hops[-1].id == "node:node-2" and path.cause == "DATA_MISSING"
    timeout = finding("COLLECTOR_UNAVAILABLE", "node:node-2", node="node-2", timeout_s=5)
    result = case.run(expected=[timeout])
    (path,) = forward(result)
    assert path.final == FinalState.ABORT and path.cause == "COLLECTOR_UNAVAILABLE"
    assert timeout in result.findings and not [f for f in result.findings if f.code == "DATA_MISSING"]


def test_unevaluated_nftables_bridge_chains_could_change_the_outcome() -> None:
    """Bridged frames (br_netfilter) meet bridge-family chains the walk does not run: said, as decisive."""
    rules = parse_nft_json(nft_table("bridge", {"fwd": ("forward", 0, [[{"drop": None}]])}))
    st = FlowState(src=ipaddress.ip_address("10.244.1.2"), dst=ipaddress.ip_address("10.244.1.3"),
                   protocol="tcp", sport=40000, dport=80)
    (branch,) = run_hook(None, rules, [Branch(state=st)], "FORWARD", ctx=TraceContext(bridged=True))
    assert branch.verdict == "ACCEPT"
    assert branch.assumptions == {"nftables bridge-family forward chains exist but are not evaluated": True}
