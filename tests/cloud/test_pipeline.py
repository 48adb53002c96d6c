"""Every cloud finding code through the whole pipeline: request → topology → collector → cloud →
simulator → stored result, on the embedded stack (real nats-server), with the real Alibaba Cloud
SDK reading the OpenAPI emulator.

The Kubernetes side is a snapshot generated from a lab scenario (lab.objects), the cloud side the
emulator state the lab would attach to it (lab.cloudstate), with one fault at a time. No
namespaces are needed: the emulator is an API, not a dataplane, so these tests assert the
diagnosis (verdict, code, hop). The last test attaches the emulated cloud to a real namespace lab
(agents, lab Kubernetes API, emulator daemon) for a pod → pod path across nodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lab import state as lab_state
from lab.cloudemu import CloudEmulator
from lab.cloudstate import NODE_EIP, POD_CIDR_RULE, cloud_state, ids, ipv4_gateway, load_balancer_id, with_fault
from lab.dataplane import Lab
from lab.objects import scenario_objects
from lab.scenario import CloudSpec, ResolvedScenario, Scenario, resolve
from services.simulator.cloudpath import apply_cloud
from services.stack import EmbeddedStack
from shared.cloud import empty_inventory
from shared.codes import CATALOGUE
from shared.schemas import DiagnosisRequest, FinalState, Hop, HopKind, Packet, Step, StepAction, StepKind
from shared.schemas import Path as ResultPath
from shared.topology import CandidatePath, ClusterInfo, ClusterObjects, Endpoint, EndpointKind, TopologyReport
from tests.cloud.conftest import PAGES
from tests.cloud.helpers import cloud_settings, cloud_stacks, diagnose, write_snapshot
from tests.lab.conftest import new_prefix, require_root

CLOUD_CODES = {c for c in CATALOGUE if c.startswith(("SG_", "VPC_", "NAT_", "LB_"))} - {"LB_SOURCE_RANGE_DENY"}
CLIENT_PUBLIC = "8.8.4.4"  # an internet client (a documentation range would classify as private)
INTERNET = "8.8.8.8"


def scenario(cni: str, policy: str = "Cluster") -> ResolvedScenario:
    return resolve(Scenario.model_validate({
        "name": f"cloud-{cni}" + ("-local" if policy == "Local" else ""), "cni": cni, "dns": False,
        "internet": False, "cloud": {},
        "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [
            {"name": "client", "node": "node-1", "labels": {"app": "client"}},
            {"name": "server", "node": "node-2", "labels": {"app": "server"}, "containers": [
                {"name": "srv", "ports": [{"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]}]},
        ],
        "services": [{"name": "web", "type": "LoadBalancer", "selector": {"app": "server"},
                      "externalTrafficPolicy": policy, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}],
    }))


LABS = {cni: scenario(cni) for cni in ("host-gw", "vxlan")} | {"local": scenario("host-gw", "Local")}


def request(rs: ResolvedScenario, kind: str) -> dict[str, Any]:
    lb_ip = rs.services[0].load_balancer_ip
    return {
        "pod-to-pod": {"src": rs.pod("client").ip, "dst": rs.pod("server").ip, "port": 8080, "protocol": "tcp"},
        "to-internet": {"src": rs.pod("client").ip, "dst": INTERNET, "port": 53, "protocol": "udp"},
        "lb-tcp": {"src": CLIENT_PUBLIC, "dst": lb_ip, "port": 80, "protocol": "tcp"},
        "lb-udp": {"src": CLIENT_PUBLIC, "dst": lb_ip, "port": 53, "protocol": "udp"},
        # NodePort on node-2's EIP (the snapshot lists it as node-2's ExternalIP)
        "internet-to-node": {"src": CLIENT_PUBLIC, "dst": NODE_EIP, "port": rs.services[0].ports[0].node_port,
                             "protocol": "tcp"},
    }[kind]


def cloud_hop(rs: ResolvedScenario, kind: str) -> str:
    """The hop a cloud finding of this kind of path belongs to."""
    return {"vpc": f"vpc:{ids(rs)['vpc']}", "vpc-reply": f"vpc:{ids(rs)['vpc']}:reply", "nat": f"nat:{ids(rs)['nat']}",
            "lb": f"lb:{load_balancer_id(rs, 'default/web')}"}[kind]


# code, cni, path, fault target, verdict, hop kind
FAULTS: list[tuple[str, str, str, dict[str, Any], str, str]] = [
    ("SG_DENY", "host-gw", "pod-to-pod", {"protocol": "tcp", "port": 8080}, "UNREACHABLE", "vpc"),
    # the outer packet; InnerAccessPolicy Drop, or intra-group access between the nodes would win
    ("SG_DENY", "vxlan", "pod-to-pod", {"protocol": "udp", "port": 8472, "inner_access_policy": "Drop"},
     "UNREACHABLE", "vpc"),
    ("SG_NOT_SHARED", "vxlan", "pod-to-pod", {"node": "node-2"}, "UNREACHABLE", "vpc"),
    ("VPC_NO_ROUTE", "host-gw", "pod-to-pod", {"node": "node-2"}, "UNREACHABLE", "vpc"),
    # the client's pod CIDR has no VPC route: the request arrives, every reply is lost
    ("VPC_NO_ROUTE", "host-gw", "pod-to-pod", {"node": "node-1"}, "UNREACHABLE", "vpc-reply"),
    ("VPC_WRONG_NEXT_HOP", "host-gw", "pod-to-pod", {"node": "node-2", "to": "node-1"}, "UNREACHABLE", "vpc"),
    ("NAT_NO_SNAT", "host-gw", "to-internet", {}, "UNREACHABLE", "nat"),
    ("LB_NOT_ACTIVE", "host-gw", "lb-tcp", {"service": "default/web"}, "UNREACHABLE", "lb"),
    ("LB_NO_LISTENER", "host-gw", "lb-tcp", {"service": "default/web", "port": 80}, "UNREACHABLE", "lb"),
    ("LB_LISTENER_NOT_RUNNING", "host-gw", "lb-udp", {"service": "default/web", "port": 53}, "UNREACHABLE", "lb"),
    ("LB_ACL_DENY", "host-gw", "lb-tcp", {"service": "default/web", "port": 80}, "UNREACHABLE", "lb"),
    ("LB_BACKEND_UNHEALTHY", "host-gw", "lb-tcp", {"service": "default/web", "port": 80}, "UNREACHABLE", "lb"),
    ("LB_BACKEND_WEIGHT_ZERO", "host-gw", "lb-tcp", {"service": "default/web"}, "UNREACHABLE", "lb"),
    ("VPC_NETWORK_ACL_DENY", "host-gw", "to-internet", {}, "UNREACHABLE", "vpc"),
    ("VPC_NEXT_HOP_NOT_FORWARDING", "host-gw", "pod-to-pod", {"node": "node-2"}, "UNREACHABLE", "vpc"),
    ("VPC_NEXT_HOP_NOT_FORWARDING", "host-gw", "pod-to-pod", {"node": "node-2", "via": "detached"}, "UNREACHABLE",
     "vpc"),
]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for cni, rs in LABS.items():
        objects = scenario_objects(rs)
        for obj in objects:  # node-2 has an EIP (bound in the cloud by the IPv4-gateway cases)
            if obj["kind"] == "Node" and obj["metadata"]["name"] == "node-2":
                obj["status"]["addresses"].append({"type": "ExternalIP", "address": NODE_EIP})
        out[cni] = write_snapshot(tmp_path_factory.mktemp(f"snapshot-{cni}"), objects)
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stacks(snapshots: dict[str, Path], credentials: Path,
                 emulator: CloudEmulator) -> AsyncIterator[dict[str, EmbeddedStack]]:
    async with cloud_stacks(snapshots, emulator, credentials) as running:
        yield running


def cloud_errors(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in result["findings"] if f["code"] in CLOUD_CODES and f["severity"] == "error"]


def delivers_as_far_as_the_data_goes(result: dict[str, Any]) -> bool:
    """The healthy verdict on these snapshots: they carry no node dumps (the cloud is what they test), so
    the packet gets as far as the data goes and the diagnosis is UNDETERMINED for the missing nodes."""
    return result["verdict"] == "UNDETERMINED" and \
        "not enough data to decide: network state of node" in result["summary"]


def hop_ids(result: dict[str, Any]) -> list[str]:
    return [h["id"] for p in result["paths"] if p["direction"] == "forward" for h in p["hops"]]


@pytest.mark.parametrize(("code", "cni", "path", "target", "verdict", "hop"), FAULTS,
                         ids=[f"{c}-{cni}-{hop}-{n}" for n, (c, cni, _, _, _, hop) in enumerate(FAULTS)])
async def test_cloud_fault_through_the_pipeline(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator,
                                                code: str, cni: str, path: str, target: dict[str, Any],
                                                verdict: str, hop: str) -> None:
    """One cloud fault through the whole pipeline; the expectation comes from PAGES[code] (docs/cloud.md)."""
    assert code in PAGES
    rs = LABS[cni]
    emulator.set_state(with_fault(cloud_state(rs), rs, code, **target))
    result = await diagnose(stacks[cni], request(rs, path))
    assert result["verdict"] == verdict, (result["summary"], result["findings"])
    found = next((f for f in result["findings"] if f["code"] == code), None)
    assert found is not None, [f["code"] for f in result["findings"]]
    assert found["hop"] == cloud_hop(rs, hop)
    forward = [p for p in result["paths"] if p["direction"] == "forward"]
    assert all(p["final"] == "DROP" for p in forward)
    decisive = next(f for f in result["findings"] if f["code"] == forward[0]["cause"])
    assert decisive["hop"] == cloud_hop(rs, hop) and decisive["severity"] == "error"
    # the cloud hop is where the path ends, marked as the broken one
    last = forward[0]["hops"][-1]
    assert last["id"] == cloud_hop(rs, hop) and last["status"] == "error"
    assert code in result["summary"] or found["message"] in result["summary"] or decisive["message"] in \
        result["summary"]
    emulator_calls = emulator.calls
    assert "DescribeInstances" in emulator_calls  # read live through the SDK, not from a file


@pytest.mark.parametrize(("cni", "path", "hop"), [
    ("host-gw", "pod-to-pod", "vpc"), ("vxlan", "pod-to-pod", "vpc"), ("host-gw", "to-internet", "nat"),
    ("host-gw", "lb-tcp", "lb"), ("host-gw", "lb-udp", "lb")])
async def test_healthy_cloud_gives_no_cloud_error(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator,
                                                  cni: str, path: str, hop: str) -> None:
    """ECS, Security group rules — https://www.alibabacloud.com/help/en/ecs/user-guide/security-group-rules; VPC,
    Route tables — https://www.alibabacloud.com/help/en/vpc/vpc-route-table; CLB, Access control —
    https://www.alibabacloud.com/help/en/slb/classic-load-balancer/user-guide/overview-3."""
    rs = LABS[cni]
    emulator.set_state(cloud_state(rs))
    result = await diagnose(stacks[cni], request(rs, path))
    assert cloud_errors(result) == []
    assert delivers_as_far_as_the_data_goes(result), (result["summary"], result["assumptions"])
    assert all(p["final"] in ("DELIVER", "FORWARD") for p in result["paths"] if p["direction"] == "forward")
    assert cloud_hop(rs, hop) in hop_ids(result)
    cloud = [h for p in result["paths"] for h in p["hops"] if h["id"] == cloud_hop(rs, hop)]
    assert all(h["status"] == "ok" for h in cloud), cloud


