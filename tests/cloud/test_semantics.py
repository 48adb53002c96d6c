"""Alibaba Cloud semantics, each through the real SDK and the emulator: rule priority,
drop-wins, group-to-group, enterprise groups, InnerAccessPolicy, tunnels checked on the
outer packet, every CLB backend, EIP vs SNAT. Each test names the documentation page its
expectation comes from (the pages are listed in docs/cloud.md)."""

from __future__ import annotations

from typing import Any

from lab.cloudemu import load_state
from services.simulator.cloudeval.evaluate import evaluate_internet_to_lb, evaluate_node_to_node
from services.simulator.cloudeval.to_internet import evaluate_to_internet
from shared.cloud import empty_inventory
from shared.schemas import Packet, Severity
from shared.topology import ServiceResolution
from tests.cloud.conftest import EXAMPLES, healthy

N1, N2, N3 = "192.168.0.10", "192.168.0.11", "192.168.1.12"


def tcp(src: str, dst: str, port: int = 8080) -> Packet:
    return Packet(src=src, dst=dst, protocol="tcp", dport=port)


def rule(direction: str, policy: str, priority: int, proto: str = "TCP", ports: str = "8080/8080", **peer: str
         ) -> dict[str, Any]:
    return {"Direction": direction, "Policy": policy, "Priority": priority, "IpProtocol": proto, "PortRange": ports,
            **peer}


def group(gid: str, *rules: dict[str, Any], kind: str = "normal", inner: str = "Accept") -> dict[str, Any]:
    return {"SecurityGroupId": gid, "VpcId": "vpc-k8s", "SecurityGroupType": kind, "InnerAccessPolicy": inner,
            "Permissions": list(rules)}


def codes(result) -> list[str]:
    return [f.code for f in result.findings]


def test_priority_then_drop_wins_at_equal_priority(collect) -> None:
    """ECS "Create a security group" (https://www.alibabacloud.com/help/en/elastic-compute-service/latest/
    create-a-security-group-2): 1 is the highest priority; rules that differ only in their action: the drop
    (Forbid) rule wins. InnerAccessPolicy Drop so the rules decide (ModifySecurityGroupPolicy,
    https://www.alibabacloud.com/help/en/ecs/developer-reference/api-modifysecuritygrouppolicy)."""
    state = healthy()
    state["security_groups"][0]["InnerAccessPolicy"] = "Drop"
    perms = state["security_groups"][0]["Permissions"]
    perms += [rule("ingress", "Drop", 10, SourceCidrIp="0.0.0.0/0"),
              rule("ingress", "Accept", 5, SourceCidrIp=N1 + "/32")]
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "pass" and "priority 5" in r.hops[0].steps[-1].detail
    perms.append(rule("ingress", "Drop", 5, SourceCidrIp="192.168.0.0/24"))
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "drop" and codes(r) == ["SG_DENY"]
    assert r.findings[0].evidence["rule"]["policy"] == "drop" and r.findings[0].evidence["rule"]["priority"] == 5


def test_accept_intra_group_policy_wins_over_custom_rules(collect) -> None:
    """ECS API "ModifySecurityGroupPolicy" (https://www.alibabacloud.com/help/en/ecs/developer-reference/
    api-modifysecuritygrouppolicy): with InnerAccessPolicy Accept the instances of the group reach each other,
    the Accept policy taking precedence over user-created rules; with Drop, the user-created rules take precedence.
    Decoy: a priority-1 drop of everything beside the Accept policy stays REACHABLE between members."""
    state = healthy()
    state["security_groups"][0]["Permissions"][:0] = [rule("ingress", "Drop", 1, "ALL", "-1/-1",
                                                           SourceCidrIp="0.0.0.0/0"),
                                                      rule("egress", "Drop", 1, "ALL", "-1/-1", DestCidrIp="0.0.0.0/0")]
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "pass" and "InnerAccessPolicy Accept" in r.hops[0].steps[-1].detail
    assert r.findings == []
    # a routed (host-gw) pod address is no member of the group: the drop rule decides for it
    pods = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp("172.16.0.5", "172.16.1.7"))
    assert pods.outcome == "drop" and codes(pods) == ["SG_DENY"]
    state["security_groups"][0]["InnerAccessPolicy"] = "Drop"
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "drop" and codes(r) == ["SG_DENY"] and "priority 1" in r.findings[0].message


