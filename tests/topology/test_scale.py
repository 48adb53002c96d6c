"""The compact cluster model keeps the API's meaning, and a topology event carries only what its path needs."""

from __future__ import annotations

import copy
import gc
import json
from ipaddress import ip_address
from typing import Any

import pytest

from services.simulator.modelpath import ModelSimulator
from services.topology.decode import decode_item, decode_list
from services.topology.model import ClusterModel, address_key, bulk_build, trim
from services.topology.plan import INLINE_NODE_ADDRESSES, Planner, detach_node_addresses
from shared.bus import Bus
from shared.config import Settings
from shared.schemas import DiagnosisRequest, FinalState, StageEnvelope, new_id, now
from shared.topology import NODE_ADDRESSES, EndpointKind


def pod(name: str, ns: str, ip: str, node: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    """An API-form pod with the bulk a real one has (env, volumes, image ids) that the model drops."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels,
                         "managedFields": [{"manager": "kubelet"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "a"}},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1", "env": [{"name": "X"}],
                                                       "ports": [{"name": "http", "containerPort": 8080}]}],
                     "volumes": [{"name": "v", "emptyDir": {}}], **extra},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None}],
                       "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "imageID": "sha",
                                              "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}


def node(i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"node-{i}"},
            "spec": {"podCIDR": f"10.244.{i}.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": f"10.0.{i // 250}.{i % 250 + 1}"}],
                       "images": [{"names": ["big:1"], "sizeBytes": 1}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def service(name: str, ns: str, ip: str, selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": selector,
                     "ports": [{"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}


def endpoint_slice(name: str, ns: str, svc: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints}


def endpoint(ip: str, pod_name: str, ns: str, **conditions: Any) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": conditions, "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "name": pod_name, "namespace": ns, "uid": "x"}}


def policy(name: str, ns: str, selector: dict[str, Any], team: str = "a") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": selector, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": team}}}],
                                  "ports": [{"port": "http"}]}]}}


def namespace(name: str, team: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "team": team}}}


def model_of(objects: list[dict[str, Any]]) -> ClusterModel:
    model = ClusterModel()
    for obj in objects:
        model.apply("ADDED", obj["kind"], trim(obj["kind"], copy.deepcopy(obj)))
    return model


# ------------------------------------------------------------ the compact model


def test_a_pod_keeps_what_diagnosis_reads_and_drops_the_bulk() -> None:
    kept = trim("Pod", pod("a", "shop", "10.244.1.2", "node-1", {"app": "web"}))
    assert kept["metadata"]["labels"] == {"app": "web"} and kept["metadata"]["annotations"] == {"team": "a"}
    assert "managedFields" not in kept["metadata"] and "volumes" not in kept["spec"]
    assert kept["spec"]["containers"] == [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]
    assert kept["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert kept["status"]["containerStatuses"] == [{"name": "app", "ready": True, "restartCount": 0,
                                                    "state": {"running": {}}}]


def test_equal_label_sets_and_containers_are_stored_once() -> None:
    a = trim("Pod", pod("a", "shop", "10.244.1.2", "node-1", {"app": "web", "tier": "fe"}))
    b = trim("Pod", pod("b", "shop", "10.244.1.3", "node-1", {"app": "web", "tier": "fe"}))
    c = trim("Pod", pod("c", "shop", "10.244.1.4", "node-1", {"app": "db"}))
    assert a["metadata"]["labels"] is b["metadata"]["labels"]
    assert a["spec"]["containers"] is b["spec"]["containers"]
    assert a["metadata"]["labels"] is not c["metadata"]["labels"] and c["metadata"]["labels"] == {"app": "db"}


def test_the_typed_json_path_keeps_exactly_what_the_dict_path_keeps() -> None:
    raw = pod("a", "shop", "10.244.1.2", "node-1", {"app": "web"}, hostNetwork=True)
    raw["spec"]["containers"][0]["command"] = ["kube-apiserver", "--service-cluster-ip-range=10.96.0.0/12"]
    data = json.dumps(raw).encode()
    assert trim("Pod", decode_item(data, "Pod")) == trim("Pod", json.loads(data))


def test_the_fast_path_builds_the_dict_paths_pod_field_for_field_and_in_order() -> None:
    """Every subtree the decoder memoises (by raw bytes or by the kept fields' encoding) comes out as the dict
    path makes it: two pods sharing a template, one with the bulk that makes each pod's bytes its own."""
    first = pod("a", "shop", "10.244.1.2", "node-1", {"app": "web"}, initContainers=[{"name": "init", "image": "x"}])
    first["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    first["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    first["status"] |= {"hostIPs": [{"ip": "10.0.0.1"}], "reason": "Evicted", "conditions": [
        {"type": "Ready", "status": "False", "reason": "PodFailed", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    first["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": "m"}}
    second = copy.deepcopy(first)
    second["metadata"] |= {"name": "b", "uid": "uid-b"}
    second["status"]["conditions"][0]["lastTransitionTime"] = "2026-02-02T00:00:00Z"
    built = []
    for raw in (first, second, pod("c", "shop", "10.244.1.4", "node-2", {})):
        data = json.dumps({k: v for k, v in raw.items() if k != "kind"}).encode()
        fast, slow = decode_item(data, "Pod"), trim("Pod", json.loads(data))
        assert json.dumps(fast) == json.dumps(slow)
        built.append(fast)
    assert "annotations" not in built[0]["metadata"] and built[2]["metadata"]["annotations"] == {"team": "a"}
    assert built[0]["status"]["conditions"] is built[1]["status"]["conditions"]  # timestamps dropped: shared


def test_the_fast_path_builds_the_dict_paths_endpointslice_field_for_field_and_in_order() -> None:
    """The decoder's typed EndpointSlice path (endpoints decoded as structs, conditions and hints memoised by
    their bytes) comes out as the dict path makes it, for the API's shapes and for the odd ones it hands back."""
    endpoint = {"addresses": ["10.244.1.2"], "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": "node-1", "zone": "cn-hangzhou-h", "hints": {"forZones": [{"name": "cn-hangzhou-h"}]},
                "deprecatedTopology": {"x": "y"},
                "targetRef": {"kind": "Pod", "name": "a", "namespace": "shop", "uid": "uid-a"}}
    full = {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": "web-abcde", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                         "managedFields": [{"manager": "kube-controller-manager"}]},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "addressType": "IPv4",
            "endpoints": [endpoint, {**endpoint, "addresses": ["10.244.1.3"], "nodeName": None, "zone": 7,
                                     "targetRef": {"kind": "Pod", "name": "b"}},
                          {"addresses": ["10.244.1.4"], "conditions": None, "targetRef": {}},
                          {"addresses": ["10.244.1.5"], "targetRef": {"fieldPath": "x"}}],
            "x-extra": {"kept": ["as", "is"]}}
    shapes = [full, {k: v for k, v in full.items() if k not in ("kind", "apiVersion")},
              {**full, "endpoints": None}, {k: v for k, v in full.items() if k != "endpoints"},
              # shapes the typed path refuses, so the dict path trims them
              {**full, "endpoints": {}}, {**full, "endpoints": [{**endpoint, "targetRef": "pod/a"}]},
              {**full, "metadata": None}]
    built = []
    for raw in shapes:
        data = json.dumps(raw).encode()
        slow = trim("EndpointSlice", {"kind": "EndpointSlice", **json.loads(data)})
        for kind in ("EndpointSlice", None):
            fast = decode_item(data, kind)
            if kind is None and "kind" not in raw:
                continue  # a kind-less item outside a typed list is the snapshot's to name
            assert json.dumps(trim("EndpointSlice", fast)) == json.dumps(slow)
        built.append(fast)
    endpoints = built[0]["endpoints"]
    assert type(built[0]) is not dict and endpoints[0]["conditions"] is endpoints[1]["conditions"]  # the typed path
    a_pod = json.dumps(pod("a", "shop", "10.244.1.2", "node-1", {})).encode()
    assert decode_item(a_pod, "EndpointSlice")["kind"] == "Pod"  # an odd item in an EndpointSliceList keeps its kind


def test_a_bulk_build_pauses_the_collector_and_gives_it_back() -> None:
    was = gc.isenabled()
    with bulk_build():
        assert not gc.isenabled()
        with bulk_build():  # a second watch thread listing at the same time
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled() == was


def test_a_pod_the_typed_path_cannot_read_is_still_loaded() -> None:
    raw = pod("odd", "shop", "10.244.1.9", "node-1", {"app": "web"})
    raw["spec"]["containers"] = [["app"]]  # a hand-edited snapshot: no container object, the typed path refuses it
    head, items = decode_list(json.dumps({"kind": "PodList", "items": [raw]}).encode())
    (item,) = list(items)
    assert head is not None and head["kind"] == "PodList"
    assert trim("Pod", item) == trim("Pod", raw) and trim("Pod", item)["status"]["podIP"] == "10.244.1.9"


def test_a_node_drops_its_image_list() -> None:
    kept = trim("Node", node(1))
    assert "images" not in kept["status"] and kept["status"]["addresses"][0]["address"] == "10.0.0.2"


def test_ipv4_and_ipv4_compatible_ipv6_addresses_stay_apart() -> None:
    assert address_key(ip_address("10.1.2.3")) != address_key(ip_address("::10.1.2.3"))
    model = model_of([pod("a", "shop", "10.1.2.3", "node-1", {}), pod("b", "shop", "::a01:203", "node-1", {})])
    assert [p["metadata"]["name"] for p in model.pods_at(ip_address("10.1.2.3"))] == ["a"]
    assert [p["metadata"]["name"] for p in model.pods_at(ip_address("::10.1.2.3"))] == ["b"]


def test_one_address_held_by_two_pods_keeps_both_until_one_goes() -> None:
    old = pod("old", "shop", "10.244.1.2", "node-1", {})
    old["status"]["phase"] = "Succeeded"
    model = model_of([old, pod("new", "shop", "10.244.1.2", "node-1", {})])
    assert [p["metadata"]["name"] for p in model.pods_at(ip_address("10.244.1.2"))] == ["new", "old"]
    model.apply("DELETED", "Pod", trim("Pod", old))
    assert [p["metadata"]["name"] for p in model.pods_at(ip_address("10.244.1.2"))] == ["new"]
    assert model.pods_on_node("node-1") == ["shop/new"]


def test_a_relist_forgets_what_it_did_not_return() -> None:
    model = model_of([pod("a", "shop", "10.244.1.2", "node-1", {}), pod("b", "shop", "10.244.1.3", "node-1", {})])
    model.replace("Pod", [trim("Pod", pod("b", "shop", "10.244.1.3", "node-1", {}))])
    assert sorted(model.objects["Pod"]) == ["shop/b"] and model.pods_at(ip_address("10.244.1.2")) == []
    assert model.pods_on_node("node-1") == ["shop/b"]


def _service_cluster(conditions: dict[str, Any]) -> Planner:
    model = model_of([
        node(1), namespace("shop", "a"),
        pod("client", "shop", "10.244.1.10", "node-1", {"app": "client"}),
        pod("web-1", "shop", "10.244.1.2", "node-1", {"app": "web"}),
        service("web", "shop", "10.96.0.20", {"app": "web"}),
        endpoint_slice("web-abc", "shop", "web", [endpoint("10.244.1.2", "web-1", "shop", **conditions)]),
    ])
    return Planner(model, "snapshot:test")


def _plan(planner: Planner, src: str, dst: str, port: int) -> Any:
    return planner.plan(DiagnosisRequest(src=src, dst=dst, port=port, protocol="tcp"))  # type: ignore[arg-type]


@pytest.mark.parametrize(("conditions", "ready", "serving", "terminating"), [
    ({}, True, True, False),  # nil conditions mean ready (the API's semantics)
    ({"ready": False, "serving": True, "terminating": True}, False, True, True),
    ({"ready": False, "serving": False, "terminating": False}, False, False, False),
])
def test_endpoint_slice_conditions_survive_the_compact_model(conditions: dict[str, Any], ready: bool, serving: bool,
                                                             terminating: bool) -> None:
    report = _plan(_service_cluster(conditions), "10.244.1.10", "10.96.0.20", 80)
    assert report.service is not None
    (backend,) = report.service.backends
    assert (backend.ready, backend.serving, backend.terminating) == (ready, serving, terminating)


def test_a_named_target_port_resolves_through_the_compact_model() -> None:
    report = _plan(_service_cluster({"ready": True}), "10.244.1.10", "10.96.0.20", 80)
    assert report.service is not None and report.service.target_port == "http"
    assert [(p.dst_pod, p.dst_port) for p in report.paths] == [("shop/web-1", 8080)]
    assert report.src.pod == "shop/client" and report.src.kind == EndpointKind.POD


# ------------------------------------------------------------ what the event carries


def _policy_cluster(policies: int) -> tuple[Planner, list[dict[str, Any]]]:
    """Two namespaces, a client and a server, and `policies` NetworkPolicies, most of which select neither."""
    objects: list[dict[str, Any]] = [node(i) for i in range(1, INLINE_NODE_ADDRESSES + 10)]
    objects += [namespace("shop", "a"), namespace("ops", "b")]
    objects += [pod("client", "ops", "10.244.2.10", "node-2", {"app": "client"}),
                pod("server", "shop", "10.244.1.2", "node-1", {"app": "server"})]
    wanted = [policy("allow-a", "shop", {"matchLabels": {"app": "server"}}, team="a"),
              policy("everyone", "shop", {}, team="a"),
              policy("by-expression", "shop", {"matchExpressions": [{"key": "app", "operator": "In",
                                                                     "values": ["server"]}]}, team="a")]
    objects += wanted
    objects += [policy(f"other-{n}", "shop" if n % 2 else "ops", {"matchLabels": {"app": f"other-{n}"}})
                for n in range(policies - len(wanted))]
    return Planner(model_of(objects), "snapshot:test"), wanted


def test_the_event_carries_only_the_policies_selecting_its_pods() -> None:
    planner, wanted = _policy_cluster(200)
    report = _plan(planner, "10.244.2.10", "10.244.1.2", 8080)
    assert sorted(p["metadata"]["name"] for p in report.objects.networkpolicies) == sorted(
        p["metadata"]["name"] for p in wanted)
    assert sorted(n["metadata"]["name"] for n in report.objects.namespaces) == ["ops", "shop"]
    assert sorted(p["metadata"]["name"] for p in report.objects.pods) == ["client", "server"]
    # the client's namespace is team b, every policy selecting the server admits team a only
    assert ModelSimulator(report, report_request(report)).run().paths[0].final == FinalState.DROP


def report_request(report: Any) -> DiagnosisRequest:
    return DiagnosisRequest(src=str(report.src.address), dst=str(report.dst.address), port=8080,  # type: ignore[arg-type]
                            protocol="tcp")


def test_a_big_cluster_sends_its_node_addresses_through_the_object_store() -> None:
    planner, _ = _policy_cluster(10)
    report = _plan(planner, "10.244.2.10", "10.244.1.2", 8080)
    slim, data = detach_node_addresses(report)
    assert data is not None and slim.cluster.node_addresses == {}
    assert {n: [str(a) for a in addrs] for n, addrs in NODE_ADDRESSES.validate_json(data).items()} == {
        n: [str(a) for a in addrs] for n, addrs in report.cluster.node_addresses.items()}
    assert len(report.cluster.node_addresses) > INLINE_NODE_ADDRESSES  # the planner's own copy is whole


async def test_ten_times_the_benchmark_policies_still_completes(nats_url: str) -> None:
    """20,000 policies (10x bench/topology.py's), 10,000 of them in the server's namespace: the event stays small
    and crosses a real bus; a payload past half max_payload would go through the object store (Bus.pack)."""
    planner, wanted = _policy_cluster(20_000)
    report, _ = detach_node_addresses(_plan(planner, "10.244.2.10", "10.244.1.2", 8080))
    assert len(report.objects.networkpolicies) == len(wanted)
    env = StageEnvelope(id=new_id(), request=report_request(report), created_at=now(), topology=report)
    bus = await Bus.connect(nats_url, name="topology-scale-test", settings=Settings(nats_url=nats_url))
    try:
        payload = env.model_dump_json().encode()
        packed = await bus.pack("topology-scale-test", payload)
        back = StageEnvelope.model_validate_json(await bus.unpack(packed))
    finally:
        await bus.close()
    assert back.topology is not None and back.topology.objects == report.objects
    assert ModelSimulator(back.topology, back.request).run().paths[0].final == FinalState.DROP