async def test_vxlan_security_groups_see_the_outer_packet(stacks: dict[str, EmbeddedStack],
                                                          emulator: CloudEmulator) -> None:
    """ECS, Security group rules — https://www.alibabacloud.com/help/en/ecs/user-guide/security-group-rules. A drop
    rule for the pod port does not stop vxlan traffic: the group only sees udp 8472 between
    the node addresses (KubeSkoop checks the inner packet and reports a false SG_DENY)."""
    rs = LABS["vxlan"]
    emulator.set_state(with_fault(cloud_state(rs), rs, "SG_DENY", protocol="tcp", port=8080))
    result = await diagnose(stacks["vxlan"], request(rs, "pod-to-pod"))
    assert cloud_errors(result) == []
    vpc = next(h for p in result["paths"] for h in p["hops"] if h["id"] == cloud_hop(rs, "vpc"))
    encap = next(s for s in vpc["steps"] if s["kind"] == "encap")
    assert encap["packet_out"]["protocol"] == "udp" and encap["packet_out"]["dport"] == 8472
    assert encap["packet_out"]["src"] == rs.node("node-1").ip and encap["packet_out"]["dst"] == rs.node("node-2").ip


async def test_a_missing_reply_route_is_found_where_it_matters(stacks: dict[str, EmbeddedStack],
                                                                emulator: CloudEmulator) -> None:
    """VPC, Route tables (routes are per direction; security groups are stateful, routes are not) —
    https://www.alibabacloud.com/help/en/vpc/vpc-route-table. host-gw: the forward packet crosses the VPC (its route
    to node-2's pod CIDR exists), so the
    VPC hop passes, and the reply hop after the server names the route that is missing. vxlan: the
    reply is node → node, routed inside the VPC, so the same missing pod-CIDR route changes nothing."""
    rs = LABS["host-gw"]
    emulator.set_state(with_fault(cloud_state(rs), rs, "VPC_NO_ROUTE", node="node-1"))
    result = await diagnose(stacks["host-gw"], request(rs, "pod-to-pod"))
    (forward,) = [p for p in result["paths"] if p["direction"] == "forward"]
    by_id = {h["id"]: h for h in forward["hops"]}
    assert by_id[cloud_hop(rs, "vpc")]["status"] == "ok"
    reply_hop = forward["hops"][-1]
    assert reply_hop["id"] == cloud_hop(rs, "vpc-reply") and reply_hop["status"] == "error"
    assert [h["id"] for h in forward["hops"]].index("pod:default/server") < len(forward["hops"]) - 1
    route = next(s for s in reply_hop["steps"] if s["kind"] == "vpc_route")
    unchecked = await diagnose(stacks["host-gw"], {**request(rs, "pod-to-pod"), "options": {"check_reply": False}})
    assert delivers_as_far_as_the_data_goes(unchecked) and cloud_hop(rs, "vpc-reply") not in hop_ids(unchecked)
    assert route["action"] == "DROP" and route["packet_in"]["dst"] == rs.pod("client").ip
    missing = next(f for f in result["findings"] if f["code"] == "VPC_NO_ROUTE")
    assert missing["hop"] == reply_hop["id"] and rs.pod("client").ip in missing["message"]

    # vxlan: replies go node → node inside the VPC; its route tables hold no pod CIDR at all
    rs = LABS["vxlan"]
    state = cloud_state(rs)
    assert not {n.pod_cidr for n in rs.nodes} & {e["DestinationCidrBlock"] for e in state["route_tables"][0]["Entries"]}
    emulator.set_state(state)
    result = await diagnose(stacks["vxlan"], request(rs, "pod-to-pod"))
    assert cloud_errors(result) == [] and delivers_as_far_as_the_data_goes(result), result["summary"]
    assert cloud_hop(rs, "vpc-reply") not in hop_ids(result)  # a passing reply adds no hop to the forward path


