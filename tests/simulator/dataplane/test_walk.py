"""The dataplane walk on node dumps recorded from real labs (fixtures/walk/: the topology report and
the node agents' dumps of one diagnosis), edited in code to inject each fault the walk must name."""

from __future__ import annotations

import pytest

from shared.codes import finding
from shared.netstack import Link, Neighbor, Route
from shared.schemas import FinalState, StepAction, StepKind
from shared.steps import NetfilterInfo, RuleHit
from tests.simulator.dataplane.helpers import Case, forward, only_cause, pkt_in, pkt_out

# ---------------------------------------------------------------- healthy walks


def test_cross_node_pod_to_pod_is_delivered_with_every_hop_and_the_reply() -> None:
    result = Case("basic", "pod-cross-node").run()
    (path,) = forward(result)
    assert path.final == FinalState.DELIVER
    assert [h.id for h in path.hops] == ["pod:web/client", "node:node-1", "node:node-2", "pod:shop/api-2"]
    assert all(s.packet_in is not None for h in path.hops for s in h.steps)
    (reply,) = [p for p in result.paths if p.direction == "reply"]
    assert reply.final == FinalState.DELIVER and reply.hops[-1].id == "pod:web/client"
    assert not [f for f in result.findings if f.severity == "error"]


def test_cluster_ip_fans_out_to_each_endpoint_and_the_reply_is_translated_back() -> None:
    result = Case("basic", "clusterip").run()
    paths = forward(result)
    assert sorted(p.id for p in paths) == ["p0", "p1"]  # named after the topology's candidate paths
    for p in paths:
        assert p.final == FinalState.DELIVER
        assert p.hops[1].id == "service:shop/api" and "probability 0.50" in p.description
        nat = [s for h in p.hops for s in h.steps if s.kind == "nat"]
        assert nat and str(pkt_out(nat[0]).dst) in ("10.244.1.3", "10.244.2.2")
    replies = [p for p in result.paths if p.direction == "reply"]
    assert len(replies) == 2 and all(p.final == FinalState.DELIVER for p in replies)
    undo = [s for p in replies for h in p.hops for s in h.steps if "translated back" in s.detail]
    assert all(str(pkt_out(s).src) == "10.96.0.100" for s in undo) and len(undo) == 2


def test_vxlan_encapsulates_to_the_fdb_vtep_and_decapsulates_on_the_remote_node() -> None:
    result = Case("vxlan", "pod-vxlan").run()
    (path,) = forward(result)
    assert path.final == FinalState.DELIVER
    kinds = [s.kind for h in path.hops for s in h.steps]
    assert "encap" in kinds and "decap" in kinds


def test_a_pod_mtu_above_the_overlay_mtu_is_a_warning() -> None:
    case = Case("vxlan", "pod-vxlan")
    next(lk for lk in case.pod("app/frontend").links if lk.name == "eth0").mtu = 1500
    result = case.run()
    (path,) = forward(result)
    assert path.final == FinalState.DELIVER
    (mtu,) = [f for f in result.findings if f.code == "MTU_MISMATCH"]
    assert mtu.hop == "pod:app/frontend" and mtu.severity == "warning" and mtu.evidence["path_mtu"] == 1450


# ---------------------------------------------------------------- netfilter


def test_forward_drop_names_namespace_hook_table_chain_rule_and_position() -> None:
    case = Case("basic", "pod-cross-node")
    case.iptables("node-2", "filter", "-A FORWARD -d 10.244.2.2/32 -p tcp -m tcp --dport 8080 -j DROP")
    result = case.run()
    only_cause(result, "IPTABLES_DROP", "node:node-2")
    f = next(f for f in result.findings if f.code == "IPTABLES_DROP")
    assert f.evidence["chain"] == "FORWARD" and f.evidence["position"] == 1 and f.evidence["hook"] == "FORWARD"
    assert "--dport 8080 -j DROP" in f.evidence["rule"] and f.evidence["where"] == "node node-2"
    # the hook's step carries the same facts, typed (docs/steps.md), and names the finding
    (step,) = [s for p in result.paths for h in p.hops if h.id == "node:node-2" for s in h.steps
               if s.kind == StepKind.NETFILTER and s.action == StepAction.DROP]
    info = step.info
    assert isinstance(info, NetfilterInfo) and info.hook == "FORWARD" and info.verdict == "DROP"
    assert info.decided_by == RuleHit(table="filter", chain="FORWARD", position=1, rule=f.evidence["rule"])
    assert info.finding == "IPTABLES_DROP" and info.rules[-1] == info.decided_by


