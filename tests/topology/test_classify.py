"""Classification table: who the source and destination addresses are."""

from __future__ import annotations

import pytest

from services.topology.model import ClusterModel, trim
from services.topology.plan import Planner
from shared.topology import EndpointKind as K
from tests.topology.conftest import plan

CLIENT = "10.244.1.20"

CASES = [
    # (src, dst, port, proto, src kind, dst kind, dst pod/service/node, finding codes)
    (CLIENT, "10.244.2.10", 8080, "tcp", K.POD, K.POD, "default/web-7c9f8d6b5-fghij", []),
    (CLIENT, "10.0.0.12", 22, "tcp", K.POD, K.NODE, "node-2", []),
    ("10.0.0.11", CLIENT, 8080, "tcp", K.NODE, K.POD, "default/client", []),
    (CLIENT, "10.0.0.11", 9100, "tcp", K.POD, K.HOST_NETWORK_POD, "kube-system/node-exporter-8kd7s", []),
    (CLIENT, "10.96.0.50", 80, "tcp", K.POD, K.SERVICE_CLUSTER_IP, "default/web", []),
    (CLIENT, "192.168.100.5", 8080, "tcp", K.POD, K.SERVICE_EXTERNAL_IP, "default/web-ext", []),
    (CLIENT, "47.100.1.2", 443, "tcp", K.POD, K.LOAD_BALANCER_IP, "prod/api-lb", ["LB_SOURCE_RANGE_DENY"]),
    ("8.8.8.8", "10.0.0.11", 30080, "tcp", K.PUBLIC, K.NODE_PORT, "default/web-np", []),
    (CLIENT, "1.1.1.1", 443, "tcp", K.POD, K.PUBLIC, None, []),
    (CLIENT, "10.244.9.9", 80, "tcp", K.POD, K.UNKNOWN, None, ["UNKNOWN_ADDRESS"]),
    (CLIENT, "10.244.2.99", 80, "tcp", K.POD, K.UNKNOWN, "node-2", ["UNKNOWN_ADDRESS"]),  # node-2's pod CIDR
    (CLIENT, "10.96.0.99", 80, "tcp", K.POD, K.UNKNOWN, None, ["SERVICE_NOT_FOUND"]),  # the Service CIDR
    (CLIENT, "192.168.7.7", 80, "tcp", K.POD, K.UNKNOWN, None, ["UNKNOWN_ADDRESS"]),
    (CLIENT, "10.244.1.99", 80, "tcp", K.POD, K.POD, "default/migrate-x2k9p", ["POD_NOT_RUNNING"]),
    (CLIENT, "10.244.2.30", 8080, "tcp", K.POD, K.POD, "default/crash-6b7d9f5c8-pqrst", ["POD_NOT_READY"]),
    (CLIENT, "10.244.3.5", 5432, "tcp", K.POD, K.POD, "prod/db-0", ["NODE_NOT_READY"]),
    (CLIENT, "10.0.0.13", 22, "tcp", K.POD, K.NODE, "node-3", ["NODE_NOT_READY"]),
]


@pytest.mark.parametrize(("src", "dst", "port", "proto", "src_kind", "dst_kind", "owner", "codes"), CASES)
def test_classification(planner: Planner, src: str, dst: str, port: int, proto: str, src_kind: K, dst_kind: K,
                        owner: str | None, codes: list[str]) -> None:
    report = plan(planner, src, dst, port, proto)
    assert report.src.kind == src_kind
    assert report.dst.kind == dst_kind
    if owner is not None:
        assert owner in (report.dst.pod, report.dst.service, report.dst.node)
    assert sorted({f.code for f in report.findings}) == sorted(codes)


def test_findings_name_phase_and_containers(planner: Planner) -> None:
    failed = plan(planner, CLIENT, "10.244.1.99", 80).findings[0]
    assert "phase Failed" in failed.message and failed.hop == "pod:default/migrate-x2k9p"
    not_ready = plan(planner, CLIENT, "10.244.2.30", 8080).findings[0]
    assert "app" in not_ready.evidence["containers"] and "sidecar" not in not_ready.evidence["containers"]


def test_pod_endpoint_of_headless_service_is_noted(planner: Planner) -> None:
    report = plan(planner, CLIENT, "10.244.1.10", 8080)
    assert "default/web-headless" in report.dst.description


def test_non_service_path_and_nodes(planner: Planner) -> None:
    report = plan(planner, CLIENT, "10.244.2.10", 8080)
    assert [(p.src_node, p.dst_node, str(p.dst_address), p.dst_port) for p in report.paths] == [
        ("node-1", "node-2", "10.244.2.10", 8080)]
    assert report.nodes_to_collect == ["node-1", "node-2"]
    # every node's addresses, also node-3's, off the path: a route may go through it (the walk must know)
    assert {n: [str(a) for a in ips] for n, ips in report.cluster.node_addresses.items()} == {
        "node-1": ["10.0.0.11"], "node-2": ["10.0.0.12"], "node-3": ["10.0.0.13"]}
    objects = report.objects
    assert {p["metadata"]["name"] for p in objects.pods} == {"client", "web-7c9f8d6b5-fghij"}
    assert [n["metadata"]["name"] for n in objects.namespaces] == ["default"]
    # web-egress selects the destination pod but isolates only its egress: it decides nothing for this packet
    assert objects.networkpolicies == []


