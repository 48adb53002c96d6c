"""kube-proxy's own packet-flow tests, transcribed, run through `netdiag trace iptables`.

Source: kubernetes/kubernetes pkg/proxy/iptables/proxier_test.go — `tracePacket`, `TestTracePacket`,
`TestNoEndpointsReject`, `TestClusterIPGeneral`, `TestLoadBalancer`, `TestNodePorts`,
`TestHealthCheckNodePort`, `TestExternalTrafficPolicyLocal`, `TestExternalTrafficPolicyCluster`. Each
case keeps kube-proxy's name, packet and expected output: the DNAT destinations ("ip:port, ip:port" in
rule order), or "ACCEPT"/"DROP"/"REJECT" when a rule decides without DNAT, or "" when nothing
matches; and whether the packet is masqueraded.

Our engine traces the real hooks (nat PREROUTING, then INPUT or FORWARD by the post-DNAT
destination, then nat POSTROUTING) where kube-proxy's tracer runs a few chains by hand and treats
"marked for masquerade" as masquerade; the outputs must still agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from services.simulator.dataplane import trace_cli
from tests.simulator.dataplane.kubeproxy_rules import Endpoint, Service, kube_proxy_save

FIXTURES = Path(__file__).parent / "fixtures"
NODE_IP, NODE_IP_ALT, EXTERNAL_IP = "192.168.0.2", "192.168.1.2", "192.168.99.11"
NODE_IPS = [NODE_IP, NODE_IP_ALT, EXTERNAL_IP]  # kube-proxy's testNodeIPs (IPv4 part)
EXTERNAL_CLIENT, EXTERNAL_CLIENT_BLOCKED = "203.0.113.2", "203.0.113.130"


def run_trace(save: Path, src: str, dst: str, port: int, protocol: str = "tcp") -> dict:
    parser = argparse.ArgumentParser()
    trace_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["trace", "iptables", "--save", str(save), "--node-ip", *NODE_IPS, "--src", src,
                              "--dst", dst, "--port", str(port), "--protocol", protocol, "--output", "json"])
    req = trace_cli.TraceRequest(save=Path(args.save), node_ip=[ip for g in args.node_ip for ip in g],
                                 src=args.src, dst=args.dst, port=args.port, protocol=args.protocol)
    return trace_cli.trace(req)


def kube_output(report: dict) -> tuple[str, bool]:
    """kube-proxy's tracePacket outputs from our report."""
    branches = report["branches"]
    dests = [b["dnat"] for b in branches if b["dnat"] and b["verdict"] == "ACCEPT"]
    masq = any(b["masquerade"] for b in branches if b["verdict"] == "ACCEPT")
    if dests:
        return ", ".join(dests), masq
    decided = [b["verdict"] for b in branches if b["decided_by"] and b["decided_by"]["position"] > 0]
    return (decided[0] if decided else ""), masq


def check(save: Path, cases: list[tuple[str, str, str, int, str, bool]], protocol: str = "tcp") -> None:
    failures = []
    for name, src, dst, port, output, masq in cases:
        report = run_trace(save, src, dst, port, protocol)
        got = kube_output(report)
        if got != (output, masq):
            failures.append(f"{name}: expected {(output, masq)} got {got}\n" + json.dumps(report["branches"],
                                                                                           indent=1)[:3000])
    assert not failures, "\n".join(failures)


@pytest.fixture
def write(tmp_path: Path):
    def _write(services: list[Service], **kw: object) -> Path:
        path = tmp_path / "rules.save"
        path.write_text(kube_proxy_save(services, **kw))
        return path
    return _write


