"""kube-proxy's own packet-flow tests, one pytest id each, run through the real `netdiag trace iptables`.

Source: kubernetes/kubernetes pkg/proxy/iptables/proxier_test.go — `TestTracePacket`, `TestNoEndpointsReject`,
`TestClusterIPGeneral`, `TestLoadBalancer`, `TestNodePorts`, `TestHealthCheckNodePort`,
`TestExternalTrafficPolicyLocal`, `TestExternalTrafficPolicyCluster`. Each case keeps kube-proxy's name,
packet and expected output: the DNAT destinations ("ip:port, ip:port" in rule order), or
"ACCEPT"/"DROP"/"REJECT" when a rule decides without DNAT, or "" when nothing matches; and whether the
packet is masqueraded.

The rulesets are upstream's where upstream prints them: `TestTracePacket`'s static ruleset and
`TestOverallIPTablesRules`' expected payload run verbatim (the payload with the jump rules kube-proxy
ensures from the built-in chains, upstream's iptablesJumpChains). For the other tests upstream prints
no ruleset, so it comes from the lab's renderer, which tests/lab/test_kubeproxy_upstream.py holds to
upstream's expected payloads. A failure prints the rules the packet matched.

Our engine traces the real hooks (nat PREROUTING, then INPUT or FORWARD by the post-DNAT destination,
then nat POSTROUTING) where kube-proxy's tracer runs a few chains by hand and treats "marked for
masquerade" as masquerade; the outputs must still agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from lab.kubeproxy import Endpoint, ServicePort, ensured, payload
from services import cli
from tests.simulator.dataplane.kubeproxy_upstream import (
    EXTERNAL_CLIENT,
    EXTERNAL_CLIENT_BLOCKED,
    FAKE,
    NODE,
    NODE_IPS,
    UPSTREAM,
)

FIXTURES = Path(__file__).parent / "fixtures"
NODE_IP, NODE_IP_ALT = NODE_IPS[0], NODE_IPS[1]


def _svc(name: str, port_name: str, port: int, *eps: Endpoint, ns: str = "ns1", **kw: Any) -> ServicePort:
    return ServicePort(namespace=ns, name=name, port_name=port_name, port=port, endpoints=eps, **kw)


def _rendered(ports: list[ServicePort], **config: Any) -> Callable[[], str]:
    cfg = replace(FAKE, **config)
    return lambda: ensured(cfg).render() + payload(ports, cfg)


RULESETS: dict[str, Callable[[], str]] = {
    "TestTracePacket": lambda: (FIXTURES / "kubeproxy_tracepacket.save").read_text(),
    "TestOverallIPTablesRules": lambda: ensured(FAKE).render() + (
        UPSTREAM / "iptables_TestOverallIPTablesRules.restore").read_text(),
    "TestNoEndpointsReject": _rendered([_svc("svc1", "p80", 80, cluster_ip="172.30.0.41", load_balancer=True,
                                             node_port=3001, external_ips=("192.168.99.11",), lb_ips=("1.2.3.4",))]),
    "TestClusterIPGeneral": _rendered([
        _svc("svc1", "http", 80, Endpoint("10.180.0.1", 80, NODE), cluster_ip="172.30.0.41"),
        *[_svc("svc2", name, port, Endpoint("10.180.0.1", target, NODE), Endpoint("10.180.2.1", target, "node2"),
               ns="ns2", cluster_ip="172.30.0.42", protocol=proto)
          for name, port, target, proto in (("http", 80, 80, "TCP"), ("https", 443, 8443, "TCP"),
                                            ("dns-udp", 53, 53, "UDP"), ("dns-tcp", 53, 5353, "TCP"),
                                            ("dns-sctp", 53, 53, "SCTP"))]]),
    "TestLoadBalancer": _rendered([_svc("svc1", "p80", 80, Endpoint("10.180.0.1", 80), cluster_ip="172.30.0.41",
                                        load_balancer=True, node_port=3001, lb_ips=("1.2.3.4", "5.6.7.8"),
                                        source_ranges=("192.168.0.0/24", " 203.0.113.0/25"))]),
    **{f"TestNodePorts/ipv4, localhost-nodeports {'enabled' if on else 'disabled'}": _rendered(
        [_svc("svc1", "p80", 80, Endpoint("10.180.0.1", 80), Endpoint("10.180.2.1", 80, NODE),
              cluster_ip="172.30.0.41", node_port=3001)], localhost_nodeports=on) for on in (True, False)},
    "TestHealthCheckNodePort": _rendered([_svc("svc1", "p80", 80, cluster_ip="172.30.0.42", load_balancer=True,
                                               node_port=3001, etp_local=True, health_check_node_port=30000)],
                                         nodeport_addresses=("127.0.0.0/8",)),
    "TestHealthCheckNodePort/deleted": _rendered([], nodeport_addresses=("127.0.0.0/8",)),
    **{f"TestExternalTrafficPolicy{'Local' if local else 'Cluster'}": _rendered([_svc(
        "svc1", "p80", 80, Endpoint("10.180.0.1", 80), Endpoint("10.180.2.1", 80, NODE), cluster_ip="172.30.0.41",
        load_balancer=True, node_port=3001, external_ips=("192.168.99.11",), lb_ips=("1.2.3.4",),
        etp_local=local, health_check_node_port=30000 if local else None)]) for local in (True, False)},
}


@dataclass(frozen=True)
class Flow:
    ruleset: str
    name: str
    src: str
    dst: str
    port: int
    output: str
    masq: bool = False
    protocol: str = "tcp"

    @property
    def id(self) -> str:
        return f"{self.ruleset}/{self.name}"


def flows(ruleset: str, cases: list[tuple[Any, ...]]) -> list[Flow]:
    """One upstream test's table: each row is a Flow's fields after the ruleset (trailing defaults left out)."""
    return [Flow(ruleset, *case) for case in cases]


BOTH, LOCAL_EP = "10.180.0.1:80, 10.180.2.1:80", "10.180.2.1:80"
_TRACE_PACKET = [  # TestTracePacket's cases; TestOverallIPTablesRules programs the same Services
    ("no match", "10.0.0.2", "10.0.0.3", 80, "", False),
    ("single endpoint", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
    ("multiple endpoints", "10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80", False),
    ("LOCAL, KUBE-MARK-MASQ", NODE_IP, "192.168.99.22", 80, "10.180.0.2:80", True),
    ("DROP", EXTERNAL_CLIENT, "192.168.99.22", 80, "DROP", False),
    ("ACCEPT (NodePortHealthCheck)", NODE_IP, NODE_IP, 30000, "ACCEPT", False),
    ("REJECT", "10.0.0.2", "172.30.0.46", 80, "REJECT", False),
]
FLOWS = [
    *[Flow(rs, *case) for rs in ("TestTracePacket", "TestOverallIPTablesRules") for case in _TRACE_PACKET],
    *flows("TestNoEndpointsReject", [
        ("pod to cluster IP with no endpoints", "10.0.0.2", "172.30.0.41", 80, "REJECT"),
        ("external to external IP with no endpoints", EXTERNAL_CLIENT, "192.168.99.11", 80, "REJECT"),
        ("pod to NodePort with no endpoints", "10.0.0.2", NODE_IP, 3001, "REJECT"),
        ("external to NodePort with no endpoints", EXTERNAL_CLIENT, NODE_IP, 3001, "REJECT"),
        ("pod to LoadBalancer IP with no endpoints", "10.0.0.2", "1.2.3.4", 80, "REJECT"),
        ("external to LoadBalancer IP with no endpoints", EXTERNAL_CLIENT, "1.2.3.4", 80, "REJECT"),
    ]),
    *flows("TestClusterIPGeneral", [
        ("simple clusterIP", "10.180.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
        ("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", True),
        ("clusterIP with multiple endpoints", "10.180.0.2", "172.30.0.42", 80, "10.180.0.1:80, 10.180.2.1:80"),
        ("clusterIP with TargetPort", "10.180.0.2", "172.30.0.42", 443, "10.180.0.1:8443, 10.180.2.1:8443"),
        ("clusterIP with TCP, UDP, and SCTP on same port (TCP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:5353, 10.180.2.1:5353"),
        ("clusterIP with TCP, UDP, and SCTP on same port (UDP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:53, 10.180.2.1:53", False, "udp"),
        ("clusterIP with TCP, UDP, and SCTP on same port (SCTP)", "10.180.0.2", "172.30.0.42", 53,
         "10.180.0.1:53, 10.180.2.1:53", False, "sctp"),
        ("TCP-only port does not match UDP traffic", "10.180.0.2", "172.30.0.42", 80, "", False, "udp"),
        ("svc1 does not accept svc2's ports", "10.180.0.2", "172.30.0.41", 443, ""),
    ]),
    *flows("TestLoadBalancer", [
        ("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
        ("external to nodePort", EXTERNAL_CLIENT, NODE_IP, 3001, "10.180.0.1:80", True),
        ("nodePort bypasses LoadBalancerSourceRanges", EXTERNAL_CLIENT_BLOCKED, NODE_IP, 3001, "10.180.0.1:80", True),
        ("accepted external to LB1", EXTERNAL_CLIENT, "1.2.3.4", 80, "10.180.0.1:80", True),
        ("accepted external to LB2", EXTERNAL_CLIENT, "5.6.7.8", 80, "10.180.0.1:80", True),
        ("blocked external to LB1", EXTERNAL_CLIENT_BLOCKED, "1.2.3.4", 80, "DROP"),
        ("blocked external to LB2", EXTERNAL_CLIENT_BLOCKED, "5.6.7.8", 80, "DROP"),
        ("pod to LB1 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "1.2.3.4", 80, "DROP"),
        ("pod to LB2 (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "DROP"),
        ("node to LB1 (allowed by LoadBalancerSourceRanges)", NODE_IP, "1.2.3.4", 80, "10.180.0.1:80", True),
        ("node to LB2 (allowed by LoadBalancerSourceRanges)", NODE_IP, "5.6.7.8", 80, "10.180.0.1:80", True),
        ("same node to LB1, SNATted to LB1 (implicitly allowed)", "1.2.3.4", "1.2.3.4", 80, "10.180.0.1:80", True),
        ("same node to LB2, SNATted to LB2 (implicitly allowed)", "5.6.7.8", "5.6.7.8", 80, "10.180.0.1:80", True),
    ]),
    *[Flow(f"TestNodePorts/ipv4, localhost-nodeports {state}", *case) for state in ("enabled", "disabled")
      for case in [
          ("pod to cluster IP", "10.0.0.2", "172.30.0.41", 80, BOTH, False),
          ("external to nodePort", EXTERNAL_CLIENT, NODE_IP, 3001, BOTH, True),
          ("node to nodePort", NODE_IP, NODE_IP, 3001, BOTH, True),
          ("external to nodePort on secondary IP", EXTERNAL_CLIENT, NODE_IP_ALT, 3001, BOTH, True),
          ("localhost to nodePort gets masqueraded", "127.0.0.1", "127.0.0.1", 3001, BOTH, True)
          if state == "enabled" else ("localhost to nodePort is ignored", "127.0.0.1", "127.0.0.1", 3001, "", False),
      ]],
    Flow("TestHealthCheckNodePort", "firewall accepts HealthCheckNodePort", "1.2.3.4", NODE_IP, 30000, "ACCEPT"),
    Flow("TestHealthCheckNodePort/deleted", "HealthCheckNodePort no longer has any rule", "1.2.3.4", NODE_IP,
         30000, ""),
    *flows("TestExternalTrafficPolicyLocal", [
        ("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, BOTH),
        ("pod to external IP hits both endpoints, unmasqueraded", "10.0.0.2", "192.168.99.11", 80, BOTH),
        ("external to external IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80,
         LOCAL_EP),
        ("pod to LB IP hits only both endpoints, unmasqueraded", "10.0.0.2", "1.2.3.4", 80, BOTH),
        ("external to LB IP hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, LOCAL_EP),
        ("pod to NodePort hits both endpoints, unmasqueraded", "10.0.0.2", NODE_IP, 3001, BOTH),
        ("external to NodePort hits only local endpoint, unmasqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, LOCAL_EP),
    ]),
    *flows("TestExternalTrafficPolicyCluster", [
        ("pod to cluster IP hits both endpoints, unmasqueraded", "10.0.0.2", "172.30.0.41", 80, BOTH, False),
        ("pod to external IP hits both endpoints, masqueraded", "10.0.0.2", "192.168.99.11", 80, BOTH, True),
        ("external to external IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "192.168.99.11", 80, BOTH,
         True),
        ("pod to LB IP hits both endpoints, masqueraded", "10.0.0.2", "1.2.3.4", 80, BOTH, True),
        ("external to LB IP hits both endpoints, masqueraded", EXTERNAL_CLIENT, "1.2.3.4", 80, BOTH, True),
        ("pod to NodePort hits both endpoints, masqueraded", "10.0.0.2", NODE_IP, 3001, BOTH, True),
        ("external to NodePort hits both endpoints, masqueraded", EXTERNAL_CLIENT, NODE_IP, 3001, BOTH, True),
    ]),
]


def run_trace(save: Path, src: str, dst: str, port: int, protocol: str,
              capsys: pytest.CaptureFixture[str]) -> dict:
    """`netdiag trace iptables ... --output json` through the CLI's own entry point."""
    code = cli.main(["trace", "iptables", "--save", str(save), "--node-ip", *NODE_IPS, "--src", src, "--dst", dst,
                     "--port", str(port), "--protocol", protocol, "--output", "json"])
    out = capsys.readouterr().out
    report = json.loads(out)
    assert code == (0 if report["verdict"] == "ACCEPT" else 1), out
    return report