def test_policy_objects_cover_both_namespaces(planner: Planner) -> None:
    report = plan(planner, "10.244.1.10", "10.244.2.40", 8443)
    assert {p["metadata"]["name"] for p in report.objects.networkpolicies} == {
        "web-egress", "default-deny-ingress", "allow-web-to-api"}
    assert {n["metadata"]["name"] for n in report.objects.namespaces} == {"default", "prod"}


def test_public_source_to_cluster_ip_is_an_assumption(planner: Planner) -> None:
    report = plan(planner, "8.8.8.8", "10.244.2.10", 8080)
    assert any("outside the cluster" in a.text for a in report.assumptions)


def test_a_free_address_in_a_nodes_pod_cidr_is_that_nodes_to_route(planner: Planner) -> None:
    """The node that owns the pod CIDR is collected, so the walk follows the packet there instead of
    blaming a node that was never asked."""
    report = plan(planner, CLIENT, "10.244.2.99", 80)
    assert report.dst.node == "node-2" and "node-2" in report.nodes_to_collect
    assert "pod CIDR 10.244.2.0/24" in report.dst.description
    assert "node-2" in {n["metadata"]["name"] for n in report.objects.nodes}


def test_a_service_cidr_address_without_a_service_says_so(planner: Planner) -> None:
    (found,) = plan(planner, CLIENT, "10.96.0.99", 80).findings
    assert found.code == "SERVICE_NOT_FOUND" and "no Service has address 10.96.0.99" in found.message
    assert "10.96.0.0/12" in found.message
    # the source side is never "a Service address": a source in that range is only unknown
    assert plan(planner, "10.96.0.99", CLIENT, 8080).src.kind == K.UNKNOWN


def _pod_eip_model(private: str, *, pod: bool = True) -> Planner:
    """A node, a pod at 172.31.0.100 on it (unless `pod` is False) and the pod's PodEIP binding 47.96.0.30 to
    `private` (ack-extend-network-controller, alibabacloud.com/v1beta1)."""
    model = ClusterModel()
    objects = [("Node", {"metadata": {"name": "node-2"}, "status": {"addresses": [
        {"type": "InternalIP", "address": "10.0.0.12"}], "conditions": [{"type": "Ready", "status": "True"}]}}),
        ("PodEIP", {"metadata": {"name": "server", "namespace": "default"}, "spec": {"allocationID": "eip-1"},
                    "status": {"eipAddress": "47.96.0.30", "privateIPAddress": private,
                               "networkInterfaceID": "eni-1"}})]
    if pod:
        objects.append(("Pod", {"metadata": {"name": "server", "namespace": "default"}, "spec": {
            "nodeName": "node-2", "containers": [{"name": "srv"}]}, "status": {
            "phase": "Running", "podIP": "172.31.0.100", "conditions": [{"type": "Ready", "status": "True"}]}}))
    for kind, obj in objects:
        model.apply("ADDED", kind, trim(kind, {"kind": kind, **obj}))
    return Planner(model, "test")


def test_a_pod_eip_is_the_pod_reached_through_the_cloud() -> None:
    report = plan(_pod_eip_model("172.31.0.100"), "8.8.4.4", "47.96.0.30", 8080)
    assert report.dst.kind == K.POD_EIP and report.dst.pod == "default/server" and report.dst.node == "node-2"
    assert "PodEIP default/server" in report.dst.description and "eni-1" in report.dst.description
    assert [(str(p.dst_address), p.dst_node) for p in report.paths] == [("172.31.0.100", "node-2")]
    assert report.nodes_to_collect == ["node-2"]
    assert not any(a.could_change_outcome for a in report.assumptions if "outside the cluster" in a.text)


@pytest.mark.parametrize(("private", "pod"), [("172.31.0.101", True), ("172.31.0.100", False)],
                         ids=["bound-to-an-address-the-pod-no-longer-has", "pod-gone"])
def test_a_stale_pod_eip_names_no_pod(private: str, pod: bool) -> None:
    """A PodEIP whose pod is gone, or bound to an address the pod no longer holds, is no path to a pod: the
    address stays public (outside the cluster, said so)."""
    report = plan(_pod_eip_model(private, pod=pod), "8.8.4.4", "47.96.0.30", 8080)
    assert report.dst.kind == K.PUBLIC and report.dst.pod is None
    assert any(a.could_change_outcome and "outside the cluster" in a.text for a in report.assumptions)
