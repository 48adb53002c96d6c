"""Cluster summary benchmark: the topology stage rebuilds it (at most every 2 s) when the model
changes; this times one rebuild for a large cluster and prints its size and what was kept.

    .venv/bin/python bench/cluster_summary.py [--nodes 5000 --pods 150000 --services 10000]
"""

from __future__ import annotations

import argparse
import ipaddress
import time

from services.topology.model import ClusterModel, trim
from services.topology.summary import summary_within

MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


def build_model(nodes: int, pods: int, services: int) -> ClusterModel:
    model = ClusterModel()
    base = ipaddress.IPv4Address("10.64.0.0")
    for i in range(nodes):
        model.apply("ADDED", "Node", trim("Node", {
            "metadata": {"name": f"node-{i}"},
            "status": {"addresses": [{"type": "InternalIP", "address": str(ipaddress.IPv4Address("10.0.0.10") + i)}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
    for i in range(pods):
        ip = str(base + i)
        model.apply("ADDED", "Pod", trim("Pod", {
            "metadata": {"name": f"app-{i % 3000}-7d9f8b6c5d-{i:06d}", "namespace": f"ns-{i % 200}"},
            "spec": {"nodeName": f"node-{i % nodes}", "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}))
    for i in range(services):
        model.apply("ADDED", "Service", trim("Service", {
            "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 200}"},
            "spec": {"type": "ClusterIP", "clusterIP": str(ipaddress.IPv4Address("10.96.0.0") + 20 + i),
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}))
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--pods", type=int, default=150_000)
    p.add_argument("--services", type=int, default=10_000)
    args = p.parse_args()
    started = time.perf_counter()
    model = build_model(args.nodes, args.pods, args.services)
    print(f"model: {args.nodes} nodes, {args.pods} pods, {args.services} services in "
          f"{time.perf_counter() - started:.1f} s")
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        summary = summary_within(model, "live", [], MAX_PAYLOAD)
        timings.append(time.perf_counter() - started)
    size = len(summary.model_dump_json())
    print(f"summary: {len(summary.pods)} pods, {len(summary.services)} services, {len(summary.nodes)} nodes kept "
          f"(truncated={summary.truncated}), {size / 1024:.0f} KiB")
    print(f"rebuild: best {min(timings) * 1000:.0f} ms, worst {max(timings) * 1000:.0f} ms (of 3)")


if __name__ == "__main__":
    main()
