"""The model's object graph (service → slice → pod → node): readers take object keys from the
vertices' attributes, whatever order the watch events arrive in."""

from __future__ import annotations

from services.topology.model import ClusterModel, trim


def _slice(name: str, service: str, pods: list[str]) -> dict:
    return {"metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [f"10.244.1.{i + 2}"], "targetRef": {"kind": "Pod", "name": p}}
                          for i, p in enumerate(pods)]}


def test_a_slice_before_its_pods_and_service_links_them_when_they_come() -> None:
    model = ClusterModel()
    model.apply("ADDED", "EndpointSlice", trim("EndpointSlice", _slice("api-x1", "api", ["api-1", "api-2"])))
    assert model.services_of_pod("shop/api-1") == ["shop/api"]  # vertices before their objects
    assert model.slices_of("shop/api") == [model.objects["EndpointSlice"]["shop/api-x1"]]
    for pod in ("api-1", "api-2", "node-pinned"):
        model.apply("ADDED", "Pod", trim("Pod", {
            "metadata": {"name": pod, "namespace": "shop"}, "spec": {"nodeName": "worker-1"},
            "status": {"phase": "Running", "podIP": "10.244.1.9"}}))
    model.apply("ADDED", "Service", trim("Service", {"metadata": {"name": "api", "namespace": "shop"},
                                                     "spec": {"clusterIP": "10.96.0.10"}}))
    model.apply("ADDED", "Node", trim("Node", {"metadata": {"name": "worker-1"}}))
    assert model.pods_on_node("worker-1") == ["shop/api-1", "shop/api-2", "shop/node-pinned"]
    assert model.services_of_pod("shop/node-pinned") == []
    model.apply("DELETED", "EndpointSlice", model.objects["EndpointSlice"]["shop/api-x1"])
    assert model.services_of_pod("shop/api-1") == [] and model.slices_of("shop/api") == []
    assert model.pods_on_node("worker-1") == ["shop/api-1", "shop/api-2", "shop/node-pinned"]
