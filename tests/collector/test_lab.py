"""Collect real lab nodes (lab/dataplane.py) and check the dumps against the lab's own state:
the vxlan scenario (nft-backend kube-proxy rules) and the legacy-iptables scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.dataplane import Lab
from lab.scenario import Scenario, resolve
from services.collector.reader import collect_node

pytestmark = pytest.mark.lab

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lab"


@pytest.mark.parametrize("scenario", ["vxlan.yaml", "legacy.yaml"])
def test_lab_nodes(scenario: str) -> None:
    lab = Lab.up(resolve(Scenario.load(EXAMPLES / scenario)))
    try:
        st = lab.state
        pod_ips = {p.ip: key for key, p in st.pods.items()}
        for node, node_state in st.nodes.items():
            dump = collect_node(node, node_state.netns, pod_ips)
            expected = {key: p for key, p in st.pods.items() if p.node == node and not p.host_network}
            assert sorted(p.pod or "?" for p in dump.pods) == sorted(expected), node
            host_links = {link.name: link for link in dump.host.links}
            for ns in dump.pods:
                eth = next(link for link in ns.links if link.kind == "veth")
                assert eth.peer_netns == "host" and eth.peer_name == expected[ns.pod or ""].veth
                assert host_links[eth.peer_name or ""].peer_netns == ns.id
                assert any(a.startswith(f"{expected[ns.pod or ''].ip}/") for a in eth.addresses)
            assert any(node_state.ip in a for link in dump.host.links for a in link.addresses)
            backends = {s.backend for s in dump.host.netfilter.iptables if s.has_rules}
            assert backends == {st.iptables_backend}, (node, backends)
            assert "KUBE-SERVICES" in dump.host.netfilter.iptables[0].save
            if st.cni == "vxlan":
                vxlan = [link for link in dump.host.links if link.kind == "vxlan"]
                assert vxlan and vxlan[0].vxlan and vxlan[0].vxlan["id"]
                assert any(f.dev == vxlan[0].name and f.dst for f in dump.host.fdb)
            assert dump.errors == [] and dump.host.errors == []
    finally:
        lab.down()
