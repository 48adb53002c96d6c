"""The Alibaba provider through the real SDK against the emulator: content, pagination,
throttling, signatures, credentials."""

from __future__ import annotations

import json

import pytest

from lab.cloudemu import DEFAULT_KEY_ID, CloudEmulator
from services.cloud.alibaba import AlibabaProvider, Credentials
from services.cloud.provider import CloudError
from shared.cloud import CloudInventory, dump_inventory, load_inventory
from tests.cloud.conftest import NODES, healthy, node


def test_collects_the_healthy_cluster(collect) -> None:
    inv = collect(healthy())
    assert inv.errors == []
    assert inv.nodes == {"node-1": "i-node1", "node-2": "i-node2", "node-3": "i-node3"}
    assert {i.id for i in inv.instances} == {"i-node1", "i-node2", "i-node3"}
    pods = next(e for e in inv.network_interfaces if e.id == "eni-pods2")
    assert pods.private_ips == ["192.168.0.100", "192.168.0.101", "192.168.0.102"] and pods.instance_id == "i-node2"
    group = inv.security_groups[0]
    assert group.type == "normal" and group.inner_access_policy == "Accept"
    ssh = group.rules[0]
    assert (ssh.direction, ssh.policy, ssh.priority, ssh.protocol, ssh.port_from, ssh.port_to, ssh.source_cidr) == \
        ("ingress", "accept", 1, "tcp", 22, 22, "0.0.0.0/0")
    tables = {t.id: t for t in inv.route_tables}
    assert tables["vtb-zone-i"].type == "Custom" and tables["vtb-zone-i"].vswitch_ids == ["vsw-b"]
    assert {v.id: v.route_table_id for v in inv.vswitches} == {"vsw-a": "vtb-system", "vsw-b": "vtb-zone-i"}
    assert [e.source_vswitch_id for e in inv.nat_gateways[0].snat_entries] == ["vsw-a", "vsw-b"]
    lb = inv.load_balancers[0]
    assert [(li.port, li.protocol) for li in lb.listeners] == [(80, "tcp"), (53, "udp"), (443, "tcp")]
    assert [h.server_id for h in lb.listeners[0].health] == ["i-node1", "i-node2", "i-node3"]
    assert lb.vserver_groups[0].backends[1].server_ip == "192.168.0.102"


def test_acl_is_collected_when_a_listener_uses_it(collect) -> None:
    from tests.cloud.conftest import EXAMPLES

    inv = collect(EXAMPLES / "faults" / "LB_ACL_DENY.json")
    assert [(a.id, a.entries) for a in inv.acls] == [("acl-office", ["10.0.0.0/8"])]


def _big_state() -> dict:
    state = healthy()
    for n in range(130):
        state["instances"].append({"InstanceId": f"i-extra{n}", "VpcId": "vpc-k8s", "VSwitchId": "vsw-a",
                                   "PrivateIpAddress": [f"192.168.2.{n}"], "SecurityGroupIds": ["sg-nodes"]})
    rules = state["security_groups"][0]["Permissions"]
    rules += [{"Direction": "ingress", "Policy": "Accept", "Priority": 50, "IpProtocol": "TCP",
               "PortRange": f"{10000 + n}/{10000 + n}", "SourceCidrIp": "10.1.0.0/16"} for n in range(130)]
    entries = state["route_tables"][0]["Entries"]
    entries += [{"DestinationCidrBlock": f"172.20.{n}.0/24", "NextHopType": "Instance", "NextHopId": "i-node1"}
                for n in range(120)]
    for n in range(60):
        state["security_groups"].append({"SecurityGroupId": f"sg-x{n}", "VpcId": "vpc-k8s"})
    state["acls"][0]["Entries"] += [{"AclEntryIP": f"10.9.{n}.0/24"} for n in range(70)]
    state["load_balancers"][0]["Listeners"][0].update(AclStatus="on", AclType="white", AclId="acl-office")
    return state


def test_pagination_collects_every_page(collect, emulator: CloudEmulator) -> None:
    inv = collect(_big_state())
    assert len(inv.instances) == 133
    assert len(inv.security_groups) == 61
    assert len(next(g for g in inv.security_groups if g.id == "sg-nodes").rules) == 135
    assert len(next(t for t in inv.route_tables if t.id == "vtb-system").entries) == 125
    assert len(inv.acls[0].entries) == 71
    calls = emulator.calls
    # more than one page each: PageNumber (groups, ACL) and NextToken (instances, rules, routes) styles
    for action in ("DescribeInstances", "DescribeSecurityGroups", "DescribeRouteEntryList",
                   "DescribeAccessControlListAttribute"):
        assert calls.count(action) >= 2, action
    assert calls.count("DescribeSecurityGroupAttribute") >= 61 + 2