def test_reject_names_its_reason() -> None:
    case = Case("basic", "pod-cross-node")
    case.iptables("node-1", "filter", "-A FORWARD -p tcp -j REJECT --reject-with tcp-reset")
    result = case.run()
    only_cause(result, "IPTABLES_REJECT", "node:node-1")
    assert next(f for f in result.findings if f.code == "IPTABLES_REJECT").evidence["reject_with"] == "tcp-reset"


def test_an_unknown_match_explores_both_outcomes() -> None:
    case = Case("basic", "pod-cross-node")
    case.iptables("node-2", "filter", "-A FORWARD -m frobnicate --level 3 -j DROP")
    result = case.run()
    assert sorted(p.final for p in forward(result)) == [FinalState.DELIVER, FinalState.DROP]
    assert any(p.final == FinalState.DROP for p in result.paths if p.direction == "reply")
    assert any(f.code == "UNSUPPORTED_RULE" for f in result.findings)
    assert any(a.could_change_outcome for a in result.assumptions)


def test_a_drop_in_a_policy_chain_the_evaluator_denies_is_network_policy_deny() -> None:
    case = Case("basic", "pod-cross-node")
    case.iptables("node-2", "filter", '-A FORWARD -d 10.244.2.2/32 -m comment --comment '
                  '"ingress of shop/api-2 denied by shop/lockdown" -j DROP')
    deny = finding("NETWORK_POLICY_DENY", "pod:shop/api-2", policies="shop/lockdown", src="10.244.1.2",
                   dst="10.244.2.2:8080", reason="isolated", direction="ingress")
    result = case.run(expected=[deny])
    only_cause(result, "NETWORK_POLICY_DENY", "pod:shop/api-2")


def test_kube_services_flushed_is_kube_proxy_rules_missing() -> None:
    case = Case("basic", "clusterip")
    case.drop_rules("node-1", "-A KUBE-SERVICES")
    only_cause(case.run(), "KUBE_PROXY_RULES_MISSING", "node:node-1")


def test_an_endpoint_the_node_does_not_dnat_to_is_reported() -> None:
    case = Case("basic", "clusterip")
    case.drop_rules("node-1", '"shop/api:http -> 10.244.2.2:8080"')
    result = case.run()
    missing = [f for f in result.findings if f.code == "KUBE_PROXY_RULES_MISSING"]
    assert any("10.244.2.2:8080" in f.message for f in missing)
    assert sorted(p.final for p in forward(result)) == [FinalState.DELIVER, FinalState.DROP]


# ---------------------------------------------------------------- routing and sysctls


def test_missing_pod_cidr_route_is_an_invalid_route_naming_the_expected_node() -> None:
    case = Case("basic", "pod-cross-node")
    case.host("node-1").routes = [r for r in case.host("node-1").routes if r.dst != "10.244.2.0/24"]
    result = case.run()
    only_cause(result, "INVALID_ROUTE", "node:node-1")
    assert next(f for f in result.findings if f.code == "INVALID_ROUTE").evidence["expected"] == "172.30.0.12"


def test_blackhole_route() -> None:
    case = Case("basic", "pod-cross-node")
    routes = [r for r in case.host("node-1").routes if r.dst != "10.244.2.0/24"]
    case.host("node-1").routes = [*routes, Route(dst="10.244.2.0/24", type="blackhole")]
    only_cause(case.run(), "ROUTE_BLACKHOLE", "node:node-1")


