"""An emulated Alibaba Cloud around a lab: resolved scenario → cloud emulator state, the emulator
daemon, and cloud faults.

The state (lab/cloudemu's state-file format, OpenAPI field names) holds what ACK would have made:
one ECS instance per node (the lab's providerID instance id, the node IP), a VPC and a vSwitch
covering the underlay, one security group with the usual Kubernetes rules, a system route table
(host-gw: one entry per node pod CIDR → that node's instance; a default route to the NAT
gateway), a NAT gateway with an SNAT entry for the vSwitch, and a CLB per LoadBalancer Service
(listeners on its ports, every node a healthy backend on the nodePort).

A Terway lab (terway-eniip, terway-eni) adds what Terway makes ACK create: the pod vSwitch (eni-config
`vswitches`) in the same route table, an SNAT entry for it, the pods' ENIs — one secondary ENI per node
whose secondary private IPs are that node's pod addresses (eniip), or one ENI per pod whose primary IP is
the pod address (exclusive) — attached to the node's instance, in the ENI security group eni-config names
(`security_groups`, which may differ from the nodes' group).

The emulator is an API, not a dataplane: a cloud fault changes what the cloud inspector reads
(and so the diagnosis), never what the namespaces' packets do.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.cloudemu.state import apply_patch, normalise
from lab.dataplane import eni_mac, pod_eni_mac
from lab.objects import REGION, ZONE, cloud_id, instance_id, pod_eni_id
from lab.scenario import ResolvedScenario
from lab.state import CloudInfo

State = dict[str, Any]
POD_CIDR_RULE = "pod CIDR"
CLB_RANGE = "100.64.0.0/10"  # where CLB traffic and health checks come from
NAT_IP = "47.96.0.10"
NODE_PORTS = "30000/32767"
NODE_EIP = "47.96.0.20"  # the EIP the IPv4-gateway cases bind to a node (its Node lists it as ExternalIP)
NAT_VSWITCH_CIDR = "10.255.0.0/24"  # the NAT gateway's own vSwitch, when it has one (a secondary VPC CIDR)


_id = cloud_id


def ids(rs: ResolvedScenario) -> dict[str, str]:
    """The cloud object ids of a lab (deterministic per scenario name)."""
    name = rs.scenario.name
    return {"vpc": _id("vpc", name), "vswitch": _id("vsw", name), "group": _id("sg", name),
            "route_table": _id("vtb", name), "nat": _id("ngw", name), "pod_snat": _id("snat", name, "pods")}


def load_balancer_id(rs: ResolvedScenario, service_key: str) -> str:
    return _id("lb", rs.scenario.name, service_key)


def _permission(direction: str, protocol: str, ports: str, peer: str, description: str,
                policy: str = "Accept", priority: int = 1) -> dict[str, Any]:
    key = "SourceCidrIp" if direction == "ingress" else "DestCidrIp"
    return {"Direction": direction, "Policy": policy, "Priority": priority, "IpProtocol": protocol,
            "PortRange": ports, key: peer, "Description": description}


def cloud_state(rs: ResolvedScenario) -> State:
    """The emulator state for a lab, with the scenario's `cloud.patch` applied."""
    sc, i = rs.scenario, ids(rs)
    underlay = sc.underlay_cidr
    instances = [{"InstanceId": instance_id(sc.name, n.name), "InstanceName": n.name, "ZoneId": ZONE,
                  "Status": "Running", "VpcId": i["vpc"], "VSwitchId": i["vswitch"], "PrivateIpAddress": [n.ip],
                  "SecurityGroupIds": [i["group"]]} for n in rs.nodes]
    group = {"SecurityGroupId": i["group"], "SecurityGroupName": f"k8s-{sc.name}-nodes", "VpcId": i["vpc"],
             "SecurityGroupType": "normal", "InnerAccessPolicy": "Accept", "Permissions": [
                 _permission("ingress", "TCP", "22/22", "0.0.0.0/0", "ssh"),
                 _permission("ingress", "ALL", "-1/-1", sc.cluster_cidr, POD_CIDR_RULE),
                 _permission("ingress", "TCP", NODE_PORTS, CLB_RANGE, "CLB traffic and health checks"),
                 _permission("ingress", "UDP", NODE_PORTS, CLB_RANGE, "CLB UDP traffic"),
                 _permission("ingress", "ICMP", "-1/-1", "0.0.0.0/0", "ping"),
                 _permission("egress", "ALL", "-1/-1", "0.0.0.0/0", "everything out")]}
    entries = []
    if sc.cni == "host-gw":  # routed pod CIDRs need VPC routes; vxlan only ever shows node addresses
        entries += [{"DestinationCidrBlock": n.pod_cidr, "Type": "Custom", "NextHopType": "Instance",
                     "NextHopId": instance_id(sc.name, n.name)} for n in rs.nodes]
    nat_gateway = sc.cloud is None or sc.cloud.nat_gateway
    if nat_gateway:
        entries.append({"DestinationCidrBlock": "0.0.0.0/0", "Type": "Custom", "NextHopType": "NatGateway",
                        "NextHopId": i["nat"]})
    state: State = {
        "description": f"emulated cloud of lab scenario {sc.name}", "region": REGION,
        "vpcs": [{"VpcId": i["vpc"], "VpcName": f"k8s-{sc.name}", "CidrBlock": underlay}],
        "vswitches": [{"VSwitchId": i["vswitch"], "VpcId": i["vpc"], "CidrBlock": underlay, "ZoneId": ZONE}],
        "instances": instances, "security_groups": [group],
        "route_tables": [{"RouteTableId": i["route_table"], "VpcId": i["vpc"], "RouteTableType": "System",
                          "VSwitchIds": [i["vswitch"]], "Entries": entries}],
        "network_interfaces": [],
        "nat_gateways": [{"NatGatewayId": i["nat"], "Name": f"k8s-{sc.name}-nat", "VpcId": i["vpc"],
                          "Status": "Available", "IpList": [NAT_IP], "ForwardEntries": [], "SnatEntries": [
                              {"SnatEntryId": _id("snat", sc.name), "SourceVSwitchId": i["vswitch"],
                               "SourceCIDR": underlay, "SnatIp": NAT_IP}]}] if nat_gateway else [],
        "load_balancers": [_load_balancer(rs, svc_key) for svc_key in _lb_services(rs)],
    }
    if sc.terway_mode:
        _add_terway(state, rs)
    return normalise(apply_patch(state, sc.cloud.patch) if sc.cloud else state)


