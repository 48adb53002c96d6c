"""Cloud-side Terway through the whole pipeline (snapshot of a Terway lab scenario, the lab's emulated cloud
read through the real SDK): pod traffic is judged at the ENI that owns the pod address — its security
groups, its (pod) vSwitch's route table, the SNAT entry for the pod vSwitch — not at the node's primary
NIC. Each fault has a healthy decoy: the same change seen by traffic it must not affect.

Shared-ENI (terway-eniip: the pod address a secondary private IP of a node's secondary ENI) and exclusive
(terway-eni: the pod address an ENI's primary IP) both carry the ENIs in eni-config's security group, which
differs from the nodes'."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lab.cloudemu import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, CloudEmulator
from lab.cloudstate import cloud_state, ids, with_fault
from lab.dataplane import Lab
from lab.kubeapi import serve_scenario
from lab.objects import scenario_objects
from lab.scenario import ResolvedScenario, Scenario, resolve
from services.cloud.alibaba import AlibabaProvider, Credentials
from services.simulator.cloudeval.from_internet import evaluate_internet_to_instance
from services.simulator.cloudeval.index import CloudIndex
from services.simulator.cloudeval.result import CloudResult
from services.stack import EmbeddedStack
from services.topology.plan import Planner
from services.topology.sources.live import LiveSource
from shared.kube import api_client
from shared.schemas import DiagnosisRequest, Packet, StepKind
from shared.topology import EndpointKind
from tests.cloud.conftest import PAGES
from tests.cloud.helpers import cloud_settings, cloud_stacks, diagnose, write_snapshot
from tests.lab.conftest import new_prefix, require_root

INTERNET = "8.8.8.8"
CNIS = ("terway-eniip", "terway-eni")
POD_EIP = "47.96.0.30"
CLIENT_PUBLIC = "8.8.4.4"


def scenario(cni: str) -> ResolvedScenario:
    return resolve(Scenario.model_validate({
        "name": f"cloud-{cni}", "cni": cni, "dns": False, "internet": False, "cloud": {},
        "networkPolicy": cni != "terway-eni",
        "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [
            {"name": "client", "node": "node-1", "labels": {"app": "client"}},
            {"name": "server", "node": "node-2", "labels": {"app": "server"}, "eip": POD_EIP, "containers": [
                {"name": "srv", "ports": [{"containerPort": 8080}]}]},
        ],
    }))


LABS = {cni: scenario(cni) for cni in CNIS}


def request(rs: ResolvedScenario, kind: str) -> dict[str, Any]:
    return {
        "pod-to-pod": {"src": rs.pod("client").ip, "dst": rs.pod("server").ip, "port": 8080, "protocol": "tcp"},
        "pod-to-internet": {"src": rs.pod("client").ip, "dst": INTERNET, "port": 443, "protocol": "tcp"},
        "node-to-internet": {"src": rs.node("node-1").ip, "dst": INTERNET, "port": 443, "protocol": "tcp"},
        "internet-to-pod-eip": {"src": CLIENT_PUBLIC, "dst": POD_EIP, "port": 8080, "protocol": "tcp"},
    }[kind]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stacks(tmp_path_factory: pytest.TempPathFactory, credentials: Path,
                 emulator: CloudEmulator) -> AsyncIterator[dict[str, EmbeddedStack]]:
    snapshots = {cni: write_snapshot(tmp_path_factory.mktemp(f"snapshot-{cni}"), scenario_objects(rs))
                 for cni, rs in LABS.items()}
    async with cloud_stacks(snapshots, emulator, credentials) as running:
        yield running


def cloud_steps(result: dict[str, Any], hop_id: str) -> str:
    return "\n".join(s["detail"] for p in result["paths"] if p["direction"] == "forward" for h in p["hops"]
                     if h["id"] == hop_id for s in h["steps"])


def errors(result: dict[str, Any]) -> list[str]:
    return [f["code"] for f in result["findings"] if f["severity"] == "error"]


def test_the_emulated_cloud_carries_the_pod_enis(emulator: CloudEmulator) -> None:
    """ECS, DescribeNetworkInterfaces (an ENI's PrivateIpSets: its primary and secondary private IPs, its own
    SecurityGroupIds and VSwitchId) — https://www.alibabacloud.com/help/en/ecs/developer-reference/api-ecs-2014-05-26-describenetworkinterfaces;
    Terway, eni-config `security_groups` / `vswitches`."""
    for cni, rs in LABS.items():
        emulator.set_state(cloud_state(rs))
        provider = AlibabaProvider(Credentials(DEFAULT_KEY_ID, DEFAULT_KEY_SECRET),
                                   endpoint=f"http://{emulator.endpoint}", backoff_s=0.01)
        inv = provider.collect([o for o in scenario_objects(rs) if o["kind"] == "Node"])
        pod_enis = [e for e in inv.network_interfaces if e.type == "Secondary"]
        owner = {ip: e for e in pod_enis for ip in e.private_ips}
        for pod in ("client", "server"):
            eni = owner[rs.pod(pod).ip]
            node = rs.pod(pod).spec.node
            assert eni.instance_id == inv.nodes[node] and eni.vswitch_id == rs.scenario.terway.pod_vswitch_id
            assert eni.security_group_ids == [rs.scenario.terway.security_group_id] != \
                next(i for i in inv.instances if i.id == inv.nodes[node]).security_group_ids
            # exclusive: the pod address is the ENI's primary IP; shared: a secondary IP
            assert (eni.primary_ip == rs.pod(pod).ip) == (cni == "terway-eni"), eni
        assert {v.id for v in inv.vswitches} == {ids(rs)["vswitch"], rs.scenario.terway.pod_vswitch_id}
        assert any(e.source_vswitch_id == rs.scenario.terway.pod_vswitch_id for n in inv.nat_gateways
                   for e in n.snat_entries)


@pytest.mark.parametrize("cni", CNIS)
async def test_healthy_pod_traffic_is_judged_at_the_pod_eni(stacks: dict[str, EmbeddedStack],
                                                            emulator: CloudEmulator, cni: str) -> None:
    rs = LABS[cni]
    emulator.set_state(cloud_state(rs))
    result = await diagnose(stacks[cni], request(rs, "pod-to-pod"))
    assert errors(result) == [], result["findings"]
    steps = cloud_steps(result, f"vpc:{ids(rs)['vpc']}")
    assert rs.scenario.terway.security_group_id in steps and ids(rs)["group"] not in steps, steps
    internet = await diagnose(stacks[cni], request(rs, "pod-to-internet"))
    assert errors(internet) == [], internet["findings"]
    assert ids(rs)["pod_snat"] in cloud_steps(internet, f"nat:{ids(rs)['nat']}")


# fault (code, target), the request it breaks and the hop that names it, the decoy request it must not break
CASES: list[tuple[str, dict[str, Any], str, str, str]] = [
    # the ENI group denies what the node group allows
    ("SG_DENY", {"protocol": "tcp", "port": 8080, "eni": True, "inner_access_policy": "Drop"}, "pod-to-pod", "vpc",
     "node-to-internet"),
    # the pod vSwitch has no SNAT entry: pods cannot reach the Internet, the nodes still can
    ("NAT_NO_SNAT", {"pods": True}, "pod-to-internet", "nat", "node-to-internet"),
    # the pod vSwitch's route table lacks the NAT gateway route
    ("VPC_NO_ROUTE", {"pods": True}, "pod-to-internet", "vpc", "node-to-internet"),
]


@pytest.mark.parametrize("cni", CNIS)
@pytest.mark.parametrize(("code", "target", "broken", "hop", "decoy"), CASES, ids=[c[0] for c in CASES])
async def test_terway_cloud_fault_at_the_pod_eni(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator,
                                                 cni: str, code: str, target: dict[str, Any], broken: str,
                                                 hop: str, decoy: str) -> None:
    """The expectation comes from PAGES[code] (docs/cloud.md, Terway)."""
    assert code in PAGES
    rs = LABS[cni]
    emulator.set_state(with_fault(cloud_state(rs), rs, code, **target))
    result = await diagnose(stacks[cni], request(rs, broken))
    assert result["verdict"] == "UNREACHABLE", (result["summary"], result["findings"])
    found = next(f for f in result["findings"] if f["code"] == code)
    assert found["hop"] == {"vpc": f"vpc:{ids(rs)['vpc']}", "nat": f"nat:{ids(rs)['nat']}"}[hop]
    # named at the pod's ENI: its group, its vSwitch's route table, the pod vSwitch
    named = json.dumps(found)
    assert {"SG_DENY": rs.scenario.terway.security_group_id, "NAT_NO_SNAT": rs.pod("client").ip,
            "VPC_NO_ROUTE": "vtb-"}[code] in named, named
    healthy = await diagnose(stacks[cni], request(rs, decoy))
    assert errors(healthy) == [], healthy["findings"]


@pytest.mark.parametrize("cni", CNIS)
async def test_node_group_deny_is_not_the_pods(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator,
                                               cni: str) -> None:
    """The decoy of the ENI group's deny: the node group denies tcp 8080 (nodes included: InnerAccessPolicy
    Drop), the pods' ENIs, in their own group, still admit it."""
    rs = LABS[cni]
    emulator.set_state(with_fault(cloud_state(rs), rs, "SG_DENY", protocol="tcp", port=8080,
                                  inner_access_policy="Drop"))
    result = await diagnose(stacks[cni], request(rs, "pod-to-pod"))
    assert errors(result) == [], result["findings"]


