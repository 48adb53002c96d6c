"""The lab's Kubernetes API against the real `kubernetes` client (sync and kubernetes.aio). No namespaces."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.aio import client as aio_client
from kubernetes.aio import config as aio_config
from kubernetes.aio import watch as aio_watch
from kubernetes.informer import DELETED, SharedInformer

from lab.kubeapi import API_AUDIENCE, LabKubeAPI, serve_scenario, spawn_daemon, stop_daemon
from lab.kubeconfig import write_kubeconfig
from lab.kubestore import ObjectStore
from lab.objects import RESOURCES, instance_id, scenario_objects
from lab.scenario import ResolvedScenario, Scenario, resolve
from lab.state import ApiInfo, LabState

BASIC = Path(__file__).resolve().parents[2] / "examples" / "lab" / "basic.yaml"


@pytest.fixture(scope="module")
def resolved() -> ResolvedScenario:
    return resolve(Scenario.load(BASIC))


@pytest.fixture
def lab_api(resolved: ResolvedScenario) -> Iterator[LabKubeAPI]:
    with serve_scenario(resolved, bookmark_interval_s=0.2) as api:
        yield api


@pytest.fixture
def api_client(lab_api: LabKubeAPI, tmp_path: Path) -> Iterator[client.ApiClient]:
    """A client configured exactly as the product configures one: from a kubeconfig file."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(lab_api.write_kubeconfig(tmp_path / "kubeconfig")),
                            client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        yield api


def _after(delay_s: float, *actions: Callable[[], object]) -> threading.Thread:
    """Mutate the lab from another thread while the test blocks in a watch."""
    def run() -> None:
        for action in actions:
            time.sleep(delay_s)
            action()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _collect(func: Callable[..., object], *args: object, until: Callable[[list[dict]], bool],
             **kwargs: object) -> list[dict]:
    """Watch events until `until(events)` holds (the 2 s server timeout only guards a failing test)."""
    w = watch.Watch()
    events: list[dict] = []
    for event in w.stream(func, *args, timeout_seconds=2, **kwargs):
        events.append(event)
        if until(events):
            w.stop()
            break
    return events


# ------------------------------------------------------------------ lists parse into the strict models