def _add_terway(state: State, rs: ResolvedScenario) -> None:
    """The pod vSwitch (a secondary VPC CIDR when outside the VPC's), its SNAT entry, the ENI security group
    and the pods' ENIs (see the module docstring)."""
    sc, i = rs.scenario, ids(rs)
    pods_cidr, pod_vsw, eni_group = sc.terway.pod_vswitch_cidr, sc.terway.pod_vswitch_id, sc.terway.security_group_id
    state["vpcs"][0]["SecondaryCidrBlocks"] = [pods_cidr]
    state["vswitches"].append({"VSwitchId": pod_vsw, "VpcId": i["vpc"], "CidrBlock": pods_cidr, "ZoneId": ZONE})
    state["route_tables"][0]["VSwitchIds"].append(pod_vsw)
    for nat in state["nat_gateways"]:
        nat["SnatEntries"].append({"SnatEntryId": i["pod_snat"], "SourceVSwitchId": pod_vsw, "SourceCIDR": pods_cidr,
                                   "SnatIp": NAT_IP})
    vpc = [sc.underlay_cidr, pods_cidr]
    state["security_groups"].append({
        "SecurityGroupId": eni_group, "SecurityGroupName": f"k8s-{sc.name}-pods", "VpcId": i["vpc"],
        "SecurityGroupType": "normal", "InnerAccessPolicy": "Accept", "Permissions": [
            *(_permission("ingress", "ALL", "-1/-1", cidr, "the VPC") for cidr in vpc),
            _permission("ingress", "ICMP", "-1/-1", "0.0.0.0/0", "ping"),
            _permission("egress", "ALL", "-1/-1", "0.0.0.0/0", "everything out")]})
    pods = sorted((p for p in rs.pods if not p.spec.host_network), key=lambda p: p.spec.key)
    base = {"Type": "Secondary", "Status": "InUse", "VpcId": i["vpc"], "VSwitchId": pod_vsw,
            "SecurityGroupIds": [eni_group]}
    # a pod's own EIP, bound to its address on the ENI holding it (what its PodEIP declares)
    state.setdefault("eips", []).extend(
        {"AllocationId": _id("eip", sc.name, p.spec.key), "IpAddress": p.spec.eip, "Status": "InUse",
         "InstanceType": "NetworkInterface", "InstanceId": pod_eni_id(rs, p), "PrivateIpAddress": p.ip}
        for p in pods if p.spec.eip)
    if sc.cni == "terway-eni":  # one ENI per pod, the pod address its primary IP (lab.dataplane's order)
        state["network_interfaces"] += [
            {**base, "NetworkInterfaceId": _id("eni", sc.name, p.spec.key), "MacAddress": pod_eni_mac(j),
             "InstanceId": instance_id(sc.name, p.spec.node), "PrivateIpAddress": p.ip} for j, p in enumerate(pods)]
        return
    hosts = ipaddress.ip_network(pods_cidr).network_address
    for n, node in enumerate(rs.nodes):  # the ENI's own primary takes a low address resolve() leaves free
        state["network_interfaces"].append({
            **base, "NetworkInterfaceId": _id("eni", sc.name, node.name), "MacAddress": eni_mac(n),
            "InstanceId": instance_id(sc.name, node.name), "PrivateIpAddress": str(hosts + 11 + n),
            "SecondaryIps": [p.ip for p in pods if p.spec.node == node.name]})


