"""NetworkPolicy engine figures: verdict queries/s and matrix time.

A generated namespace with 2,000 pods and 500 policies (pod selectors on app/tier labels,
namespace/pod/ipBlock peers, numeric, ranged and named ports), then:
  * index build time,
  * explained verdicts (`PolicyIndex.evaluate`) per second over random pod pairs and external IPs,
  * a 10,000-query batch (the `netdiag matrix --batch` budget is 10 s),
  * `compute_matrix` time for 200 pods (40,000 pairs) and 100 pods (10,000 pairs).

Run: .venv/bin/python bench/policy.py
"""

from __future__ import annotations

import random
import time
from typing import Any

from services.simulator.matrix import compute_matrix
from services.simulator.policy import PolicyIndex

NS = "bench"
APPS = 100
TIERS = ("web", "api", "db", "cache", "batch")


def pod_ip(i: int) -> str:
    return f"10.{64 + i // 250}.{i % 250}.{10 + i % 7}"


def generate(pods: int, policies: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    objs: list[dict[str, Any]] = [
        {"kind": "Namespace", "metadata": {"name": n, "labels": {"team": n}}} for n in (NS, "other")
    ]
    for i in range(pods):
        objs.append({"kind": "Pod", "metadata": {"name": f"p{i}", "namespace": NS, "labels": {
            "app": f"app{i % APPS}", "tier": TIERS[i % len(TIERS)], "shard": str(i % 13)}},
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080},
                                               {"name": "metrics", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": pod_ip(i)}})
    for j in range(policies):
        peers = rnd.choice([
            [{"podSelector": {"matchLabels": {"app": f"app{rnd.randrange(APPS)}"}}}],
            [{"namespaceSelector": {"matchLabels": {"team": "other"}}}],
            [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In",
                                                    "values": rnd.sample(TIERS, 2)}]}},
             {"ipBlock": {"cidr": "172.16.0.0/12", "except": ["172.16.1.0/24"]}}],
        ])
        ports = rnd.choice([[{"port": 8080}], [{"port": "http"}], [{"port": 9000, "endPort": 9100}], []])
        direction = rnd.choice(["ingress", "egress"])
        spec = {"podSelector": {"matchLabels": {"app": f"app{j % APPS}", "tier": TIERS[j % len(TIERS)]}},
                "policyTypes": [direction.capitalize()],
                direction: [{("from" if direction == "ingress" else "to"): peers, "ports": ports}]}
        objs.append({"kind": "NetworkPolicy", "metadata": {"name": f"np{j}", "namespace": NS}, "spec": spec})
    return objs


def main() -> None:
    rnd = random.Random(1)
    objs = generate(2000, 500)
    t0 = time.perf_counter()
    index = PolicyIndex.build(objs)
    print(f"index build: 2000 pods, 500 policies: {(time.perf_counter() - t0) * 1000:.1f} ms")

    queries = []
    for _ in range(20000):
        src = pod_ip(rnd.randrange(2000)) if rnd.random() > 0.1 else "172.16.5.5"
        queries.append((src, pod_ip(rnd.randrange(2000)), rnd.choice(["tcp", "udp"]),
                        rnd.choice([8080, 9050, 53])))
    t0 = time.perf_counter()
    denied = sum(not index.evaluate(*q).allowed for q in queries)
    dt = time.perf_counter() - t0
    print(f"explained verdicts (cold+warm selector cache): {len(queries) / dt:,.0f} queries/s "
          f"({len(queries)} queries, {denied} denied)")
    t0 = time.perf_counter()
    for q in queries[:10000]:
        index.evaluate(*q)
    print(f"10,000-query batch (warm): {time.perf_counter() - t0:.3f} s")

    for n in (200, 100):
        small = generate(n, 500)
        t0 = time.perf_counter()
        m = compute_matrix(small, namespace=NS, port=8080, protocol="TCP")
        dt = time.perf_counter() - t0
        print(f"matrix {n} pods ({n * n} pairs, 500 policies, incl. index build): {dt:.3f} s, "
              f"{m.to_json()['denied_count']} denied")


if __name__ == "__main__":
    main()