def pod_eip(state: dict[str, Any], rs: ResolvedScenario) -> dict[str, Any]:
    """The lab's cloud binds the server pod's EIP to its address on the ENI that holds it (for terway-eniip a
    secondary private IP); here the ENI group's rule admitting internet clients to the pod's port."""
    group = next(g for g in state["security_groups"] if g["SecurityGroupId"] == rs.scenario.terway.security_group_id)
    group["Permissions"].append({"Direction": "ingress", "Policy": "Accept", "Priority": 100, "IpProtocol": "TCP",
                                 "PortRange": "8080/8080", "SourceCidrIp": "0.0.0.0/0", "Description": "server"})
    assert [e["IpAddress"] for e in state["eips"]] == [POD_EIP]
    return state


@pytest.mark.parametrize("cni", CNIS)
def test_internet_to_an_eip_on_a_pod_address_is_judged_at_its_eni(emulator: CloudEmulator, cni: str) -> None:
    """EIP, *Associate an EIP with a secondary ENI* (docs/cloud.md [EIP-ENI]) — an EIP bound to a private IP of an
    ENI, a secondary one included (DescribeEipAddresses PrivateIpAddress), serves that address: an internet client
    to the EIP reaches the pod's address and is judged at the ENI that holds it (its security groups, [SG-RULES,
    TERWAY-CONF]), read through the real SDK from the Terway lab's emulated cloud. Fault: the ENI group denies;
    decoy: the nodes' group denies, the ENI group admits — the pod is still reached. (Through the whole pipeline,
    the topology reading the pod's PodEIP: test_internet_to_a_pod_eip_through_the_pipeline.)"""
    rs = LABS[cni]
    nodes = [o for o in scenario_objects(rs) if o["kind"] == "Node"]
    provider = AlibabaProvider(Credentials(DEFAULT_KEY_ID, DEFAULT_KEY_SECRET), endpoint=f"http://{emulator.endpoint}",
                               backoff_s=0.01)
    packet = Packet(src=CLIENT_PUBLIC, dst=POD_EIP, protocol="tcp", dport=8080)
    eni_group, node_group = rs.scenario.terway.security_group_id, ids(rs)["group"]

    def judged(state: dict[str, Any]) -> CloudResult:
        emulator.set_state(pod_eip(state, rs))
        return evaluate_internet_to_instance(CloudIndex(provider.collect(nodes)), packet)

    eni_id = pod_eip(cloud_state(rs), rs)["eips"][0]["InstanceId"]
    healthy = judged(cloud_state(rs))
    assert healthy.outcome == "pass", healthy.findings
    assert healthy.flow is not None and str(healthy.flow.dst) == rs.pod("server").ip
    eni = CloudIndex(provider.collect(nodes)).enis[eni_id]
    # shared ENI: the pod's address is a secondary private IP of the node's ENI; exclusive: the ENI's primary
    assert rs.pod("server").ip in eni.private_ips
    assert (eni.primary_ip == rs.pod("server").ip) == (cni == "terway-eni")
    group_step = next(s for h in healthy.hops for s in h.steps if s.kind == StepKind.SECURITY_GROUP)
    assert eni_group in group_step.detail and eni_id in group_step.detail and node_group not in group_step.detail, \
        group_step.detail

    denied = judged(with_fault(cloud_state(rs), rs, "SG_DENY", protocol="tcp", port=8080, eni=True))
    assert denied.outcome == "drop" and [f.code for f in denied.findings] == ["SG_DENY"], denied.findings
    assert eni_group in denied.findings[0].message and "SG_DENY" in PAGES

    decoy = judged(with_fault(cloud_state(rs), rs, "SG_DENY", protocol="tcp", port=8080))
    assert decoy.outcome == "pass" and decoy.findings == [], decoy.findings