def _lb_services(rs: ResolvedScenario) -> list[str]:
    return [s.spec.key for s in rs.services if s.spec.type == "LoadBalancer" and s.load_balancer_ip]


def _load_balancer(rs: ResolvedScenario, service_key: str) -> dict[str, Any]:
    sc, i = rs.scenario, ids(rs)
    svc = next(s for s in rs.services if s.spec.key == service_key)
    backends = [{"ServerId": instance_id(sc.name, n.name), "Type": "ecs", "ServerIp": n.ip, "Weight": 100}
                for n in rs.nodes]
    listeners = [{"ListenerPort": p.spec.port, "ListenerProtocol": p.spec.protocol.lower(), "Status": "running",
                  "BackendServerPort": p.node_port, "AclStatus": "off",
                  "Health": [{"ServerId": b["ServerId"], "ServerIp": b["ServerIp"], "Port": p.node_port,
                              "ServerHealthStatus": "normal"} for b in backends]} for p in svc.ports]
    return {"LoadBalancerId": load_balancer_id(rs, service_key),
            "LoadBalancerName": f"kube-{svc.spec.namespace}-{svc.spec.name}", "LoadBalancerStatus": "active",
            "Address": svc.load_balancer_ip, "AddressType": "internet", "VpcId": i["vpc"],
            "BackendServers": backends, "Listeners": listeners}


# ------------------------------------------------------------------ cloud faults
# Each takes the lab's emulator state and returns a changed copy, the way an operator's console
# change would look to the cloud inspector.


def _lb(state: State, rs: ResolvedScenario, service: str) -> dict[str, Any]:
    lb_id = load_balancer_id(rs, service)
    return next(lb for lb in state["load_balancers"] if lb["LoadBalancerId"] == lb_id)


def _listener(state: State, rs: ResolvedScenario, service: str, port: int) -> dict[str, Any]:
    return next(li for li in _lb(state, rs, service)["Listeners"] if li["ListenerPort"] == port)


def _route(state: State, rs: ResolvedScenario, node: str) -> dict[str, Any]:
    cidr = rs.node(node).pod_cidr
    return next(e for e in state["route_tables"][0]["Entries"] if e["DestinationCidrBlock"] == cidr)


def sg_deny(state: State, rs: ResolvedScenario, *, protocol: str, port: int,
            inner_access_policy: str | None = None, eni: bool = False) -> None:
    """A priority-1 ingress drop rule on the node group (`eni`: on the Terway ENIs' group instead), which wins
    over every accept rule — but not over InnerAccessPolicy Accept between the group's own members (pass
    "Drop" for member → member packets)."""
    wanted = rs.scenario.terway.security_group_id if eni else ids(rs)["group"]
    group = next(g for g in state["security_groups"] if g["SecurityGroupId"] == wanted)
    group["Permissions"].insert(0, _permission(
        "ingress", protocol.upper(), f"{port}/{port}", "0.0.0.0/0", f"block {protocol} {port}", policy="Drop"))
    if inner_access_policy is not None:
        group["InnerAccessPolicy"] = inner_access_policy