def test_group_to_group_rules_match_member_enis_only(collect) -> None:
    """ECS, Create a security group (a security group as authorization object admits the instances/ENIs in it) —
    https://www.alibabacloud.com/help/en/elastic-compute-service/latest/create-a-security-group-2."""
    state = healthy()
    state["instances"][2]["SecurityGroupIds"] = ["sg-b"]
    state["security_groups"].append(group("sg-b", rule("ingress", "Accept", 1, "ALL", "-1/-1",
                                                       SourceGroupId="sg-nodes")))
    inv = collect(state)
    node = evaluate_node_to_node(inv, "node-1", "node-3", tcp(N1, N3))
    assert node.outcome == "pass" and "sg-nodes" in node.hops[0].steps[-1].detail
    terway_pod = evaluate_node_to_node(inv, "node-2", "node-3", tcp("192.168.0.101", N3))  # secondary ENI IP
    assert terway_pod.outcome == "pass"
    routed_pod = evaluate_node_to_node(inv, "node-1", "node-3", tcp("172.16.0.5", "172.16.2.7"))  # host-gw pod IP
    assert routed_pod.outcome == "drop" and codes(routed_pod) == ["SG_DENY"]
    assert any("not an address of any ENI" in a.text for a in routed_pod.assumptions)


def test_sg_not_shared_only_where_it_matters(collect) -> None:
    """ECS, Basic and advanced security groups (instances in different groups are isolated unless rules allow) —
    https://www.alibabacloud.com/help/en/ecs/user-guide/basic-security-groups-and-advanced-security-groups."""
    state = healthy()
    state["instances"][2]["SecurityGroupIds"] = ["sg-b"]
    state["security_groups"].append(group("sg-b", rule("ingress", "Accept", 1, SourceCidrIp="192.168.0.0/16")))
    inv = collect(state)
    allowed = evaluate_node_to_node(inv, "node-1", "node-3", tcp(N1, N3))  # a rule admits it: no warning
    assert allowed.outcome == "pass" and allowed.findings == []
    denied = evaluate_node_to_node(inv, "node-1", "node-3", tcp(N1, N3, 9090))
    assert codes(denied) == ["SG_DENY", "SG_NOT_SHARED"]
    assert denied.findings[1].severity == Severity.WARNING


def test_enterprise_groups_deny_intra_group_and_default_egress(collect) -> None:
    """ECS, Basic and advanced security groups (advanced groups isolate members, deny by default) —
    https://www.alibabacloud.com/help/en/ecs/user-guide/basic-security-groups-and-advanced-security-groups."""
    state = healthy()
    state["security_groups"] = [group("sg-ent", rule("egress", "Accept", 1, "ALL", "-1/-1", DestCidrIp="0.0.0.0/0"),
                                      kind="enterprise")]
    for inst in state["instances"]:
        inst["SecurityGroupIds"] = ["sg-ent"]
    state["network_interfaces"][0]["SecurityGroupIds"] = ["sg-ent"]
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "drop" and codes(r) == ["SG_DENY"]  # shared, so no SG_NOT_SHARED
    assert "enterprise" in r.findings[0].evidence["reason"]
    state["security_groups"][0]["Permissions"] = []
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.findings[0].evidence["direction"] == "egress" and "deny outbound" in r.findings[0].message