def delivered(result: dict[str, Any]) -> None:
    """Delivered to the server pod on its node through its EIP, nothing in doubt but the nodes' own state (a
    snapshot of Kubernetes objects only: the verdict is REACHABLE where the nodes are collected)."""
    assert errors(result) == [], result["findings"]
    forward = next(p for p in result["paths"] if p["direction"] == "forward")
    assert forward["final"] == "DELIVER" and forward["hops"][-1]["id"] == "pod:default/server", forward
    assert forward["hops"][-1]["node"] == "node-2"
    doubts = [a["text"] for a in result["assumptions"] if a["could_change_outcome"]
              and not a["text"].startswith("network state of node")]
    assert doubts == [] and result["verdict"] != "UNREACHABLE", (result["summary"], doubts)


def group_step(result: dict[str, Any], hop_id: str) -> str:
    return next(s["detail"] for p in result["paths"] if p["direction"] == "forward" for h in p["hops"]
                if h["id"] == hop_id for s in h["steps"] if s["kind"] == StepKind.SECURITY_GROUP)


@pytest.mark.parametrize("cni", CNIS)
async def test_internet_to_a_pod_eip_through_the_pipeline(stacks: dict[str, EmbeddedStack], emulator: CloudEmulator,
                                                          cni: str) -> None:
    """ACK, *Attach an independent EIP to a pod* (ack-extend-network-controller's PodEIP: the EIP, the pod IP it is
    bound to, the ENI) and EIP, *Associate an EIP with a secondary ENI* (docs/cloud.md [EIP-ENI]): a request from
    the internet to the pod's EIP is the pod reached through the cloud's translation at the ENI holding its address
    — judged at that ENI's security group [SG-RULES, TERWAY-CONF], then delivered on the pod's node. Fault: the ENI
    group denies (SG_DENY naming it); decoy: the nodes' group denies, the ENI's admits — still REACHABLE."""
    rs = LABS[cni]
    vpc, eni_group, node_group = f"vpc:{ids(rs)['vpc']}", rs.scenario.terway.security_group_id, ids(rs)["group"]
    emulator.set_state(pod_eip(cloud_state(rs), rs))
    healthy = await diagnose(stacks[cni], request(rs, "internet-to-pod-eip"))
    delivered(healthy)
    step = group_step(healthy, vpc)
    assert eni_group in step and node_group not in step, step
    assert rs.pod("server").ip in cloud_steps(healthy, vpc)

    emulator.set_state(with_fault(pod_eip(cloud_state(rs), rs), rs, "SG_DENY", protocol="tcp", port=8080, eni=True))
    denied = await diagnose(stacks[cni], request(rs, "internet-to-pod-eip"))
    assert denied["verdict"] == "UNREACHABLE", denied["summary"]
    found = next(f for f in denied["findings"] if f["code"] == "SG_DENY")
    assert found["hop"] == vpc and eni_group in found["message"], found

    emulator.set_state(with_fault(pod_eip(cloud_state(rs), rs), rs, "SG_DENY", protocol="tcp", port=8080))
    delivered(await diagnose(stacks[cni], request(rs, "internet-to-pod-eip")))