def sg_not_shared(state: State, rs: ResolvedScenario, *, node: str) -> None:
    """Move a node into a group of its own that admits only ssh."""
    isolated = _id("sg", rs.scenario.name, "isolated")
    next(i for i in state["instances"] if i["InstanceName"] == node)["SecurityGroupIds"] = [isolated]
    state["security_groups"].append({
        "SecurityGroupId": isolated, "SecurityGroupName": "isolated", "VpcId": ids(rs)["vpc"],
        "SecurityGroupType": "normal", "InnerAccessPolicy": "Accept",
        "Permissions": [_permission("ingress", "TCP", "22/22", "0.0.0.0/0", "ssh")]})


def vpc_no_route(state: State, rs: ResolvedScenario, *, node: str | None = None, pods: bool = False) -> None:
    """The VPC route to `node`'s pod CIDR removed; `pods` (Terway): the pod vSwitch bound to a custom route
    table of its own that lacks the default route to the NAT gateway (the nodes' vSwitch keeps it)."""
    if not pods:
        state["route_tables"][0]["Entries"].remove(_route(state, rs, node or ""))
        return
    pod_vsw = rs.scenario.terway.pod_vswitch_id
    state["route_tables"][0]["VSwitchIds"].remove(pod_vsw)
    state["route_tables"].append({"RouteTableId": _id("vtb", rs.scenario.name, "pods"), "VpcId": ids(rs)["vpc"],
                                  "RouteTableType": "Custom", "VSwitchIds": [pod_vsw], "Entries": []})


def vpc_wrong_next_hop(state: State, rs: ResolvedScenario, *, node: str, to: str) -> None:
    _route(state, rs, node)["NextHopId"] = instance_id(rs.scenario.name, to)


def nat_no_snat(state: State, rs: ResolvedScenario, *, pods: bool = False) -> None:
    """Every SNAT entry removed; `pods` (Terway): only the pod vSwitch's (the nodes still reach the Internet)."""
    for nat in state["nat_gateways"]:
        nat["SnatEntries"] = [e for e in nat["SnatEntries"] if pods and e["SnatEntryId"] != ids(rs)["pod_snat"]]


def lb_not_active(state: State, rs: ResolvedScenario, *, service: str) -> None:
    _lb(state, rs, service)["LoadBalancerStatus"] = "inactive"


def lb_no_listener(state: State, rs: ResolvedScenario, *, service: str, port: int) -> None:
    _lb(state, rs, service)["Listeners"].remove(_listener(state, rs, service, port))


def lb_listener_not_running(state: State, rs: ResolvedScenario, *, service: str, port: int) -> None:
    _listener(state, rs, service, port)["Status"] = "stopped"


def lb_acl_deny(state: State, rs: ResolvedScenario, *, service: str, port: int, allow: str = "10.0.0.0/8") -> None:
    """A whitelist ACL on the listener that admits only `allow`."""
    acl = _id("acl", rs.scenario.name, service)
    state.setdefault("acls", []).append({"AclId": acl, "AclName": "office",
                                         "Entries": [{"AclEntryIP": allow, "AclEntryComment": "office"}]})
    _listener(state, rs, service, port).update({"AclStatus": "on", "AclType": "white", "AclId": acl})


def lb_backend_unhealthy(state: State, rs: ResolvedScenario, *, service: str, port: int,
                         nodes: list[str] | None = None) -> None:
    """Backends (every node, or `nodes`) fail the listener's health check."""
    wanted = {instance_id(rs.scenario.name, n) for n in (nodes or [n.name for n in rs.nodes])}
    for health in _listener(state, rs, service, port)["Health"]:
        if health["ServerId"] in wanted:
            health["ServerHealthStatus"] = "abnormal"


def network_acl_deny(state: State, rs: ResolvedScenario, *, direction: str = "egress", allow: str = "10.0.0.0/8",
                     port: str = "-1/-1", protocol: str = "all") -> None:
    """A network ACL on the lab's vSwitch that accepts only `allow` (port `port`) in `direction`, and
    everything the other way (network ACLs are stateless: each direction has its own entries)."""
    key, other = ("EgressAclEntries", "IngressAclEntries") if direction == "egress" else \
        ("IngressAclEntries", "EgressAclEntries")
    peer = {"EgressAclEntries": "DestinationCidrIp", "IngressAclEntries": "SourceCidrIp"}
    state.setdefault("network_acls", []).append({
        "NetworkAclId": _id("nacl", rs.scenario.name), "NetworkAclName": "restricted", "VpcId": ids(rs)["vpc"],
        "Resources": [{"ResourceId": ids(rs)["vswitch"], "ResourceType": "VSwitch"}],
        key: [{"Policy": "accept", "Protocol": protocol, peer[key]: allow, "Port": port}],
        other: [{"Policy": "accept", "Protocol": "all", peer[other]: "0.0.0.0/0", "Port": "-1/-1"}]})