def test_inner_access_policy(collect) -> None:
    """ECS API, ModifySecurityGroupPolicy —
    https://www.alibabacloud.com/help/en/ecs/developer-reference/api-modifysecuritygrouppolicy."""
    state = healthy()
    state["security_groups"][0]["InnerAccessPolicy"] = "Drop"
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "drop" and "InnerAccessPolicy Drop" in r.findings[0].message
    # one shared group with Accept is enough (isolation has the lowest priority)
    state["security_groups"].append(group("sg-open"))
    for inst in state["instances"]:
        inst["SecurityGroupIds"].append("sg-open")
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "pass" and "intra-group access of sg-open" in r.hops[0].steps[-1].detail


def test_tunnels_are_checked_on_the_outer_packet(collect) -> None:
    """ECS, Security group rules (rules match protocol, port and address of the packet the NIC carries) —
    https://www.alibabacloud.com/help/en/ecs/user-guide/security-group-rules."""
    pod = tcp("172.16.0.5", "172.16.1.7")
    # a drop of tcp 8080 and a missing pod route do not touch vxlan: the VPC sees udp node → node
    for fault in ("SG_DENY", "VPC_NO_ROUTE"):
        inv = collect(EXAMPLES / "faults" / f"{fault}.json")
        assert evaluate_node_to_node(inv, "node-1", "node-2", pod).outcome == "drop"
        vx = evaluate_node_to_node(inv, "node-1", "node-2", pod, encapsulation="vxlan")
        assert vx.outcome == "pass" and str(vx.flow) == f"udp {N1} → {N2}:8472"
    state = healthy()
    # InnerAccessPolicy Drop: the rules decide between the nodes (ModifySecurityGroupPolicy)
    state["security_groups"][0]["InnerAccessPolicy"] = "Drop"
    state["security_groups"][0]["Permissions"] += [rule("ingress", "Accept", 100, "ALL", "-1/-1",
                                                        SourceCidrIp="192.168.0.0/16")]
    state["security_groups"][0]["Permissions"].insert(0, rule("ingress", "Drop", 1, "UDP", "8472/8472",
                                                              SourceCidrIp="0.0.0.0/0"))
    vx = evaluate_node_to_node(collect(state), "node-1", "node-2", pod, encapsulation="vxlan")
    assert vx.outcome == "drop" and vx.findings[0].evidence["packet"] == f"udp {N1} → {N2}:8472"
    assert evaluate_node_to_node(collect(state), "node-1", "node-2", pod, encapsulation="ipip").outcome == "pass"
    state["security_groups"][0]["Permissions"].insert(0, rule("ingress", "Drop", 1, "ALL", "-1/-1",
                                                              SourceCidrIp=N1 + "/32"))
    ipip = evaluate_node_to_node(collect(state), "node-1", "node-2", pod, encapsulation="ipip")
    assert ipip.outcome == "drop" and str(ipip.flow) == f"ipip {N1} → {N2}"


def test_every_clb_backend_health_is_checked(collect) -> None:
    """CLB, Configure and manage CLB health checks —
    https://alibabacloud.com/help/ja/slb/classic-load-balancer/user-guide/configure-and-manage-health-checks."""
    state = healthy()
    listener = state["load_balancers"][0]["Listeners"][0]
    backends = state["load_balancers"][0]["BackendServers"]
    for n in range(12):
        state["instances"].append({"InstanceId": f"i-w{n}", "VpcId": "vpc-k8s", "VSwitchId": "vsw-a",
                                   "PrivateIpAddress": [f"192.168.0.{50 + n}"], "SecurityGroupIds": ["sg-nodes"]})
        backends.append({"ServerId": f"i-w{n}", "ServerIp": f"192.168.0.{50 + n}"})
        listener["Health"].append({"ServerId": f"i-w{n}", "ServerIp": f"192.168.0.{50 + n}", "Port": 30080,
                                   "ServerHealthStatus": "abnormal" if n == 11 else "normal"})
    packet = Packet(src="203.0.113.9", dst="47.100.1.1", protocol="tcp", dport=80)
    r = evaluate_internet_to_lb(collect(state), None, packet)
    assert r.outcome == "pass" and len(r.backends) == 14
    assert [f.evidence["backend"] for f in r.findings] == ["i-w11(192.168.0.61)"]
    for h in listener["Health"]:
        h["ServerHealthStatus"] = "abnormal"
    r = evaluate_internet_to_lb(collect(state), None, packet)
    assert r.outcome == "drop" and len(r.findings) == 15
    assert {f.severity for f in r.findings} == {Severity.ERROR}


