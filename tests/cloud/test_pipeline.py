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
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from lab import state as lab_state
from lab.cloudemu import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, CloudEmulator
from lab.cloudstate import cloud_state, ids, load_balancer_id, with_fault
from lab.dataplane import Lab
from lab.objects import scenario_objects
from lab.scenario import CloudSpec, ResolvedScenario, Scenario, resolve
from services.simulator.cloudpath import apply_cloud
from services.stack import EmbeddedStack
from shared.cloud import empty_inventory
from shared.codes import CATALOGUE
from shared.config import Settings
from shared.schemas import DiagnosisRequest, FinalState, Hop, HopKind
from shared.schemas import Path as ResultPath
from shared.topology import CandidatePath, Endpoint, EndpointKind, TopologyReport
from tests.foundation.helpers import run_to_end
from tests.lab.conftest import new_prefix, require_root

CLOUD_CODES = {c for c in CATALOGUE if c.startswith(("SG_", "VPC_", "NAT_", "LB_"))} - {"LB_SOURCE_RANGE_DENY"}
CLIENT_PUBLIC = "8.8.4.4"  # an internet client (a documentation range would classify as private)
INTERNET = "8.8.8.8"


def scenario(cni: str) -> ResolvedScenario:
    return resolve(Scenario.model_validate({
        "name": f"cloud-{cni}", "cni": cni, "dns": False, "internet": False, "cloud": {},
        "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [
            {"name": "client", "node": "node-1", "labels": {"app": "client"}},
            {"name": "server", "node": "node-2", "labels": {"app": "server"}, "containers": [
                {"name": "srv", "ports": [{"containerPort": 8080}, {"containerPort": 5353, "protocol": "UDP"}]}]},
        ],
        "services": [{"name": "web", "type": "LoadBalancer", "selector": {"app": "server"}, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"}]}],
    }))


LABS = {cni: scenario(cni) for cni in ("host-gw", "vxlan")}


def request(rs: ResolvedScenario, kind: str) -> dict[str, Any]:
    lb_ip = rs.services[0].load_balancer_ip
    return {
        "pod-to-pod": {"src": rs.pod("client").ip, "dst": rs.pod("server").ip, "port": 8080, "protocol": "tcp"},
        "to-internet": {"src": rs.pod("client").ip, "dst": INTERNET, "port": 53, "protocol": "udp"},
        "lb-tcp": {"src": CLIENT_PUBLIC, "dst": lb_ip, "port": 80, "protocol": "tcp"},
        "lb-udp": {"src": CLIENT_PUBLIC, "dst": lb_ip, "port": 53, "protocol": "udp"},
    }[kind]


def cloud_hop(rs: ResolvedScenario, kind: str) -> str:
    """The hop a cloud finding of this kind of path belongs to."""
    return {"vpc": f"vpc:{ids(rs)['vpc']}", "vpc-reply": f"vpc:{ids(rs)['vpc']}:reply", "nat": f"nat:{ids(rs)['nat']}",
            "lb": f"lb:{load_balancer_id(rs, 'default/web')}"}[kind]


# code, cni, path, fault target, verdict, hop kind
FAULTS: list[tuple[str, str, str, dict[str, Any], str, str]] = [
    ("SG_DENY", "host-gw", "pod-to-pod", {"protocol": "tcp", "port": 8080}, "UNREACHABLE", "vpc"),
    ("SG_DENY", "vxlan", "pod-to-pod", {"protocol": "udp", "port": 8472}, "UNREACHABLE", "vpc"),  # outer packet
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
]


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for cni, rs in LABS.items():
        root = tmp_path_factory.mktemp(f"snapshot-{cni}")
        (root / "kubernetes").mkdir()
        (root / "kubernetes" / "objects.json").write_text(json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": scenario_objects(rs)}))
        out[cni] = root
    return out


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "alibaba.json"
    path.write_text(json.dumps({"AccessKeyId": DEFAULT_KEY_ID, "AccessKeySecret": DEFAULT_KEY_SECRET}))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stacks(snapshots: dict[str, Path], credentials: Path,
                 emulator: CloudEmulator) -> AsyncIterator[dict[str, EmbeddedStack]]:
    """One embedded stack per snapshot; the cloud is read live from the emulator on every diagnosis."""
    running: dict[str, EmbeddedStack] = {}
    try:
        for cni, root in snapshots.items():
            settings = Settings(snapshot=root, cloud_provider="alibaba", cloud_region="cn-hangzhou",
                                cloud_endpoint=f"http://{emulator.endpoint}", cloud_credentials_file=credentials)
            running[cni] = await EmbeddedStack(settings).start()
        yield running
    finally:
        for stack in running.values():
            await stack.stop()


async def diagnose(stack: EmbeddedStack, body: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        doc = await run_to_end(session, stack.url, body, timeout=20)
    assert doc["status"] == "completed", doc
    return doc["result"]  # type: ignore[no-any-return]


def cloud_errors(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in result["findings"] if f["code"] in CLOUD_CODES and f["severity"] == "error"]


def hop_ids(result: dict[str, Any]) -> list[str]:
    return [h["id"] for p in result["paths"] if p["direction"] == "forward" for h in p["hops"]]


@pytest.mark.parametrize(("code", "cni", "path", "target", "verdict", "hop"), FAULTS,
                         ids=[f"{c}-{cni}-{hop}" for c, cni, _, _, _, hop in FAULTS])
async def test_cloud_fault_through_the_pipeline(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator,
                                                code: str, cni: str, path: str, target: dict[str, Any],
                                                verdict: str, hop: str) -> None:
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
    rs = LABS[cni]
    emulator.set_state(cloud_state(rs))
    result = await diagnose(stacks[cni], request(rs, path))
    assert cloud_errors(result) == []
    assert result["verdict"] != "UNREACHABLE", result["summary"]
    assert all(p["final"] in ("DELIVER", "FORWARD") for p in result["paths"] if p["direction"] == "forward")
    assert cloud_hop(rs, hop) in hop_ids(result)
    cloud = [h for p in result["paths"] for h in p["hops"] if h["id"] == cloud_hop(rs, hop)]
    assert all(h["status"] == "ok" for h in cloud), cloud


async def test_vxlan_security_groups_see_the_outer_packet(stacks: dict[str, EmbeddedStack],
                                                          emulator: CloudEmulator) -> None:
    """A drop rule for the pod port does not stop vxlan traffic: the group only sees udp 8472 between
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
    """host-gw: the forward packet crosses the VPC (its route to node-2's pod CIDR exists), so the
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
    assert unchecked["verdict"] != "UNREACHABLE" and cloud_hop(rs, "vpc-reply") not in hop_ids(unchecked)
    assert route["action"] == "DROP" and route["packet_in"]["dst"] == rs.pod("client").ip
    missing = next(f for f in result["findings"] if f["code"] == "VPC_NO_ROUTE")
    assert missing["hop"] == reply_hop["id"] and rs.pod("client").ip in missing["message"]

    # vxlan: replies go node → node inside the VPC; its route tables hold no pod CIDR at all
    rs = LABS["vxlan"]
    state = cloud_state(rs)
    assert not {n.pod_cidr for n in rs.nodes} & {e["DestinationCidrBlock"] for e in state["route_tables"][0]["Entries"]}
    emulator.set_state(state)
    result = await diagnose(stacks["vxlan"], request(rs, "pod-to-pod"))
    assert cloud_errors(result) == [] and result["verdict"] != "UNREACHABLE", result["summary"]
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
    assert result["verdict"] != "UNREACHABLE"


def test_cloud_state_matches_the_lab_objects() -> None:
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
    assert CLOUD_CODES - {"LB_BACKEND_MISMATCH"} == {code for code, *_ in FAULTS}


# ------------------------------------------------------------------ live lab: namespaces, agents, emulator


@pytest.mark.lab
@pytest.mark.parametrize(("cni", "protocol", "port"), [("vxlan", "udp", 8472), ("host-gw", "tcp", 8080)])
async def test_live_lab_with_an_emulated_cloud(credentials: Path, cni: str, protocol: str, port: int) -> None:
    """A lab with an emulated cloud: pod → pod across nodes is diagnosed through the live pipeline
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
        settings = Settings(kubeconfig=api.kubeconfig, collect_timeout_s=5.0, cloud_provider="alibaba",
                            cloud_region="cn-hangzhou", cloud_endpoint=f"http://{cloud.endpoint}",
                            cloud_credentials_file=credentials)
        agents = {name: node.netns for name, node in lab.state.nodes.items()}
        async with EmbeddedStack(settings, agents=agents) as stack:
            assert lab.probe("default/client", "pod:default/server", 8080).ok
            healthy = await diagnose(stack, body)
            assert healthy["verdict"] == "REACHABLE", (healthy["summary"], healthy["assumptions"])
            assert cloud_errors(healthy) == [] and vpc in hop_ids(healthy)

            await asyncio.to_thread(lab.set_cloud_state, with_fault(cloud_state(rs), rs, "SG_DENY", protocol=protocol,
                                                                    port=port))
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
    """Pod → internet on a lab with the emulated cloud: with the CNI's masquerade the node address leaves and
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
        settings = Settings(kubeconfig=api.kubeconfig, collect_timeout_s=5.0, cloud_provider="alibaba",
                            cloud_region="cn-hangzhou", cloud_endpoint=f"http://{cloud.endpoint}",
                            cloud_credentials_file=credentials)
        body = {"src": lab.address("pod:default/client"), "dst": INTERNET, "port": 53, "protocol": "udp"}
        agents = {name: node.netns for name, node in lab.state.nodes.items()}
        async with EmbeddedStack(settings, agents=agents) as stack:
            healthy = await diagnose(stack, body)
            assert cloud_errors(healthy) == [] and healthy["verdict"] != "UNREACHABLE", healthy["summary"]
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