def next_hop_not_forwarding(state: State, rs: ResolvedScenario, *, node: str, via: str = "stopped") -> None:
    """The VPC route to `node`'s pod CIDR points at a router that does not forward: a Stopped ECS
    instance (`via="stopped"`) or an ENI attached to no instance (`via="detached"`)."""
    router = _id("i", rs.scenario.name, "router") if via == "stopped" else _id("eni", rs.scenario.name, "router")
    if via == "stopped":
        state["instances"].append({"InstanceId": router, "InstanceName": "router", "ZoneId": ZONE, "Status": "Stopped",
                                   "VpcId": ids(rs)["vpc"], "VSwitchId": ids(rs)["vswitch"],
                                   "PrivateIpAddress": [], "SecurityGroupIds": [ids(rs)["group"]]})
        _route(state, rs, node).update(NextHopType="Instance", NextHopId=router)
    else:
        state.setdefault("network_interfaces", []).append({
            "NetworkInterfaceId": router, "Type": "Secondary", "Status": "Available", "VpcId": ids(rs)["vpc"],
            "VSwitchId": ids(rs)["vswitch"], "PrivateIpAddress": "", "SecurityGroupIds": [ids(rs)["group"]]})
        _route(state, rs, node).update(NextHopType="NetworkInterface", NextHopId=router)


def ipv4_gateway(state: State, rs: ResolvedScenario, *, eip_node: str | None = None, routed: bool = True,
                 enabled: bool = True, firewall: str | None = None, nat_routed: bool | None = None) -> None:
    """An IPv4 gateway in the lab's VPC (activated unless `enabled=False`) with a gateway route table: the
    vSwitch CIDR's system route to Local, or to a firewall instance in state `firewall` ("Running", "Stopped").
    `routed`: the vSwitch's 0.0.0.0/0 goes to the gateway (else it keeps going to the NAT gateway). `eip_node`:
    that node gets an EIP (NODE_EIP) and the NodePorts are open to the internet. `nat_routed` (not None): the NAT
    gateway sits in a vSwitch of its own whose 0.0.0.0/0 goes to the gateway (True) or nowhere (False)."""
    i = ids(rs)
    gateway, table = _id("ipv4gw", rs.scenario.name), _id("vtb", rs.scenario.name, "gateway")
    state["ipv4_gateways"] = [{"Ipv4GatewayId": gateway, "VpcId": i["vpc"], "Enabled": enabled, "Status": "Created",
                               "Ipv4GatewayRouteTableId": table}]
    local: dict[str, Any] = {"DestinationCidrBlock": rs.scenario.underlay_cidr, "NextHopType": "Local"}
    if firewall is not None:
        box = _id("i", rs.scenario.name, "firewall")
        state["instances"].append({"InstanceId": box, "InstanceName": "firewall", "ZoneId": ZONE, "Status": firewall,
                                   "VpcId": i["vpc"], "VSwitchId": i["vswitch"], "PrivateIpAddress": [],
                                   "SecurityGroupIds": [i["group"]]})
        local.update(NextHopType="Instance", NextHopId=box)
    state["route_tables"].append({"RouteTableId": table, "VpcId": i["vpc"], "RouteTableType": "Custom",
                                  "AssociateType": "Gateway", "Entries": [local]})
    entries = state["route_tables"][0]["Entries"]
    default = next((e for e in entries if e["DestinationCidrBlock"] == "0.0.0.0/0"), None)
    if routed:
        if default is None:
            entries.append(default := {"DestinationCidrBlock": "0.0.0.0/0", "Type": "Custom"})
        default.update(NextHopType="Ipv4Gateway", NextHopId=gateway)
    if eip_node is not None:
        state["eips"] = [{"AllocationId": _id("eip", rs.scenario.name), "IpAddress": NODE_EIP,
                          "InstanceType": "EcsInstance", "InstanceId": instance_id(rs.scenario.name, eip_node),
                          "Status": "InUse"}]
        state["security_groups"][0]["Permissions"].append(
            _permission("ingress", "TCP", NODE_PORTS, "0.0.0.0/0", "NodePorts on the EIP"))
    if nat_routed is not None and state["nat_gateways"]:
        nat_vsw = _id("vsw", rs.scenario.name, "nat")
        state["vpcs"][0].setdefault("SecondaryCidrBlocks", []).append(NAT_VSWITCH_CIDR)
        state["vswitches"].append({"VSwitchId": nat_vsw, "VpcId": i["vpc"], "CidrBlock": NAT_VSWITCH_CIDR,
                                   "ZoneId": ZONE})
        state["route_tables"].append({
            "RouteTableId": _id("vtb", rs.scenario.name, "nat"), "VpcId": i["vpc"], "RouteTableType": "Custom",
            "VSwitchIds": [nat_vsw], "Entries": [{"DestinationCidrBlock": "0.0.0.0/0", "Type": "Custom",
                                                  "NextHopType": "Ipv4Gateway", "NextHopId": gateway}]
            if nat_routed else []})
        state["nat_gateways"][0]["VSwitchId"] = nat_vsw


