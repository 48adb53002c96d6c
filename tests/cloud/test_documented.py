"""The semantics added for issue 19, each through the real SDK against the emulator and the cloud
engine, with a healthy decoy next to each fault. Every test names the Alibaba Cloud page its
expectation comes from (docs/cloud.md lists them all)."""

from __future__ import annotations

from typing import Any

from services.simulator.cloudeval.evaluate import evaluate_internet_to_lb, evaluate_node_to_node
from services.simulator.cloudeval.from_internet import evaluate_internet_to_instance
from services.simulator.cloudeval.to_internet import evaluate_to_internet
from shared.cloud import CloudInventory
from shared.schemas import Packet, Severity
from tests.cloud.conftest import healthy

N1, N2, N3 = "192.168.0.10", "192.168.0.11", "192.168.1.12"
CLIENT = "203.0.113.9"


def tcp(src: str, dst: str, port: int | None = 8080) -> Packet:
    return Packet(src=src, dst=dst, protocol="tcp", dport=port)


def lb(inv: CloudInventory, port: int = 80, src: str = CLIENT):
    return evaluate_internet_to_lb(inv, None, Packet(src=src, dst="47.100.1.1", protocol="tcp", dport=port))


def codes(result) -> list[str]:
    return [f.code for f in result.findings]


def isolated(state: dict[str, Any]) -> dict[str, Any]:
    """InnerAccessPolicy Drop on the node group: the custom rules decide between the nodes."""
    state["security_groups"][0]["InnerAccessPolicy"] = "Drop"
    return state


def ingress(**fields: Any) -> dict[str, Any]:
    return {"Direction": "ingress", "Policy": "Accept", "Priority": 1, "IpProtocol": "TCP", **fields}


# ------------------------------------------------------------------ security groups


def test_prefix_list_rule_matches_its_entries(collect) -> None:
    """ECS "Security group rules" (https://www.alibabacloud.com/help/en/ecs/user-guide/security-group-rules) and
    DescribePrefixListAttributes (https://www.alibabacloud.com/help/en/ecs/developer-reference/
    api-ecs-2014-05-26-describeprefixlistattributes): a rule whose authorization object is a prefix list matches
    the list's CIDRs — not "any source", which is what dropping the field used to make of it."""
    state = isolated(healthy())
    state["prefix_lists"] = [{"PrefixListId": "pl-n1", "Entries": [{"Cidr": N1 + "/32"}]}]
    state["security_groups"][0]["Permissions"].append(ingress(PortRange="8080/8080", SourcePrefixListId="pl-n1"))
    inv = collect(state)
    assert evaluate_node_to_node(inv, "node-1", "node-2", tcp(N1, N2)).outcome == "pass"
    other = evaluate_node_to_node(inv, "node-3", "node-2", tcp(N3, N2))  # decoy: not in the list
    assert other.outcome == "drop" and codes(other) == ["SG_DENY"]


def test_a_prefix_list_that_was_not_collected_is_said_to_matter(collect) -> None:
    """A rule referencing a prefix list the inventory does not hold cannot be decided: the engine says so, as an
    assumption that could change the outcome, and a drop behind it is no confident UNREACHABLE (DATA_MISSING,
    an abort)."""
    state = isolated(healthy())
    state["security_groups"][0]["Permissions"].append(ingress(PortRange="8080/8080", SourcePrefixListId="pl-gone"))
    inv = collect(state)
    assert any("pl-gone" in e for e in inv.errors)  # DescribePrefixListAttributes: not found
    r = evaluate_node_to_node(inv, "node-1", "node-2", tcp(N1, N2))
    # the default deny is not a confident drop: the rule ahead could have admitted it (abort, not UNREACHABLE)
    assert r.outcome == "abort" and codes(r) == ["DATA_MISSING", "SG_DENY"]
    assert r.findings[1].severity == Severity.WARNING
    assert any("pl-gone" in a.text and a.could_change_outcome for a in r.assumptions)


def test_port_list_rule_and_its_range_edges(collect) -> None:
    """CreatePortRangeList / DescribePortRangeListEntries (https://www.alibabacloud.com/help/en/ecs/
    developer-reference/api-ecs-2014-05-26-describeportrangelistentries): a rule with PortRangeListId covers the
    list's ranges — not every port. Decoys at the edges of 8000/8999: 8000 and 8999 pass, 9000 does not."""
    state = isolated(healthy())
    state["port_lists"] = [{"PortRangeListId": "prl-web", "Entries": [{"PortRange": "80/80"},
                                                                      {"PortRange": "8000/8999"}]}]
    state["security_groups"][0]["Permissions"].append(ingress(PortRangeListId="prl-web", SourceCidrIp=N1 + "/32"))
    inv = collect(state)
    for port in (80, 8000, 8999):
        assert evaluate_node_to_node(inv, "node-1", "node-2", tcp(N1, N2, port)).outcome == "pass", port
    for port in (81, 7999, 9000):
        assert evaluate_node_to_node(inv, "node-1", "node-2", tcp(N1, N2, port)).outcome == "drop", port