def test_throttling_is_retried_with_backoff(collect, emulator: CloudEmulator, provider: AlibabaProvider) -> None:
    emulator.set_state(healthy())
    emulator.throttle(3, "DescribeSecurityGroups")
    inv = provider.collect(NODES)
    assert inv.errors == [] and len(inv.security_groups) == 1
    assert provider.retries == 3


def test_throttling_that_never_ends_is_a_recorded_error(emulator: CloudEmulator, provider: AlibabaProvider) -> None:
    emulator.throttle(100, "DescribeRouteTableList")
    inv = provider.collect(NODES)
    assert inv.route_tables == []
    assert any("route tables" in e and "Throttling" in e for e in inv.errors)
    emulator.throttle(0, "DescribeRouteTableList")


def test_wrong_secret_is_rejected_by_the_signature_check(emulator: CloudEmulator) -> None:
    bad = AlibabaProvider(Credentials(DEFAULT_KEY_ID, "not-the-secret"), endpoint=f"http://{emulator.endpoint}")
    with pytest.raises(CloudError, match=r"InvalidAccessKeySecret|SignatureDoesNotMatch"):
        bad.collect(NODES)
    unknown = AlibabaProvider(Credentials("nobody", "x"), endpoint=f"http://{emulator.endpoint}")
    with pytest.raises(CloudError, match="InvalidAccessKeyId"):
        unknown.collect(NODES)


def test_emulator_rejects_a_tampered_request(emulator: CloudEmulator) -> None:
    import urllib.error
    import urllib.request

    url = f"http://{emulator.endpoint}/?Action=DescribeVpcs&Version=2016-04-28&AccessKeyId={DEFAULT_KEY_ID}" \
          "&Signature=AAAA&SignatureMethod=HMAC-SHA1&Format=JSON"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, method="POST"))
    assert err.value.code == 400
    assert b'"Code": "SignatureDoesNotMatch"' in err.value.read()


def test_node_without_provider_id_is_matched_by_internal_ip(collect) -> None:
    bare = node("node-3", "i-node3")
    bare["spec"] = {}
    bare["status"]["addresses"] = [{"type": "InternalIP", "address": "192.168.1.12"}]
    inv = collect(healthy(), nodes=[NODES[0], bare])
    assert inv.nodes["node-3"] == "i-node3"
    assert any("matched to i-node3 by InternalIP" in s for s in inv.statements)


def test_missing_instance_is_an_error_not_a_gap(collect) -> None:
    inv = collect(healthy(), nodes=[*NODES, node("node-9", "i-gone")])
    assert "node-9" not in inv.nodes
    assert any("i-gone" in e for e in inv.errors)


def test_credentials_from_env_and_secret_file(tmp_path) -> None:
    creds = Credentials.load(env={"ALICLOUD_ACCESS_KEY": "id", "ALICLOUD_SECRET_KEY": "s3cret"})
    assert creds.access_key_id == "id" and "s3cret" not in repr(creds)
    (tmp_path / "access-key-id").write_text("id2\n")
    (tmp_path / "access-key-secret").write_text("s2\n")
    assert Credentials.load(tmp_path, env={}) == Credentials("id2", "s2")
    with pytest.raises(CloudError, match="no Alibaba Cloud credentials"):
        Credentials.load(None, env={})


def test_secret_never_reaches_the_inventory(collect, caplog) -> None:
    caplog.set_level("DEBUG")
    inv = collect(healthy())
    from lab.cloudemu import DEFAULT_KEY_SECRET

    assert DEFAULT_KEY_SECRET not in inv.model_dump_json()
    assert DEFAULT_KEY_SECRET not in caplog.text


def test_inventory_round_trips_through_a_snapshot_directory(collect, tmp_path) -> None:
    inv = collect(healthy())
    dump_inventory(inv, tmp_path / "cloud")
    assert load_inventory(tmp_path / "cloud") == inv
    other = CloudInventory(provider="alibaba", regions=["cn-beijing"], nodes={"node-9": "i-bj"})
    (tmp_path / "cloud" / "beijing.json").write_text(other.model_dump_json())
    merged = load_inventory(tmp_path / "cloud")
    assert set(merged.regions) == {"cn-beijing", "cn-hangzhou"}
    assert merged.nodes["node-9"] == "i-bj" and len(merged.instances) == len(inv.instances)
    empty = load_inventory(tmp_path / "nothing")
    assert not empty.modelled and "no cloud inventory" in empty.statements[0]


def test_forbidden_ram_on_the_nodes_instances_is_one_cloud_error(emulator: CloudEmulator,
                                                                  provider: AlibabaProvider) -> None:
    """The SDK's ServerException never leaves the provider: a call it will not retry is a CloudError."""
    emulator.deny("DescribeInstances", "Forbidden.RAM")
    try:
        with pytest.raises(CloudError, match=r"DescribeInstances: Forbidden.RAM: User not authorized"):
            provider.collect(NODES)
    finally:
        emulator.deny("DescribeInstances", None)


