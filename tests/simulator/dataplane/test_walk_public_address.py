"""An internet client to a NodePort on a node's public address (an ExternalIP that is an EIP or static public IP):
no interface of the node holds it — the cloud translates it 1:1 to the node's private address on the way in and
back on the way out (docs/cloud.md, "Internet → the public address of an instance"; EIP-ENI, IPV4GW-OVERVIEW), so
the walk must judge what the node really receives. Without that, kube-proxy's NodePort rules (local destinations
only) never match and the walk blamed kube-proxy."""

from __future__ import annotations

from ipaddress import ip_address

from shared.schemas import FinalState, IPAddress, StepKind
from shared.topology import Endpoint, EndpointKind
from tests.simulator.dataplane.helpers import Case, forward, pkt_in, pkt_out

CLIENT, NODE_2, EIP = ip_address("8.8.4.4"), ip_address("172.30.0.12"), ip_address("47.96.0.20")


def to_node_port(dst: IPAddress, node_addresses: list[IPAddress]) -> Case:
    """The recorded basic lab, asked from the internet for NodePort 30000 of shop/api on node-2 at `dst`."""
    case = Case("basic", "clusterip")
    report = case.report
    report.src = Endpoint(address=CLIENT, kind=EndpointKind.PUBLIC)
    report.dst = Endpoint(address=dst, kind=EndpointKind.NODE_PORT, node="node-2", service="shop/api")
    for p in report.paths:
        p.src_node, p.entry_node = None, "node-2"
    report.cluster.node_addresses = {"node-2": node_addresses}
    case.request = case.request.model_copy(update={"src": CLIENT, "dst": dst, "port": 30000})
    return case


def test_a_node_public_address_is_walked_as_the_private_one() -> None:
    private = to_node_port(NODE_2, [NODE_2]).run()
    public = to_node_port(EIP, [NODE_2, EIP]).run()
    assert [(p.id, p.final) for p in forward(public)] == [(p.id, p.final) for p in forward(private)]
    assert all(p.final == FinalState.DELIVER for p in forward(public))
    nat = [s for p in forward(public) for s in p.hops[0].steps if s.kind == StepKind.NAT]
    assert nat and all(pkt_in(s).dst == EIP and pkt_out(s).dst == NODE_2 for s in nat)
    back = [s for p in public.paths if p.direction == "reply" for h in p.hops for s in h.steps
            if s.kind == StepKind.NAT and "back to the node's public address" in s.detail]
    assert back and all(pkt_out(s).src == EIP for s in back)


def test_an_address_the_node_does_not_list_is_not_translated() -> None:
    """Decoy: a public address that is no address of the node is not taken for one."""
    other = ip_address("47.96.0.99")
    result = to_node_port(other, [NODE_2]).run()
    assert not any("the cloud delivers it" in s.detail for p in result.paths for h in p.hops for s in h.steps)
    assert not any(p.final == FinalState.DELIVER for p in forward(result))