def test_cross_account_group_authorization(collect) -> None:
    """"Create a security group" (https://www.alibabacloud.com/help/en/elastic-compute-service/latest/
    create-a-security-group-2): a security group of the current account or a different account can be the
    authorization object. The members of another account's group are not in this inventory: a rule naming it
    is undecidable for a source no collected ENI owns (an assumption that matters), while a source owned by one
    of this account's ENIs (not a member) is simply not matched."""
    state = isolated(healthy())
    state["security_groups"][0]["Permissions"].append(ingress(IpProtocol="ALL", PortRange="-1/-1",
                                                              SourceGroupId="sg-partner",
                                                              SourceGroupOwnerAccount="1234567890"))
    inv = collect(state)
    partner = evaluate_node_to_node(inv, "node-1", "node-2", tcp("10.50.0.7", N2))
    assert partner.outcome == "abort" and codes(partner) == ["DATA_MISSING", "SG_DENY"]
    assert any("sg-partner" in a.text and "1234567890" in a.text and a.could_change_outcome
               for a in partner.assumptions)
    own = evaluate_node_to_node(inv, "node-1", "node-2", tcp(N1, N2))
    assert own.outcome == "drop" and not any("sg-partner" in a.text for a in own.assumptions)


# ------------------------------------------------------------------ network ACLs


def _acl(vswitch: str, ingress_entries: list[dict[str, Any]], egress_entries: list[dict[str, Any]] | None = None
         ) -> dict[str, Any]:
    everything = [{"Policy": "accept", "Protocol": "all", "DestinationCidrIp": "0.0.0.0/0"}]
    return {"NetworkAclId": f"nacl-{vswitch}", "VpcId": "vpc-k8s",
            "Resources": [{"ResourceId": vswitch, "ResourceType": "VSwitch"}],
            "IngressAclEntries": ingress_entries,
            "EgressAclEntries": everything if egress_entries is None else egress_entries}


def test_network_acl_is_ordered_and_stateless(collect) -> None:
    """"Network ACLs" (https://www.alibabacloud.com/help/en/vpc/network-acl-overview): entries are evaluated in
    order and the first match decides (a drop of tcp 8080 ahead of an accept-all); the port range matches the
    destination port (decoy: 8081 passes); stateless, so the reply is checked on its own (an ACL whose outbound
    side has no entry loses the reply of an admitted request)."""
    state = healthy()
    state["network_acls"] = [_acl("vsw-b", [
        {"Policy": "drop", "Protocol": "tcp", "SourceCidrIp": "0.0.0.0/0", "Port": "8080/8080"},
        {"Policy": "accept", "Protocol": "all", "SourceCidrIp": "0.0.0.0/0"}])]
    inv = collect(state)
    r = evaluate_node_to_node(inv, "node-1", "node-3", tcp(N1, N3))
    assert r.outcome == "drop" and codes(r) == ["VPC_NETWORK_ACL_DENY"] and "8080/8080" in r.findings[0].message
    assert evaluate_node_to_node(inv, "node-1", "node-3", tcp(N1, N3, 8081)).outcome == "pass"
    state["network_acls"] = [_acl("vsw-b", [{"Policy": "accept", "Protocol": "all", "SourceCidrIp": "0.0.0.0/0"}],
                                  egress_entries=[])]
    inv = collect(state)
    assert evaluate_node_to_node(inv, "node-1", "node-3", tcp(N1, N3)).outcome == "pass"
    reply = evaluate_node_to_node(inv, "node-3", "node-1", Packet(src=N3, dst=N1, protocol="tcp", sport=8080),
                                  reply=True)
    assert reply.outcome == "drop" and codes(reply) == ["VPC_NETWORK_ACL_DENY"]
    assert reply.hops[0].id.endswith(":reply") and "no entries" in reply.findings[0].message


def test_network_acl_scope(collect) -> None:
    """"Network ACLs" (https://alibabacloud.com/help/en/vpc/user-guide/network-acl-overview): traffic between
    instances of one vSwitch is not filtered by its ACL (decoy: node-1 → node-2 on vsw-a passes a deny-all ACL);
    the DNS servers 100.100.2.128/28 and 100.100.2.112/28 stay reachable; an inventory that predates network
    ACLs says they were not checked."""
    state = healthy()
    state["network_acls"] = [_acl("vsw-a", [], egress_entries=[])]
    inv = collect(state)
    assert evaluate_node_to_node(inv, "node-1", "node-2", tcp(N1, N2)).outcome == "pass"
    assert evaluate_node_to_node(inv, "node-1", "node-3", tcp(N1, N3)).outcome == "drop"
    dns = evaluate_to_internet(inv, "node-1", Packet(src=N1, dst="100.100.2.136", protocol="udp", dport=53))
    assert "VPC_NETWORK_ACL_DENY" not in codes(dns)
    old = inv.model_copy(update={"network_acls": None})
    r = evaluate_node_to_node(old, "node-1", "node-3", tcp(N1, N3))
    assert r.outcome == "pass" and any("network ACLs were not collected" in a.text and a.could_change_outcome
                                       for a in r.assumptions)


# ------------------------------------------------------------------ routes and public addresses


