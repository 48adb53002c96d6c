"""The walk under kube-proxy IPVS mode: the recorded basic lab's dumps rewritten into IPVS mode
(ipvs_mode.py: ipvsadm-save text through the collector's reader, kube-proxy's IPVS iptables and ipsets,
kube-ipvs0), then each IPVS fault the walk must name."""

from __future__ import annotations

import ipaddress

from shared.schemas import FinalState, StepAction, StepKind
from shared.topology import Endpoint, EndpointKind
from tests.simulator.dataplane.helpers import VIP, forward, ipvs_case, only_cause, pkt_in, pkt_out, virtual_server
from tests.simulator.dataplane.ipvs_mode import ipvsadm_save


def errors(result: object) -> list[str]:
    return [f.code for f in result.findings if f.severity == "error"]  # type: ignore[attr-defined]


def test_cluster_ip_is_scheduled_to_each_real_server_and_the_reply_translated_back() -> None:
    result = ipvs_case().run()
    paths = forward(result)
    assert sorted(p.id for p in paths) == ["p0", "p1"]  # named after the backends the model expects
    for p in paths:
        assert p.final == FinalState.DELIVER and "probability 0.50" in p.description
        assert p.hops[1].id == "service:shop/api" and "IPVS on node-1 (LOCAL_IN) schedules" in p.hops[1].steps[0].detail
        node1 = next(h for h in p.hops if h.id == "node:node-1")
        kinds = [(s.kind, s.action) for s in node1.steps]
        # delivered locally to kube-ipvs0's address, INPUT, then IPVS rewrites and routes it on
        assert kinds.index((StepKind.ROUTE, StepAction.DELIVER)) < kinds.index((StepKind.NAT, StepAction.REWRITE)) \
            < kinds.index((StepKind.ROUTE, StepAction.FORWARD))
        (nat,) = [s for s in node1.steps if s.kind == "nat"]
        assert str(pkt_in(nat).dst) == VIP and str(pkt_out(nat).dst) == str(pkt_in(p.hops[-1].steps[-1]).dst)
    replies = [p for p in result.paths if p.direction == "reply"]
    assert len(replies) == 2 and all(p.final == FinalState.DELIVER for p in replies)
    undo = [s for p in replies for h in p.hops for s in h.steps if "translated back" in s.detail]
    assert len(undo) == 2 and all(str(pkt_out(s).src) == VIP for s in undo)
    assert not errors(result)
    assert any("round robin" in a.text for a in result.assumptions)


def test_weights_give_the_branch_probabilities() -> None:
    case = ipvs_case(scheduler="wrr")
    reals = virtual_server(case, "node-1")["reals"]
    reals[0]["weight"], reals[1]["weight"] = 3, 1
    shares = {pkt_in(p.hops[-1].steps[-1]).dst.exploded: p.description for p in forward(case.run())}
    assert "probability 0.75" in shares["10.244.1.3"] and "probability 0.25" in shares["10.244.2.2"]


def test_a_quiesced_real_server_gets_no_branch_and_is_reported_missing() -> None:
    case = ipvs_case()
    virtual_server(case, "node-1")["reals"][1]["weight"] = 0
    result = case.run()
    (path,) = forward(result)
    assert path.final == FinalState.DELIVER and str(pkt_in(path.hops[-1].steps[-1]).dst) == "10.244.1.3"
    (bad,) = [f for f in result.findings if f.code == "IPVS_BACKEND_MISMATCH"]
    assert bad.hop == "node:node-1" and bad.evidence["missing"] == ["10.244.2.2:8080"]
    assert bad.evidence["quiesced"] == ["10.244.2.2:8080"]