async def test_an_eip_no_podeip_declares_is_not_guessed(tmp_path: Path, credentials: Path,
                                                       emulator: CloudEmulator) -> None:
    """The cloud binds the EIP to a pod's address (its inventory, read through the real SDK, is in the snapshot's
    cloud/), but no PodEIP in the cluster declares it (bound by hand, or the controller's objects not exported):
    who answers at that address is not the cluster model's to say, so no confident verdict — UNDETERMINED,
    naming the EIP's binding."""
    rs = LABS["terway-eniip"]
    emulator.set_state(pod_eip(cloud_state(rs), rs))
    objects = [o for o in scenario_objects(rs) if o["kind"] != "PodEIP"]
    provider = AlibabaProvider(Credentials(DEFAULT_KEY_ID, DEFAULT_KEY_SECRET), endpoint=f"http://{emulator.endpoint}",
                               backoff_s=0.01)
    root = write_snapshot(tmp_path, objects)
    (root / "cloud").mkdir()
    (root / "cloud" / "inventory.json").write_text(
        provider.collect([o for o in objects if o["kind"] == "Node"]).model_dump_json())
    async with cloud_stacks({"undeclared": root}, emulator, credentials) as running:
        result = await diagnose(running["undeclared"], request(rs, "internet-to-pod-eip"))
    assert result["verdict"] == "UNDETERMINED", result["summary"]
    assert any("no PodEIP" in a["text"] and rs.pod("server").ip in a["text"] and a["could_change_outcome"]
               for a in result["assumptions"]), result["assumptions"]