async def test_sg_not_shared_only_where_sharing_would_admit(stacks: dict[str, EmbeddedStack],
                                                            emulator: CloudEmulator) -> None:
    """host-gw: the routed pod source is no group member, so a shared group would not admit it either:
    SG_DENY (the default deny of the isolated group), without the SG_NOT_SHARED hint."""
    rs = LABS["host-gw"]
    emulator.set_state(with_fault(cloud_state(rs), rs, "SG_NOT_SHARED", node="node-2"))
    result = await diagnose(stacks["host-gw"], request(rs, "pod-to-pod"))
    codes = [f["code"] for f in result["findings"] if f["code"] in CLOUD_CODES]
    assert result["verdict"] == "UNREACHABLE" and codes == ["SG_DENY"]


async def test_one_unhealthy_backend_is_reported_not_fatal(stacks: dict[str, EmbeddedStack],
                                                           emulator: CloudEmulator) -> None:
    rs = LABS["host-gw"]
    emulator.set_state(with_fault(cloud_state(rs), rs, "LB_BACKEND_UNHEALTHY", service="default/web", port=80,
                                  nodes=["node-1"]))
    result = await diagnose(stacks["host-gw"], request(rs, "lb-tcp"))
    unhealthy = [f for f in result["findings"] if f["code"] == "LB_BACKEND_UNHEALTHY"]
    assert [f["severity"] for f in unhealthy] == ["warning"]
    assert rs.node("node-1").ip in unhealthy[0]["message"]
    assert delivers_as_far_as_the_data_goes(result), (result["summary"], result["assumptions"])


def test_cloud_state_matches_the_lab_objects() -> None:
    """no provider semantics: the emulated lab cloud matches the lab's objects."""
    rs = LABS["host-gw"]
    state = cloud_state(rs)
    nodes = {o["metadata"]["name"]: o for o in scenario_objects(rs) if o["kind"] == "Node"}
    for inst in state["instances"]:
        node = nodes[inst["InstanceName"]]
        assert node["spec"]["providerID"] == f"cn-hangzhou.{inst['InstanceId']}"
        assert inst["PrivateIpAddress"] == [a["address"] for a in node["status"]["addresses"]
                                            if a["type"] == "InternalIP"]
    routes = {e["DestinationCidrBlock"]: e["NextHopId"] for e in state["route_tables"][0]["Entries"]}
    assert routes == {**{n.pod_cidr: i["InstanceId"] for n, i in zip(rs.nodes, state["instances"], strict=True)},
                      "0.0.0.0/0": ids(rs)["nat"]}
    (lb,) = state["load_balancers"]
    assert lb["Address"] == rs.services[0].load_balancer_ip
    assert [(li["ListenerPort"], li["BackendServerPort"]) for li in lb["Listeners"]] == [
        (p.spec.port, p.node_port) for p in rs.services[0].ports]
    # a scenario can carry its cloud fault as a JSON Patch
    patched = rs.scenario.model_copy(update={"cloud": CloudSpec(patch=[
        {"op": "replace", "path": "/load_balancers/0/LoadBalancerStatus", "value": "inactive"}])})
    assert cloud_state(resolve(patched))["load_balancers"][0]["LoadBalancerStatus"] == "inactive"


def test_no_modelled_cloud_leaves_paths_alone() -> None:
    """no provider semantics: an unmodelled cloud changes no path (docs/cloud.md)."""
    rs = LABS["host-gw"]
    report = TopologyReport(
        source="test", src=Endpoint(address=rs.pod("client").ip, kind=EndpointKind.POD, pod="default/client",
                                    node="node-1"),
        dst=Endpoint(address=rs.pod("server").ip, kind=EndpointKind.POD, pod="default/server", node="node-2"),
        paths=[CandidatePath(id="p0", src_node="node-1", dst_node="node-2", dst_address=rs.pod("server").ip)])
    req = DiagnosisRequest(src=rs.pod("client").ip, dst=rs.pod("server").ip, port=8080, protocol="tcp")
    paths = [ResultPath(id="p0", final=FinalState.DELIVER, hops=[
        Hop(id="pod:default/client", kind=HopKind.POD, name="client", node="node-1"),
        Hop(id="pod:default/server", kind=HopKind.POD, name="server", node="node-2")])]
    for inventory in (None, empty_inventory()):
        assert apply_cloud(paths, report, inventory, req) == (paths, [], [])