def test_a_stale_real_server_is_a_mismatch_and_its_branch_fails() -> None:
    case = ipvs_case()
    virtual_server(case, "node-1")["reals"][1]["address"] = "10.244.2.9"  # a pod that no longer exists
    result = case.run()
    (bad,) = [f for f in result.findings if f.code == "IPVS_BACKEND_MISMATCH"]
    assert bad.evidence["missing"] == ["10.244.2.2:8080"] and bad.evidence["stale"] == ["10.244.2.9:8080"]
    assert "ipvs mode" in bad.evidence["mode"] and "10.244.2.9:8080" in bad.message
    finals = {str(pkt_in(p.hops[-1].steps[-1]).dst): p.final for p in forward(result)}
    assert finals["10.244.1.3"] == FinalState.DELIVER and finals["10.244.2.9"] == FinalState.DROP
    stale = next(s for p in forward(result) for h in p.hops for s in h.steps if "(stale)" in s.detail)
    assert "10.244.2.9:8080" in stale.detail


def test_no_virtual_server_for_the_service_is_kube_proxy_rules_missing() -> None:
    case = ipvs_case()
    for node in ("node-1", "node-2"):
        case.host(node).netfilter.ipvs.remove(virtual_server(case, node))
    result = case.run()
    only_cause(result, "KUBE_PROXY_RULES_MISSING", "node:node-1")
    f = next(f for f in result.findings if f.code == "KUBE_PROXY_RULES_MISSING")
    assert "no IPVS virtual server" in f.message and f.evidence["mode"].startswith("kube-proxy runs in ipvs mode")


def test_an_address_kube_ipvs0_holds_for_no_service_port_is_rejected_by_kube_ipvs_filter() -> None:
    case = ipvs_case()
    host = case.host("node-1")
    host.netfilter.ipvs.remove(virtual_server(case, "node-1"))
    host.netfilter.ipsets = (host.netfilter.ipsets or "").replace(f"add KUBE-CLUSTER-IP {VIP},tcp:80\n", "")
    result = case.run()
    only_cause(result, "KUBE_PROXY_RULES_MISSING", "node:node-1")
    assert any("KUBE-IPVS-FILTER" in s.detail for p in forward(result) for h in p.hops for s in h.steps)


def test_the_mode_the_cluster_claims_is_stated_against_what_the_node_holds() -> None:
    case = ipvs_case()
    case.report.cluster.kube_proxy_mode = "iptables"
    for node in ("node-1", "node-2"):
        case.host(node).netfilter.ipvs.remove(virtual_server(case, node))
    f = next(f for f in case.run().findings if f.code == "KUBE_PROXY_RULES_MISSING")
    assert f.evidence["mode"].startswith("kube-proxy runs in iptables mode; yet node node-1 holds")


def test_no_real_server_and_no_ready_endpoint_is_service_no_endpoint() -> None:
    case = ipvs_case()
    virtual_server(case, "node-1")["reals"] = []
    for b in case.report.service.backends:  # type: ignore[union-attr]
        b.ready = False
    only_cause(case.run(), "SERVICE_NO_ENDPOINT", "service:shop/api")


def test_no_real_server_while_endpoints_are_ready_is_a_mismatch_drop() -> None:
    case = ipvs_case()
    virtual_server(case, "node-1")["reals"] = []
    only_cause(case.run(), "IPVS_BACKEND_MISMATCH", "node:node-1")


def test_the_nodes_own_connection_is_taken_at_local_out() -> None:
    case = ipvs_case()
    node_ip = ipaddress.ip_address("172.30.0.11")
    case.report.src = Endpoint(address=node_ip, kind=EndpointKind.NODE, node="node-1")
    case.request = case.request.model_copy(update={"src": node_ip})
    result = case.run()
    paths = forward(result)
    assert len(paths) == 2 and all(p.final == FinalState.DELIVER for p in paths)
    assert all(p.hops[0].id == "service:shop/api" and "(LOCAL_OUT)" in p.hops[0].steps[0].detail for p in paths)
    replies = [p for p in result.paths if p.direction == "reply"]
    assert len(replies) == 2 and all(p.final == FinalState.DELIVER for p in replies)


