"""The cluster summary the topology stage publishes for the UI (shared/cluster.py), on a real
nats-server, from a snapshot and from a live list+watch cache of the lab's Kubernetes API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from lab.kubeapi import LabKubeAPI, serve_scenario
from lab.scenario import ResolvedScenario, Scenario, resolve
from services.topology import handler
from services.topology.handler import TopologyStage, planner_for
from services.topology.model import ClusterModel, trim
from services.topology.summary import PAYLOAD_HEADROOM, build_summary, summary_within
from shared.bus import Bus
from shared.cluster import MAX_ITEMS, SUMMARY_KEY, ClusterSummary
from shared.config import Settings
from shared.natsserver import NatsServer
from tests.topology.conftest import BASIC

LAB_BASIC = Path(__file__).resolve().parents[2] / "examples" / "lab" / "basic.yaml"
FAST_S = 0.1  # the stage's change check interval in these tests (2 s in service)


@pytest.fixture(autouse=True)
def fast_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "SUMMARY_INTERVAL_S", FAST_S)


@pytest_asyncio.fixture(loop_scope="session")
async def bus(fresh_nats: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(name="summary-test", settings=Settings(nats_url=fresh_nats.url))
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
def lab_api() -> Iterator[LabKubeAPI]:
    with serve_scenario(resolve(Scenario.load(LAB_BASIC)), bookmark_interval_s=0.2) as api:
        yield api


async def published(bus: Bus, until: Callable[[ClusterSummary], bool], timeout: float = 10.0) -> ClusterSummary:
    """The first summary in the KV bucket that satisfies `until`."""
    kv = await bus.cluster_kv()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            summary = ClusterSummary.model_validate_json((await kv.get(SUMMARY_KEY)).value or b"")
            if until(summary):
                return summary
        except Exception as exc:  # not there yet
            last = exc
        else:
            last = summary
        assert asyncio.get_running_loop().time() < deadline, f"no matching summary: {last}"
        await asyncio.sleep(0.05)


def by_key(items: list) -> dict[str, object]:  # type: ignore[type-arg]
    return {f"{i.namespace}/{i.name}": i for i in items}


async def test_snapshot_summary_is_published_and_follows_the_model(bus: Bus) -> None:
    settings = Settings(nats_url=bus.settings.nats_url, snapshot=BASIC)
    stage = TopologyStage(bus, settings)  # publishes at start: no diagnosis needed
    try:
        summary = await published(bus, lambda s: True)
        assert summary.source == f"snapshot:{BASIC}" and [str(ip) for ip in summary.dns] == ["10.96.0.10"]
        pods, services = by_key(summary.pods), by_key(summary.services)
        assert "default/pending-7f6d5c4b3-uvwxy" not in pods  # no IP: nothing to pick
        assert summary.counts.pods == len(summary.pods) == 12 and not summary.truncated
        client = pods["default/client"]
        assert (client.ips[0].compressed, client.node, client.phase, client.ready) == ("10.244.1.20", "node-1",
                                                                                        "Running", True)
        assert pods["kube-system/kube-proxy-5fn2x"].host_network
        dns = services["kube-system/kube-dns"]
        assert [(p.port, p.protocol) for p in dns.ports] == [(53, "UDP"), (53, "TCP"), (9153, "TCP")]
        lb = services["prod/api-lb"]
        assert (lb.type, [str(i) for i in lb.lb_ips], lb.ports[0].node_port) == ("LoadBalancer", ["47.100.1.2"], 31443)
        assert services["default/web-headless"].cluster_ips == []
        nodes = {n.name: n for n in summary.nodes}
        assert [(a.type, str(a.address)) for a in nodes["node-1"].addresses] == [("InternalIP", "10.0.0.11")]

        # a change to the model (as a watch event would apply it) is published within a round
        model = planner_for(settings).model
        new_pod = json.loads(json.dumps(model.get("Pod", "default/client")))
        new_pod["metadata"]["name"] = "client-2"
        new_pod["status"].update(podIP="10.244.1.21", podIPs=[{"ip": "10.244.1.21"}])
        model.apply("ADDED", "Pod", trim("Pod", new_pod))
        after = await published(bus, lambda s: "default/client-2" in by_key(s.pods))
        assert after.counts.pods == 13 and after.generated_at > summary.generated_at
    finally:
        await stage.close()


async def test_live_summary_waits_for_sync_and_follows_watch_events(bus: Bus, lab_api: LabKubeAPI,
                                                                    tmp_path: Path) -> None:
    resolved: ResolvedScenario = resolve(Scenario.load(LAB_BASIC))
    settings = Settings(nats_url=bus.settings.nats_url, kubeconfig=lab_api.write_kubeconfig(tmp_path / "kubeconfig"))
    stage = TopologyStage(bus, settings)
    try:
        summary = await published(bus, lambda s: True)
        assert summary.source == f"live:{lab_api.url}"  # a live source is named by its API server
        pods = by_key(summary.pods)
        for pod in resolved.scenario.pods:  # synced before the first publish: every pod is there
            assert [str(ip) for ip in pods[f"{pod.namespace}/{pod.name}"].ips] == [resolved.pod(
                f"{pod.namespace}/{pod.name}").ip]
        dns = by_key(summary.services)["kube-system/kube-dns"]
        assert summary.dns == dns.cluster_ips and summary.dns
        assert {n.name for n in summary.nodes} == {n.name for n in resolved.nodes}
        api = by_key(summary.services)["shop/api"]
        assert api.type == "NodePort" and api.ports[0].node_port

        lab_api.set_pod_ready("shop/api-1", False)
        lab_api.delete("Pod", "shop", "db")
        after = await published(bus, lambda s: "shop/db" not in by_key(s.pods))
        assert not by_key(after.pods)["shop/api-1"].ready
    finally:
        await stage.close()


def _pods(n: int) -> ClusterModel:
    model = ClusterModel()
    for i in range(n):
        model.apply("ADDED", "Pod", trim("Pod", {
            "metadata": {"name": f"pod-{i:05d}", "namespace": "load"},
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"},
        }))
    return model


def test_lists_are_capped_and_fit_one_message() -> None:
    small = build_summary(_pods(30), "live", [], limit=10)
    assert small.truncated and small.counts.pods == 30
    assert [p.name for p in small.pods] == [f"pod-{i:05d}" for i in range(10)]  # namespace/name order

    model = _pods(MAX_ITEMS + 500)
    full = summary_within(model, "live", [], 4 * 1024 * 1024)
    assert len(full.pods) == MAX_ITEMS and full.truncated and full.counts.pods == MAX_ITEMS + 500
    tight = summary_within(model, "live", [], 128 * 1024)  # a server with a small max_payload
    assert len(tight.model_dump_json()) <= 128 * 1024 - PAYLOAD_HEADROOM
    assert 0 < len(tight.pods) < MAX_ITEMS and tight.truncated
