"""ECMP: a multipath route fans the walk out, one path per next hop with its weight's share; when one
next hop is broken the verdict is AMBIGUOUS (the kernel's flow hash, seeded at random per boot, picks
the next hop: the diagnosis cannot know which a given connection takes). The recorded basic lab gains a
transit node-3 (node-2's recorded host namespace, readdressed, forwarding to node-2)."""

from __future__ import annotations

from services.simulator.assemble import overall_verdict
from shared.netstack import Route
from shared.schemas import FinalState, Verdict
from tests.simulator.dataplane.helpers import Case, forward

POD_CIDR_2 = "10.244.2.0/24"


def ecmp_case(weights: tuple[int, int] = (1, 1)) -> Case:
    case = Case("basic", "pod-cross-node")
    node3 = case.dumps["node-2"].model_copy(deep=True)
    node3.node, node3.pods = "node-3", []
    host = node3.host
    eth0 = next(lk for lk in host.links if lk.name == "eth0")
    eth0.addresses = ["172.30.0.13/24"]
    host.links = [lk for lk in host.links if lk.name in ("lo", "eth0")]
    host.routes = [Route(gateway="172.30.0.1", dev="eth0"),
                   Route(dst="172.30.0.0/24", dev="eth0", prefsrc="172.30.0.13", scope="link", protocol="kernel"),
                   Route(dst="10.244.1.0/24", gateway="172.30.0.11", dev="eth0"),
                   Route(dst=POD_CIDR_2, gateway="172.30.0.12", dev="eth0"),
                   Route(table=255, type="local", dst="172.30.0.13/32", dev="eth0", prefsrc="172.30.0.13",
                         scope="host", protocol="kernel")]
    case.dumps["node-3"] = node3
    node1 = case.host("node-1")
    node1.routes = [r for r in node1.routes if r.dst != POD_CIDR_2]
    node1.routes.append(Route(dst=POD_CIDR_2, multipath=[
        {"gateway": "172.30.0.12", "dev": "eth0", "weight": weights[0]},
        {"gateway": "172.30.0.13", "dev": "eth0", "weight": weights[1]}]))
    return case


def via(path: object) -> str:
    return "node-3" if "node:node-3" in [h.id for h in path.hops] else "node-2"  # type: ignore[attr-defined]


def test_each_next_hop_is_a_path_with_its_share() -> None:
    result = ecmp_case((3, 1)).run()
    paths = forward(result)
    assert sorted(via(p) for p in paths) == ["node-2", "node-3"]
    assert all(p.final == FinalState.DELIVER for p in paths)
    share = {via(p): p.description for p in paths}
    assert "probability 0.75" in share["node-2"] and "probability 0.25" in share["node-3"]
    ecmp = [s for p in paths for h in p.hops for s in h.steps if "ECMP share" in s.detail]
    assert len(ecmp) == 2
    assert overall_verdict(result.paths, result.findings, result.assumptions) == Verdict.REACHABLE


def test_one_broken_next_hop_is_ambiguous_and_names_its_cause() -> None:
    case = ecmp_case()
    case.iptables("node-3", "filter", f"-A FORWARD -d {POD_CIDR_2} -j DROP")
    result = case.run()
    finals = {via(p): (p.final, p.cause) for p in forward(result)}
    assert finals == {"node-2": (FinalState.DELIVER, None), "node-3": (FinalState.DROP, "IPTABLES_DROP")}
    drop = next(f for f in result.findings if f.code == "IPTABLES_DROP")
    assert drop.hop == "node:node-3" and drop.evidence["position"] == 1
    assert overall_verdict(result.paths, result.findings, result.assumptions) == Verdict.AMBIGUOUS