def test_the_lab_api_serves_the_pod_eip_and_the_topology_reads_it(tmp_path: Path) -> None:
    """ack-extend-network-controller's PodEIP (alibabacloud.com/v1beta1) served by the lab's Kubernetes API in a
    Terway lab whose pod has an EIP, read by the live source (real `kubernetes` client, list+watch): a request to
    the EIP plans a path to the pod on its node, the pod address its translated destination."""
    rs = LABS["terway-eniip"]
    with serve_scenario(rs) as api:
        source = LiveSource(api_client(api.write_kubeconfig(tmp_path / "kubeconfig")), retry_s=0.1).start()
        try:
            assert source.wait_synced(10), source.errors()
            [podeip] = source.model.pod_eips_at(ip_address(POD_EIP))
            assert podeip["status"]["privateIPAddress"] == rs.pod("server").ip
            report = Planner(source.model, "live").plan(DiagnosisRequest.model_validate(
                request(rs, "internet-to-pod-eip")))
        finally:
            source.stop()
    assert report.dst.kind == EndpointKind.POD_EIP and report.dst.pod == "default/server", report.dst
    assert [(str(p.dst_address), p.dst_node, p.dst_pod) for p in report.paths] == [
        (rs.pod("server").ip, "node-2", "default/server")]
    assert report.nodes_to_collect == ["node-2"] and not any(a.could_change_outcome for a in report.assumptions
                                                            if "outside the cluster" in a.text)


@pytest.mark.lab
@pytest.mark.parametrize("cni", CNIS)
async def test_live_terway_lab_with_an_emulated_cloud(credentials: Path, cni: str) -> None:
    """A Terway lab with its emulated cloud through the live pipeline (lab Kubernetes API, node agents and the
    dataplane walk, SDK → emulator daemon): the pod's packet crosses the VPC from the ENI owning its address,
    and the cloud judges it there — the ENI group's deny is found, the node group's is not the pods'; the pod
    vSwitch without SNAT breaks the pods' Internet access, not the nodes'. The kernel keeps delivering: the
    emulated cloud is an API, not a dataplane."""
    require_root()
    rs = resolve(Scenario.model_validate({
        "name": f"live-{cni}", "cni": cni, "dns": False, "internet": True, "cloud": {},
        "networkPolicy": cni != "terway-eni", "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [{"name": "client", "node": "node-1"},
                 {"name": "server", "node": "node-2", "containers": [{"name": "srv",
                                                                     "ports": [{"containerPort": 8080}]}]},
                 {"name": "neighbour", "node": "node-1", "containers": [{"name": "srv",
                                                                        "ports": [{"containerPort": 8080}]}]}]}))
    prefix = new_prefix()
    try:
        lab = await asyncio.to_thread(Lab.up, rs, prefix)
        api = await asyncio.to_thread(lab.start_api)
        cloud = await asyncio.to_thread(lab.start_cloud)
        settings = cloud_settings(cloud.endpoint, credentials, kubeconfig=api.kubeconfig, collect_timeout_s=5.0)
        pod_to_pod = {"src": rs.pod("client").ip, "dst": rs.pod("server").ip, "port": 8080, "protocol": "tcp"}
        pod_out = {"src": rs.pod("client").ip, "dst": INTERNET, "port": 80, "protocol": "tcp"}
        node_out = {"src": rs.node("node-1").ip, "dst": INTERNET, "port": 80, "protocol": "tcp"}
        agents = {name: node.netns for name, node in lab.state.nodes.items()}
        async with EmbeddedStack(settings, agents=agents) as stack:
            healthy = await diagnose(stack, pod_to_pod)
            assert healthy["verdict"] == "REACHABLE" and errors(healthy) == [], healthy["summary"]
            assert rs.scenario.terway.security_group_id in cloud_steps(healthy, f"vpc:{ids(rs)['vpc']}")

            await asyncio.to_thread(lab.set_cloud_state, with_fault(
                cloud_state(rs), rs, "SG_DENY", protocol="tcp", port=8080, eni=True, inner_access_policy="Drop"))
            denied = await diagnose(stack, pod_to_pod)
            assert denied["verdict"] == "UNREACHABLE", denied["summary"]
            assert any(f["code"] == "SG_DENY" and rs.scenario.terway.security_group_id in f["message"]
                       for f in denied["findings"])
            assert lab.probe("default/client", "pod:default/server", 8080).ok  # the kernel never saw the cloud
            # same node: an exclusive ENI still sends through the VPC (and its groups); eniip stays on the node
            same_node = await diagnose(stack, {**pod_to_pod, "dst": rs.pod("neighbour").ip})
            assert same_node["verdict"] == ("UNREACHABLE" if cni == "terway-eni" else "REACHABLE"), \
                same_node["summary"]

            await asyncio.to_thread(lab.set_cloud_state, with_fault(
                cloud_state(rs), rs, "SG_DENY", protocol="tcp", port=8080, inner_access_policy="Drop"))
            decoy = await diagnose(stack, pod_to_pod)
            assert decoy["verdict"] == "REACHABLE" and errors(decoy) == [], decoy["summary"]

            await asyncio.to_thread(lab.set_cloud_state, with_fault(cloud_state(rs), rs, "NAT_NO_SNAT", pods=True))
            no_snat = await diagnose(stack, pod_out)
            assert no_snat["verdict"] == "UNREACHABLE" and "NAT_NO_SNAT" in errors(no_snat), no_snat["summary"]
            nodes_fine = await diagnose(stack, node_out)
            assert nodes_fine["verdict"] == "REACHABLE" and errors(nodes_fine) == [], nodes_fine["summary"]
    finally:
        await asyncio.to_thread(Lab.sweep, prefix)