def test_every_cloud_code_is_covered() -> None:
    """every cloud code has a pipeline fault (a warning that drops nothing has its own test: the redirect of the
    gateway route table, test_internet_to_a_node_eip_through_the_ipv4_gateway); its page is PAGES. NAT_NO_DNAT has
    none: the topology does not map a NAT gateway's public IP to the address its DNAT entry forwards to, so no
    request reaches the cloud's DNAT evaluation through the pipeline (tests/cloud/test_documented.py and
    test_faults.py run it through the SDK)."""
    assert CLOUD_CODES - {"LB_BACKEND_MISMATCH", "VPC_GATEWAY_ROUTE_REDIRECT", "NAT_NO_DNAT"} == \
        {code for code, *_ in FAULTS}
    assert "VPC_GATEWAY_ROUTE_REDIRECT" in {code for _, _, _, _, code, _ in GATEWAY_CASES}


# ------------------------------------------------------------------ live lab: namespaces, agents, emulator


@pytest.mark.lab
@pytest.mark.parametrize(("cni", "protocol", "port"), [("vxlan", "udp", 8472), ("host-gw", "tcp", 8080)])
async def test_live_lab_with_an_emulated_cloud(credentials: Path, cni: str, protocol: str, port: int) -> None:
    """ECS API, ModifySecurityGroupPolicy —
    https://www.alibabacloud.com/help/en/ecs/developer-reference/api-modifysecuritygrouppolicy; VPC, Route tables —
    https://www.alibabacloud.com/help/en/vpc/vpc-route-table. A lab with an emulated cloud: pod → pod across nodes
    is diagnosed through the live pipeline
    (lab Kubernetes API, node agents and the dataplane walk, SDK → emulator daemon) with the cloud hop
    between the nodes; then a security-group drop of what the VPC carries (vxlan's outer udp 8472, the
    routed pod packet on host-gw) turns the diagnosis UNREACHABLE with SG_DENY. The kernel probe keeps
    delivering: the emulated cloud is an API, not a dataplane, so for the fault the diagnosis alone is
    asserted."""
    require_root()
    rs = resolve(Scenario.model_validate({
        "name": "cloud-live", "cni": cni, "dns": False, "internet": False, "cloud": {},
        "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [{"name": "client", "node": "node-1"},
                 {"name": "server", "node": "node-2", "containers": [{"name": "srv",
                                                                     "ports": [{"containerPort": 8080}]}]}]}))
    prefix = new_prefix()
    try:
        lab = await asyncio.to_thread(Lab.up, rs, prefix)
        api = await asyncio.to_thread(lab.start_api)
        cloud = await asyncio.to_thread(lab.start_cloud)
        assert Lab.attach(prefix).state.cloud == cloud
        body = {"src": lab.address("pod:default/client"), "dst": lab.address("pod:default/server"), "port": 8080,
                "protocol": "tcp"}
        vpc = f"vpc:{ids(rs)['vpc']}"
        settings = cloud_settings(cloud.endpoint, credentials, kubeconfig=api.kubeconfig, collect_timeout_s=5.0)
        agents = {name: node.netns for name, node in lab.state.nodes.items()}
        async with EmbeddedStack(settings, agents=agents) as stack:
            assert lab.probe("default/client", "pod:default/server", 8080).ok
            healthy = await diagnose(stack, body)
            assert healthy["verdict"] == "REACHABLE", (healthy["summary"], healthy["assumptions"])
            assert cloud_errors(healthy) == [] and vpc in hop_ids(healthy)

            # InnerAccessPolicy Drop: with Accept the nodes' own packets (vxlan) pass whatever the rules say
            await asyncio.to_thread(lab.set_cloud_state, with_fault(cloud_state(rs), rs, "SG_DENY", protocol=protocol,
                                                                    port=port, inner_access_policy="Drop"))
            faulty = await diagnose(stack, body)
            assert faulty["verdict"] == "UNREACHABLE", faulty["summary"]
            deny = next(f for f in faulty["findings"] if f["code"] == "SG_DENY")
            assert deny["hop"] == vpc and f"{protocol} " in deny["message"] and f":{port}" in deny["message"]
            assert lab.probe("default/client", "pod:default/server", 8080).ok  # the kernel never saw the cloud

            if cni == "host-gw":  # the client's pod CIDR loses its VPC route: the walk's reply paths end there
                await asyncio.to_thread(lab.set_cloud_state, with_fault(cloud_state(rs), rs, "VPC_NO_ROUTE",
                                                                        node="node-1"))
                lost = await diagnose(stack, body)
                assert lost["verdict"] == "UNREACHABLE", lost["summary"]
                replies = [p for p in lost["paths"] if p["direction"] == "reply"]
                assert replies and all(p["final"] == "DROP" and p["cause"] == "VPC_NO_ROUTE" for p in replies)
                assert all(f"{vpc}:reply" in [h["id"] for h in p["hops"]] for p in lost["paths"])
    finally:
        await asyncio.to_thread(Lab.sweep, prefix)
    assert not lab_state.state_path(prefix).exists()


