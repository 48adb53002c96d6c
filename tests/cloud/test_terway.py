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
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from lab.cloudemu import DEFAULT_KEY_ID, DEFAULT_KEY_SECRET, CloudEmulator
from lab.cloudstate import cloud_state, ids, with_fault
from lab.dataplane import Lab
from lab.objects import scenario_objects
from lab.scenario import ResolvedScenario, Scenario, resolve
from services.cloud.alibaba import AlibabaProvider, Credentials
from services.stack import EmbeddedStack
from shared.config import Settings
from tests.cloud.conftest import PAGES
from tests.foundation.helpers import run_to_end
from tests.lab.conftest import new_prefix, require_root

INTERNET = "8.8.8.8"
CNIS = ("terway-eniip", "terway-eni")


def scenario(cni: str) -> ResolvedScenario:
    return resolve(Scenario.model_validate({
        "name": f"cloud-{cni}", "cni": cni, "dns": False, "internet": False, "cloud": {},
        "networkPolicy": cni != "terway-eni",
        "nodes": [{"name": "node-1"}, {"name": "node-2"}],
        "pods": [
            {"name": "client", "node": "node-1", "labels": {"app": "client"}},
            {"name": "server", "node": "node-2", "labels": {"app": "server"}, "containers": [
                {"name": "srv", "ports": [{"containerPort": 8080}]}]},
        ],
    }))


LABS = {cni: scenario(cni) for cni in CNIS}


def request(rs: ResolvedScenario, kind: str) -> dict[str, Any]:
    return {
        "pod-to-pod": {"src": rs.pod("client").ip, "dst": rs.pod("server").ip, "port": 8080, "protocol": "tcp"},
        "pod-to-internet": {"src": rs.pod("client").ip, "dst": INTERNET, "port": 443, "protocol": "tcp"},
        "node-to-internet": {"src": rs.node("node-1").ip, "dst": INTERNET, "port": 443, "protocol": "tcp"},
    }[kind]


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "alibaba.json"
    path.write_text(json.dumps({"AccessKeyId": DEFAULT_KEY_ID, "AccessKeySecret": DEFAULT_KEY_SECRET}))
    return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stacks(tmp_path_factory: pytest.TempPathFactory, credentials: Path,
                 emulator: CloudEmulator) -> AsyncIterator[dict[str, EmbeddedStack]]:
    running: dict[str, EmbeddedStack] = {}
    try:
        for cni, rs in LABS.items():
            root = tmp_path_factory.mktemp(f"snapshot-{cni}")
            (root / "kubernetes").mkdir()
            (root / "kubernetes" / "objects.json").write_text(json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": scenario_objects(rs)}))
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
        settings = Settings(kubeconfig=api.kubeconfig, collect_timeout_s=5.0, cloud_provider="alibaba",
                            cloud_region="cn-hangzhou", cloud_endpoint=f"http://{cloud.endpoint}",
                            cloud_credentials_file=credentials)
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