EDGE_CASES = {
    "name": "edges", "cni": "vxlan",
    "nodes": [{"name": "n1"}, {"name": "n2", "ready": False}],
    "pods": [
        {"name": "web-1", "node": "n1", "labels": {"app": "web"},
         "containers": [{"name": "web", "ports": [{"name": "http", "containerPort": 80}]},
                        {"name": "sidecar", "ready": False}]},
        {"name": "web-2", "node": "n2", "labels": {"app": "web"}, "phase": "Pending",
         "containers": [{"name": "web", "ports": [{"name": "http", "containerPort": 8080}]}]},
        {"name": "agent", "node": "n2", "hostNetwork": True, "labels": {"app": "agent"},
         "containers": [{"name": "agent", "ports": [{"containerPort": 9100}]}]},
        {"name": "done", "node": "n1", "labels": {"app": "web"}, "phase": "Succeeded"},
    ],
    "services": [
        {"name": "web-lb", "type": "LoadBalancer", "selector": {"app": "web"}, "externalTrafficPolicy": "Local",
         "loadBalancerIP": "47.96.0.10", "loadBalancerSourceRanges": ["203.0.113.0/24"],
         "externalIPs": ["172.30.0.200"], "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        {"name": "web-headless", "clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]},
        {"name": "agent", "selector": {"app": "agent"}, "ports": [{"port": 9100, "targetPort": 9100}]},
        {"name": "external", "ports": [{"port": 5432}]},
    ],
    "networkPolicies": [{"metadata": {"name": "egress-dns"}, "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]}]}}],
}


def _normalised(value: object) -> object:
    """Drop nulls and canonicalise timestamps, to compare what we emit with what the model keeps."""
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    if isinstance(value, str) and value.endswith("+00:00"):
        return value.removesuffix("+00:00") + "Z"
    return value


@pytest.mark.parametrize("scenario", [Scenario.load(BASIC), Scenario.model_validate(EDGE_CASES)],
                         ids=["basic", "edges"])
def test_objects_hold_only_fields_the_strict_models_know(scenario: Scenario) -> None:
    """Every object parses, and a round trip through its model loses nothing (no misspelt field ignored)."""
    api = client.ApiClient()
    objects = scenario_objects(resolve(scenario))
    for obj in objects:
        model = api.deserialize(json.dumps(obj), f"V1{obj['kind']}", "application/json")
        back = json.loads(json.dumps(api.sanitize_for_serialization(model), default=str))
        assert _normalised(back) == _normalised(obj), obj["metadata"]["name"]
        assert model.metadata.uid and model.metadata.resource_version and model.metadata.creation_timestamp


def test_edge_case_objects() -> None:
    objects = {(o["kind"], o["metadata"]["name"]): o for o in scenario_objects(resolve(
        Scenario.model_validate(EDGE_CASES)))}
    lb = objects[("Service", "web-lb")]
    assert lb["status"]["loadBalancer"]["ingress"] == [{"ip": "47.96.0.10", "ipMode": "VIP"}]
    assert lb["spec"]["externalTrafficPolicy"] == "Local" and lb["spec"]["ports"][0]["nodePort"] >= 30000
    assert objects[("Service", "web-headless")]["spec"]["clusterIP"] == "None"
    slices = [o for (kind, _), o in objects.items() if kind == "EndpointSlice"
              and o["metadata"]["labels"]["kubernetes.io/service-name"] == "web-lb"]
    # named port "http" resolves to 80 on web-1 and 8080 on web-2: one slice per port set, as upstream
    assert sorted((s["ports"][0]["port"], s["endpoints"][0]["targetRef"]["name"],
                   s["endpoints"][0]["conditions"]["ready"]) for s in slices) == [
        (80, "web-1", False), (8080, "web-2", False)]
    assert not any(e["targetRef"]["name"] == "done" for s in slices for e in s["endpoints"])
    assert [s for (kind, name), s in objects.items() if kind == "EndpointSlice" and name.startswith("external")] \
        == []
    web_1 = objects[("Pod", "web-1")]
    assert {c["type"]: c["status"] for c in web_1["status"]["conditions"]}["Ready"] == "False"
    assert [c["ready"] for c in web_1["status"]["containerStatuses"]] == [True, False]
    agent = objects[("Pod", "agent")]
    assert agent["spec"]["hostNetwork"] and agent["status"]["podIP"] == agent["status"]["hostIP"]
    n2 = objects[("Node", "n2")]
    assert {c["type"]: c["status"] for c in n2["status"]["conditions"]}["Ready"] == "Unknown"
    assert {t["key"] for t in n2["spec"]["taints"]} == {"node.kubernetes.io/unreachable"}
    net_conf = json.loads(objects[("ConfigMap", "kube-flannel-cfg")]["data"]["net-conf.json"])
    assert net_conf["Backend"] == {"Type": "vxlan", "VNI": 1, "Port": 8472}
    policy = objects[("NetworkPolicy", "egress-dns")]
    assert policy["metadata"]["namespace"] == "default"
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert [p["protocol"] for p in policy["spec"]["egress"][0]["ports"]] == ["UDP", "TCP"]




def test_every_kind_lists_and_parses(api_client: client.ApiClient, resolved: ResolvedScenario) -> None:
    core = client.CoreV1Api(api_client)
    pods = core.list_pod_for_all_namespaces().items
    assert {f"{p.metadata.namespace}/{p.metadata.name}": p.status.pod_ip for p in pods} == {
        rp.spec.key: rp.ip for rp in resolved.pods}
    for pod in pods:
        assert pod.metadata.uid and pod.metadata.resource_version and pod.metadata.creation_timestamp
        assert pod.status.phase == "Running" and pod.status.pod_ips[0].ip == pod.status.pod_ip
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
        assert all(cs.ready for cs in pod.status.container_statuses)
        assert pod.status.host_ip == resolved.node(pod.spec.node_name).ip
    api_1 = next(p for p in pods if p.metadata.name == "api-1")
    assert api_1.spec.containers[0].ports[0].name == "http"
    assert api_1.spec.containers[0].ports[0].container_port == 8080

    nodes = core.list_node().items
    assert [n.metadata.name for n in nodes] == ["node-1", "node-2"]
    for node, rn in zip(nodes, resolved.nodes, strict=True):
        assert node.spec.pod_cidr == rn.pod_cidr
        assert {a.type: a.address for a in node.status.addresses} == {"InternalIP": rn.ip, "Hostname": rn.name}
        assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
        assert node.spec.provider_id == f"cn-hangzhou.{instance_id('basic', rn.name)}"
        assert node.status.node_info.kubelet_version.startswith("v1.")

    services = {f"{s.metadata.namespace}/{s.metadata.name}": s for s in core.list_service_for_all_namespaces().items}
    for rs in resolved.services:
        svc = services[rs.spec.key]
        assert svc.spec.cluster_ip == rs.cluster_ip
        assert [p.node_port for p in svc.spec.ports] == [p.node_port for p in rs.ports]
    assert services["shop/api"].spec.type == "NodePort"
    assert services["shop/api"].spec.external_traffic_policy == "Cluster"
    assert services["shop/api"].spec.ports[0].target_port == "http"
    assert services["kube-system/kube-dns"].spec.cluster_ip == "10.96.0.10"

    slices = client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces().items
    by_service = {s.metadata.labels["kubernetes.io/service-name"]: s for s in slices}
    api_slice = by_service["api"]
    assert api_slice.address_type == "IPv4"
    assert sorted((e.target_ref.name, e.addresses[0], e.node_name, e.conditions.ready)
                  for e in api_slice.endpoints) == sorted(
        (ep.pod.split("/")[1], ep.ip, ep.node, ep.ready) for ep in resolved.services[0].ports[0].endpoints)
    assert [(p.name, p.port, p.protocol) for p in api_slice.ports] == [("http", 8080, "TCP")]
    assert sorted((p.name, p.port, p.protocol) for p in by_service["kube-dns"].ports) == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]

    endpoints = core.read_namespaced_endpoints("api", "shop")
    assert sorted(a.ip for a in endpoints.subsets[0].addresses) == sorted(
        ep.ip for ep in resolved.services[0].ports[0].endpoints)

    policies = client.NetworkingV1Api(api_client).list_network_policy_for_all_namespaces().items
    assert [p.metadata.name for p in policies] == ["db-only-from-api"]
    assert policies[0].spec.policy_types == ["Ingress"]
    assert policies[0].spec.ingress[0].ports[0].protocol == "TCP"  # defaulted like the apiserver
    assert policies[0].spec.ingress[0].ports[0].port == "pg"

    namespaces = {n.metadata.name: n for n in core.list_namespace().items}
    assert set(namespaces) == {"default", "kube-system", "shop", "web"}
    assert namespaces["shop"].metadata.labels == {"team": "shop", "kubernetes.io/metadata.name": "shop"}

    configmaps = {c.metadata.name: c for c in core.list_namespaced_config_map("kube-system").items}
    assert "mode: iptables" in configmaps["kube-proxy"].data["config.conf"]
    assert json.loads(configmaps["kube-flannel-cfg"].data["net-conf.json"])["Backend"]["Type"] == "host-gw"

    daemonsets = client.AppsV1Api(api_client).list_namespaced_daemon_set("kube-system").items
    assert {d.metadata.name for d in daemonsets} >= {"kube-proxy", "kube-flannel-ds"}
    assert all(d.status.desired_number_scheduled == 2 for d in daemonsets)