@pytest.mark.lab
async def test_live_lab_cloud_judges_the_packet_the_node_really_sends(credentials: Path) -> None:
    """NAT Gateway, Create and manage SNAT entries —
    https://www.alibabacloud.com/help/en/nat-gateway/latest/create-and-manage-snat-entries. Pod → internet on a lab
    with the emulated cloud: with the CNI's masquerade the node address leaves and
    the NAT gateway's SNAT (for the node vSwitch) covers it; with the masquerade flushed on node-1 the walk
    sees the pod address leave, and the cloud judges that packet — no SNAT entry covers a pod address:
    NAT_NO_SNAT, where a guess of the CNI's usual masquerade would have said REACHABLE."""
    require_root()
    rs = resolve(Scenario.model_validate({
        "name": "cloud-masq", "cni": "host-gw", "dns": False, "internet": True, "cloud": {},
        "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [{"name": "client", "node": "node-1"}]}))
    prefix = new_prefix()
    try:
        lab = await asyncio.to_thread(Lab.up, rs, prefix)
        api = await asyncio.to_thread(lab.start_api)
        cloud = await asyncio.to_thread(lab.start_cloud)
        settings = cloud_settings(cloud.endpoint, credentials, kubeconfig=api.kubeconfig, collect_timeout_s=5.0)
        body = {"src": lab.address("pod:default/client"), "dst": INTERNET, "port": 53, "protocol": "udp"}
        agents = {name: node.netns for name, node in lab.state.nodes.items()}
        async with EmbeddedStack(settings, agents=agents) as stack:
            healthy = await diagnose(stack, body)
            assert cloud_errors(healthy) == [] and healthy["verdict"] == "REACHABLE", healthy["summary"]
            await asyncio.to_thread(lab.exec, "node-1", ["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"])
            unmasqueraded = await diagnose(stack, body)
            codes = {f["code"] for f in unmasqueraded["findings"]}
            assert {"POD_SOURCE_NOT_MASQUERADED", "NAT_NO_SNAT"} <= codes, unmasqueraded["findings"]
            assert unmasqueraded["verdict"] == "UNREACHABLE", unmasqueraded["summary"]
    finally:
        await asyncio.to_thread(Lab.sweep, prefix)


@pytest.mark.parametrize(("action", "how"), [("DescribeInstances", "deny"), ("DescribeInstances", "throttle")])
async def test_a_cloud_api_error_is_missing_cloud_data_not_a_failed_diagnosis(
        stacks: dict[str, EmbeddedStack], emulator: CloudEmulator, action: str, how: str) -> None:
    """Forbidden.RAM (a RAM user without Describe* rights) and throttling after every retry, through the
    real SDK: the diagnosis completes, says the cloud was not read, and cannot be a confident answer."""
    rs = LABS["host-gw"]
    emulator.set_state(cloud_state(rs))
    if how == "deny":
        emulator.deny(action, "Forbidden.RAM")
    else:
        emulator.throttle(1000, action)
    try:
        result = await diagnose(stacks["host-gw"], request(rs, "pod-to-pod"))
    finally:
        emulator.deny(action, None)
        emulator.throttle(0, action)
    expected = "Forbidden.RAM" if how == "deny" else "Throttling"
    missing = [f for f in result["findings"] if f["code"] == "DATA_MISSING" and expected in f["message"]]
    assert missing and "cloud inventory" in missing[0]["message"], result["findings"]
    assert result["verdict"] == "UNDETERMINED", result["summary"]
    assert any(a["stage"] == "cloud" and a["could_change_outcome"] and expected in a["text"]
               for a in result["assumptions"])


# ------------------------------------------------------------------ documented semantics, decoys beside faults


def forward_paths(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in result["paths"] if p["direction"] == "forward"}


async def test_after_the_load_balancer_each_entry_node_crosses_the_vpc(stacks: dict[str, EmbeddedStack],
                                                                       emulator: CloudEmulator) -> None:
    """Internet → CLB → NodePort (Kubernetes externalTrafficPolicy Cluster): the CLB forwards to every
    serving backend node ("CLB server groups", https://www.alibabacloud.com/help/en/slb/classic-load-balancer/
    user-guide/backend-server-overview/); from an entry node without the endpoint, kube-proxy forwards to the
    endpoint on node-2 masqueraded to the node address, and that leg crosses the VPC (routes, security groups).
    Without the route to node-2's pod CIDR the leg via node-1 is lost while node-2's own delivers: AMBIGUOUS,
    each path with its own end. Decoy: weight 0 on node-1 (SetBackendServers, https://www.alibabacloud.com/help/
    en/slb/classic-load-balancer/developer-reference/api-slb-2014-05-15-setbackendservers: no request is forwarded
    to it) leaves only node-2's path: REACHABLE with a warning."""
    rs = LABS["host-gw"]
    vpc = cloud_hop(rs, "vpc")
    emulator.set_state(cloud_state(rs))
    healthy = await diagnose(stacks["host-gw"], request(rs, "lb-tcp"))
    paths = forward_paths(healthy)
    via = next(p for pid, p in paths.items() if pid.endswith("@node-1"))
    ids_via = [h["id"] for h in via["hops"]]
    assert ids_via.index(cloud_hop(rs, "lb")) < ids_via.index("node:node-1") < ids_via.index(vpc) \
        < ids_via.index("pod:default/server"), ids_via
    masq = next(s for h in via["hops"] if h["id"] == "node:node-1" for s in h["steps"])
    assert masq["packet_out"]["src"] == rs.node("node-1").ip and masq["packet_out"]["dst"] == rs.pod("server").ip
    assert all(p["final"] == "DELIVER" for p in paths.values()) and len(paths) == 2
    assert delivers_as_far_as_the_data_goes(healthy) and cloud_errors(healthy) == [], healthy["summary"]

    emulator.set_state(with_fault(cloud_state(rs), rs, "VPC_NO_ROUTE", node="node-2"))
    split = await diagnose(stacks["host-gw"], request(rs, "lb-tcp"))
    assert split["verdict"] == "AMBIGUOUS", split["summary"]
    paths = forward_paths(split)
    lost = next(p for pid, p in paths.items() if pid.endswith("@node-1"))
    direct = next(p for pid, p in paths.items() if "@" not in pid)
    assert lost["final"] == "DROP" and lost["cause"] == "VPC_NO_ROUTE" and lost["hops"][-1]["id"] == vpc
    assert direct["final"] == "DELIVER" and vpc not in [h["id"] for h in direct["hops"]]

    state = with_fault(cloud_state(rs), rs, "VPC_NO_ROUTE", node="node-2")
    emulator.set_state(with_fault(state, rs, "LB_BACKEND_WEIGHT_ZERO", service="default/web", nodes=["node-1"]))
    decoy = await diagnose(stacks["host-gw"], request(rs, "lb-tcp"))
    assert delivers_as_far_as_the_data_goes(decoy), decoy["summary"]
    assert list(forward_paths(decoy)) == [direct["id"]]
    zero = [f for f in decoy["findings"] if f["code"] == "LB_BACKEND_WEIGHT_ZERO"]
    assert len(zero) == 1 and zero[0]["severity"] == "warning" and cloud_errors(decoy) == []


async def test_accept_intra_group_policy_beside_a_drop_rule(stacks: dict[str, EmbeddedStack],
                                                            emulator: CloudEmulator) -> None:
    """ModifySecurityGroupPolicy (https://www.alibabacloud.com/help/en/ecs/developer-reference/
    api-modifysecuritygrouppolicy): InnerAccessPolicy Accept takes precedence over user-created rules, so a
    priority-1 drop of vxlan's udp 8472 does not isolate the nodes of the group (decoy: REACHABLE); with Drop the
    user-created rules decide and the same rule drops the outer packet."""
    rs = LABS["vxlan"]
    emulator.set_state(with_fault(cloud_state(rs), rs, "SG_DENY", protocol="udp", port=8472))
    result = await diagnose(stacks["vxlan"], request(rs, "pod-to-pod"))
    assert cloud_errors(result) == [] and delivers_as_far_as_the_data_goes(result), result["summary"]
    assert all(p["final"] == "DELIVER" for p in forward_paths(result).values())
    sg = [s for p in result["paths"] for h in p["hops"] if h["id"] == cloud_hop(rs, "vpc") for s in h["steps"]
          if s["kind"] == "security_group"]
    assert sg and all("InnerAccessPolicy Accept" in s["detail"] for s in sg)
    emulator.set_state(with_fault(cloud_state(rs), rs, "SG_DENY", protocol="udp", port=8472,
                                  inner_access_policy="Drop"))
    result = await diagnose(stacks["vxlan"], request(rs, "pod-to-pod"))
    assert result["verdict"] == "UNREACHABLE" and forward_paths(result)["p0"]["cause"] == "SG_DENY"


async def test_network_acl_port_range_edge(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator) -> None:
    """"Network ACLs" (https://www.alibabacloud.com/help/en/vpc/network-acl-overview): entries are matched in
    order, the port range matches the destination port, a packet no entry matches is dropped. Decoy: an outbound
    entry for udp 1/53 admits port 53 at its upper edge; 54/100 does not."""
    rs = LABS["host-gw"]
    emulator.set_state(with_fault(cloud_state(rs), rs, "VPC_NETWORK_ACL_DENY", allow="0.0.0.0/0", port="1/53",
                                  protocol="udp"))
    edge = await diagnose(stacks["host-gw"], request(rs, "to-internet"))
    assert cloud_errors(edge) == [] and delivers_as_far_as_the_data_goes(edge), edge["summary"]
    acl = [s for p in edge["paths"] for h in p["hops"] for s in h["steps"] if "network ACL" in s["detail"]]
    assert acl and acl[0]["action"] == "ALLOW"
    emulator.set_state(with_fault(cloud_state(rs), rs, "VPC_NETWORK_ACL_DENY", allow="0.0.0.0/0", port="54/100",
                                  protocol="udp"))
    past = await diagnose(stacks["host-gw"], request(rs, "to-internet"))
    assert past["verdict"] == "UNREACHABLE" and forward_paths(past)["p0"]["cause"] == "VPC_NETWORK_ACL_DENY"


async def test_empty_clb_access_control_list_forwards_everything(stacks: dict[str, EmbeddedStack],
                                                                  emulator: CloudEmulator) -> None:
    """CLB "Access control" (https://www.alibabacloud.com/help/en/slb/classic-load-balancer/user-guide/
    overview-3): whether whitelist or blacklist, an ACL with no IP entries makes the listener forward every
    request; a whitelist with entries forwards only those."""
    rs = LABS["host-gw"]
    for kind in ("white", "black"):
        state = with_fault(cloud_state(rs), rs, "LB_ACL_DENY", service="default/web", port=80)
        state["acls"][0]["Entries"] = []
        state["load_balancers"][0]["Listeners"][0]["AclType"] = kind
        emulator.set_state(state)
        result = await diagnose(stacks["host-gw"], request(rs, "lb-tcp"))
        assert cloud_errors(result) == [] and delivers_as_far_as_the_data_goes(result), result["summary"]
        assert all(p["final"] == "DELIVER" for p in forward_paths(result).values())
        lb = next(h for p in result["paths"] for h in p["hops"] if h["id"] == cloud_hop(rs, "lb"))
        assert any("no entries" in s["detail"] for s in lb["steps"])


def test_a_path_that_crosses_twice_gets_a_vpc_hop_each_time(collect) -> None:
    """VPC, Route tables (https://www.alibabacloud.com/help/en/vpc/vpc-route-table): every packet that leaves a
    node for another is routed by the sending vSwitch's table. A pod on node-1 reaching a NodePort of node-2
    whose endpoint is back on node-1 (node-1 → node-2 → node-1) crosses the VPC twice: `vpc:<id>` then
    `vpc:<id>#2`, each judged on routes and security groups; without the route to node-1's pod CIDR the second
    crossing drops — the first (node address to node address) still passes."""
    rs = LABS["host-gw"]
    nodes = [o for o in scenario_objects(rs) if o["kind"] == "Node"]
    n1, n2 = rs.node("node-1"), rs.node("node-2")
    endpoint = str(next(iter(ip_network(n1.pod_cidr).hosts())) + 9)  # a pod on node-1 behind the NodePort
    client = rs.pod("client").ip
    report = TopologyReport(
        source="test", src=Endpoint(address=client, kind=EndpointKind.POD, pod="default/client", node="node-1"),
        dst=Endpoint(address=n2.ip, kind=EndpointKind.NODE_PORT, node="node-2"),
        paths=[CandidatePath(id="p0", src_node="node-1", dst_node="node-1", dst_address=endpoint)],
        cluster=ClusterInfo(cni="flannel-host-gw", pod_cidrs=[rs.scenario.cluster_cidr]),
        objects=ClusterObjects(nodes=nodes))
    req = DiagnosisRequest(src=client, dst=n2.ip, port=30080, protocol="tcp")
    at_node2 = Packet(src=n1.ip, dst=n2.ip, protocol="tcp", dport=30080)
    dnat = Packet(src=n2.ip, dst=endpoint, protocol="tcp", dport=8080)
    path = ResultPath(id="p0", final=FinalState.DELIVER, hops=[
        Hop(id="pod:default/client", kind=HopKind.POD, name="client", node="node-1"),
        Hop(id="node:node-2", kind=HopKind.NODE, name="node-2", node="node-2", steps=[
            Step(kind=StepKind.NAT, action=StepAction.REWRITE, packet_in=at_node2, packet_out=dnat,
                 detail="NodePort DNAT to the endpoint on node-1, masquerade to node-2")]),
        Hop(id="pod:default/backend", kind=HopKind.POD, name="backend", node="node-1")])
    vpc = cloud_hop(rs, "vpc")
    paths, findings, _ = apply_cloud([path], report, collect(cloud_state(rs), nodes=nodes), req)
    assert [h.id for h in paths[0].hops] == ["pod:default/client", vpc, "node:node-2", f"{vpc}#2",
                                             "pod:default/backend"]
    assert paths[0].final == FinalState.DELIVER and findings == []
    second = paths[0].hops[3]
    route = next(s for s in second.steps if s.kind == StepKind.VPC_ROUTE)
    assert str(route.packet_in.src) == n2.ip and str(route.packet_in.dst) == endpoint
    broken = with_fault(cloud_state(rs), rs, "VPC_NO_ROUTE", node="node-1")
    paths, findings, _ = apply_cloud([path], report, collect(broken, nodes=nodes), req)
    assert [h.id for h in paths[0].hops][-1] == f"{vpc}#2" and paths[0].final == FinalState.DROP
    assert paths[0].cause == "VPC_NO_ROUTE" and [f.hop for f in findings] == [f"{vpc}#2"]
    assert paths[0].hops[1].status == "ok"


async def test_external_traffic_policy_local_has_no_leg_to_another_node(stacks: dict[str, EmbeddedStack],
                                                                        emulator: CloudEmulator) -> None:
    """Kubernetes externalTrafficPolicy Local: a node forwards only to its own endpoints, so after the CLB
    ("CLB server groups", https://www.alibabacloud.com/help/en/slb/classic-load-balancer/user-guide/
    backend-server-overview/) there is no leg from one node to another — a missing route to node-2's pod CIDR
    (which breaks the Cluster policy's leg via node-1) changes nothing here (decoy)."""
    rs = LABS["local"]
    emulator.set_state(with_fault(cloud_state(rs), rs, "VPC_NO_ROUTE", node="node-2"))
    result = await diagnose(stacks["local"], request(rs, "lb-tcp"))
    paths = forward_paths(result)
    assert list(paths) == ["p0"] and paths["p0"]["final"] == "DELIVER", result["summary"]
    assert cloud_errors(result) == [] and delivers_as_far_as_the_data_goes(result), result["summary"]


def _pod_rule(state: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in state["security_groups"][0]["Permissions"] if r.get("Description") == POD_CIDR_RULE)


def prefix_list(covering: bool) -> Any:
    def change(state: dict[str, Any], rs: ResolvedScenario) -> None:
        state["security_groups"][0]["InnerAccessPolicy"] = "Drop"
        rule = _pod_rule(state)
        rule["SourcePrefixListId"] = "pl-pods"
        del rule["SourceCidrIp"]
        state["prefix_lists"] = [{"PrefixListId": "pl-pods", "Entries": [
            {"Cidr": rs.scenario.cluster_cidr if covering else "10.99.0.0/16"}]}]
    return change


def port_list(ranges: list[str]) -> Any:
    def change(state: dict[str, Any], rs: ResolvedScenario) -> None:
        rule = _pod_rule(state)
        rule.update(IpProtocol="TCP", PortRangeListId="prl-web", PortRange="-1/-1")
        state["port_lists"] = [{"PortRangeListId": "prl-web", "Entries": [{"PortRange": r} for r in ranges]}]
    return change


def eip_and_ipv4_gateway(routed: bool) -> Any:
    def change(state: dict[str, Any], rs: ResolvedScenario) -> None:
        state["instances"][0]["EipAddress"] = "47.1.2.3"
        state["ipv4_gateways"] = [{"Ipv4GatewayId": "ipv4gw-lab", "VpcId": ids(rs)["vpc"], "Enabled": True}]
        if routed:
            default = next(e for e in state["route_tables"][0]["Entries"] if e["DestinationCidrBlock"] == "0.0.0.0/0")
            default.update(NextHopType="Ipv4Gateway", NextHopId="ipv4gw-lab")
    return change


def cross_account(state: dict[str, Any], rs: ResolvedScenario) -> None:
    """Only another account's group may send pod traffic: its members are not in this inventory."""
    state["security_groups"][0]["InnerAccessPolicy"] = "Drop"
    rule = _pod_rule(state)
    del rule["SourceCidrIp"]
    rule.update(SourceGroupId="sg-partner", SourceGroupOwnerAccount="1234567890")


def health_check_off(state: dict[str, Any], rs: ResolvedScenario) -> None:
    listener = _lb(state, rs)["Listeners"][0]
    listener["HealthCheck"] = "off"
    for health in listener["Health"]:
        health["ServerHealthStatus"] = "abnormal"


def primary_secondary(state: dict[str, Any], rs: ResolvedScenario) -> None:
    """node-1 is the primary and fails its check: the secondary, node-2 (the endpoint's node), takes over."""
    lb = _lb(state, rs)
    listener = lb["Listeners"][0]
    first, second = lb["BackendServers"][:2]
    state["master_slave_server_groups"] = [{"MasterSlaveServerGroupId": "rsp-ms", "MasterSlaveBackendServers": [
        {**first, "Port": listener["BackendServerPort"], "ServerType": "Master"},
        {**second, "Port": listener["BackendServerPort"], "ServerType": "Slave"}]}]
    listener["MasterSlaveServerGroupId"] = "rsp-ms"
    listener["Health"][0]["ServerHealthStatus"] = "abnormal"


def _lb(state: dict[str, Any], rs: ResolvedScenario) -> dict[str, Any]:
    return next(lb for lb in state["load_balancers"] if lb["LoadBalancerId"] == load_balancer_id(rs, "default/web"))


# (name, change, path, verdict class, code, page): "ok" = every forward path delivers, no cloud error
DOCUMENTED: list[tuple[str, Any, str, str, str | None, str]] = [
    ("prefix-list-covers", prefix_list(True), "pod-to-pod", "ok", None, "PREFIX"),
    ("prefix-list-misses", prefix_list(False), "pod-to-pod", "UNREACHABLE", "SG_DENY", "PREFIX"),
    ("port-list-edge", port_list(["80/80", "8000/8080"]), "pod-to-pod", "ok", None, "PORTLIST"),
    ("port-list-misses", port_list(["8081/9000"]), "pod-to-pod", "UNREACHABLE", "SG_DENY", "PORTLIST"),
    ("ipv4-gateway-routed", eip_and_ipv4_gateway(True), "node-to-internet", "ok", None, "IPV4GW"),
    ("ipv4-gateway-unrouted", eip_and_ipv4_gateway(False), "node-to-internet", "UNREACHABLE", "VPC_NO_ROUTE",
     "IPV4GW"),
    ("cross-account-group", cross_account, "pod-to-pod", "UNDETERMINED", "DATA_MISSING", "SG-CREATE"),
    ("health-check-off", health_check_off, "lb-tcp", "ok", None, "CLB-TCP"),
    ("primary-secondary", primary_secondary, "lb-tcp", "ok", None, "CLB-MS"),
]


@pytest.mark.parametrize(("name", "change", "path", "verdict", "code", "page"), DOCUMENTED,
                         ids=[d[0] for d in DOCUMENTED])
async def test_documented_semantics_through_the_pipeline(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator,
                                                         name: str, change: Any, path: str, verdict: str,
                                                         code: str | None, page: str) -> None:
    """Prefix lists, port lists (an edge of the range), the IPv4 gateway, another account's group (undecidable:
    UNDETERMINED, not UNREACHABLE), the health check off and a primary/secondary server group, each through the
    whole pipeline with the SDK reading the emulator; `page` is the tag of the page in docs/cloud.md's sources the
    expectation comes from. (An EIP on a secondary private IP serves Terway pods, which the namespace lab does not
    run: tests/cloud/test_documented.py covers it through the SDK and the engine.)"""
    assert f"| {page} |" in (Path(__file__).resolve().parents[2] / "docs" / "cloud.md").read_text()
    rs = LABS["host-gw"]
    state = cloud_state(rs)
    change(state, rs)
    emulator.set_state(state)
    body = request(rs, "to-internet") if path == "node-to-internet" else request(rs, path)
    if path == "node-to-internet":
        body = {**body, "src": rs.node("node-1").ip}
    result = await diagnose(stacks["host-gw"], body)
    forward = forward_paths(result)
    if verdict == "ok":
        assert cloud_errors(result) == [] and all(p["final"] in ("DELIVER", "FORWARD") for p in forward.values()), \
            (result["summary"], result["findings"])
    else:
        assert result["verdict"] == verdict and {p["cause"] for p in forward.values()} == {code}, result["summary"]
    if name == "health-check-off":
        assert any("health check" in a["text"] and a["could_change_outcome"] for a in result["assumptions"])
    if name == "primary-secondary":
        assert list(forward) == ["p0"]  # node-2 (the secondary) only: no leg from node-1


# (name, ipv4_gateway(...) arguments, path, verdict class, code, page): "ok" = every forward path delivers (as far as
# the snapshot's data goes), no cloud error
GATEWAY_CASES: list[tuple[str, dict[str, Any], str, str, str | None, str]] = [
    ("inbound-local", {"eip_node": "node-2"}, "internet-to-node", "ok", None, "IPV4GW-RT"),
    ("inbound-redirected", {"eip_node": "node-2", "firewall": "Running"}, "internet-to-node", "UNDETERMINED",
     "VPC_GATEWAY_ROUTE_REDIRECT", "IPV4GW-RT"),
    ("inbound-firewall-stopped", {"eip_node": "node-2", "firewall": "Stopped"}, "internet-to-node", "UNREACHABLE",
     "VPC_NEXT_HOP_NOT_FORWARDING", "LIFECYCLE"),
    ("inbound-reply-unrouted", {"eip_node": "node-2", "routed": False}, "internet-to-node", "UNREACHABLE",
     "VPC_NO_ROUTE", "IPV4GW"),
    ("inbound-not-activated", {"eip_node": "node-2", "routed": False, "enabled": False}, "internet-to-node", "ok",
     None, "IPV4GW"),
    ("outbound-nat-routed", {"routed": False, "nat_routed": True}, "to-internet", "ok", None, "IPV4GW-NAT"),
    ("outbound-nat-unrouted", {"routed": False, "nat_routed": False}, "to-internet", "UNREACHABLE", "VPC_NO_ROUTE",
     "IPV4GW-NAT"),
    ("outbound-gateway-no-public-ip", {"routed": True}, "to-internet", "UNREACHABLE", "VPC_WRONG_NEXT_HOP",
     "IPV4GW-OVERVIEW"),
]


@pytest.mark.parametrize(("name", "gateway", "path", "verdict", "code", "page"), GATEWAY_CASES,
                         ids=[c[0] for c in GATEWAY_CASES])
async def test_internet_to_a_node_eip_through_the_ipv4_gateway(stacks: dict[str, EmbeddedStack],
                                                               emulator: CloudEmulator, name: str,
                                                               gateway: dict[str, Any], path: str, verdict: str,
                                                               code: str | None, page: str) -> None:
    """An IPv4 gateway through the whole pipeline (SDK → emulator → cloud stage → simulator): an internet client to
    the NodePort on node-2's EIP — the gateway route table (Local, or a firewall first: a warning and UNDETERMINED;
    a stopped firewall forwards nothing), the reply's route to the activated gateway, none of it before activation —
    and a pod to the internet through the NAT gateway, whose own vSwitch must route to the gateway (a node address
    without a public IP routed to the gateway itself gets nowhere). `page` is the tag of the page in docs/cloud.md's
    sources the expectation comes from."""
    assert f"| {page} |" in (Path(__file__).resolve().parents[2] / "docs" / "cloud.md").read_text()
    rs = LABS["host-gw"]
    state = cloud_state(rs)
    ipv4_gateway(state, rs, **gateway)
    emulator.set_state(state)
    result = await diagnose(stacks["host-gw"], request(rs, path))
    forward = forward_paths(result)
    if verdict == "ok":
        assert cloud_errors(result) == [] and delivers_as_far_as_the_data_goes(result), \
            (result["summary"], result["findings"])
        assert all(p["final"] in ("DELIVER", "FORWARD") for p in forward.values())
    elif verdict == "UNREACHABLE":
        assert result["verdict"] == verdict and {p["cause"] for p in forward.values()} == {code}, result["summary"]
    else:
        found = [f for f in result["findings"] if f["code"] == code]
        assert result["verdict"] == verdict and found and found[0]["severity"] == "warning", result["summary"]
        assert any("netdiag does not evaluate" in a["text"] and a["could_change_outcome"]
                   for a in result["assumptions"])
    if path == "internet-to-node":
        vpc = cloud_hop(rs, "vpc")
        assert all(p["hops"][1]["id"] == vpc for p in forward.values())  # right after the client
        nat = next(s for p in forward.values() for s in p["hops"][1]["steps"] if s["kind"] == "nat")
        assert nat["packet_out"]["dst"] == rs.node("node-2").ip
    if name == "inbound-reply-unrouted":
        assert all(p["hops"][-1]["id"] == cloud_hop(rs, "vpc-reply") for p in forward.values())
    if name == "outbound-nat-unrouted":
        assert {f["hop"] for f in cloud_errors(result)} == {cloud_hop(rs, "nat")}


async def test_backend_security_groups_are_stated_not_judged_for_layer4_clb(stacks: dict[str, EmbeddedStack],
                                                                           emulator: CloudEmulator) -> None:
    """Whether backend security groups filter layer-4 CLB traffic is left open by the pages read (ECS, Security
    group rules — https://www.alibabacloud.com/help/en/ecs/user-guide/security-group-rules; CLB, Enable Proxy
    Protocol for a layer-4 listener — https://www.alibabacloud.com/help/en/server-load-balancer/latest/enable-proxy-
    protocol-for-a-layer-4-listener-to-retrieve-client-ip-addresses): through the pipeline the lab group, which
    admits NodePorts from 100.64.0.0/10 only, is no drop but an assumption that matters, naming the client; a group
    that admits the client (decoy) is a plain statement."""
    rs = LABS["host-gw"]
    emulator.set_state(cloud_state(rs))
    refused = await diagnose(stacks["host-gw"], request(rs, "lb-tcp"))
    assert cloud_errors(refused) == [] and all(p["final"] == "DELIVER" for p in forward_paths(refused).values())
    assert any("would refuse the client" in a["text"] and CLIENT_PUBLIC in a["text"] and a["could_change_outcome"]
               for a in refused["assumptions"]), refused["assumptions"]
    state = cloud_state(rs)
    state["security_groups"][0]["Permissions"].append(
        {"Direction": "ingress", "Policy": "Accept", "Priority": 1, "IpProtocol": "TCP", "PortRange": "30000/32767",
         "SourceCidrIp": "0.0.0.0/0", "Description": "NodePorts from anywhere"})
    emulator.set_state(state)
    admitted = await diagnose(stacks["host-gw"], request(rs, "lb-tcp"))
    backend = [a for a in admitted["assumptions"] if "backend security groups" in a["text"]]
    assert backend and not any(a["could_change_outcome"] for a in backend), admitted["assumptions"]