def test_no_route_in_the_pod() -> None:
    case = Case("basic", "pod-cross-node")
    case.pod("web/client").routes = [r for r in case.pod("web/client").routes if r.dst != "default"]
    only_cause(case.run(), "NO_ROUTE", "pod:web/client")


def test_ip_forward_off_on_the_destination_node() -> None:
    case = Case("basic", "pod-cross-node")
    case.host("node-2").sysctls.update({"ipv4/conf/eth0/forwarding": "0", "ipv4/ip_forward": "0"})
    only_cause(case.run(), "IP_FORWARD_DISABLED", "node:node-2")


def test_strict_rp_filter_with_an_asymmetric_return_route() -> None:
    case = Case("basic", "pod-cross-node")
    host = case.host("node-2")
    host.links.append(Link(index=99, name="eth1", kind="device", state="UP"))
    host.routes = [r for r in host.routes if r.dst != "10.244.1.0/24"]
    host.routes.append(Route(dst="10.244.1.0/24", gateway="172.30.0.11", dev="eth1", onlink=True))
    host.sysctls.update({"ipv4/conf/all/rp_filter": "1", "ipv4/conf/eth0/rp_filter": "1"})
    result = case.run()
    only_cause(result, "RP_FILTER_DROP", "node:node-2")
    assert next(f for f in result.findings if f.code == "RP_FILTER_DROP").evidence["reverse_device"] == "eth1"


def test_a_routing_loop_is_bounded() -> None:
    case = Case("basic", "pod-cross-node")
    host = case.host("node-2")
    host.routes = [r for r in host.routes if r.dst != "10.244.2.0/24"]
    host.routes.append(Route(dst="10.244.2.0/24", gateway="172.30.0.11", dev="eth0"))
    result = case.run()
    (path,) = forward(result)
    assert path.final == FinalState.DROP and path.cause == "ROUTING_LOOP"


# ---------------------------------------------------------------- links


def test_the_destination_pods_eth0_down() -> None:
    case = Case("basic", "pod-cross-node")
    eth0 = next(lk for lk in case.pod("shop/api-2").links if lk.name == "eth0")
    eth0.admin_up, eth0.state = False, "DOWN"
    only_cause(case.run(), "LINK_DOWN", "pod:shop/api-2")


def test_the_remote_uplink_down_is_blamed_on_its_node_before_the_neighbour() -> None:
    case = Case("basic", "pod-cross-node")
    eth0 = next(lk for lk in case.host("node-2").links if lk.name == "eth0")
    eth0.admin_up, eth0.state = False, "DOWN"
    case.host("node-1").neighbors.append(Neighbor(dst="172.30.0.12", dev="eth0", state="FAILED"))
    only_cause(case.run(), "LINK_DOWN", "node:node-2")


def test_a_failed_neighbour() -> None:
    case = Case("basic", "pod-cross-node")
    case.host("node-1").neighbors.append(Neighbor(dst="172.30.0.12", dev="eth0", state="FAILED"))
    only_cause(case.run(), "NEIGHBOR_FAILED", "node:node-1")


@pytest.mark.parametrize(("state", "mac", "breaks"), [
    ("PERMANENT", "02:00:00:00:00:99", True), ("NOARP", "02:00:00:00:00:99", True),
    ("REACHABLE", "02:00:00:00:00:99", False), ("STALE", "02:00:00:00:00:99", False),
    ("PERMANENT", "ee:ff:ff:ff:ff:ff", False)])  # an Alibaba Cloud vSwitch answers for every VPC address
def test_a_neighbour_entry_with_a_mac_the_owner_lacks(state: str, mac: str, breaks: bool) -> None:
    """A static entry is never re-resolved: frames to a MAC node-2 lacks go nowhere. A learned one
    with another MAC is re-resolved by the kernel (or is VRRP/proxy ARP): not a fault."""
    case = Case("basic", "pod-cross-node")
    case.host("node-1").neighbors[:] = [n for n in case.host("node-1").neighbors if n.dst != "172.30.0.12"]
    case.host("node-1").neighbors.append(Neighbor(dst="172.30.0.12", dev="eth0", lladdr=mac, state=state))
    result = case.run()
    if breaks:
        only_cause(result, "NEIGHBOR_FAILED", "node:node-1")
        assert mac in next(f.message for f in result.findings if f.code == "NEIGHBOR_FAILED")
    else:
        assert [p.final for p in forward(result)] == [FinalState.DELIVER]