def test_get_by_name_and_not_found(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    assert core.read_namespaced_pod("db", "shop").status.pod_ip
    assert core.read_node("node-2").metadata.name == "node-2"
    assert core.read_namespace("web").status.phase == "Active"
    assert client.AppsV1Api(api_client).read_namespaced_daemon_set("kube-flannel-ds", "kube-system").spec.selector
    with pytest.raises(client.ApiException) as err:
        core.read_namespaced_pod("nope", "shop")
    assert err.value.status == 404
    assert json.loads(err.value.body)["reason"] == "NotFound"
    with pytest.raises(client.ApiException) as err:
        core.list_persistent_volume()  # a kind the lab does not serve
    assert err.value.status == 404 and json.loads(err.value.body)["kind"] == "Status"
    with pytest.raises(client.ApiException) as err:
        core.delete_namespaced_pod("db", "shop")
    assert err.value.status == 405


def test_discovery_and_version(api_client: client.ApiClient) -> None:
    assert client.VersionApi(api_client).get_code().major == "1"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert groups == {"apps", "discovery.k8s.io", "networking.k8s.io", "authentication.k8s.io",
                      "crd.projectcalico.org", "alibabacloud.com"}  # CRDs are served whatever the CNI (empty lists)
    core = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert core["pods"].namespaced and not core["nodes"].namespaced and "watch" in core["pods"].verbs
    assert client.DiscoveryV1Api(api_client).get_api_resources().resources[0].kind == "EndpointSlice"
    assert client.NetworkingApi(api_client).get_api_group().preferred_version.version == "v1"


def test_requires_the_bearer_token(lab_api: LabKubeAPI) -> None:
    cfg = client.Configuration(host=lab_api.url)
    with client.ApiClient(cfg) as anonymous:
        with pytest.raises(client.ApiException) as err:
            client.CoreV1Api(anonymous).list_pod_for_all_namespaces()
        assert err.value.status == 401
        assert client.VersionApi(anonymous).get_code().git_version  # public, as system:public-info-viewer
    cfg = client.Configuration(host=lab_api.url, api_key={"authorization": "wrong"}, api_key_prefix={
        "authorization": "Bearer"})
    with client.ApiClient(cfg) as wrong, pytest.raises(client.ApiException) as err:
        client.CoreV1Api(wrong).list_node()
    assert err.value.status == 401


def test_token_review(lab_api: LabKubeAPI, api_client: client.ApiClient) -> None:
    auth = client.AuthenticationV1Api(api_client)
    (tokenreviews,) = auth.get_api_resources().resources
    assert tokenreviews.kind == "TokenReview" and tokenreviews.verbs == ["create"]

    def review(token: str, audiences: list[str] | None = None) -> client.V1TokenReviewStatus:
        spec = client.V1TokenReviewSpec(token=token, audiences=audiences)
        return auth.create_token_review(client.V1TokenReview(spec=spec)).status

    token = lab_api.mint_token("ops", "viewer")
    status = review(token)
    assert status.authenticated and status.user.username == "system:serviceaccount:ops:viewer"
    assert "system:serviceaccounts:ops" in status.user.groups and status.audiences == [API_AUDIENCE]
    assert review(lab_api.token).user.username == "kubernetes-admin"
    assert not review("nope").authenticated and review("nope").error == "invalid bearer token"
    assert not review(token, ["netdiag"]).authenticated  # minted for the API's audience only
    assert review(lab_api.mint_token("ops", "ui", ("netdiag",)), ["netdiag"]).audiences == ["netdiag"]
    lab_api.revoke_token(token)
    assert not review(token).authenticated
    assert lab_api.requests["POST /apis/authentication.k8s.io/v1/tokenreviews"] == 7
    # a minted token is not a credential for the lab API itself: only its own token is
    cfg = client.Configuration(host=lab_api.url, api_key={"authorization": lab_api.mint_token("ops", "x")},
                               api_key_prefix={"authorization": "Bearer"})
    with client.ApiClient(cfg) as other, pytest.raises(client.ApiException) as err:
        client.AuthenticationV1Api(other).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token)))
    assert err.value.status == 401