def test_forbidden_ram_on_one_kind_is_a_partial_error(emulator: CloudEmulator, provider: AlibabaProvider) -> None:
    emulator.deny("DescribeSecurityGroups", "Forbidden.RAM")
    try:
        inv = provider.collect(NODES)
    finally:
        emulator.deny("DescribeSecurityGroups", None)
    assert inv.instances and inv.security_groups == []
    assert any(e.startswith("security groups of ") and "Forbidden.RAM" in e for e in inv.errors), inv.errors


def _extended_state() -> dict:
    """The healthy state plus one of every object collected since inventory version 1 was defined."""
    state = healthy()
    state["prefix_lists"] = [{"PrefixListId": "pl-office", "PrefixListName": "office",
                              "Entries": [{"Cidr": "10.8.0.0/16"}, {"Cidr": "10.9.0.0/16"}]},
                             {"PrefixListId": "pl-unused", "Entries": [{"Cidr": "10.10.0.0/16"}]}]
    state["port_lists"] = [{"PortRangeListId": "prl-web", "Entries": [{"PortRange": "80/80"},
                                                                      {"PortRange": "8000/8999"}]}]
    state["security_groups"][0]["Permissions"] += [
        {"Direction": "ingress", "Policy": "Accept", "Priority": 2, "IpProtocol": "TCP", "PortRangeListId": "prl-web",
         "SourcePrefixListId": "pl-office"},
        {"Direction": "ingress", "Policy": "Accept", "Priority": 3, "IpProtocol": "ALL", "PortRange": "-1/-1",
         "SourceGroupId": "sg-partner", "SourceGroupOwnerAccount": "1234567890"}]
    state["network_acls"] = [{"NetworkAclId": "nacl-b", "VpcId": "vpc-k8s",
                              "Resources": [{"ResourceId": "vsw-b", "ResourceType": "VSwitch"}],
                              "IngressAclEntries": [
                                  {"Policy": "drop", "Protocol": "tcp", "SourceCidrIp": "0.0.0.0/0", "Port": "22/22"},
                                  {"Policy": "accept", "Protocol": "all", "SourceCidrIp": "0.0.0.0/0"}],
                              "EgressAclEntries": [{"Policy": "accept", "Protocol": "all",
                                                    "DestinationCidrIp": "0.0.0.0/0"}]}]
    state["eips"] = [{"AllocationId": "eip-pod", "IpAddress": "47.1.1.101", "InstanceType": "NetworkInterface",
                      "InstanceId": "eni-pods2", "PrivateIpAddress": "192.168.0.101", "Status": "InUse"}]
    state["ipv4_gateways"] = [{"Ipv4GatewayId": "ipv4gw-k8s", "VpcId": "vpc-k8s", "Enabled": True,
                               "Ipv4GatewayRouteTableId": "vtb-gw"}]
    state["route_tables"].append({"RouteTableId": "vtb-gw", "VpcId": "vpc-k8s", "RouteTableType": "Custom",
                                  "AssociateType": "Gateway", "Entries": [
                                      {"DestinationCidrBlock": "192.168.0.0/24", "NextHopType": "NetworkInterface",
                                       "NextHopId": "eni-pods2"}]})
    listener = state["load_balancers"][0]["Listeners"][0]
    listener.update(AclStatus="on", AclType="white", AclIds=["acl-office", "acl-empty"], Scheduler="rr",
                    HealthCheck="off", MasterSlaveServerGroupId="rsp-ms")
    state["acls"].append({"AclId": "acl-empty", "AclName": "empty", "Entries": []})
    state["master_slave_server_groups"] = [{"MasterSlaveServerGroupId": "rsp-ms", "MasterSlaveBackendServers": [
        {"ServerId": "i-node1", "Port": 30080, "ServerType": "Master"},
        {"ServerId": "i-node2", "Port": 30080, "ServerType": "Slave", "Weight": 50}]}]
    return state


