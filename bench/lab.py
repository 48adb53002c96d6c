"""Benchmark: `lab up` / `lab down` wall time for the basic example and a generated 20 nodes x 10 pods x
50 Services lab (targets: < 2 s and < 30 s). Run as root: `.venv/bin/python bench/lab.py`."""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.dataplane import Lab
from lab.scenario import Scenario, resolve

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lab" / "basic.yaml"


def generated(nodes: int = 20, pods_per_node: int = 10, services: int = 50) -> Scenario:
    return Scenario.model_validate({
        "name": "bench", "cni": "host-gw",
        "nodes": [{"name": f"node-{n}"} for n in range(1, nodes + 1)],
        "namespaces": [{"name": "bench"}],
        "pods": [
            {"name": f"p-{n}-{i}", "namespace": "bench", "node": f"node-{n}",
             "labels": {"app": f"svc-{(n * pods_per_node + i) % services}"},
             "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080},
                                                    {"name": "udp", "containerPort": 9000, "protocol": "UDP"}]}]}
            for n in range(1, nodes + 1) for i in range(pods_per_node)
        ],
        "services": [
            {"name": f"svc-{s}", "namespace": "bench", "type": "NodePort" if s % 5 == 0 else "ClusterIP",
             "selector": {"app": f"svc-{s}"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
            for s in range(services)
        ],
        "networkPolicies": [{
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "svc-0-from-bench", "namespace": "bench"},
            "spec": {"podSelector": {"matchLabels": {"app": "svc-0"}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                                                    "bench"}}}]}]},
        }],
    })


def measure(label: str, scenario: Scenario, src: str, dst: str, port: int) -> None:
    prefix = "bn" + secrets.token_hex(3)
    resolved = resolve(scenario)
    started = time.monotonic()
    lab = Lab.up(resolved, prefix=prefix)
    up_s = time.monotonic() - started
    try:
        result = lab.probe(src, dst, port)
    finally:
        started = time.monotonic()
        lab.down()
        down_s = time.monotonic() - started
    print(f"{label:<34} nodes={len(resolved.nodes):>3} pods={len(resolved.pods):>4} "
          f"services={len(resolved.services):>3}  up={up_s:6.2f} s  down={down_s:5.2f} s  "
          f"probe {src}->{dst}:{port} {result.outcome} ({result.elapsed_ms:.1f} ms)")


def main() -> None:
    measure("basic example (target up < 2 s)", Scenario.load(EXAMPLE), "web/client", "svc:shop/api", 80)
    for cni in ("calico", "terway"):  # the plug-in modes: per-pod routes, proxy ARP / ENI policy routing
        measure(f"{cni} example", Scenario.load(EXAMPLE.parent / f"{cni}.yaml"), "shop/client", "svc:shop/api", 80)
    measure("20x10 + 50 svc (target up < 30 s)", generated(), "bench/p-1-0", "svc:bench/svc-7", 80)


if __name__ == "__main__":
    main()