def kube_output(report: dict) -> tuple[str, bool]:
    """kube-proxy's tracePacket outputs from our report."""
    branches = report["branches"]
    dests = [b["dnat"] for b in branches if b["dnat"] and b["verdict"] == "ACCEPT"]
    masq = any(b["masquerade"] for b in branches if b["verdict"] == "ACCEPT")
    if dests:
        return ", ".join(dests), masq
    decided = [b["verdict"] for b in branches if b["decided_by"] and b["decided_by"]["position"] > 0]
    return (decided[0] if decided else ""), masq


def matched_rules(report: dict) -> str:
    return "\n".join(f"  branch {i} ({b['verdict']}, p={b['probability']:.2f}): {r['table']}/{r['rule']}"
                     for i, b in enumerate(report["branches"]) for r in b["rules"])


@pytest.fixture(scope="module")
def saves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kubeproxy")
    out = {}
    for i, (name, build) in enumerate(RULESETS.items()):
        out[name] = root / f"{i}.save"
        out[name].write_text(build())
    return out


@pytest.mark.parametrize("flow", FLOWS, ids=[f.id for f in FLOWS])
def test_flow(flow: Flow, saves: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    report = run_trace(saves[flow.ruleset], flow.src, flow.dst, flow.port, flow.protocol, capsys)
    got = kube_output(report)
    assert got == (flow.output, flow.masq), (
        f"{flow.id}: {flow.protocol} {flow.src} -> {flow.dst}:{flow.port}: kube-proxy expects "
        f"{(flow.output, flow.masq)}, the trace gives {got}; rules matched:\n{matched_rules(report)}")


def test_every_ruleset_has_flows() -> None:
    assert {f.ruleset for f in FLOWS} == set(RULESETS)
    assert len({f.id for f in FLOWS}) == len(FLOWS)


def test_trace_packet_probabilities(saves: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    for ruleset in ("TestTracePacket", "TestOverallIPTablesRules"):
        report = run_trace(saves[ruleset], "10.0.0.2", "172.30.0.44", 80, "tcp", capsys)
        assert [(d["destination"], d["probability"]) for d in report["destinations"]] == [
            ("10.180.0.4:80", 0.5), ("10.180.0.5:80", 0.5)], ruleset