def test_a_deleted_veth_pair_is_veth_peer_missing_on_the_pod() -> None:
    case = Case("basic", "pod-cross-node")
    pod = case.pod("shop/api-2")
    pod.links = [lk for lk in pod.links if lk.name != "eth0"]
    pod.pod = None  # the collector names pod namespaces by their address, which went with eth0
    case.host("node-2").links = [lk for lk in case.host("node-2").links if lk.peer_netns != pod.id]
    only_cause(case.run(), "VETH_PEER_MISSING", "pod:shop/api-2")


def test_a_wrong_vxlan_fdb_entry_is_an_invalid_route_with_the_expected_vtep() -> None:
    case = Case("vxlan", "pod-vxlan")
    for entry in case.host("node-1").fdb:
        if entry.dst == "172.30.0.12":
            entry.dst = "172.30.0.99"
    result = case.run()
    only_cause(result, "INVALID_ROUTE", "node:node-1")
    assert next(f for f in result.findings if f.code == "INVALID_ROUTE").evidence["expected"] == "172.30.0.12"


# ---------------------------------------------------------------- delivery, reply, missing data


def test_no_listener() -> None:
    case = Case("basic", "pod-cross-node")
    case.pod("shop/api-2").sockets = []
    only_cause(case.run(), "NO_LISTENER", "pod:shop/api-2")


def test_same_node_service_reply_bridged_without_iptables_is_bridge_nf_disabled() -> None:
    case = Case("basic", "dns-same-node", ("node-1",))
    (path,) = forward(case.run())
    assert path.final == FinalState.DELIVER
    case.host("node-1").sysctls["bridge/bridge-nf-call-iptables"] = "0"
    result = case.run()
    only_cause(result, "BRIDGE_NF_DISABLED", "node:node-1")
    (reply,) = [p for p in result.paths if p.direction == "reply"]
    assert reply.final == FinalState.DROP and str(pkt_in(reply.hops[-1].steps[-1]).src) == "10.244.1.4"


def test_a_node_without_a_dump_aborts_the_walk_there() -> None:
    case = Case("basic", "pod-cross-node")
    del case.dumps["node-2"]
    result = case.run()
    (path,) = forward(result)
    # the cause has a finding of its own (the collector's COLLECTOR_UNAVAILABLE when it reported one)
    assert path.final == FinalState.ABORT and path.cause == "DATA_MISSING"
    assert path.hops[-1].id == "node:node-2"
    assert any(f.code == "DATA_MISSING" and f.hop == "node:node-2" for f in result.findings)


# ---------------------------------------------------------------- native nftables next to iptables

# `nft -j list ruleset` of `table inet guard { chain forward { type filter hook forward priority filter;
# ip daddr 10.244.2.2 tcp dport 8080 counter drop comment "guard api-2" } }`, recorded on this machine
NFT_GUARD = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "guard", "handle": 1}},
    {"chain": {"family": "inet", "table": "guard", "name": "forward", "handle": 1, "type": "filter",
               "hook": "forward", "prio": 0, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "guard", "chain": "forward", "handle": 2, "comment": "guard api-2",
              "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                  "right": "10.244.2.2"}},
                       {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                  "right": 8080}},
                       {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]}}]}


def test_a_native_nftables_drop_runs_in_the_same_hook_as_iptables() -> None:
    case = Case("basic", "pod-cross-node")
    case.host("node-2").netfilter.nft_ruleset = NFT_GUARD
    result = case.run()
    only_cause(result, "NFTABLES_DROP", "node:node-2")  # a native nft rule, not an iptables one
    f = next(f for f in result.findings if f.code == "NFTABLES_DROP")
    assert "inet guard/forward" in f.message and f.evidence["hook"] == "FORWARD"
    assert not [a for a in result.assumptions if "not simulated" in a.text]