def gateway_route_redirect(state: State, rs: ResolvedScenario, *, node: str) -> None:
    """Internet traffic to `node`'s EIP is steered by the gateway route table to a firewall instance first."""
    ipv4_gateway(state, rs, eip_node=node, firewall="Running")


def lb_backend_weight_zero(state: State, rs: ResolvedScenario, *, service: str,
                           nodes: list[str] | None = None) -> None:
    """Backends (every node, or `nodes`) of the default server group get weight 0."""
    wanted = {instance_id(rs.scenario.name, n) for n in (nodes or [n.name for n in rs.nodes])}
    for backend in _lb(state, rs, service)["BackendServers"]:
        if backend["ServerId"] in wanted:
            backend["Weight"] = 0


FAULTS: dict[str, Callable[..., None]] = {
    "SG_DENY": sg_deny, "SG_NOT_SHARED": sg_not_shared, "VPC_NO_ROUTE": vpc_no_route,
    "VPC_WRONG_NEXT_HOP": vpc_wrong_next_hop, "NAT_NO_SNAT": nat_no_snat, "LB_NOT_ACTIVE": lb_not_active,
    "LB_NO_LISTENER": lb_no_listener, "LB_LISTENER_NOT_RUNNING": lb_listener_not_running,
    "LB_ACL_DENY": lb_acl_deny, "LB_BACKEND_UNHEALTHY": lb_backend_unhealthy,
    "VPC_NETWORK_ACL_DENY": network_acl_deny, "VPC_NEXT_HOP_NOT_FORWARDING": next_hop_not_forwarding,
    "LB_BACKEND_WEIGHT_ZERO": lb_backend_weight_zero, "VPC_GATEWAY_ROUTE_REDIRECT": gateway_route_redirect,
}


def with_fault(state: State, rs: ResolvedScenario, code: str, **target: Any) -> State:
    """A copy of `state` with the cloud fault `code` (a finding code) applied to `target`."""
    changed = copy.deepcopy(state)
    FAULTS[code](changed, rs, **target)
    return normalise(changed)


# ------------------------------------------------------------------ the emulator daemon


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def spawn_emulator(state: State, run_dir: Path, host: str = "127.0.0.1", timeout_s: float = 15.0) -> CloudInfo:
    """Start `python -m lab.cloudemu` detached, serving `state` (written to run_dir/cloud-state.json);
    returns once it answers. End it with `lab.kubeapi.stop_daemon(info.pid)` (or `lab down`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state_file = run_dir / "cloud-state.json"
    state_file.write_text(json.dumps(state, indent=1))
    port = _free_port(host)
    with (run_dir / "cloudemu.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lab.cloudemu", "--state", str(state_file), "--host", host, "--port", str(port)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent)
    info = CloudInfo(host=host, port=port, pid=proc.pid, state_file=str(state_file))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://{info.endpoint}/_emulator/calls", timeout=1):
                return info
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"cloud emulator did not start; see {run_dir / 'cloudemu.log'}") from None
            time.sleep(0.05)


def push_state(info: CloudInfo, state: State) -> None:
    """Replace the running emulator's state (and its state file, so a restart serves the same)."""
    body = json.dumps(normalise(state)).encode()
    Path(info.state_file).write_text(body.decode())
    request = urllib.request.Request(f"http://{info.endpoint}/_emulator/state", data=body, method="PUT",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        if resp.status != 200:
            raise RuntimeError(f"cloud emulator refused the state: {resp.read()!r}")
