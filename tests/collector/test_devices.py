"""The node reader's tc, XDP and bridge-port state against a real namespace: what `tc`, `ip link
... xdp` and `bridge link set` configured is in the dump."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.bpf import compiled
from services.collector.reader import collect_node
from tests.collector.netns_fixture import sh

pytestmark = pytest.mark.lab


@pytest.fixture()
def node() -> Iterator[str]:
    name = f"ndev{os.getpid()}"
    sh("ip", "netns", "add", name)
    try:
        run = ("ip", "netns", "exec", name)
        sh("ip", "-n", name, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        sh("ip", "-n", name, "link", "set", "pa", "master", "br0")
        for dev in ("br0", "pa", "pb"):
            sh("ip", "-n", name, "link", "set", dev, "up")
        sh(*run, "bridge", "link", "set", "dev", "pa", "state", "0")
        sh(*run, "tc", "qdisc", "add", "dev", "pb", "root", "blackhole")
        sh(*run, "tc", "qdisc", "add", "dev", "pa", "clsact")
        sh(*run, "tc", "filter", "add", "dev", "pa", "ingress", "protocol", "ip", "prio", "3", "u32", "match", "ip",
           "dport", "8080", "0xffff", "match", "ip", "dst", "10.0.0.1/32", "classid", "1:1")
        sh("ip", "-n", name, "link", "set", "dev", "pb", "xdp", "obj", str(compiled("xdp_drop")), "sec", "xdp")
        yield name
    finally:
        sh("ip", "netns", "del", name)


def test_tc_xdp_and_bridge_port_state_are_read(node: str) -> None:
    dump = collect_node("n", node)
    host = dump.host
    links = {lk.name: lk for lk in host.links}
    assert links["pa"].bridge_port is not None and links["pa"].bridge_port.state == "disabled"
    assert links["br0"].vlan_filtering is False and links["pb"].bridge_port is None
    assert host.tc is not None
    kinds = {(q.dev, q.kind, q.parent) for q in host.tc.qdiscs}
    assert {("pb", "blackhole", "root"), ("pa", "clsact", "ingress")} <= kinds
    (flt,) = host.tc.filters
    assert (flt.dev, flt.parent, flt.kind, flt.pref, flt.classid) == ("pa", "ingress", "u32", 3, "1:1")
    assert [(k["value"], k["mask"], k["off"]) for k in flt.keys] == [("1f90", "ffff", 20), ("a000001", "ffffffff", 16)]
    (xdp,) = host.xdp or []
    assert (xdp.dev, xdp.mode, xdp.name, xdp.constant) == ("pb", "driver", "xdp_drop", 1)
    assert dump.cgroup_bpf is not None  # read (bpftool), whatever this machine attaches
