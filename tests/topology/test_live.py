"""The live source (real `kubernetes` client, list+watch) against the lab's Kubernetes API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.kubeapi import LabKubeAPI, serve_scenario
from lab.scenario import ResolvedScenario, Scenario, resolve
from services.topology.capture import capture_kubernetes
from services.topology.plan import Planner
from services.topology.sources.live import LiveSource, ResourceExpired, _State
from services.topology.sources.snapshot import load_snapshot
from shared.kube import api_client
from shared.schemas import DiagnosisRequest
from shared.topology import EndpointKind, TopologyReport

BASIC = Path(__file__).resolve().parents[2] / "examples" / "lab" / "basic.yaml"


@pytest.fixture(scope="module")
def resolved() -> ResolvedScenario:
    return resolve(Scenario.load(BASIC))


@pytest.fixture
def lab_api(resolved: ResolvedScenario) -> Iterator[LabKubeAPI]:
    with serve_scenario(resolved, bookmark_interval_s=0.2) as api:
        yield api


@pytest.fixture
def live(lab_api: LabKubeAPI, tmp_path: Path) -> Iterator[LiveSource]:
    source = LiveSource(api_client(lab_api.write_kubeconfig(tmp_path / "kubeconfig")), page_size=2,
                        watch_timeout_s=2, retry_s=0.1).start()
    try:
        assert source.wait_synced(10), source.errors()
        yield source
    finally:
        source.stop()


def _ip(resolved: ResolvedScenario, key: str) -> str:
    return resolved.pod(key).ip


def _plan(planner: Planner, src: str, dst: str, port: int) -> TopologyReport:
    return planner.plan(DiagnosisRequest(src=src, dst=dst, port=port, protocol="tcp"))  # type: ignore[arg-type]


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the live cache did not follow the change"
        time.sleep(0.02)


def _service_ip(resolved: ResolvedScenario, key: str) -> str:
    svc = next(s for s in resolved.services if f"{s.spec.namespace}/{s.spec.name}" == key)
    assert svc.cluster_ip
    return svc.cluster_ip


def test_list_fills_the_model(live: LiveSource, resolved: ResolvedScenario) -> None:
    counts = live.model.counts()
    assert counts["Node"] == len(resolved.nodes) and counts["Pod"] >= len(resolved.scenario.pods)
    assert counts["EndpointSlice"] >= 1 and counts["NetworkPolicy"] == 1
    pod = live.model.get("Pod", "shop/api-1")
    assert pod is not None and "managedFields" not in pod["metadata"]
    assert all(st.lists == 1 for st in live.state.values())  # paginated (page_size=2), listed once


def test_plan_over_the_live_cache_follows_changes(live: LiveSource, lab_api: LabKubeAPI,
                                                   resolved: ResolvedScenario) -> None:
    planner = Planner(live.model, "live")
    client_ip, api1 = _ip(resolved, "web/client"), _ip(resolved, "shop/api-1")
    svc_ip = _service_ip(resolved, "shop/api")
    before = _plan(planner, client_ip, svc_ip, 80)
    assert before.src.kind == EndpointKind.POD and before.dst.kind == EndpointKind.SERVICE_CLUSTER_IP
    assert sorted(p.dst_pod or "" for p in before.paths) == ["shop/api-1", "shop/api-2"]
    assert all(p.dst_port == 8080 for p in before.paths)  # named targetPort 'http'

    lab_api.set_pod_ready("shop/api-1", False)  # a pod becomes not ready while the cache runs
    _eventually(lambda: [p.dst_pod for p in _plan(planner, client_ip, svc_ip, 80).paths] == ["shop/api-2"])
    direct = _plan(planner, client_ip, api1, 8080)
    assert [f.code for f in direct.findings] == ["POD_NOT_READY"]

    lab_api.set_pod_ready("shop/api-2", False)
    _eventually(lambda: "SERVICE_NO_ENDPOINT" in {f.code for f in _plan(planner, client_ip, svc_ip, 80).findings})

    lab_api.delete("Pod", "shop", "db")
    _eventually(lambda: live.model.get("Pod", "shop/db") is None)
    gone = _plan(planner, client_ip, _ip(resolved, "shop/db"), 5432)
    assert gone.dst.kind == EndpointKind.UNKNOWN
    assert sum(st.lists for st in live.state.values()) == len(live.state)  # changes came by watch, no re-list


def test_watch_survives_server_timeouts(live: LiveSource, lab_api: LabKubeAPI) -> None:
    # watch_timeout_s=2: every watch is closed by the server and resumed from its resourceVersion
    _eventually(lambda: all(st.resumes >= 1 for st in live.state.values()), timeout=10)
    lab_api.set_node_ready("node-2", False)
    _eventually(lambda: "NODE_NOT_READY" in {
        f.code for f in Planner(live.model, "live").plan(DiagnosisRequest(
            src="10.255.255.1", dst=next(str(a.get("address")) for a in live.model.get("Node", "node-2")[
                "status"]["addresses"] if a.get("type") == "InternalIP"), port=22, protocol="tcp")).findings})
    assert not live.errors()


def test_expired_resource_version_relists(resolved: ResolvedScenario, tmp_path: Path) -> None:
    api = serve_scenario(resolved, history=3, bookmark_interval_s=0.2)
    api.start_in_thread()
    try:
        source = LiveSource(api_client(api.write_kubeconfig(tmp_path / "kubeconfig")), retry_s=0.1)
        res = next(r for r in source.resources if r.kind == "Pod")
        old = source._list(res)
        for _ in range(5):  # more changes than the server keeps
            api.set_pod_ready("shop/api-1", False)
            api.set_pod_ready("shop/api-1", True)
        with pytest.raises(ResourceExpired):
            source._watch(res, _State(resource_version=old))
        source.state[res.name].resource_version = old
        source.start()  # the informer loop turns the 410 into a fresh list
        try:
            assert source.wait_synced(10)
            _eventually(lambda: source.state[res.name].lists >= 1 and not source.errors())
        finally:
            source.stop()
    finally:
        api.stop_thread()


def test_capture_round_trips(live: LiveSource, tmp_path: Path, resolved: ResolvedScenario) -> None:
    counts = capture_kubernetes(live, tmp_path / "snap")
    loaded = load_snapshot(tmp_path / "snap")
    assert dict(loaded.loaded) == {k: v for k, v in counts.items() if v}
    meta = json.loads((tmp_path / "snap" / "snapshot.json").read_text())
    assert meta["version"] == 1 and meta["kubernetes"]["counts"]["Pod"] == counts["Pod"]
    planner = Planner(loaded.model, "snapshot")
    report = _plan(planner, _ip(resolved, "web/client"), _service_ip(resolved, "shop/api"), 80)
    assert sorted(p.dst_pod or "" for p in report.paths) == ["shop/api-1", "shop/api-2"]


def test_forbidden_detection_resource_syncs_empty_with_an_assumption(lab_api: LabKubeAPI, tmp_path: Path,
                                                                     resolved: ResolvedScenario) -> None:
    lab_api.forbid("/api/v1/namespaces/kube-flannel/configmaps")  # the chart granted no Role there
    source = LiveSource(api_client(lab_api.write_kubeconfig(tmp_path / "kubeconfig")), retry_s=0.1).start()
    try:
        assert source.wait_synced(10), source.errors()
        assert "403" in source.errors()["ConfigMap@kube-flannel"]
        report = _plan(Planner(source.model, "live"), _ip(resolved, "web/client"), _ip(resolved, "shop/api-1"), 8080)
        texts = [a.text for a in report.assumptions]
        assert "cannot read ConfigMaps in kube-flannel: forbidden — CNI detection may be incomplete" in texts
        assert report.cluster.cni == "flannel-host-gw"  # kube-system's ConfigMaps were still read
    finally:
        source.stop()


def test_forbidden_core_resource_never_syncs(lab_api: LabKubeAPI, tmp_path: Path) -> None:
    lab_api.forbid("/api/v1/pods")
    source = LiveSource(api_client(lab_api.write_kubeconfig(tmp_path / "kubeconfig")), retry_s=0.1).start()
    try:
        assert not source.wait_synced(1.5)
        assert "403" in source.errors()["Pod"] and not source.model.unreadable
    finally:
        source.stop()


@pytest.mark.parametrize(("example", "cni", "mode"), [("calico", "calico", "bgp"), ("terway", "terway", "eniip-veth")])
def test_cni_configuration_is_read_through_the_api(example: str, cni: str, mode: str, tmp_path: Path) -> None:
    """Calico's IPPool (a CRD), Terway's eni-config and the FelixConfiguration both run, served by the lab API,
    reach detection (calico-node's FELIX_ environment over the FelixConfiguration)."""
    from services.topology.detect import detect

    scenario = resolve(Scenario.load(BASIC.parent / f"{example}.yaml"))
    with serve_scenario(scenario) as api:
        source = LiveSource(api_client(api.write_kubeconfig(tmp_path / "kubeconfig")), watch_timeout_s=2).start()
        try:
            assert source.wait_synced(10), source.errors()
            info = detect(source.model).info
        finally:
            source.stop()
    assert (info.cni, info.cni_mode) == (cni, mode)
    if cni == "calico":
        assert info.cni_config["ippools"][0]["cidr"] == scenario.scenario.cluster_cidr
        assert info.cni_config["ippools"][0]["natOutgoing"] is True
    else:
        assert info.cni_config["security_groups"] == [scenario.scenario.terway.security_group_id]
    felix = info.cni_config["felix"]
    assert felix["settings"]["defaultEndpointToHostAction"] in ("ACCEPT", "Accept")
    assert felix["source"]["defaultEndpointToHostAction"] == (
        "env FELIX_DEFAULTENDPOINTTOHOSTACTION" if cni == "calico" else "FelixConfiguration default")
    assert (felix["settings"]["iptablesMarkMask"], felix["source"]["chainInsertMode"]) == (
        "0xffff0000", "FelixConfiguration default")