def test_collects_the_objects_added_since_version_1(collect, emulator: CloudEmulator) -> None:
    """Prefix lists and port lists referenced by rules (DescribePrefixListAttributes, DescribePortRangeListEntries),
    network ACLs with ordered entries and their vSwitches (DescribeNetworkAcls), EIPs with the private IP they
    serve (DescribeEipAddresses), IPv4 gateways (ListIpv4Gateways), and listener details (Scheduler, HealthCheck,
    AclIds, primary/secondary server groups) — each through the real SDK."""
    inv = collect(_extended_state())
    assert inv.errors == []
    assert [(p.id, p.entries) for p in inv.prefix_lists] == [("pl-office", ["10.8.0.0/16", "10.9.0.0/16"])]
    assert [(p.id, p.entries) for p in inv.port_lists] == [("prl-web", ["80/80", "8000/8999"])]
    rules = {r.source_prefix_list_id or r.source_group_id: r for r in inv.security_groups[0].rules}
    assert rules["pl-office"].port_range_list_id == "prl-web"
    assert rules["sg-partner"].source_group_owner_account == "1234567890"
    (acl,) = inv.network_acls
    assert acl.vswitch_ids == ["vsw-b"] and [(e.policy, e.port) for e in acl.ingress] == [("drop", "22/22"),
                                                                                           ("accept", "-1/-1")]
    assert {v.id: v.network_acl_id for v in inv.vswitches} == {"vsw-a": None, "vsw-b": "nacl-b"}
    assert [(e.ip, e.private_ip, e.instance_id) for e in inv.eips] == [("47.1.1.101", "192.168.0.101", "eni-pods2")]
    assert [(g.id, g.enabled, g.route_table_id) for g in inv.ipv4_gateways] == [("ipv4gw-k8s", True, "vtb-gw")]
    gateway_table = next(t for t in inv.route_tables if t.id == "vtb-gw")
    assert gateway_table.associate_type == "Gateway" and gateway_table.entries[0].next_hops[0].id == "eni-pods2"
    listener = inv.load_balancers[0].listeners[0]
    assert (listener.scheduler, listener.health_check, listener.acl_ids, listener.master_slave_server_group_id) == \
        ("rr", "off", ["acl-office", "acl-empty"], "rsp-ms")
    assert {a.id for a in inv.acls} == {"acl-office", "acl-empty"}
    (ms,) = inv.load_balancers[0].master_slave_server_groups
    assert [(b.server_id, b.server_type, b.weight) for b in ms.backends] == [("i-node1", "Master", 100),
                                                                            ("i-node2", "Slave", 50)]
    for action in ("DescribePrefixListAttributes", "DescribePortRangeListEntries", "DescribeNetworkAcls",
                   "DescribeEipAddresses", "ListIpv4Gateways", "DescribeMasterSlaveServerGroupAttribute"):
        assert action in emulator.calls, action


def test_an_inventory_without_the_new_fields_still_loads(collect, tmp_path) -> None:
    """Absent means not collected (None), never "none exist"."""
    inv = collect(healthy())
    assert inv.network_acls == [] and inv.prefix_lists == []  # collected: there are none
    old = json.loads(inv.model_dump_json())
    for key in ("prefix_lists", "port_lists", "network_acls", "eips", "ipv4_gateways"):
        old.pop(key)
    (tmp_path / "inventory.json").write_text(json.dumps(old))
    loaded = load_inventory(tmp_path)
    assert loaded.network_acls is None and loaded.prefix_lists is None and loaded.eips is None
    assert loaded.load_balancers[0].listeners[0].scheduler == "wrr"


def test_the_new_objects_round_trip_through_a_snapshot(collect, tmp_path) -> None:
    """Snapshot capture writes what was collected, snapshot mode reads the same back (docs/cloud.md, Snapshot)."""
    inv = collect(_extended_state())
    dump_inventory(inv, tmp_path / "cloud")
    loaded = load_inventory(tmp_path / "cloud")
    assert loaded == inv and loaded.network_acls and loaded.prefix_lists and loaded.eips and loaded.ipv4_gateways


def test_merging_with_an_older_inventory_keeps_not_collected(collect) -> None:
    """One region's file from before network ACLs were collected: the merged cloud does not pass for having none."""
    new = collect(healthy())
    old = CloudInventory(provider="alibaba", regions=["cn-beijing"])
    assert old.network_acls is None and new.network_acls == []
    assert new.merge(old).network_acls is None and old.merge(new).eips is None
    assert new.merge(new).network_acls == []


def test_a_hand_written_ecs_instance_next_hop_loads_as_instance(collect, tmp_path) -> None:
    """Gateway route tables name an ECS next hop `EcsInstance` (VPC, ListGatewayRouteTableEntries), VPC route tables
    `Instance` (VPC, DescribeRouteEntryList): a snapshot written by hand with either loads as the same inventory —
    the evaluation compares next hops by one name."""
    inv = collect(healthy())
    raw = json.loads(inv.model_dump_json())
    hops = [h for t in raw["route_tables"] for e in t["entries"] for h in e["next_hops"] if h["type"] == "Instance"]
    assert hops  # the healthy cloud routes pod CIDRs to instances
    for hop in hops:
        hop["type"] = "EcsInstance"
    (tmp_path / "inventory.json").write_text(json.dumps(raw))
    assert load_inventory(tmp_path) == inv
