"""Service resolution table: port → targetPort → the endpoints kube-proxy would use."""

from __future__ import annotations

import pytest

from services.topology.plan import Planner
from tests.topology.conftest import plan

CLIENT = "10.244.1.20"  # default/client on node-1
WEB1, WEB2 = "10.244.1.10", "10.244.2.10"

CASES = [
    # (id, src, dst, port, proto, [(backend, port, entry node)], nodes to collect, finding codes)
    ("named-target-port", CLIENT, "10.96.0.50", 80, "tcp",
     [(WEB1, 8080, "node-1"), (WEB2, 8080, "node-1")], ["node-1", "node-2"], []),
    ("service-port-not-found", CLIENT, "10.96.0.50", 81, "tcp", [], ["node-1"], ["SERVICE_PORT_NOT_FOUND"]),
    ("protocol-mismatch", CLIENT, "10.96.0.50", 80, "udp", [], ["node-1"], ["SERVICE_PORT_NOT_FOUND"]),
    ("no-endpoints", CLIENT, "10.96.0.70", 80, "tcp", [], ["node-1"], ["SERVICE_NO_ENDPOINT"]),
    ("not-ready-endpoint", CLIENT, "10.96.0.71", 80, "tcp", [], ["node-1"], ["SERVICE_NO_ENDPOINT", "POD_NOT_READY"]),
    ("terminating-fallback", CLIENT, "10.96.0.72", 80, "tcp", [("10.244.2.11", 8080, "node-1")],
     ["node-1", "node-2"], []),
    ("target-port-not-found", CLIENT, "10.96.0.81", 9090, "tcp", [(WEB1, None, "node-1"), (WEB2, None, "node-1")],
     ["node-1", "node-2"], ["TARGET_PORT_NOT_FOUND"]),
    ("dns-udp", CLIENT, "10.96.0.10", 53, "udp", [("10.244.2.5", 53, "node-1")], ["node-1", "node-2"], []),
    ("dns-tcp", CLIENT, "10.96.0.10", 53, "tcp", [("10.244.2.5", 53, "node-1")], ["node-1", "node-2"], []),
    ("nodeport-etp-local-has-local", "8.8.8.8", "10.0.0.11", 30080, "tcp", [(WEB1, 8080, "node-1")], ["node-1"], []),
    ("nodeport-etp-local-from-pod-uses-cluster", CLIENT, "10.0.0.12", 30080, "tcp",
     [(WEB1, 8080, "node-2"), (WEB2, 8080, "node-2")], ["node-1", "node-2"], []),
    ("nodeport-etp-local-no-local", "8.8.8.8", "10.0.0.13", 30080, "tcp", [], ["node-3"],
     ["NO_LOCAL_ENDPOINT", "NODE_NOT_READY"]),
    ("lb-from-outside-allowed", "47.74.1.1", "47.100.1.2", 443, "tcp", [("10.244.2.40", 8443, "node-2")],
     ["node-2"], []),
    ("lb-from-outside-denied", "8.8.8.8", "47.100.1.2", 443, "tcp", [("10.244.2.40", 8443, "node-2")], ["node-2"],
     ["LB_SOURCE_RANGE_DENY"]),
    ("lb-from-inside-node", "10.0.0.11", "47.100.1.2", 443, "tcp", [("10.244.2.40", 8443, "node-1")],
     ["node-1", "node-2"], []),
    ("external-ip", CLIENT, "192.168.100.5", 8080, "tcp", [(WEB1, 8080, "node-1"), (WEB2, 8080, "node-1")],
     ["node-1", "node-2"], []),
    ("itp-local-with-local", "10.0.0.12", "10.96.0.90", 80, "tcp", [("10.244.2.40", 8443, "node-2")], ["node-2"], []),
    ("itp-local-without-local", CLIENT, "10.96.0.90", 80, "tcp", [], ["node-1"], ["NO_LOCAL_ENDPOINT"]),
    ("backend-on-not-ready-node", CLIENT, "10.96.0.95", 5432, "tcp", [("10.244.3.5", 5432, "node-1")],
     ["node-1", "node-3"], ["NODE_NOT_READY"]),
]


@pytest.mark.parametrize(("src", "dst", "port", "proto", "backends", "nodes", "codes"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_service_resolution(planner: Planner, src: str, dst: str, port: int, proto: str,
                            backends: list[tuple[str, int | None, str]], nodes: list[str], codes: list[str]) -> None:
    report = plan(planner, src, dst, port, proto)
    assert report.service is not None
    assert [(str(p.dst_address), p.dst_port, p.entry_node) for p in report.paths] == backends
    assert report.nodes_to_collect == nodes
    assert sorted({f.code for f in report.findings} - {"UNKNOWN_ADDRESS"}) == sorted(codes)
    assert [s["metadata"]["name"] for s in report.objects.services] == [report.service.service.split("/")[1]]


def test_resolution_details(planner: Planner) -> None:
    report = plan(planner, "47.74.1.1", "47.100.1.2", 443)
    svc = report.service
    assert svc is not None
    assert (svc.type, svc.port, svc.node_port, svc.target_port) == ("LoadBalancer", 443, 31443, "https")
    assert (svc.external_traffic_policy, svc.session_affinity) == ("Local", "ClientIP")
    assert svc.load_balancer_source_ranges == ["47.74.0.0/16"]
    assert [str(i) for i in svc.load_balancer_ips] == ["47.100.1.2"]
    # the slice api-lb-x7k2p travels as the resolution's endpoint for the matched port, not as an object
    assert [(str(b.address), b.port, b.pod, b.node) for b in svc.backends] == [
        ("10.244.2.40", 8443, "prod/api-6d4b8c7f9-zz9zz", "node-2")]
    assert [report.backend_of(p) for p in report.paths] == svc.backends


def test_terminating_fallback_is_stated(planner: Planner) -> None:
    report = plan(planner, CLIENT, "10.96.0.72", 80)
    backend = report.backend_of(report.paths[0])
    assert backend is not None and backend.terminating and not backend.ready and backend.serving
    assert any("terminating" in a.text and a.could_change_outcome for a in report.assumptions)


def test_dns_is_named_and_checks_its_pods(planner: Planner) -> None:
    report = plan(planner, CLIENT, "10.96.0.10", 53, "udp")
    assert "cluster DNS" in report.dst.description
    assert [p.dst_pod for p in report.paths] == ["kube-system/coredns-7db6d8ff4d-4xk2m"]
    assert report.service is not None and report.service.port_name == "dns"


def test_no_endpoint_message_says_why(planner: Planner) -> None:
    f = next(f for f in plan(planner, CLIENT, "10.96.0.71", 80).findings if f.code == "SERVICE_NO_ENDPOINT")
    assert "1 not ready" in f.message and f.hop == "service:default/crash"
    f = next(f for f in plan(planner, CLIENT, "10.96.0.70", 80).findings if f.code == "SERVICE_NO_ENDPOINT")
    assert "empty" in f.message