def test_next_hop_that_does_not_forward(collect) -> None:
    """ECS "Instance lifecycle" (https://www.alibabacloud.com/help/doc-detail/25380.htm): an instance can be
    reached only while it is Running — a route whose next hop is a Stopped instance, or an ENI attached to no
    instance, does not forward. Decoy: the same route through a Running instance's ENI."""
    state = healthy()
    state["network_interfaces"].append({"NetworkInterfaceId": "eni-spare", "Type": "Secondary", "Status": "Available",
                                        "VpcId": "vpc-k8s", "VSwitchId": "vsw-a", "PrivateIpAddress": "192.168.0.240",
                                        "SecurityGroupIds": ["sg-nodes"]})
    state["route_tables"][0]["Entries"][1].update(NextHopType="NetworkInterface", NextHopId="eni-spare")
    pod = tcp("172.16.0.5", "172.16.1.7")
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", pod)
    assert r.outcome == "drop" and codes(r) == ["VPC_NEXT_HOP_NOT_FORWARDING"]
    assert "eni-spare" in r.findings[0].message and "Available" in r.findings[0].message
    state["route_tables"][0]["Entries"][1].update(NextHopId="eni-pods2")  # decoy: node-2's own running ENI
    assert evaluate_node_to_node(collect(state), "node-1", "node-2", pod).outcome == "pass"
    state["route_tables"][0]["Entries"][1].update(NextHopType="Instance", NextHopId="i-node3")
    state["instances"][2]["Status"] = "Stopped"
    r = evaluate_node_to_node(collect(state), "node-1", "node-2", pod)
    assert codes(r) == ["VPC_NEXT_HOP_NOT_FORWARDING"] and "i-node3 Stopped" in r.findings[0].message


def test_eip_bound_to_a_secondary_private_ip(collect) -> None:
    """"Associate an EIP with a secondary ENI" (https://www.alibabacloud.com/help/en/elastic-ip-address/latest/
    bind-an-eip-to-a-secondary-eni-overview) / DescribeEipAddresses PrivateIpAddress: an EIP bound to one private
    IP of an ENI serves that address (a Terway pod) — not only the primary one. Decoy: the ENI's other secondary
    IP still needs the NAT gateway's SNAT."""
    state = healthy()
    state["nat_gateways"][0]["SnatEntries"] = []
    state["eips"] = [{"AllocationId": "eip-pod", "IpAddress": "47.1.1.101", "InstanceType": "NetworkInterface",
                      "InstanceId": "eni-pods2", "PrivateIpAddress": "192.168.0.101"}]
    inv = collect(state)
    pod = evaluate_to_internet(inv, "node-2", tcp("192.168.0.101", "8.8.8.8", 443))
    assert pod.outcome == "pass" and pod.hops[0].steps[-1].packet_out.src.exploded == "47.1.1.101"
    other = evaluate_to_internet(inv, "node-2", tcp("192.168.0.102", "8.8.8.8", 443))
    assert codes(other) == ["NAT_NO_SNAT"]


def test_ipv4_gateway_needs_a_route_to_it(collect) -> None:
    """"Create and manage an IPv4 gateway" (https://alibabacloud.com/help/en/vpc/user-guide/
    create-and-manage-an-ipv4-gateway): once a VPC's IPv4 gateway is active, instances reach the internet only
    through routes that point to it — an EIP alone no longer does. Decoy: with the 0.0.0.0/0 route to the gateway
    the EIP works."""
    state = healthy()
    state["instances"][0]["EipAddress"] = "47.1.2.3"
    state["ipv4_gateways"] = [{"Ipv4GatewayId": "ipv4gw-k8s", "VpcId": "vpc-k8s", "Enabled": True}]
    r = evaluate_to_internet(collect(state), "node-1", tcp(N1, "8.8.8.8", 443))
    assert r.outcome == "drop" and codes(r) == ["VPC_NO_ROUTE"] and r.findings[0].evidence["ipv4_gateway"]
    state["route_tables"][0]["Entries"][3].update(NextHopType="Ipv4Gateway", NextHopId="ipv4gw-k8s")
    r = evaluate_to_internet(collect(state), "node-1", tcp(N1, "8.8.8.8", 443))
    assert r.outcome == "pass" and r.hops[0].steps[-1].packet_out.src.exploded == "47.1.2.3"


# ------------------------------------------------------------------ CLB


def test_clb_access_control_lists(collect) -> None:
    """CLB "Access control" (https://www.alibabacloud.com/help/en/slb/classic-load-balancer/user-guide/overview-3):
    an ACL with no entries forwards every request, whitelist or blacklist; a listener can have up to three ACLs
    (their entries together decide); a whitelist forwards only its entries, a blacklist drops its entries."""
    state = healthy()
    state["acls"] = [{"AclId": "acl-a", "Entries": [{"AclEntryIP": "10.0.0.0/8"}]},
                     {"AclId": "acl-b", "Entries": [{"AclEntryIP": "203.0.113.0/24"}]},
                     {"AclId": "acl-empty", "Entries": []}]
    listener = state["load_balancers"][0]["Listeners"][0]
    listener.update(AclStatus="on", AclType="white", AclIds=["acl-empty"])
    assert lb(collect(state)).outcome == "pass"
    listener["AclType"] = "black"
    assert lb(collect(state)).outcome == "pass"
    listener.update(AclType="white", AclIds=["acl-a", "acl-b", "acl-empty"])
    inv = collect(state)
    assert lb(inv).outcome == "pass"  # admitted by the second ACL
    assert codes(lb(inv, src="198.51.100.7")) == ["LB_ACL_DENY"]
    listener["AclType"] = "black"
    assert codes(lb(collect(state))) == ["LB_ACL_DENY"]


