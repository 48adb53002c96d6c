"""Odd but valid requests on the example snapshot, end to end through the embedded stack (real
nats-server, all five stages, the gateway): each gets the answer the real situation deserves, never
a node blamed for data the snapshot has, never a confident REACHABLE for what nobody checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from services.render import render_diagnosis
from shared.schemas import Diagnosis
from tests.e2e.cases import SHOP, Case
from tests.e2e.test_snapshot_diagnoses import diagnose_all, finals, first_failing

EDGE_CASES: dict[str, Case] = {
    "free_pod_address": ("10.244.1.2", "10.244.2.99", 80, "tcp"),  # in node-2's pod CIDR, no pod has it
    "no_service": ("10.244.1.2", "10.96.0.99", 80, "tcp"),  # in the Service CIDR, no Service has it
    "internet": ("10.244.1.2", "8.8.8.8", 53, "udp"),
    "unowned_private": ("10.244.1.2", "10.0.0.99", 80, "tcp"),  # a VPC-looking address nothing owns
    "node_port_closed": ("10.244.1.2", "172.30.0.11", 9999, "tcp"),  # a node port nothing listens on
}


@pytest.fixture(scope="module")
async def edges() -> dict[str, Diagnosis]:
    return await diagnose_all(SHOP, EDGE_CASES)


def test_a_free_address_in_a_pod_cidr_is_read_on_its_node_and_named(edges: dict[str, Diagnosis]) -> None:
    d = edges["free_pod_address"]
    assert d.result is not None
    assert not any(f.code == "DATA_MISSING" for f in d.result.findings), d.result.findings  # node-2 was read
    assert finals(d) == [("DROP", "UNKNOWN_ADDRESS")]
    first_failing(d, "UNREACHABLE", "node-2", "node")
    assert "it is in node-2's pod network, but no pod on node-2 has it" in d.result.summary
    assert "pod CIDR 10.244.2.0/24" in d.result.paths[0].description
    # one finding, where the walk found it (the model's external-hop warning is superseded)
    assert [(f.code, f.hop, f.severity) for f in d.result.findings] == [("UNKNOWN_ADDRESS", "node:node-2", "error")]


def test_a_service_cidr_address_without_a_service_is_not_blamed_on_kube_proxy(edges: dict[str, Diagnosis]) -> None:
    d = edges["no_service"]
    assert d.result is not None and d.result.verdict == "UNREACHABLE"
    assert finals(d) == [("DROP", "SERVICE_NOT_FOUND")]
    assert not any(f.code == "KUBE_PROXY_RULES_MISSING" for f in d.result.findings)
    assert d.result.summary.startswith("no Service has address 10.96.0.99: it is in the Service CIDR")


def test_leaving_the_cluster_says_what_was_checked_and_counts_alike(edges: dict[str, Diagnosis]) -> None:
    d = edges["internet"]
    assert d.result is not None and d.result.verdict == "REACHABLE"
    assert d.result.summary == (
        "the packet leaves the cluster at node-1 towards 8.8.8.8: checked up to node-1's uplink; not checked: "
        "the cloud (not modelled), the networks beyond and whether the destination answers")
    counts = d.result.counts
    assert (counts.forward, counts.delivered, counts.left_cluster, counts.replies, counts.replies_back) == (
        1, 0, 1, 1, 1)
    text = render_diagnosis(d)
    assert "every path delivers" not in text and "path(s) deliver" not in text
    assert text.splitlines()[-1] == counts.text == (
        "1 forward path(s): 1 left the cluster (not followed beyond); 1/1 reply path(s) reach the client")


def test_a_private_address_nothing_owns_is_undetermined(edges: dict[str, Diagnosis]) -> None:
    d = edges["unowned_private"]
    assert d.result is not None and d.result.verdict == "UNDETERMINED"
    assert "10.0.0.99 is a private address no pod, node or Service known here has" in d.result.summary
    assert any(a.could_change_outcome and "10.0.0.99" in a.text for a in d.result.assumptions)


def test_a_closed_node_port_is_no_service_matter(edges: dict[str, Diagnosis]) -> None:
    d = edges["node_port_closed"]
    assert d.result is not None and finals(d) == [("DROP", "NO_LISTENER")]
    (f,) = [f for f in d.result.findings if f.code == "NO_LISTENER"]
    assert "targetPort" not in f.suggestion and "Service" not in f.suggestion


async def test_a_pod_without_pod_ip_is_read_on_its_node(tmp_path: Path) -> None:
    """shop/db lost status.podIP (e.g. captured while restarting): its address is a free one of node-2's pod
    CIDR, node-2 is read from nodes/node-2.json, and the kernel's answer (the policy chain drops it) stands."""
    root = tmp_path / "shop"
    shutil.copytree(SHOP, root)
    pods = json.loads((root / "kubernetes" / "pods.json").read_text())
    for pod in pods["items"]:
        if pod["metadata"]["name"] == "db":
            pod["status"].pop("podIP")
            pod["status"].pop("podIPs")
    (root / "kubernetes" / "pods.json").write_text(json.dumps(pods))
    (d,) = (await diagnose_all(root, {"db": ("10.244.1.2", "10.244.2.3", 5432, "tcp")})).values()
    assert d.result is not None
    assert not any(f.code == "DATA_MISSING" for f in d.result.findings), d.result.findings
    assert "pod CIDR 10.244.2.0/24" in d.result.paths[0].description
    assert finals(d) == [("DROP", "IPTABLES_DROP")]
    assert [h.id for h in d.result.paths[0].hops][-1] == "node:node-2"
