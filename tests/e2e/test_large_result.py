"""A result past NATS's 1 MiB max_payload, end to end through the embedded stack: a Service with 1,200
endpoints makes a topology report and a result of several MB. They travel through the object store
(the bus packs large envelopes and KV values), and the gateway serves the whole result by GET and SSE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from services.stack import EmbeddedStack
from shared.bus import BLOB_MARK
from shared.config import Settings
from tests.foundation.helpers import get_json, post, sse_events

ENDPOINTS = 1200
VIP = "10.96.0.50"


def _node(name: str, ip: str, cidr: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def _pod(i: int) -> dict[str, Any]:
    node, ip = ("node-1", f"10.244.{1 + i // 250}.{2 + i % 250}")
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"web-{i}", "namespace": "big", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "web", "ready": True}]}}


def big_snapshot(root: Path) -> Path:
    pods = [_pod(i) for i in range(ENDPOINTS)]
    client = {**_pod(ENDPOINTS), "metadata": {"name": "client", "namespace": "big", "labels": {"app": "client"}}}
    client["status"] = {**client["status"], "podIP": "10.244.200.2", "podIPs": [{"ip": "10.244.200.2"}]}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "big"},
               "spec": {"type": "ClusterIP", "clusterIP": VIP, "clusterIPs": [VIP], "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}
    slices = [{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": f"web-{n}", "namespace": "big",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [p["status"]["podIP"]], "nodeName": "node-1",
                              "conditions": {"ready": True, "serving": True, "terminating": False},
                              "targetRef": {"kind": "Pod", "namespace": "big", "name": p["metadata"]["name"]}}
                             for p in pods[n:n + 100]]}
              for n in range(0, ENDPOINTS, 100)]
    objects = [_node("node-1", "172.30.0.11", "10.244.0.0/16"),
               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "big"}},
               *pods, client, service, *slices]
    (root / "kubernetes").mkdir(parents=True)
    (root / "kubernetes" / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                                  "items": objects}))
    return root


async def test_a_result_over_one_mib_is_served_whole_by_get_and_sse(tmp_path: Path) -> None:
    request = {"src": "10.244.200.2", "dst": VIP, "port": 80, "protocol": "tcp"}
    async with EmbeddedStack(Settings(snapshot=big_snapshot(tmp_path))) as stack, \
            aiohttp.ClientSession() as http:
        diagnosis_id = await post(http, stack.url, request)
        events = await sse_events(http, stack.url, diagnosis_id, timeout=120)
        doc = await get_json(http, f"{stack.url}/api/v1/diagnoses/{diagnosis_id}")
        assert stack.gateway_bus is not None
        stored = await stack.gateway_bus.kv.get(diagnosis_id)
    name, streamed = events[-1]
    assert name == "result" and streamed == doc
    assert doc["status"] == "completed", doc.get("error")
    size = len(json.dumps(doc))
    assert size > 1 << 20, size  # past NATS's default max_payload
    result = doc["result"]
    assert result["counts"]["forward"] == ENDPOINTS
    assert {p["id"] for p in result["paths"]} >= {f"p{i}" for i in range(ENDPOINTS)}
    assert (stored.value or b"").startswith(BLOB_MARK)  # the KV holds a reference, the object store the result