def test_backends_are_checked_against_the_service(collect) -> None:
    """CLB, CLB server groups —
    https://www.alibabacloud.com/help/en/slb/classic-load-balancer/user-guide/backend-server-overview/."""
    service = ServiceResolution(service="default/web", type="LoadBalancer", port=80, node_port=30081)
    obj = {"metadata": {"annotations": {"service.beta.kubernetes.io/alibaba-cloud-loadbalancer-id": "lb-web"}}}
    packet = Packet(src="203.0.113.9", dst="47.100.9.9", protocol="tcp", dport=80)  # found by the annotation
    r = evaluate_internet_to_lb(collect(healthy()), service, packet, service_object=obj)
    assert codes(r) == ["LB_BACKEND_MISMATCH"] and "expected NodePort 30081" in r.findings[0].message


def test_eip_bypasses_nat_and_snat_must_cover_the_source(collect) -> None:
    """NAT Gateway, Create and manage SNAT entries (EIP bypasses SNAT; longest source mask wins) —
    https://www.alibabacloud.com/help/en/nat-gateway/latest/create-and-manage-snat-entries."""
    state = load_state(EXAMPLES / "faults" / "NAT_NO_SNAT.json")
    state["instances"][0]["EipAddress"] = "47.1.2.3"
    r = evaluate_to_internet(collect(state), "node-1", tcp(N1, "8.8.8.8", 443))
    assert r.outcome == "pass" and r.hops[0].steps[-1].packet_out.src.exploded == "47.1.2.3"
    state = healthy()
    state["nat_gateways"][0]["SnatEntries"] = [{"SnatEntryId": "snat-n2", "SourceCIDR": N2 + "/32",
                                                "SnatIp": "47.96.0.10"}]  # instance-granularity entry
    inv = collect(state)
    assert evaluate_to_internet(inv, "node-2", tcp(N2, "8.8.8.8", 443)).outcome == "pass"
    pod = evaluate_to_internet(inv, "node-2", tcp("192.168.0.101", "8.8.8.8", 443))  # Terway pod on node-2
    assert codes(pod) == ["NAT_NO_SNAT"] and pod.hops[-1].id == "nat:ngw-k8s"


def test_instance_state_and_unmapped_nodes(collect) -> None:
    """ECS, Instance lifecycle — https://www.alibabacloud.com/help/doc-detail/25380.htm."""
    state = healthy()
    state["instances"][1]["Status"] = "Stopped"
    inv = collect(state)
    r = evaluate_node_to_node(inv, "node-1", "node-2", tcp(N1, N2))
    assert codes(r) == ["ECS_INSTANCE_NOT_RUNNING"] and r.outcome == "drop"
    r = evaluate_node_to_node(inv, "node-1", "node-7", tcp(N1, "192.168.0.77"))
    assert codes(r) == ["DATA_MISSING"] and r.outcome == "abort"


def test_unmodelled_cloud_passes_with_a_stated_assumption() -> None:
    """no provider page: an unmodelled cloud is a stated assumption (docs/cloud.md)."""
    r = evaluate_node_to_node(empty_inventory(), "node-1", "node-2", tcp(N1, N2))
    assert r.outcome == "pass" and r.findings == [] and r.assumptions[0].could_change_outcome
    assert "not modelled" in r.assumptions[0].text
