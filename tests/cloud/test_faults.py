"""Every cloud finding code: a state file with the fault and the healthy one, collected
through the real SDK from the emulator, evaluated on the scenario the fault breaks. The
documentation page behind each expectation is listed per code in docs/cloud.md."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.simulator.cloudeval.evaluate import evaluate_internet_to_lb, evaluate_node_to_node
from services.simulator.cloudeval.from_internet import evaluate_internet_to_instance
from services.simulator.cloudeval.result import CloudResult
from services.simulator.cloudeval.to_internet import evaluate_to_internet
from shared.cloud import CloudInventory
from shared.codes import CATALOGUE
from shared.schemas import Packet
from tests.cloud.conftest import EXAMPLES, PAGES

Scenario = Callable[[CloudInventory], CloudResult]


def pod_to_pod(inv: CloudInventory) -> CloudResult:  # host-gw: the pod packet itself crosses the VPC
    return evaluate_node_to_node(inv, "node-1", "node-2",
                                 Packet(src="172.16.0.5", dst="172.16.1.7", protocol="tcp", dport=8080))


def node_to_other_zone(inv: CloudInventory) -> CloudResult:
    return evaluate_node_to_node(inv, "node-1", "node-3",
                                 Packet(src="192.168.0.10", dst="192.168.1.12", protocol="tcp", dport=8080))


def to_internet(inv: CloudInventory) -> CloudResult:
    return evaluate_to_internet(inv, "node-1", Packet(src="192.168.0.10", dst="8.8.8.8", protocol="udp", dport=53))


def internet_to_eip(inv: CloudInventory) -> CloudResult:  # ssh to node-2's EIP
    return evaluate_internet_to_instance(inv, Packet(src="203.0.113.9", dst="47.1.2.4", protocol="tcp", dport=22))


def internet_to_nat_port(inv: CloudInventory) -> CloudResult:  # the NAT gateway's port 2222, DNAT to node-1's ssh
    return evaluate_internet_to_instance(inv, Packet(src="203.0.113.9", dst="47.96.0.10", protocol="tcp", dport=2222))


def lb(protocol: str, port: int) -> Scenario:
    def run(inv: CloudInventory) -> CloudResult:
        return evaluate_internet_to_lb(inv, None, Packet(src="203.0.113.9", dst="47.100.1.1", protocol=protocol,
                                                         dport=port))
    return run


CASES: dict[str, tuple[Scenario, str]] = {
    "SG_DENY": (pod_to_pod, "drop"),
    "SG_NOT_SHARED": (node_to_other_zone, "drop"),
    "VPC_NO_ROUTE": (pod_to_pod, "drop"),
    "VPC_WRONG_NEXT_HOP": (pod_to_pod, "drop"),
    "NAT_NO_SNAT": (to_internet, "drop"),
    "NAT_NO_DNAT": (internet_to_nat_port, "drop"),
    "LB_NOT_ACTIVE": (lb("tcp", 80), "drop"),
    "LB_NO_LISTENER": (lb("tcp", 80), "drop"),
    "LB_LISTENER_NOT_RUNNING": (lb("udp", 53), "drop"),  # a stopped UDP listener (KubeSkoop crashed on it)
    "LB_ACL_DENY": (lb("tcp", 80), "drop"),
    "LB_BACKEND_UNHEALTHY": (lb("tcp", 80), "pass"),  # 2 of 3 healthy: reported, traffic still flows
    "VPC_NETWORK_ACL_DENY": (node_to_other_zone, "drop"),
    "VPC_NEXT_HOP_NOT_FORWARDING": (to_internet, "drop"),
    "LB_BACKEND_WEIGHT_ZERO": (lb("tcp", 80), "drop"),
    "VPC_GATEWAY_ROUTE_REDIRECT": (internet_to_eip, "pass"),  # a warning: the firewall decides, not netdiag
}


@pytest.mark.parametrize("code", sorted(CASES))
def test_fault_is_found_and_healthy_is_clean(collect, code: str) -> None:
    """The fault file of `code` against the healthy state; the expectation comes from PAGES[code]."""
    scenario, outcome = CASES[code]
    healthy = scenario(collect(EXAMPLES / "healthy.json"))
    assert healthy.outcome == "pass" and healthy.findings == []
    faulty = scenario(collect(EXAMPLES / "faults" / f"{code}.json"))
    assert faulty.outcome == outcome
    assert code in [f.code for f in faulty.findings], PAGES[code]
    f = next(f for f in faulty.findings if f.code == code)
    assert f.suggestion and "?" not in f.message, f.message
    assert f.hop in {h.id for h in faulty.hops}


def test_every_cloud_code_has_a_fault_file() -> None:
    """every cloud code has a fault file; its page is PAGES[code]."""
    cloud_codes = {c for c in CATALOGUE if c.startswith(("SG_", "VPC_", "NAT_", "LB_"))} - {"LB_SOURCE_RANGE_DENY"}
    assert cloud_codes - {"LB_BACKEND_MISMATCH"} <= set(CASES)
    assert {p.stem for p in (EXAMPLES / "faults").glob("*.json")} == set(CASES)


def test_findings_name_the_cause(collect) -> None:
    """ECS, Security group rules — https://www.alibabacloud.com/help/en/ecs/user-guide/security-group-rules; VPC,
    Route tables — https://www.alibabacloud.com/help/en/vpc/vpc-route-table; CLB health checks —
    https://alibabacloud.com/help/ja/slb/classic-load-balancer/user-guide/configure-and-manage-health-checks."""
    sg = pod_to_pod(collect(EXAMPLES / "faults" / "SG_DENY.json"))
    deny = next(f for f in sg.findings if f.code == "SG_DENY")
    assert deny.evidence["group"] == "sg-nodes" and "block" not in deny.message
    assert "priority 1" in deny.message and "drop" in deny.message and deny.evidence["direction"] == "ingress"
    wrong = pod_to_pod(collect(EXAMPLES / "faults" / "VPC_WRONG_NEXT_HOP.json"))
    f = next(f for f in wrong.findings if f.code == "VPC_WRONG_NEXT_HOP")
    assert "i-node2" in f.message and "Instance i-node3" in f.message
    unhealthy = lb("tcp", 80)(collect(EXAMPLES / "faults" / "LB_BACKEND_UNHEALTHY.json"))
    assert [f.evidence["backend"] for f in unhealthy.findings] == ["i-node3(192.168.1.12)"]
    assert [b.server_id for b in unhealthy.backends] == ["i-node1", "i-node2"]
    pods = lb("tcp", 443)(collect(EXAMPLES / "faults" / "LB_BACKEND_UNHEALTHY.json"))
    assert [f.evidence["backend"] for f in pods.findings] == ["eni-pods2(192.168.0.102)"]


def test_every_cloud_code_cites_a_page_listed_in_the_docs() -> None:
    """Done means no rule without a cited page: each cloud code's page is in docs/cloud.md's sources."""
    docs = (EXAMPLES.parents[1] / "docs" / "cloud.md").read_text()
    cloud_codes = {c for c in CATALOGUE if c.startswith(("SG_", "VPC_", "NAT_", "LB_"))} - {"LB_SOURCE_RANGE_DENY"}
    assert cloud_codes <= set(PAGES)
    for code, page in PAGES.items():
        assert page.rsplit(" — ", 1)[1] in docs, code