def test_backend_weight_zero(collect) -> None:
    """SetBackendServers (https://www.alibabacloud.com/help/en/slb/classic-load-balancer/developer-reference/
    api-slb-2014-05-15-setbackendservers): weight 0 to 100, and a backend of weight 0 is forwarded no request.
    Decoy: weight 0 next to healthy backends passes (a warning); all at 0 serves nothing (an error, a drop)."""
    state = healthy()
    backends = state["load_balancers"][0]["BackendServers"]
    backends[0]["Weight"] = 0
    r = lb(collect(state))
    assert r.outcome == "pass" and [t.server_id for t in r.backends] == ["i-node2", "i-node3"]
    assert codes(r) == ["LB_BACKEND_WEIGHT_ZERO"] and r.findings[0].severity == Severity.WARNING
    for b in backends:
        b["Weight"] = 0
    r = lb(collect(state))
    assert r.outcome == "drop" and codes(r) == ["LB_BACKEND_WEIGHT_ZERO"] * 3
    assert {f.severity for f in r.findings} == {Severity.ERROR}


def test_health_check_off_and_primary_secondary_groups(collect) -> None:
    """DescribeLoadBalancerTCPListenerAttribute (https://www.alibabacloud.com/help/doc-detail/27608.html)
    HealthCheck / MasterSlaveServerGroupId, and "Create and manage a primary/secondary server group"
    (https://www.alibabacloud.com/help/doc-detail/129367.htm): requests go to the primary server while it works,
    to the secondary when it fails — which is not health-checked by default ("CLB server groups",
    https://help.aliyun.com/document_detail/85962.htm), so its use is stated as an assumption that matters.
    With the health check off, a reported status does not remove a backend (the load balancer cannot tell),
    which is stated as an assumption that matters."""
    state = healthy()
    listener = state["load_balancers"][0]["Listeners"][0]
    state["master_slave_server_groups"] = [{"MasterSlaveServerGroupId": "rsp-ms", "MasterSlaveBackendServers": [
        {"ServerId": "i-node1", "Port": 30080, "ServerType": "Master"},
        {"ServerId": "i-node2", "Port": 30080, "ServerType": "Slave"}]}]
    listener["MasterSlaveServerGroupId"] = "rsp-ms"
    r = lb(collect(state))
    assert r.outcome == "pass" and [t.server_id for t in r.backends] == ["i-node1"]
    listener["Health"][0]["ServerHealthStatus"] = "abnormal"
    r = lb(collect(state))
    assert r.outcome == "pass" and [t.server_id for t in r.backends] == ["i-node2"]
    listener["HealthCheck"] = "off"
    r = lb(collect(state))
    assert [t.server_id for t in r.backends] == ["i-node1"]
    assert any("health check" in a.text and a.could_change_outcome for a in r.assumptions)


def test_network_acl_filters_clb_traffic_to_backends(collect) -> None:
    """"Network ACLs" (https://www.alibabacloud.com/help/en/virtual-private-cloud/latest/network-acl-overview):
    traffic that a load balancer forwards to ECS instances is filtered by their vSwitch's ACL too (a layer-4
    listener keeps the client address: "Enable Proxy Protocol ... to retrieve client IP addresses",
    https://www.alibabacloud.com/help/en/server-load-balancer/latest/enable-proxy-protocol-for-a-layer-4-listener-
    to-retrieve-client-ip-addresses). Decoy: the backends on vsw-a still serve."""
    state = healthy()
    state["network_acls"] = [_acl("vsw-b", [{"Policy": "accept", "Protocol": "all", "SourceCidrIp": "10.0.0.0/8"}])]
    r = lb(collect(state))
    assert r.outcome == "pass" and [t.server_id for t in r.backends] == ["i-node1", "i-node2"]
    assert codes(r) == ["VPC_NETWORK_ACL_DENY"] and r.findings[0].evidence["backend"].startswith("i-node3")
    assert r.findings[0].severity == Severity.WARNING  # the other backends still serve


def test_health_status_unavailable_is_no_verdict(collect) -> None:
    """DescribeHealthStatus (https://alibabacloud.com/help/en/slb/classic-load-balancer/developer-reference/
    api-slb-2014-05-15-describehealthstatus): ServerHealthStatus is normal, abnormal, or unavailable — the health
    check did not complete. Unavailable is no finding against the backend; only when no backend is known healthy
    does it matter (an assumption that could change the outcome). Decoy: abnormal still is a finding."""
    state = healthy()
    health = state["load_balancers"][0]["Listeners"][0]["Health"]
    health[0]["ServerHealthStatus"] = "unavailable"
    r = lb(collect(state))
    assert r.outcome == "pass" and r.findings == [] and len(r.backends) == 3
    assert any("unavailable" in a.text and not a.could_change_outcome for a in r.assumptions)
    for h in health:
        h["ServerHealthStatus"] = "unavailable"
    r = lb(collect(state))
    assert r.outcome == "pass" and r.findings == []
    assert any("unavailable" in a.text and a.could_change_outcome for a in r.assumptions)
    health[1]["ServerHealthStatus"] = "abnormal"
    assert codes(lb(collect(state))) == ["LB_BACKEND_UNHEALTHY"]


