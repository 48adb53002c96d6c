"""IP-in-IP overlays (flannel's ipip backend, calico IPIP): this kernel has no ipip (nor gre/sit)
devices (`ip link add … type ipip` → "Unknown device type"), so the recorded host-gw lab is rewritten
into an ipip one in code, the shape the collector reads from a real node: a `tunl0` ipip device (local =
the node address, no remote, MTU 1480) holding the pod CIDR's .0/32, and the routes
`podCIDR via <nodeIP> dev tunl0 onlink` instead of the host-gw ones."""

from __future__ import annotations

from shared.netstack import Link, Route
from shared.schemas import FinalState
from tests.simulator.dataplane.helpers import Case, forward, only_cause, pkt_out

NODES = {"node-1": ("172.30.0.11", "10.244.1.0/24"), "node-2": ("172.30.0.12", "10.244.2.0/24")}


def ipip_case() -> Case:
    case = Case("basic", "pod-cross-node")
    for node, (address, cidr) in NODES.items():
        host = case.host(node)
        host.links.append(Link(index=92, name="tunl0", kind="ipip", state="UNKNOWN", mtu=1480,
                               tunnel={"local": address, "remote": None, "dev": None},
                               addresses=[cidr.replace("0/24", "0/32")]))
        for peer, (peer_address, peer_cidr) in NODES.items():
            if peer != node:
                host.routes = [r for r in host.routes if r.dst != peer_cidr]
                host.routes.append(Route(dst=peer_cidr, gateway=peer_address, dev="tunl0", onlink=True))
    for dump in case.dumps.values():
        for ns in dump.pods:
            for lk in ns.links:
                if lk.name == "eth0":
                    lk.mtu = 1480
    return case


def tunl0(case: Case, node: str) -> Link:
    return next(lk for lk in case.host(node).links if lk.name == "tunl0")


def test_pod_to_pod_is_encapsulated_to_the_route_gateway_and_decapsulated_by_tunl0() -> None:
    result = ipip_case().run()
    (path,) = forward(result)
    assert path.final == FinalState.DELIVER
    assert [h.id for h in path.hops] == ["pod:web/client", "node:node-1", "node:node-2", "pod:shop/api-2"]
    encap = next(s for h in path.hops for s in h.steps if s.kind == "encap")
    assert "outer ipip (protocol 4) 172.30.0.11 → 172.30.0.12 via eth0" in encap.detail
    decap = next(s for h in path.hops for s in h.steps if s.kind == "decap")
    assert pkt_out(decap).iif == "tunl0" and str(pkt_out(decap).dst) == "10.244.2.2"
    (reply,) = [p for p in result.paths if p.direction == "reply"]
    assert reply.final == FinalState.DELIVER and any(s.kind == "encap" for h in reply.hops for s in h.steps)
    assert not [f for f in result.findings if f.severity == "error"]


def test_the_receiving_tunnel_down() -> None:
    case = ipip_case()
    tunl0(case, "node-2").admin_up, tunl0(case, "node-2").state = False, "DOWN"
    only_cause(case.run(), "LINK_DOWN", "node:node-2")


def test_the_sending_tunnel_down() -> None:
    case = ipip_case()
    tunl0(case, "node-1").admin_up, tunl0(case, "node-1").state = False, "DOWN"
    only_cause(case.run(), "LINK_DOWN", "node:node-1")


def test_the_outer_packet_dropped_by_input_names_the_rule() -> None:
    case = ipip_case()
    case.iptables("node-2", "filter", "-A INPUT -p ipencap -j DROP")
    result = case.run()
    only_cause(result, "IPTABLES_DROP", "node:node-2")
    assert next(f for f in result.findings if f.code == "IPTABLES_DROP").evidence["hook"] == "INPUT"


def test_the_inner_packet_dropped_by_forward() -> None:
    case = ipip_case()
    case.iptables("node-2", "filter", "-A FORWARD -i tunl0 -d 10.244.2.2/32 -j DROP")
    result = case.run()
    only_cause(result, "IPTABLES_DROP", "node:node-2")
    assert next(f for f in result.findings if f.code == "IPTABLES_DROP").evidence["chain"] == "FORWARD"


def test_a_route_tunnelling_to_an_address_no_node_owns_is_an_invalid_route() -> None:
    case = ipip_case()
    host = case.host("node-1")
    host.routes = [r for r in host.routes if r.dst != "10.244.2.0/24"]
    host.routes.append(Route(dst="10.244.2.0/24", gateway="172.30.0.99", dev="tunl0", onlink=True))
    result = case.run()
    only_cause(result, "INVALID_ROUTE", "node:node-1")
    assert next(f for f in result.findings if f.code == "INVALID_ROUTE").evidence["expected"] == "172.30.0.12"


def test_a_node_without_an_ipip_device_cannot_decapsulate() -> None:
    case = ipip_case()
    case.host("node-2").links.remove(tunl0(case, "node-2"))
    (path,) = forward(case.run())
    # the kernel drops IP-in-IP it has no tunnel device for; the dump cannot tell a missing device from an
    # uncollected one, so the cause is DATA_MISSING (abort-class: the verdict stays UNDETERMINED)
    assert path.final == FinalState.DROP and path.cause == "DATA_MISSING"


def test_pods_above_the_tunnel_mtu_are_warned() -> None:
    case = ipip_case()
    next(lk for lk in case.pod("web/client").links if lk.name == "eth0").mtu = 1500
    result = case.run()
    (mtu,) = [f for f in result.findings if f.code == "MTU_MISMATCH"]
    assert mtu.hop == "pod:web/client" and mtu.evidence["path_mtu"] == 1480
