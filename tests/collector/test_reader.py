"""The node reader against real namespaces: every dump field is compared with what
netns_fixture configured (both iptables backends, vxlan, policy routing, listeners)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.collector.reader import collect_node, netns
from shared.netstack import Link, NetnsDump, NodeDump, decode_dump, encode_dump
from tests.collector import netns_fixture

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def fx() -> Iterator[netns_fixture.Fixture]:
    with netns_fixture.fixture() as built:
        yield built


@pytest.fixture(scope="module")
def dump1(fx: netns_fixture.Fixture) -> NodeDump:
    return collect_node("node-1", fx.node1, {ip: pod for pod, ip in fx.pod_ips.items()})


@pytest.fixture(scope="module")
def dump2(fx: netns_fixture.Fixture) -> NodeDump:
    return collect_node("node-2", fx.node2, {ip: pod for pod, ip in fx.pod_ips.items()})


def links(ns: NetnsDump) -> dict[str, Link]:
    return {link.name: link for link in ns.links}


def pod(dump: NodeDump, key: str) -> NetnsDump:
    return next(p for p in dump.pods if p.pod == key)


def test_pod_namespaces_found_named_and_unnamed(dump1: NodeDump, dump2: NodeDump, fx: netns_fixture.Fixture) -> None:
    assert sorted(p.pod or "?" for p in dump1.pods) == ["default/p1", "default/p2", "default/p4"]
    assert pod(dump1, "default/p1").names == [fx.pods["default/p1"]]
    assert pod(dump1, "default/p4").names == []  # only reachable through /proc/<pid>/ns/net
    # node2 is joined to node1 by a veth but holds pods of its own: it is not node1's pod
    assert [p.pod for p in dump2.pods] == ["default/p3"]
    assert dump1.host.id == "host" and dump1.host.names == [fx.node1]
    assert dump1.errors == [] and dump1.host.errors == []


def test_links_veth_bridge_vxlan(dump1: NodeDump, dump2: NodeDump) -> None:
    host = links(dump1.host)
    assert host["cni0"].kind == "bridge" and "10.244.1.1/24" in host["cni0"].addresses
    assert host["vethp1"].master == "cni0" and host["vethp1"].hairpin is True
    assert host["vethp2"].hairpin is False
    p1 = pod(dump1, "default/p1")
    eth0 = links(p1)["eth0"]
    assert (eth0.peer_netns, eth0.peer_name, eth0.peer_index) == ("host", "vethp1", host["vethp1"].index)
    assert (host["vethp1"].peer_netns, host["vethp1"].peer_name) == (p1.id, "eth0")
    assert "10.244.1.10/24" in eth0.addresses and eth0.state == "UP"
    # the underlay veth leads to node2's host namespace, identified by its inode
    assert host["eth0"].peer_netns == f"netns:{dump2.host.inode}" and host["eth0"].mtu == 1450
    vx = host["flannel.1"]
    assert vx.kind == "vxlan" and vx.mtu == 1400 and vx.mac == "02:aa:00:00:00:01"
    assert vx.vxlan == {"id": 1, "port": 8472, "local": "192.168.50.1", "group": None, "dev": "eth0",
                        "learning": False}


def test_routes_of_every_kind(dump1: NodeDump) -> None:
    routes = {(r.table, r.dst): r for r in dump1.host.routes if r.family == 4}
    mp = routes[(254, "10.10.0.0/16")]
    assert mp.multipath == [{"gateway": "192.168.50.2", "dev": "eth0", "weight": 1, "onlink": False},
                            {"gateway": "192.168.50.3", "dev": "eth0", "weight": 2, "onlink": False}]
    assert routes[(254, "10.99.0.0/16")].type == "blackhole"
    assert routes[(254, "10.98.0.0/16")].type == "unreachable" and routes[(254, "10.98.0.0/16")].metric == 50
    overlay = routes[(254, "10.244.2.0/24")]
    assert (overlay.gateway, overlay.dev, overlay.onlink) == ("10.244.2.0", "flannel.1", True)
    assert routes[(100, "default")].gateway == "192.168.50.2"
    connected = routes[(254, "10.244.1.0/24")]
    assert (connected.scope, connected.protocol, connected.prefsrc) == ("link", "kernel", "10.244.1.1")
    assert routes[(255, "10.244.1.1/32")].type == "local"
    assert [r.gateway for r in pod(dump1, "default/p1").routes if r.dst == "default"] == ["10.244.1.1"]


def test_policy_rules(dump1: NodeDump) -> None:
    rules = {r.priority: r for r in dump1.host.rules if r.family == 4}
    assert (rules[100].src, rules[100].table, rules[100].action) == ("10.244.1.10/32", 100, "lookup")
    assert (rules[200].fwmark, rules[200].fwmask, rules[200].iif) == (0x10, 0xFF, "cni0")
    assert (rules[300].action, rules[300].dst, rules[300].invert) == ("prohibit", "10.0.0.0/8", True)
    assert rules[32766].table == 254 and rules[0].table == 255


def test_neighbours_and_fdb(dump1: NodeDump) -> None:
    neigh = {(n.dst, n.dev): n for n in dump1.host.neighbors}
    assert neigh[("10.244.2.0", "flannel.1")].lladdr == "02:aa:00:00:00:02"
    assert neigh[("192.168.50.9", "eth0")].state == "PERMANENT"
    fdb = [f for f in dump1.host.fdb if f.dev == "flannel.1"]
    assert [(f.mac, f.dst) for f in fdb] == [("02:aa:00:00:00:02", "192.168.50.2")]


def test_sysctls(dump1: NodeDump, dump2: NodeDump) -> None:
    s1, s2 = dump1.host.sysctls, dump2.host.sysctls
    assert s1["ipv4/ip_forward"] == "1" and s2["ipv4/ip_forward"] == "0"
    assert s1["ipv4/conf/cni0/rp_filter"] == "2" and s1["ipv4/conf/eth0/rp_filter"] == "0"
    assert s1["ipv4/conf/eth0/route_localnet"] == "1"
    assert s1["bridge/bridge-nf-call-iptables"] == "1" and s2["bridge/bridge-nf-call-iptables"] == "0"
    assert pod(dump1, "default/p1").sysctls["ipv4/conf/eth0/forwarding"] == "0"


def test_iptables_both_backends_and_mixed_state(dump1: NodeDump, dump2: NodeDump) -> None:
    nf1 = dump1.host.netfilter
    by_backend = {s.backend: s for s in nf1.iptables}
    assert set(by_backend) == {"legacy", "nft"} and nf1.mixed_backends
    assert "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-TEST" in by_backend["nft"].save
    assert ":FORWARD DROP" in by_backend["nft"].save
    assert "-A PREROUTING -s 10.66.0.0/16 -j DROP" in by_backend["legacy"].save
    assert all(s.has_rules for s in nf1.iptables)
    nf2 = dump2.host.netfilter
    assert [(s.backend, s.has_rules) for s in nf2.iptables] == [("legacy", True)] and not nf2.mixed_backends
    assert "--reject-with icmp-port-unreachable" in nf2.iptables[0].save
    # an untouched pod namespace: nothing to read, and nothing was created by reading
    p2 = pod(dump1, "default/p2").netfilter
    assert p2.iptables == [] and p2.nft_ruleset is None and p2.ipsets is None


def test_reading_creates_no_tables(fx: netns_fixture.Fixture, dump1: NodeDump) -> None:
    ref = netns.host_ref(fx.pods["default/p2"])
    assert netns.run_in(ref, lambda: Path("/proc/thread-self/net/ip_tables_names").read_text()) == ""
    assert netns_fixture.sh("ip", "netns", "exec", fx.pods["default/p2"], "nft", "list", "tables") == ""


def test_nftables_and_ipset(dump1: NodeDump) -> None:
    nf1 = dump1.host.netfilter
    assert nf1.nft_tables_via_iptables == ["ip filter", "ip nat"]
    items = nf1.nft_ruleset["nftables"]  # type: ignore[index]
    tables = [i["table"]["name"] for i in items if "table" in i]
    assert tables == ["ndtest"]  # iptables-nft's tables are not dumped twice
    rule = next(i["rule"] for i in items if "rule" in i)
    assert {"drop": None} in rule["expr"] and "7777" in json.dumps(rule["expr"])
    assert "create NDTEST hash:ip" in nf1.ipsets and "add NDTEST 10.244.1.10" in nf1.ipsets  # type: ignore[operator]
    assert nf1.ipvs == []  # no IPVS in this kernel


def test_listening_sockets(dump1: NodeDump) -> None:
    p1 = {(s.protocol, s.address, s.port) for s in pod(dump1, "default/p1").sockets}
    assert p1 == {("tcp", "0.0.0.0", 8080), ("udp", "0.0.0.0", 5353)}
    host = {(s.protocol, s.address, s.port) for s in dump1.host.sockets}
    assert ("tcp", "192.168.50.1", 10250) in host and ("udp", "0.0.0.0", 8472) in host  # vxlan socket
    assert pod(dump1, "default/p2").sockets == []


def test_counters_and_facts(dump1: NodeDump) -> None:
    assert dump1.host.counters["Ip.Forwarding"] == 1  # 1 = forwarding on
    assert all(v != 0 for v in dump1.host.counters.values())
    assert dump1.facts.kernel == os.uname().release and len(dump1.facts.load) == 3
    assert dump1.duration_ms > 0


def test_dump_round_trips(dump1: NodeDump) -> None:
    again = decode_dump(encode_dump(dump1))
    assert again.model_dump() == NodeDump.model_validate_json(dump1.model_dump_json(exclude_none=True)).model_dump()
    assert decode_dump(dump1.model_dump_json().encode()).node == "node-1"


def test_missing_netns_is_an_error_and_is_not_created() -> None:
    with pytest.raises(FileNotFoundError):
        collect_node("ghost", "netdiag-does-not-exist")
    assert not os.path.exists("/var/run/netns/netdiag-does-not-exist")
