"""Leaving the cluster and loopback addresses: the reply of a pod → internet connection comes back to
the node's masquerade address and is un-SNATed to the pod; a packet translated to 127.0.0.1 is martian
off the loopback device unless route_localnet allows it."""

from __future__ import annotations

from shared.netstack import Link, Route, Socket
from shared.schemas import FinalState
from tests.simulator.dataplane.helpers import INTERNET, Case, forward, only_cause, pkt_in, pkt_out, to_internet


def test_the_reply_from_the_internet_is_un_snated_back_to_the_pod() -> None:
    result = to_internet().run()
    (path,) = forward(result)
    assert path.final == FinalState.FORWARD and path.hops[-1].id == f"external:{INTERNET}"
    masq = next(s for h in path.hops for s in h.steps if s.kind == "nat")
    assert "MASQUERADE" in masq.detail and str(pkt_out(masq).src) == "172.30.0.11"
    (reply,) = [p for p in result.paths if p.direction == "reply"]
    assert reply.final == FinalState.DELIVER and reply.hops[0].id == f"external:{INTERNET}"
    assert str(pkt_in(reply.hops[0].steps[0]).dst) == "172.30.0.11"
    undo = next(s for h in reply.hops for s in h.steps if "translated back" in s.detail)
    assert str(pkt_out(undo).dst) == "10.244.1.2" and reply.hops[-1].id == "pod:web/client"
    assert any("comes back to 172.30.0.11" in a.text for a in result.assumptions)


def test_a_dropped_reply_from_the_internet_fails_the_connection() -> None:
    case = to_internet()
    case.iptables("node-1", "filter", "-A FORWARD -i eth0 -p tcp -m tcp --sport 80 -m conntrack --ctstate "
                  "ESTABLISHED -j DROP")
    result = case.run()
    only_cause(result, "IPTABLES_DROP", "node:node-1")
    (reply,) = [p for p in result.paths if p.direction == "reply"]
    assert reply.final == FinalState.DROP


def _dnat_to_localhost(case: Case) -> None:
    case.iptables("node-2", "nat", "-A PREROUTING -d 10.244.2.2/32 -p tcp -m tcp --dport 8080 -j DNAT "
                  "--to-destination 127.0.0.1:8080")


def test_a_dnat_to_localhost_without_route_localnet_is_martian() -> None:
    case = Case("basic", "pod-cross-node")
    _dnat_to_localhost(case)
    result = case.run()
    only_cause(result, "ROUTE_LOCALNET_DISABLED", "node:node-2")
    f = next(f for f in result.findings if f.code == "ROUTE_LOCALNET_DISABLED")
    assert f.evidence["sysctl"] == "net.ipv4.conf.eth0.route_localnet" and f.evidence["side"] == "destination"


def test_route_localnet_lets_it_reach_the_nodes_loopback_listener() -> None:
    case = Case("basic", "pod-cross-node")
    _dnat_to_localhost(case)
    case.host("node-2").sysctls["ipv4/conf/eth0/route_localnet"] = "1"
    case.host("node-2").sockets.append(Socket(protocol="tcp", address="127.0.0.1", port=8080))
    result = case.run()
    (path,) = forward(result)
    assert path.final == FinalState.DELIVER and path.hops[-1].id == "node:node-2"
    (reply,) = [p for p in result.paths if p.direction == "reply"]
    assert reply.final == FinalState.DELIVER


def test_the_loopback_sourced_reply_needs_route_localnet_on_its_way_out() -> None:
    case = Case("basic", "pod-cross-node")
    _dnat_to_localhost(case)
    host = case.host("node-2")
    host.sysctls["ipv4/conf/eth0/route_localnet"] = "1"
    host.sockets.append(Socket(protocol="tcp", address="127.0.0.1", port=8080))
    host.links.append(Link(index=99, name="eth1", kind="device", state="UP"))
    host.routes = [r for r in host.routes if r.dst != "10.244.1.0/24"]
    host.routes.append(Route(dst="10.244.1.0/24", gateway="172.30.0.11", dev="eth1", onlink=True))
    result = case.run()
    only_cause(result, "ROUTE_LOCALNET_DISABLED", "node:node-2")
    f = next(f for f in result.findings if f.code == "ROUTE_LOCALNET_DISABLED")
    assert f.evidence["side"] == "source" and f.evidence["direction"] == "out" and f.evidence["device"] == "eth1"