@pytest.mark.lab
@pytest.mark.parametrize("cni", CNIS)
async def test_live_pod_eip_is_judged_by_the_kernel_and_the_cloud(credentials: Path, cni: str) -> None:
    """Internet → a pod's EIP in a live Terway lab: the lab's VPC router translates the EIP 1:1 to the pod address
    (what the cloud does for the EIP its PodEIP declares) and delivers it to the ENI holding it — the kernel
    answers the probe; the live pipeline (lab API serving the PodEIP, node agents, dataplane walk from the pod's
    node, SDK → emulator) agrees, judging the way in at the ENI's group: its deny is found, the nodes' is not the
    pod's."""
    require_root()
    rs = resolve(Scenario.model_validate({
        "name": f"eip-{cni}", "cni": cni, "dns": False, "internet": True, "cloud": {},
        "networkPolicy": cni != "terway-eni", "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [{"name": "server", "node": "node-2", "eip": POD_EIP, "containers": [
            {"name": "srv", "ports": [{"containerPort": 8080}]}]}]}))
    prefix = new_prefix()
    try:
        lab = await asyncio.to_thread(Lab.up, rs, prefix)
        api = await asyncio.to_thread(lab.start_api)
        cloud = await asyncio.to_thread(lab.start_cloud)
        await asyncio.to_thread(lab.set_cloud_state, pod_eip(cloud_state(rs), rs))
        settings = cloud_settings(cloud.endpoint, credentials, kubeconfig=api.kubeconfig, collect_timeout_s=5.0)
        to_eip = {"src": lab.source_address("ext"), "dst": POD_EIP, "port": 8080, "protocol": "tcp"}
        agents = {name: node.netns for name, node in lab.state.nodes.items()}
        assert lab.probe("ext", POD_EIP, 8080).ok  # the kernel's judgement
        async with EmbeddedStack(settings, agents=agents) as stack:
            healthy = await diagnose(stack, to_eip)
            assert healthy["verdict"] == "REACHABLE" and errors(healthy) == [], (healthy["summary"],
                                                                               healthy["assumptions"])
            vpc = f"vpc:{ids(rs)['vpc']}"
            assert rs.scenario.terway.security_group_id in group_step(healthy, vpc)

            await asyncio.to_thread(lab.set_cloud_state, with_fault(pod_eip(cloud_state(rs), rs), rs, "SG_DENY",
                                                                    protocol="tcp", port=8080, eni=True))
            denied = await diagnose(stack, to_eip)
            assert denied["verdict"] == "UNREACHABLE", denied["summary"]
            assert any(f["code"] == "SG_DENY" and rs.scenario.terway.security_group_id in f["message"]
                       for f in denied["findings"])

            await asyncio.to_thread(lab.set_cloud_state, with_fault(pod_eip(cloud_state(rs), rs), rs, "SG_DENY",
                                                                    protocol="tcp", port=8080))
            decoy = await diagnose(stack, to_eip)
            assert decoy["verdict"] == "REACHABLE" and errors(decoy) == [], decoy["summary"]
    finally:
        await asyncio.to_thread(Lab.sweep, prefix)