def test_round_robin_ignores_weights(collect) -> None:
    """"CLB server groups" (https://help.aliyun.com/document_detail/85962.htm, weight configuration): weights take
    effect with the weighted scheduling algorithms only, not with round robin; weight 0 under a weighted
    scheduler stops new requests. Decoy: every backend at weight 0 under rr still serves (stated)."""
    state = healthy()
    for b in state["load_balancers"][0]["BackendServers"]:
        b["Weight"] = 0
    state["load_balancers"][0]["Listeners"][0]["Scheduler"] = "rr"
    r = lb(collect(state))
    assert r.outcome == "pass" and r.findings == [] and len(r.backends) == 3
    assert any("round robin" in a.text for a in r.assumptions)
    state["load_balancers"][0]["Listeners"][0]["Scheduler"] = "wrr"
    r = lb(collect(state))
    assert r.outcome == "drop" and set(codes(r)) == {"LB_BACKEND_WEIGHT_ZERO"}


def test_backend_security_groups_and_layer4_clb_traffic(collect) -> None:
    """The pages read leave open whether backend security groups filter layer-4 CLB traffic (docs/cloud.md,
    "Internet → LoadBalancer"): "CLB health checks" (https://help.aliyun.com/en/slb/classic-load-balancer/
    user-guide/health-check-overview/) says no security-group rule is needed for the 100.64.0.0/10 health checks,
    and a layer-4 listener keeps the client address. So the groups are no verdict: where they would refuse the
    client it is an assumption that could change the outcome; where they admit it, a plain statement (decoy)."""
    state = healthy()
    r = lb(collect(state))  # the node group admits NodePorts from 100.64.0.0/10 only
    assert r.outcome == "pass"
    assert any("would refuse the client" in a.text and a.could_change_outcome for a in r.assumptions)
    state["security_groups"][0]["Permissions"].append(ingress(PortRange="30080/30080", SourceCidrIp="0.0.0.0/0"))
    r = lb(collect(state))
    assert not any(a.could_change_outcome for a in r.assumptions)
    assert any("would admit this client" in a.text for a in r.assumptions)


def test_network_acl_reply_to_an_ephemeral_port(collect) -> None:
    """"Network ACLs" (https://www.alibabacloud.com/help/en/vpc/network-acl-overview): stateless, so the reply
    needs an outbound entry for the client's ephemeral port (Linux 32768-61000; the page recommends
    1024/65535). The client's port is unknown: an entry covering the whole Linux range admits the reply
    (decoy, stated); one below it never matches (a drop); one cutting through it is undecided (an assumption
    that matters, and the drop behind it an abort)."""
    reply = Packet(src=N3, dst=N1, protocol="tcp", sport=8080)
    for port, outcome, flag in (("1024/65535", "pass", False), ("1/1023", "drop", False),
                                ("40000/65535", "abort", True)):
        state = healthy()
        state["network_acls"] = [_acl("vsw-b", [{"Policy": "accept", "Protocol": "all", "SourceCidrIp": "0.0.0.0/0"}],
                                      egress_entries=[{"Policy": "accept", "Protocol": "tcp",
                                                       "DestinationCidrIp": "0.0.0.0/0", "Port": port}])]
        r = evaluate_node_to_node(collect(state), "node-3", "node-1", reply, reply=True)
        assert r.outcome == outcome, port
        assert any(a.could_change_outcome and "unknown" in a.text for a in r.assumptions) == flag, port


# ------------------------------------------------------------------ IPv4 gateway and gateway route table

EIP2 = "47.1.2.4"  # node-2's EIP
IPV4GW = "IPv4 gateway: https://alibabacloud.com/help/en/vpc/user-guide/create-and-manage-an-ipv4-gateway"


def with_gateway(routed: bool = True, **gateway: Any) -> dict[str, Any]:
    """An activated IPv4 gateway with a gateway route table (the system routes of both vSwitch CIDRs to Local),
    vsw-a's 0.0.0.0/0 to the gateway (`routed`) and an EIP on node-2."""
    state = healthy()
    state["ipv4_gateways"] = [{"Ipv4GatewayId": "ipv4gw-k8s", "VpcId": "vpc-k8s", "Enabled": True,
                               "Ipv4GatewayRouteTableId": "vtb-gw", **gateway}]
    state["route_tables"].append({"RouteTableId": "vtb-gw", "VpcId": "vpc-k8s", "RouteTableType": "Custom",
                                  "AssociateType": "Gateway", "Entries": [
                                      {"DestinationCidrBlock": "192.168.0.0/24", "NextHopType": "Local"},
                                      {"DestinationCidrBlock": "192.168.1.0/24", "NextHopType": "Local"}]})
    state["eips"] = [{"AllocationId": "eip-n2", "IpAddress": EIP2, "InstanceType": "EcsInstance",
                      "InstanceId": "i-node2"}]
    if routed:
        state["route_tables"][0]["Entries"][3].update(NextHopType="Ipv4Gateway", NextHopId="ipv4gw-k8s")
    return state