def test_a_pod_reaching_itself_is_masqueraded_and_its_reply_needs_hairpin() -> None:
    case = ipvs_case()
    api1 = ipaddress.ip_address("10.244.1.3")
    case.report.src = Endpoint(address=api1, kind=EndpointKind.POD, node="node-1")
    case.request = case.request.model_copy(update={"src": api1})
    to_self = next(p for p in forward(case.run()) if str(pkt_in(p.hops[-1].steps[-1]).dst) == "10.244.1.3")
    assert to_self.final == FinalState.DELIVER  # KUBE-LOOP-BACK masquerades it to the node's cni0 address
    assert str(pkt_in(to_self.hops[-1].steps[-1]).src) == "10.244.1.1"
    port = next(lk for lk in case.host("node-1").links if lk.name == "veth67f9b11c")
    port.hairpin = False  # the un-SNATed reply is bridged back out of the port it came in through
    result = case.run()
    to_self = next(p for p in forward(result) if str(pkt_in(p.hops[-1].steps[-1]).dst) == "10.244.1.3")
    assert to_self.final == FinalState.DROP and to_self.cause == "HAIRPIN_DISABLED"


def test_node_port_on_another_nodes_address_is_scheduled_there_and_masqueraded() -> None:
    case = ipvs_case()
    node2 = ipaddress.ip_address("172.30.0.12")
    assert "-A -t 172.30.0.12:30000 -s rr" in ipvsadm_save(["172.30.0.12"])
    case.report.dst = Endpoint(address=node2, kind=EndpointKind.NODE_PORT, node="node-2", service="shop/api")
    case.request = case.request.model_copy(update={"dst": node2, "port": 30000})
    result = case.run()
    paths = forward(result)
    assert len(paths) == 2 and all(p.final == FinalState.DELIVER for p in paths), [p.cause for p in paths]
    for p in paths:
        assert "IPVS on node-2 (LOCAL_IN) schedules tcp 172.30.0.12:30000" in p.hops[p.hops.index(
            next(h for h in p.hops if h.id == "service:shop/api"))].steps[0].detail
        # KUBE-NODE-PORT marks it, KUBE-POSTROUTING masquerades it to node-2's address on the way out
        assert str(pkt_in(p.hops[-1].steps[-1]).src) in ("10.244.2.1", "172.30.0.12")
    replies = [p for p in result.paths if p.direction == "reply"]
    assert len(replies) == 2 and all(p.final == FinalState.DELIVER for p in replies)
    assert not errors(result)


def test_a_node_that_did_not_bind_the_address_does_not_hand_it_to_a_node_that_did() -> None:
    case = ipvs_case()
    host = case.host("node-1")
    host.netfilter.ipvs.remove(virtual_server(case, "node-1"))
    host.routes = [r for r in host.routes if r.dst != f"{VIP}/32"]
    next(lk for lk in host.links if lk.name == "kube-ipvs0").addresses.remove(f"{VIP}/32")
    result = case.run()
    only_cause(result, "KUBE_PROXY_RULES_MISSING", "node:node-1")
    assert all("node:node-2" not in [h.id for h in p.hops] for p in forward(result))


def test_a_local_policy_node_port_without_a_local_endpoint_is_no_local_endpoint() -> None:
    case = ipvs_case()
    node2 = ipaddress.ip_address("172.30.0.12")
    case.report.dst = Endpoint(address=node2, kind=EndpointKind.NODE_PORT, node="node-2", service="shop/api")
    case.request = case.request.model_copy(update={"dst": node2, "port": 30000})
    case.report.service.external_traffic_policy = "Local"  # type: ignore[union-attr]
    virtual_server(case, "node-2", "172.30.0.12", 30000)["reals"] = [  # kube-proxy keeps only local ones
        r for r in virtual_server(case, "node-2", "172.30.0.12", 30000)["reals"] if r["address"] == "10.244.2.2"]
    (path,) = forward(case.run())
    assert path.final == FinalState.DELIVER and str(pkt_in(path.hops[-1].steps[-1]).dst) == "10.244.2.2"
    virtual_server(case, "node-2", "172.30.0.12", 30000)["reals"] = []
    for b in case.report.service.backends:  # type: ignore[union-attr]
        b.node = "node-1"
    only_cause(case.run(), "NO_LOCAL_ENDPOINT", "service:shop/api")
