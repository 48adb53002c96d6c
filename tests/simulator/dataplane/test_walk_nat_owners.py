"""NAT addresses and unchecked replies on recorded lab dumps (the kernel-judged versions are the lab
faults snat_to_other_node_address / snat_to_own_node_address and tests/lab/test_ondemand.py): an SNAT
to an address someone else owns names the owner, from the cluster or the cloud inventory; nobody known
is a could-change-outcome assumption; a reply not walked is never a confident success; a node the
packet reaches without a dump is wanted for collection on demand."""

from __future__ import annotations

from shared.cloud import CloudInventory, Instance, NatGateway
from shared.schemas import FinalState
from tests.simulator.dataplane.test_walk import Case, forward, only_cause
from tests.simulator.dataplane.test_walk_egress import INTERNET, to_internet


def _snat_to(case: Case, address: str) -> None:
    case.iptables("node-1", "nat", f"-A POSTROUTING -s 10.244.1.2/32 -d {INTERNET}/32 -j SNAT --to-source {address}")


def test_snat_to_another_nodes_address_sends_the_reply_there() -> None:
    case = to_internet()
    _snat_to(case, "172.30.0.12")
    result = case.run()
    only_cause(result, "SNAT_ADDRESS_NOT_OWNED", "node:node-1")
    found = next(f for f in result.findings if f.code == "SNAT_ADDRESS_NOT_OWNED")
    assert found.evidence["owner"] == "node node-2" and "172.30.0.12" in found.message
    (reply,) = [p for p in result.paths if p.direction == "reply"]
    assert reply.final == FinalState.DROP and reply.hops[-1].id == "node:node-2"


def test_snat_to_a_cloud_resource_names_it() -> None:
    case = to_internet()
    _snat_to(case, "47.0.0.9")
    cloud = CloudInventory(provider="alibaba", instances=[Instance(id="i-other", private_ips=["172.30.9.9"])],
                           nat_gateways=[NatGateway(id="ngw-1", vpc_id="vpc-1", ips=["47.0.0.9"])])
    result = case.run(cloud=cloud)
    only_cause(result, "SNAT_ADDRESS_NOT_OWNED", "node:node-1")
    assert "NAT gateway ngw-1" in next(f.message for f in result.findings if f.code == "SNAT_ADDRESS_NOT_OWNED")


def test_snat_to_an_address_nobody_owns_is_an_assumption_and_own_address_is_fine() -> None:
    case = to_internet()
    _snat_to(case, "198.51.100.7")
    result = case.run()
    assert not any(f.code == "SNAT_ADDRESS_NOT_OWNED" for f in result.findings)
    assert any("198.51.100.7" in a.text and a.could_change_outcome for a in result.assumptions)
    own = to_internet()
    _snat_to(own, "172.30.0.11")
    result = own.run()
    assert [p.final for p in forward(result)] == [FinalState.FORWARD]
    assert not any(a.could_change_outcome for a in result.assumptions), result.assumptions


def test_an_unchecked_reply_is_not_a_confident_success() -> None:
    result = Case("basic", "pod-cross-node").run(reply=False)
    assert [p.final for p in forward(result)] == [FinalState.DELIVER]
    assert any("reply path was not checked" in a.text and a.could_change_outcome for a in result.assumptions)


def test_a_node_reached_without_a_dump_is_wanted() -> None:
    case = Case("basic", "pod-cross-node", nodes=("node-1",))
    result = case.run()
    assert [p.final for p in forward(result)] == [FinalState.ABORT] and result.wanted == ["node-2"]


def test_a_dnat_to_an_address_nobody_owns_is_an_assumption() -> None:
    case = Case("basic", "pod-cross-node")
    case.iptables("node-1", "nat", "-A PREROUTING -d 10.244.2.2/32 -p tcp -m tcp --dport 8080 -j DNAT "
                  "--to-destination 198.51.100.9:8080")
    result = case.run()
    assert any("198.51.100.9" in a.text and a.could_change_outcome for a in result.assumptions), result.assumptions
    to_pod = Case("basic", "pod-cross-node")  # a DNAT to a pod address: the walk follows it, nothing assumed
    to_pod.iptables("node-1", "nat", "-A PREROUTING -d 10.244.2.2/32 -p tcp -m tcp --dport 8080 -j DNAT "
                    "--to-destination 10.244.2.2:8080")
    assert not any("no pod, node, endpoint" in a.text for a in to_pod.run().assumptions)


def test_a_pod_address_leaving_the_nodes_is_not_a_confident_success() -> None:
    """A DNAT to a pod address of a node the report does not describe, with no route for its CIDR: the
    packet leaves for the underlay, and only the network beyond (the VPC) could bring it to its pod."""
    case = Case("basic", "pod-cross-node")
    case.report.objects.nodes = [n for n in case.report.objects.nodes if n["metadata"]["name"] != "node-2"]
    case.host("node-1").routes = [r for r in case.host("node-1").routes if r.dst != "10.244.2.0/24"]
    case.iptables("node-1", "nat", "-A PREROUTING -d 10.244.2.2/32 -p tcp -m tcp --dport 8080 -j DNAT "
                  "--to-destination 10.244.2.77:8080")
    result = case.run()
    assert [p.final for p in forward(result)] == [FinalState.FORWARD]
    assert any("10.244.2.77 is in the cluster's pod network" in a.text and a.could_change_outcome
               for a in result.assumptions), result.assumptions