def test_trace_packet() -> None:
    """TestTracePacket: the static ruleset, verbatim."""
    check(FIXTURES / "kubeproxy_tracepacket.save", [
        ("no match", "10.0.0.2", "10.0.0.3", 80, "", False),
        ("single endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
        ("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80", False),
        ("LOCAL, KUBE-MARK-MASQ", NODE_IP, "192.168.99.22", 80, "10.180.0.2:80", True),
        ("DROP", EXTERNAL_CLIENT, "192.168.99.22", 80, "DROP", False),
        ("ACCEPT (NodePortHealthCheck)", NODE_IP, NODE_IP, 30000, "ACCEPT", False),
        ("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT", False),
    ])


def test_trace_packet_probabilities() -> None:
    report = run_trace(FIXTURES / "kubeproxy_tracepacket.save", "10.0.0.2", "172.30.0.44", 80)
    assert [(d["destination"], d["probability"]) for d in report["destinations"]] == [
        ("10.180.0.4:80", 0.5), ("10.180.0.5:80", 0.5)]


def test_no_endpoints_reject(write) -> None:
    save = write([Service("ns1/svc1:p80", "172.30.0.41", 80, node_port=3001, external_ips=["192.168.99.11"],
                          lb_ips=["1.2.3.4"])])
    check(save, [
        ("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT", False),
        ("external to external IP with no endpoints", EXTERNAL_CLIENT, "192.168.99.11", 80, "REJECT", False),
        ("pod to NodePort with no endpoints", "10.0.0.2", NODE_IP, 3001, "REJECT", False),
        ("external to NodePort with no endpoints", EXTERNAL_CLIENT, NODE_IP, 3001, "REJECT", False),
        ("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT", False),
        ("external to LoadBalancer IP with no endpoints", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT", False),
    ])


def test_cluster_ip_general(write) -> None:
    eps = [Endpoint("10.180.0.1", 0, local=True), Endpoint("10.180.2.1", 0)]

    def at(port: int) -> list[Endpoint]:
        return [Endpoint(e.ip, port, e.local) for e in eps]
    save = write([
        Service("ns1/svc1:http", "172.30.0.41", 80, endpoints=[Endpoint("10.180.0.1", 80, local=True)]),
        Service("ns2/svc2:http", "172.30.0.42", 80, endpoints=at(80)),
        Service("ns2/svc2:https", "172.30.0.42", 443, endpoints=at(8443)),
        Service("ns2/svc2:dns-udp", "172.30.0.42", 53, protocol="udp", endpoints=at(53)),
        Service("ns2/svc2:dns-tcp", "172.30.0.42", 53, endpoints=at(5353)),
        Service("ns2/svc2:dns-sctp", "172.30.0.42", 53, protocol="sctp", endpoints=at(53)),
    ])
    check(save, [
        ("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
        ("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", True),
        ("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80",
         False),
        ("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443", False),
        ("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:5353, 10.180.2.1:5353", False),
        ("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, "", False),
    ])
    check(save, [
        ("clusterIP with TCP, UDP, and SCTP on same port (UDP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:53, 10.180.2.1:53", False),
        ("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "", False),
    ], protocol="udp")
    check(save, [
        ("clusterIP with TCP, UDP, and SCTP on same port (SCTP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:53, 10.180.2.1:53", False),
    ], protocol="sctp")


def test_load_balancer(write) -> None:
    save = write([Service("ns1/svc1:p80", "172.30.0.41", 80, node_port=3001, lb_ips=["1.2.3.4", "5.6.7.8"],
                          source_ranges=["192.168.0.0/24", "203.0.113.0/25"],
                          endpoints=[Endpoint("10.180.0.1", 80)])])
    ep = "10.180.0.1:80"
    check(save, [
        ("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, ep, False),
        ("external to nodePort", EXTERNAL_CLIENT, NODE_IP, 3001, ep, True),
        ("nodePort bypasses LoadBalancerSourceRanges", EXTERNAL_CLIENT_BLOCKED, NODE_IP, 3001, ep, True),
        ("accepted external to LB1", EXTERNAL_CLIENT, "1.2.3.4", 80, ep, True),
        ("accepted external to LB2", EXTERNAL_CLIENT, "5.6.7.8", 80, ep, True),
        ("blocked external to LB1", EXTERNAL_CLIENT_BLOCKED, "1.2.3.4", 80, "DROP", False),
        ("blocked external to LB2", EXTERNAL_CLIENT_BLOCKED, "5.6.7.8", 80, "DROP", False),
        ("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP", False),
        ("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP", False),
        ("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, ep, True),
        ("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, ep, True),
        ("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, ep, True),
        ("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, ep, True),
    ])


@pytest.mark.parametrize("localhost_nodeports", [True, False])
def test_node_ports_ipv4(write, localhost_nodeports: bool) -> None:
    save = write([Service("ns1/svc1:p80", "172.30.0.41", 80, node_port=3001,
                          endpoints=[Endpoint("10.180.0.1", 80), Endpoint("10.180.2.1", 80, local=True)])],
                 localhost_nodeports=localhost_nodeports)
    out = "10.180.0.1:80, 10.180.2.1:80"
    cases = [
        ("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, out, False),
        ("external to nodePort", EXTERNAL_CLIENT, NODE_IP, 3001, out, True),
        ("node to nodePort", NODE_IP, NODE_IP, 3001, out, True),
        ("external to nodePort on secondary IP", EXTERNAL_CLIENT, NODE_IP_ALT, 3001, out, True),
    ]
    if localhost_nodeports:
        cases.append(("localhost to nodePort gets masqueraded", "127.0.0.1", "127.0.0.1", 3001, out, True))
    else:
        cases.append(("localhost to nodePort is ignored", "127.0.0.1", "127.0.0.1", 3001, "", False))
    check(save, cases)


def test_health_check_node_port(write) -> None:
    svc = Service("ns1/svc1:p80", "172.30.0.42", 80, node_port=3001, etp_local=True, health_check_node_port=30000,
                  endpoints=[Endpoint("10.180.0.1", 80)])
    check(write([svc]), [("firewall accepts HealthCheckNodePort", "1.2.3.4", NODE_IP, 30000, "ACCEPT", False)])
    check(write([]), [("HealthCheckNodePort no longer has any rule", "1.2.3.4", NODE_IP, 30000, "", False)])


def _etp_service(local: bool) -> Service:
    return Service("ns1/svc1:p80", "172.30.0.41", 80, node_port=3001, external_ips=["192.168.99.11"],
                   lb_ips=["1.2.3.4"], etp_local=local, health_check_node_port=30000 if local else None,
                   endpoints=[Endpoint("10.180.0.1", 80), Endpoint("10.180.2.1", 80, local=True)])


def test_external_traffic_policy_local(write) -> None:
    both, local = "10.180.0.1:80, 10.180.2.1:80", "10.180.2.1:80"
    check(write([_etp_service(local=True)]), [
        ("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, False),
        ("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, both, False),
        ("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80,
         local, False),
        ("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, both, False),
        ("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, local, False),
        ("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", NODE_IP, 3001, both, False),
        ("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, local,
         False),
    ])


def test_external_traffic_policy_cluster(write) -> None:
    both = "10.180.0.1:80, 10.180.2.1:80"
    check(write([_etp_service(local=False)]), [
        ("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, both, False),
        ("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, both, True),
        ("external to external IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80, both,
         True),
        ("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, both, True),
        ("external to LB IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, both, True),
        ("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", NODE_IP, 3001, both, True),
        ("external to NodePort hits both endpoints, masqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, both, True),
    ])


def test_etp_local_without_local_endpoints_drops_external(write) -> None:
    """TestOverallIPTablesRules' svc2: Local policy, no local endpoint → external traffic DROPped."""
    svc = Service("ns2/svc2:p80", "172.30.0.42", 80, node_port=3001, external_ips=["192.168.99.22"],
                  lb_ips=["1.2.3.4"], etp_local=True, health_check_node_port=30000,
                  endpoints=[Endpoint("10.180.0.2", 80)])
    check(write([svc]), [
        ("external to external IP", EXTERNAL_CLIENT, "192.168.99.22", 80, "DROP", False),
        ("external to NodePort", EXTERNAL_CLIENT, NODE_IP, 3001, "DROP", False),
        ("node to external IP is routed to the cluster endpoints", NODE_IP, "192.168.99.22", 80, "10.180.0.2:80",
         True),
        ("pod to cluster IP", "10.0.0.2", "172.30.0.42", 80, "10.180.0.2:80", False),
    ])