def firewall(state: dict[str, Any], status: str = "Running") -> dict[str, Any]:
    """vsw-a's system route in the gateway route table changed to a firewall instance (i-fw)."""
    state["instances"].append({"InstanceId": "i-fw", "InstanceName": "firewall", "ZoneId": "cn-hangzhou-h",
                               "Status": status, "VpcId": "vpc-k8s", "VSwitchId": "vsw-a",
                               "PrivateIpAddress": ["192.168.0.250"], "SecurityGroupIds": ["sg-nodes"]})
    state["route_tables"][-1]["Entries"][0].update(NextHopType="Instance", NextHopId="i-fw")
    return state


def test_gateway_route_table_and_nat_vswitch_are_collected(collect, emulator) -> None:
    """ListGatewayRouteTableEntries (https://www.alibabacloud.com/help/en/vpc/api-listgatewayroutetableentries): a
    gateway route table's entries come from their own API (next hop Local, an ECS instance or an ENI —
    UpdateGatewayRouteTableEntryAttribute, https://alibabacloud.com/help/en/vpc/developer-reference/
    api-vpc-2016-04-28-updategatewayroutetableentryattribute); DescribeNatGateways names the NAT gateway's vSwitch."""
    state = firewall(with_gateway())
    state["nat_gateways"][0]["VSwitchId"] = "vsw-b"
    inv = collect(state)
    table = next(t for t in inv.route_tables if t.id == "vtb-gw")
    assert table.associate_type == "Gateway"
    assert [(e.destination, e.next_hops[0].type, e.next_hops[0].id) for e in table.entries] == [
        ("192.168.0.0/24", "Instance", "i-fw"), ("192.168.1.0/24", "Local", None)]
    assert inv.nat_gateways[0].vswitch_id == "vsw-b"
    assert "ListGatewayRouteTableEntries" in emulator.calls
    # a gateway whose table the route table listing did not hold: read by its id
    del state["route_tables"][-1]["AssociateType"]
    state["route_tables"][-1]["VpcId"] = "vpc-other"
    inv = collect(state)
    assert [t.associate_type for t in inv.route_tables if t.id == "vtb-gw"] == ["Gateway"]


def test_activated_gateway_routes_decide_outbound(collect) -> None:
    """"Create and manage an IPv4 gateway" (IPV4GW): once activated, instances reach the internet only through
    routes to the gateway; it translates addresses with a public IP (IPv4 gateway overview,
    https://alibabacloud.com/help/en/vpc/user-guide/ipv4-gateway-overview); an address without one needs a NAT
    gateway, whose own vSwitch routes to the gateway ("IPv4 gateway" with an Internet NAT gateway,
    https://www.alibabacloud.com/help/en/vpc/user-guide/create-and-enable-ipv4-gateway-in-vpc-associated-with-internet-
    nat-gateway). Decoys: a public address routed to the gateway passes; a not-activated gateway changes nothing."""
    eip_node = tcp(N2, "8.8.8.8", 443)
    routed = collect(with_gateway())
    r = evaluate_to_internet(routed, "node-2", eip_node)
    assert r.outcome == "pass" and r.hops[0].steps[-1].packet_out.src.exploded == EIP2
    # node-1 has no public address: the gateway alone gives it none
    r = evaluate_to_internet(routed, "node-1", tcp(N1, "8.8.8.8", 443))
    assert r.outcome == "drop" and codes(r) == ["VPC_WRONG_NEXT_HOP"] and "NAT gateway" in r.findings[0].message
    # no public address, vsw-a → NAT gateway; the NAT gateway sits in vsw-b, whose route must lead to the gateway
    state = with_gateway(routed=False)
    state["nat_gateways"][0]["VSwitchId"] = "vsw-b"
    r = evaluate_to_internet(collect(state), "node-1", tcp(N1, "8.8.8.8", 443))
    assert r.outcome == "drop" and codes(r) == ["VPC_NO_ROUTE"] and r.findings[0].hop == "nat:ngw-k8s"
    assert "vtb-zone-i" in r.findings[0].message and "ipv4gw-k8s" in r.findings[0].suggestion
    state["route_tables"][1]["Entries"][3].update(NextHopType="Ipv4Gateway", NextHopId="ipv4gw-k8s")
    r = evaluate_to_internet(collect(state), "node-1", tcp(N1, "8.8.8.8", 443))
    assert r.outcome == "pass" and codes(r) == [] and [h.id for h in r.hops] == ["vpc:vpc-k8s", "nat:ngw-k8s",
                                                                                   "internet"]
    # not activated: traffic is not affected (the EIP and the NAT gateway work as before)
    idle = collect(with_gateway(routed=False, Enabled=False))
    assert evaluate_to_internet(idle, "node-2", eip_node).outcome == "pass"
    assert evaluate_to_internet(idle, "node-1", tcp(N1, "8.8.8.8", 443)).outcome == "pass"