def test_kubeconfig_loads_into_the_default_client(lab_api: LabKubeAPI, tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", lab_api.url, lab_api.token)
    assert path.stat().st_mode & 0o777 == 0o600
    config.load_kube_config(config_file=str(path))
    assert [n.metadata.name for n in client.CoreV1Api().list_node().items] == ["node-1", "node-2"]


# ------------------------------------------------------------------ selectors and pagination


def test_label_and_field_selectors(api_client: client.ApiClient, resolved: ResolvedScenario) -> None:
    core = client.CoreV1Api(api_client)

    def names(**kw: str) -> list[str]:
        return sorted(p.metadata.name for p in core.list_pod_for_all_namespaces(**kw).items)

    assert names(label_selector="app=api") == ["api-1", "api-2"]
    assert names(label_selector="app in (api, db)") == ["api-1", "api-2", "db"]
    assert names(label_selector="app notin (api,db),app") == ["client"]
    assert names(label_selector="!app") == ["coredns"]
    assert names(label_selector="app!=api,k8s-app!=kube-dns") == ["client", "db"]
    assert names(field_selector="spec.nodeName=node-2") == ["api-2", "db"]
    assert names(field_selector=f"status.podIP={resolved.pod('shop/db').ip}") == ["db"]
    assert names(field_selector="metadata.namespace=shop,metadata.name!=db") == ["api-1", "api-2"]
    assert names(field_selector="spec.nodeName=node-1", label_selector="app=api") == ["api-1"]
    assert [p.metadata.name for p in core.list_namespaced_pod("shop", field_selector="metadata.name=db").items] \
        == ["db"]
    assert [n.metadata.name for n in core.list_node(label_selector="kubernetes.io/hostname=node-1").items] \
        == ["node-1"]
    with pytest.raises(client.ApiException) as err:
        core.list_pod_for_all_namespaces(field_selector="spec.bogus=1")
    assert err.value.status == 400


def test_pagination(lab_api: LabKubeAPI, api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    first = core.list_pod_for_all_namespaces(limit=2)
    assert len(first.items) == 2 and first.metadata.remaining_item_count == 3 and first.metadata.var_continue
    seen = [p.metadata.name for p in first.items]
    token = first.metadata.var_continue
    while token:
        page = core.list_pod_for_all_namespaces(limit=2, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        seen += [p.metadata.name for p in page.items]
        token = page.metadata.var_continue
    assert sorted(seen) == sorted(p.metadata.name for p in core.list_pod_for_all_namespaces().items)
    assert len(seen) == len(set(seen)) == 5

    small = LabKubeAPI(token=lab_api.token, history=3)
    small.load([p for p in [lab_api.get("Pod", "shop", n) for n in ("api-1", "api-2", "db")]])
    small.start_in_thread()
    try:
        cfg = client.Configuration(host=small.url, api_key={"authorization": f"Bearer {small.token}"})
        with client.ApiClient(cfg) as c:
            page = client.CoreV1Api(c).list_pod_for_all_namespaces(limit=1)
            for _ in range(5):  # push the list's resourceVersion out of the retained history
                small.set_pod_ready("shop/db", False)
                small.set_pod_ready("shop/db", True)
            with pytest.raises(client.ApiException) as err:
                client.CoreV1Api(c).list_pod_for_all_namespaces(limit=1, _continue=page.metadata.var_continue)
            assert err.value.status == 410
    finally:
        small.stop_thread()


# ------------------------------------------------------------------ watch


def test_watch_sees_lab_changes(lab_api: LabKubeAPI, api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "deny-all", "namespace": "web"},
              "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    start = str(lab_api.resource_version)
    _after(0.15,
           lambda: lab_api.set_pod_ready("shop/api-1", False),
           lambda: lab_api.apply(policy),
           lambda: lab_api.delete("Pod", "shop", "api-2"))
    stream = _collect(core.list_pod_for_all_namespaces,
                      until=lambda evs: any(e["type"] == "DELETED" for e in evs))
    events = [(e["type"], e["object"].metadata.name, e["object"]) for e in stream]
    added = [name for type_, name, _ in events if type_ == "ADDED"]
    assert sorted(added) == ["api-1", "api-2", "client", "coredns", "db"]
    modified = [obj for type_, name, obj in events if type_ == "MODIFIED" and name == "api-1"]
    assert modified and {c.type: c.status for c in modified[-1].status.conditions}["Ready"] == "False"
    assert not modified[-1].status.container_statuses[0].ready
    assert ("DELETED", "api-2") in [(t, n) for t, n, _ in events]
    rvs = [int(obj.metadata.resource_version) for t, _, obj in events if t != "ADDED"]
    assert rvs == sorted(rvs)

    # the same changes, replayed from a resourceVersion, for the other kinds (and derived EndpointSlices)
    def one_endpoint_left(evs: list[dict]) -> bool:
        return len(evs[-1]["object"].endpoints) == 1

    slices = [(e["type"], e["object"]) for e in _collect(
        client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice, "shop",
        resource_version=start, until=one_endpoint_left)]
    last = slices[-1][1]
    assert slices[-1][0] == "MODIFIED" and [e.target_ref.name for e in last.endpoints] == ["api-1"]
    assert last.endpoints[0].conditions.ready is False
    netpols = [(e["type"], e["object"].metadata.name) for e in _collect(
        client.NetworkingV1Api(api_client).list_network_policy_for_all_namespaces,
        resource_version=start, until=lambda evs: True)]
    assert netpols == [("ADDED", "deny-all")]
    endpoints = core.read_namespaced_endpoints("api", "shop")
    assert endpoints.subsets[0].addresses is None
    assert [a.target_ref.name for a in endpoints.subsets[0].not_ready_addresses] == ["api-1"]


def test_watch_label_selector_transitions(lab_api: LabKubeAPI, api_client: client.ApiClient) -> None:
    """A pod that stops matching the selector is DELETED for that watcher, as the apiserver's cacher does."""
    pod = lab_api.get("Pod", "shop", "db")
    rv = lab_api.resource_version
    relabelled = {**pod, "metadata": {**pod["metadata"], "labels": {"app": "db-v2"}}}
    lab_api.apply(relabelled)
    lab_api.apply(pod)
    events = [(e["type"], e["object"].metadata.labels["app"]) for e in _collect(
        client.CoreV1Api(api_client).list_namespaced_pod, "shop", label_selector="app=db",
        resource_version=str(rv), until=lambda evs: len(evs) == 2)]
    assert events == [("DELETED", "db"), ("ADDED", "db")]


def test_watch_terminating_pod_in_endpoint_slices(lab_api: LabKubeAPI, api_client: client.ApiClient) -> None:
    rv = str(lab_api.resource_version)
    lab_api.set_pod_terminating("shop/api-2")
    events = _collect(client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice, "shop",
                      resource_version=rv, until=lambda evs: True)
    conditions = {e.target_ref.name: e.conditions for e in events[-1]["object"].endpoints}
    assert (conditions["api-2"].ready, conditions["api-2"].serving, conditions["api-2"].terminating) == (
        False, True, True)
    endpoints = client.CoreV1Api(api_client).read_namespaced_endpoints("api", "shop")
    assert [a.target_ref.name for a in endpoints.subsets[0].addresses] == ["api-1"]  # terminating left out


def test_watch_too_old_resource_version_is_gone(resolved: ResolvedScenario, tmp_path: Path) -> None:
    api = serve_scenario(resolved, history=10)
    api.start_in_thread()
    try:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(api.write_kubeconfig(tmp_path / "kc")), client_configuration=cfg)
        with client.ApiClient(cfg) as c:
            core = client.CoreV1Api(c)
            old = core.list_pod_for_all_namespaces().metadata.resource_version
            for _ in range(6):
                api.set_pod_ready("shop/db", False)
                api.set_pod_ready("shop/db", True)
            with pytest.raises(client.ApiException) as err:
                _collect(core.list_pod_for_all_namespaces, resource_version=old, until=lambda evs: True)
            assert err.value.status == 410
            # a fresh list gives a resourceVersion that can be watched again (the informer's re-list)
            fresh = core.list_pod_for_all_namespaces().metadata.resource_version
            _after(0.05, lambda: api.delete("Pod", "shop", "db"))
            events = _collect(core.list_pod_for_all_namespaces, resource_version=fresh, until=lambda evs: True)
            assert [(e["type"], e["object"].metadata.name) for e in events] == [("DELETED", "db")]
    finally:
        api.stop_thread()


def test_watch_bookmarks(lab_api: LabKubeAPI, api_client: client.ApiClient) -> None:
    rv = str(lab_api.resource_version)
    events = _collect(client.CoreV1Api(api_client).list_node, resource_version=rv, allow_watch_bookmarks=True,
                      until=lambda evs: True)
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["raw_object"]["metadata"]["resourceVersion"] == rv
    # WatchList: the initial state as ADDED events, then a bookmark marking its end
    events = _collect(client.CoreV1Api(api_client).list_node, send_initial_events=True, allow_watch_bookmarks=True,
                      resource_version_match="NotOlderThan", until=lambda evs: evs[-1]["type"] == "BOOKMARK")
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[-1]["raw_object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_a_bulk_load_derives_the_endpoints_one_by_one_applies_would(resolved: ResolvedScenario) -> None:
    """load() derives each namespace's endpoints once (a 150,000-pod cluster loads in minutes, not hours); the
    result is what applying the objects one by one makes."""
    created = datetime(2026, 1, 1, tzinfo=UTC)
    bulk, single = ObjectStore(), ObjectStore()
    bulk.load(scenario_objects(resolved, created))
    for obj in scenario_objects(resolved, created):
        single.apply(obj)

    def endpoints(store: ObjectStore) -> dict[str, object]:
        return {f"{kind} {o['metadata']['namespace']}/{o['metadata']['name']}": {k: v for k, v in o.items()
                                                                                 if k != "metadata"}
                for kind in ("EndpointSlice", "Endpoints") for o in store.snapshot(kind)[0]}

    assert endpoints(bulk) == endpoints(single) and endpoints(bulk)


def test_sync_changes_only_what_changed(resolved: ResolvedScenario) -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    store = ObjectStore()
    store.load(scenario_objects(resolved, created))
    assert store.sync(scenario_objects(resolved, created)) == 0
    edited = resolved.scenario.model_copy(update={"nodes": [
        resolved.scenario.nodes[0], resolved.scenario.nodes[1].model_copy(update={"ready": False})]})
    rv = store.resource_version
    assert store.sync(scenario_objects(resolve(edited), created)) >= 1
    changed = {(e.type, e.kind, e.obj["metadata"]["name"]) for kind in ("Node", "DaemonSet")
               for e in store.events_since(kind, rv)[0]}
    assert ("MODIFIED", "Node", "node-2") in changed and ("MODIFIED", "Node", "node-1") not in changed
    assert store.set_node_ready("node-2", True)["status"]["conditions"][-1]["status"] == "True"


def test_shared_informer_follows_the_lab(lab_api: LabKubeAPI, api_client: client.ApiClient) -> None:
    """The client's own informer (list, then watch from the list's resourceVersion) tracks lab changes."""
    changed = threading.Event()
    informer = SharedInformer(client.CoreV1Api(api_client).list_namespaced_pod, namespace="shop")
    informer.add_event_handler(DELETED, lambda obj: changed.set())
    informer.start()
    try:
        deadline = time.monotonic() + 2
        while len(informer.cache.list()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        lab_api.set_pod_ready("shop/api-1", False)
        lab_api.delete("Pod", "shop", "db")
        assert changed.wait(2)
        pods = {p.metadata.name: p for p in informer.cache.list()}
        assert sorted(pods) == ["api-1", "api-2"]
        assert not pods["api-1"].status.container_statuses[0].ready
    finally:
        informer.stop()


# ------------------------------------------------------------------ async client, in-loop server, daemon


async def test_aio_client_on_the_running_loop(resolved: ResolvedScenario, tmp_path: Path) -> None:
    api = serve_scenario(resolved)
    await api.start()
    try:
        cfg = aio_client.Configuration()
        await aio_config.load_kube_config(config_file=str(api.write_kubeconfig(tmp_path / "kc")),
                                          client_configuration=cfg)
        async with aio_client.ApiClient(cfg) as c:
            core = aio_client.CoreV1Api(c)
            pods = await core.list_namespaced_pod("shop")
            assert sorted(p.metadata.name for p in pods.items) == ["api-1", "api-2", "db"]
            slices = await aio_client.DiscoveryV1Api(c).list_endpoint_slice_for_all_namespaces()
            assert len(slices.items) == 2
            rv = pods.metadata.resource_version
            api.set_pod_ready("shop/api-2", False)
            api.delete("Pod", "shop", "db")
            events = []
            async with aio_watch.Watch() as w:
                async for event in w.stream(core.list_namespaced_pod, "shop", resource_version=rv,
                                            timeout_seconds=2):
                    events.append((event["type"], event["object"].metadata.name))
                    if len(events) == 2:
                        break
            assert events == [("MODIFIED", "api-2"), ("DELETED", "db")]
    finally:
        await api.stop()


def test_daemon_serves_a_scenario_until_sigterm(tmp_path: Path) -> None:
    info = spawn_daemon(scenario_file=BASIC, run_dir=tmp_path)
    try:
        assert ApiInfo.model_validate_json((tmp_path / "kubeapi.json").read_text()) == info
        cfg = client.Configuration()
        config.load_kube_config(config_file=info.kubeconfig, client_configuration=cfg)
        with client.ApiClient(cfg) as c:
            assert len(client.CoreV1Api(c).list_node().items) == 2
    finally:
        stop_daemon(info.pid, timeout_s=5)
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)


def test_daemon_follows_the_lab_state_file(tmp_path: Path) -> None:
    """`lab up` mode: the daemon fills the state's api slot and re-serves scenario edits (e.g. by a fault)."""
    scenario = Scenario.load(BASIC)
    state = LabState(prefix="t", scenario_name=scenario.name, scenario=scenario.model_dump(by_alias=True),
                     cni=scenario.cni, iptables_backend=scenario.iptables_backend, underlay_netns="t-underlay")
    state_file = tmp_path / "state.json"
    state_file.write_text(state.model_dump_json())
    info = spawn_daemon(state_file=state_file)
    try:
        assert LabState.model_validate_json(state_file.read_text()).api == info
        cfg = client.Configuration()
        config.load_kube_config(config_file=info.kubeconfig, client_configuration=cfg)
        with client.ApiClient(cfg) as c:
            core = client.CoreV1Api(c)
            rv = core.list_namespaced_pod("shop").metadata.resource_version
            edited = scenario.model_dump(by_alias=True)
            next(p for p in edited["pods"] if p["name"] == "api-1")["containers"][0]["ready"] = False
            edited["pods"] = [p for p in edited["pods"] if p["name"] != "db"]
            current = LabState.model_validate_json(state_file.read_text())
            state_file.write_text(current.model_copy(update={"scenario": edited}).model_dump_json())
            events = _collect(core.list_namespaced_pod, "shop", resource_version=rv,
                              until=lambda evs: len(evs) == 2)
            assert sorted((e["type"], e["object"].metadata.name) for e in events) == [
                ("DELETED", "db"), ("MODIFIED", "api-1")]
    finally:
        stop_daemon(info.pid, timeout_s=5)


def test_resource_table_matches_discovery(api_client: client.ApiClient) -> None:
    served = {r.name for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert served == {r.plural for r in RESOURCES if not r.group}