def test_deleted_gateway_leaves_the_vpc_without_internet(collect) -> None:
    """IPV4GW: "If you delete an IPv4 gateway, instances in the VPC cannot access the Internet" — the EIP no longer
    helps, outbound or for the reply of an inbound connection."""
    inv = collect(with_gateway(Status="Deleting"))
    r = evaluate_to_internet(inv, "node-2", tcp(N2, "8.8.8.8", 443))
    assert r.outcome == "drop" and codes(r) == ["VPC_NO_ROUTE"] and "Deleting" in r.findings[0].suggestion
    reply = evaluate_internet_to_instance(inv, tcp(CLIENT, EIP2, 22), reply=True)
    assert reply.outcome == "drop" and reply.hops[0].id == "vpc:vpc-k8s:reply"


def test_internet_to_an_eip_through_the_gateway_route_table(collect) -> None:
    """"Use the gateway route table to control traffic entering the VPC"
    (https://www.alibabacloud.com/help/en/vpc/use-the-gateway-route-table-to-control-traffic-entering-the-vpc): the
    gateway route table decides where internet traffic enters — Local delivers it to the vSwitch, a system route
    changed to an ECS instance hands it to that firewall first (not evaluated: a warning and an assumption that
    matters), a firewall that is not Running forwards nothing (ECS instance lifecycle). Then the network ACL and
    security groups of the NIC, as for any traffic."""
    ssh = tcp(CLIENT, EIP2, 22)
    inv = collect(with_gateway())
    r = evaluate_internet_to_instance(inv, ssh)
    assert r.outcome == "pass" and codes(r) == [] and str(r.flow.dst) == N2
    assert not any(a.could_change_outcome for a in r.assumptions)
    route = next(s for s in r.hops[0].steps if s.kind == "vpc_route")
    assert route.action == "FORWARD" and "vtb-gw" in route.detail
    # decoy next to it: the security group admits 22 from anywhere, not 8080
    denied = evaluate_internet_to_instance(inv, tcp(CLIENT, EIP2, 8080))
    assert denied.outcome == "drop" and codes(denied) == ["SG_DENY"]
    # the reply: vsw-a routes 0.0.0.0/0 to the gateway
    assert evaluate_internet_to_instance(inv, ssh, reply=True).outcome == "pass"

    steered = evaluate_internet_to_instance(collect(firewall(with_gateway())), ssh)
    assert steered.outcome == "pass" and codes(steered) == ["VPC_GATEWAY_ROUTE_REDIRECT"]
    assert steered.findings[0].severity == Severity.WARNING and "i-fw" in steered.findings[0].message
    assert any("i-fw" in a.text and a.could_change_outcome for a in steered.assumptions)
    stopped = evaluate_internet_to_instance(collect(firewall(with_gateway(), "Stopped")), ssh)
    assert stopped.outcome == "drop" and codes(stopped) == ["VPC_NEXT_HOP_NOT_FORWARDING"]
    # node-3 (vsw-b): its gateway route is Local, whatever vsw-a's says
    state = firewall(with_gateway())
    state["eips"].append({"AllocationId": "eip-n3", "IpAddress": "47.1.2.5", "InstanceType": "EcsInstance",
                          "InstanceId": "i-node3"})
    r = evaluate_internet_to_instance(collect(state), tcp(CLIENT, "47.1.2.5", 22))
    assert r.outcome == "pass" and codes(r) == []


def test_reply_of_an_inbound_connection_needs_a_route_to_the_gateway(collect) -> None:
    """IPV4GW: with the gateway activated, a vSwitch without a route to it has no internet access — the request
    from the internet arrives, its reply is lost (VPC_NO_ROUTE at the reply hop). Decoy: before activation the
    EIP answers whatever the routes say."""
    ssh = tcp(CLIENT, EIP2, 22)
    inv = collect(with_gateway(routed=False))
    assert evaluate_internet_to_instance(inv, ssh).outcome == "pass"
    reply = evaluate_internet_to_instance(inv, ssh, reply=True)
    assert reply.outcome == "drop" and codes(reply) == ["VPC_NO_ROUTE"]
    assert reply.findings[0].hop == "vpc:vpc-k8s:reply" and CLIENT in reply.findings[0].message
    idle = collect(with_gateway(routed=False, Enabled=False))
    assert evaluate_internet_to_instance(idle, ssh, reply=True).outcome == "pass"
    # an EIP bound to a secondary private IP of an ENI serves that address (EIP-ENI)
    state = with_gateway()
    state["eips"] = [{"AllocationId": "eip-pod", "IpAddress": "47.1.2.6", "InstanceType": "NetworkInterface",
                      "InstanceId": "eni-pods2", "PrivateIpAddress": "192.168.0.102"}]
    r = evaluate_internet_to_instance(collect(state), tcp(CLIENT, "47.1.2.6", 22))
    assert r.outcome == "pass" and str(r.flow.dst) == "192.168.0.102"


def test_clb_with_an_activated_gateway_is_stated(collect) -> None:
    """IPv4 gateway overview: the gateway translates the public addresses of ECS instances and ENIs; the pages read
    say nothing of CLB traffic passing it — stated, and said to matter only where its gateway route table would
    steer a serving backend to an appliance."""
    plain = lb(collect(with_gateway()))
    assert plain.outcome == "pass" and any("ipv4gw-k8s" in a.text and not a.could_change_outcome
                                           for a in plain.assumptions)
    steered = lb(collect(firewall(with_gateway())))
    assert steered.outcome == "pass" and any("i-fw" in a.text and a.could_change_outcome
                                             for a in steered.assumptions)


def test_gateways_not_collected_are_said_to_matter(collect) -> None:
    """IPV4GW: with an activated IPv4 gateway only routes to it reach the internet — an inventory that did not
    collect the gateways (older, or ListIpv4Gateways failed) cannot rule that out, and says so."""
    older = collect(with_gateway(routed=False)).model_copy(update={"ipv4_gateways": None})
    for r in (evaluate_to_internet(older, "node-1", tcp(N1, "8.8.8.8", 443)),
              evaluate_internet_to_instance(older, tcp(CLIENT, EIP2, 22), reply=True)):
        assert r.outcome == "pass"
        assert any("IPv4 gateways were not collected" in a.text and a.could_change_outcome for a in r.assumptions)
    current = evaluate_to_internet(collect(healthy()), "node-1", tcp(N1, "8.8.8.8", 443))
    assert not any("IPv4 gateways" in a.text for a in current.assumptions)  # decoy: collected, none exist


NAT_IP = "47.96.0.10"  # the NAT gateway's public IP (also its SNAT address)


def with_dnat(*entries: dict[str, Any]) -> dict[str, Any]:
    state = healthy()
    state["nat_gateways"][0]["ForwardEntries"] = [
        {"ForwardEntryId": f"fwd-{n}", "ExternalIp": NAT_IP, "IpProtocol": "TCP", **e} for n, e in enumerate(entries)]
    return state


def test_dnat_forwards_the_nat_gateway_port_to_the_internal_address(collect) -> None:
    """NAT Gateway API, *CreateForwardEntry* (https://www.alibabacloud.com/help/doc-detail/36058.htm): a DNAT entry
    forwards packets of its protocol from ExternalIp:ExternalPort to InternalIp:InternalPort (IpProtocol TCP, UDP or
    Any) and sends the responses back the same way; the translated packet then meets the internal address's network
    ACL and security groups like any inbound packet [SG-RULES]. Faults: no entry for the port (NAT_NO_DNAT); an entry
    to the wrong internal port, which node-1's group does not open (SG_DENY). Decoys: the NAT gateway's IP also
    serves SNAT, another entry forwards another port elsewhere, and an entry for UDP on the same port does not
    catch TCP."""
    ssh = {"ExternalPort": "2222", "InternalIp": "192.168.0.10", "InternalPort": "22"}
    decoys = [{"ExternalPort": "8080", "InternalIp": "192.168.0.11", "InternalPort": "8080"},
              {"ExternalPort": "2223", "InternalIp": "192.168.0.11", "InternalPort": "22", "IpProtocol": "UDP"}]
    inv = collect(with_dnat(ssh, *decoys))
    ok = evaluate_internet_to_instance(inv, tcp(CLIENT, NAT_IP, 2222))
    assert ok.outcome == "pass" and codes(ok) == [], ok.findings
    assert ok.flow is not None and (str(ok.flow.dst), ok.flow.dport) == ("192.168.0.10", 22)
    assert [h.id for h in ok.hops] == ["nat:ngw-k8s", "vpc:vpc-k8s"]
    assert "fwd-0" in ok.hops[0].steps[0].detail

    none = evaluate_internet_to_instance(inv, tcp(CLIENT, NAT_IP, 2223))  # only a UDP entry on 2223
    assert none.outcome == "drop" and codes(none) == ["NAT_NO_DNAT"] and none.findings[0].hop == "nat:ngw-k8s"
    assert "2223" in none.findings[0].message and "ngw-k8s" in none.findings[0].message

    wrong = evaluate_internet_to_instance(collect(with_dnat({**ssh, "InternalPort": "2200"}, *decoys)),
                                          tcp(CLIENT, NAT_IP, 2222))
    assert wrong.outcome == "drop" and codes(wrong) == ["SG_DENY"] and wrong.findings[0].hop == "vpc:vpc-k8s"
    assert wrong.flow is not None and wrong.flow.dport == 2200

    mapped = evaluate_internet_to_instance(collect(with_dnat({"ExternalPort": "Any", "InternalIp": "192.168.0.10",
                                                              "InternalPort": "Any", "IpProtocol": "Any"})),
                                           tcp(CLIENT, NAT_IP, 22))  # IP mapping: every port, as it came
    assert mapped.outcome == "pass" and mapped.flow is not None and mapped.flow.dport == 22
    pending = evaluate_internet_to_instance(collect(with_dnat({**ssh, "Status": "Pending"})), tcp(CLIENT, NAT_IP, 2222))
    assert codes(pending) == ["NAT_NO_DNAT"]
