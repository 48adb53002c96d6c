"""Topology benchmark: 5,000 nodes, 150,000 pods, 10,000 Services, 2,000 NetworkPolicies.

Generates a snapshot (JSON Lists, kubectl-shaped objects with the usual bulk that
trimming drops) in a temp dir from a child process, loads it, then times per-diagnosis
planning over a mix of requests. Prints load time, RSS, p50/p95 latency and the topology event's
size p50/p95 (what the stage publishes: the node address map goes through the object store).

With --live the same cluster is served by the lab's Kubernetes API (lab/kubeapi.py, in a child
process, so its memory is not ours) and the live source lists it: list time, RSS after the list,
and the RSS after a relist (what a 410 Gone does).

    .venv/bin/python bench/topology.py [--nodes 5000 --pods 150000 --services 10000 --policies 2000] [--live]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.topology.plan import Planner, detach_node_addresses
from services.topology.sources.snapshot import load_snapshot
from shared.schemas import DiagnosisRequest

NAMESPACES = 200
TS = "2026-11-20T08:15:30Z"


def _node(i: int) -> dict[str, Any]:
    ip = str(ipaddress.IPv4Address("10.0.0.0") + 10 + i)
    cidr = f"10.{64 + i // 256}.{i % 256}.0/24"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"node-{i}", "uid": f"n-{i}", "resourceVersion": str(i),
                         "labels": {"kubernetes.io/hostname": f"node-{i}", "kubernetes.io/os": "linux"},
                         "managedFields": [{"manager": "kubelet", "operation": "Update", "time": TS}]},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": f"node-{i}"}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}


def _pod_ip(node: int, slot: int) -> str:
    return f"10.{64 + node // 256}.{node % 256}.{slot + 2}"


def _pod(i: int, nodes: int, services: int) -> dict[str, Any]:
    node, slot = i % nodes, i // nodes
    ns = f"ns-{i % NAMESPACES}"
    svc = i % services
    return {"metadata": {"name": f"app-{i}", "namespace": ns, "uid": f"p-{i}", "resourceVersion": str(i),
                         "labels": {"app": f"svc-{svc}", "tier": "backend" if i % 3 else "frontend"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"rs-{svc}",
                                              "uid": f"rs-{svc}", "controller": True}]},
            "spec": {"nodeName": f"node-{node}", "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
                     "serviceAccountName": "default", "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "app", "image": "registry.example.com/app:1.2.3",
                                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                                     "env": [{"name": "MODE", "value": "prod"}, {"name": "LOG", "value": "info"}],
                                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                                     "volumeMounts": [{"mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                                       "name": "kube-api-access", "readOnly": True}]}],
                     "tolerations": [{"effect": "NoExecute", "key": "node.kubernetes.io/not-ready",
                                      "operator": "Exists", "tolerationSeconds": 300}],
                     "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                         {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]},
            "status": {"phase": "Running", "podIP": _pod_ip(node, slot), "podIPs": [{"ip": _pod_ip(node, slot)}],
                       "hostIP": str(ipaddress.IPv4Address("10.0.0.10") + node), "qosClass": "Burstable",
                       "conditions": [{"type": "Ready", "status": "True"},
                                      {"type": "ContainersReady", "status": "True"}],
                       "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "started": True,
                                              "image": "registry.example.com/app:1.2.3", "imageID": "sha256:abc",
                                              "containerID": f"containerd://{i:064x}",
                                              "state": {"running": {"startedAt": TS}}}]}}


def _service(s: int) -> dict[str, Any]:
    ns = f"ns-{s % NAMESPACES}"
    ip = str(ipaddress.IPv4Address("10.96.0.0") + 10 + s)
    spec: dict[str, Any] = {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": f"svc-{s}"}, "type": "ClusterIP",
                            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}
    status: dict[str, Any] = {"loadBalancer": {}}
    if s % 10 == 0:
        spec["type"] = "LoadBalancer"
        spec["ports"][0]["nodePort"] = 30000 + s // 10
        spec["externalTrafficPolicy"] = "Local" if s % 20 == 0 else "Cluster"
        status = {"loadBalancer": {"ingress": [{"ip": str(ipaddress.IPv4Address("47.100.0.0") + s)}]}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{s}", "namespace": ns, "uid": f"s-{s}"},
            "spec": spec, "status": status}


def _slice(s: int, pods: int, nodes: int, services: int) -> dict[str, Any]:
    ns = f"ns-{s % NAMESPACES}"
    endpoints = []
    for i in range(s, pods, services):  # the pods whose app label is svc-s
        node, slot = i % nodes, i // nodes
        endpoints.append({"addresses": [_pod_ip(node, slot)], "nodeName": f"node-{node}",
                          "conditions": {"ready": True, "serving": True, "terminating": False},
                          "targetRef": {"kind": "Pod", "name": f"app-{i}", "namespace": f"ns-{i % NAMESPACES}"}})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"svc-{s}-abcde", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": f"svc-{s}"}},
            "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def _policy(p: int) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol-{p}", "namespace": f"ns-{p % NAMESPACES}"},
            "spec": {"podSelector": {"matchLabels": {"tier": "backend"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": f"t{p % 7}"}}}],
                                  "ports": [{"port": "http"}]}]}}


def objects(nodes: int, pods: int, services: int, policies: int) -> Iterator[dict[str, Any]]:
    """The whole cluster, kind by kind (the lab API's input)."""
    yield from (_node(i) for i in range(nodes))
    yield from ({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": f"ns-{n}", "labels": {"kubernetes.io/metadata.name": f"ns-{n}", "team": f"t{n % 7}"}}}
        for n in range(NAMESPACES))
    yield from ({"apiVersion": "v1", "kind": "Pod", **_pod(i, nodes, services)} for i in range(pods))
    yield from (_service(s) for s in range(services))
    yield from (_policy(p) for p in range(policies))


def _write(path: Path, items: list[dict[str, Any]], kind: str = "List") -> None:
    with path.open("w") as fh:
        json.dump({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}, fh)


def generate(root: Path, nodes: int, pods: int, services: int, policies: int) -> None:
    k8s = root / "kubernetes"
    k8s.mkdir(parents=True)
    _write(k8s / "nodes.json", [_node(i) for i in range(nodes)])
    _write(k8s / "namespaces.json", [{"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": f"ns-{n}", "labels": {"kubernetes.io/metadata.name": f"ns-{n}", "team": f"t{n % 7}"}}}
        for n in range(NAMESPACES)])
    for part in range(0, pods, 50_000):  # several files, as `kubectl get pods -A` per namespace group would
        _write(k8s / f"pods-{part // 50_000}.json",
               [_pod(i, nodes, services) for i in range(part, min(pods, part + 50_000))], "PodList")
    _write(k8s / "services.json", [_service(s) for s in range(services)])
    _write(k8s / "endpointslices.json", [_slice(s, pods, nodes, services) for s in range(services)])
    _write(k8s / "networkpolicies.json", [_policy(p) for p in range(policies)])


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _calibrate() -> float:
    """How busy the (shared) machine is: the same loop's time, to read the other figures against."""
    t0 = time.perf_counter()
    for _ in range(10_000_000):
        pass
    return time.perf_counter() - t0


def _serve(args: argparse.Namespace, kubeconfig: Path, ready: Any) -> None:
    # the outside world, in its own process; bench/lab.py (the script's neighbour) must not shadow the package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
    from lab.kubeapi import LabKubeAPI

    api = LabKubeAPI()
    api.load(list(objects(args.nodes, args.pods, args.services, args.policies)))
    api.start_in_thread()
    api.write_kubeconfig(kubeconfig)
    ready.set()
    while True:
        time.sleep(60)


def live(args: argparse.Namespace) -> None:
    from services.topology.sources.live import LiveSource
    from shared.kube import api_client

    with tempfile.TemporaryDirectory(prefix="netdiag-bench-topology-live-") as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        server = ctx.Process(target=_serve, args=(args, kubeconfig, ready), daemon=True)
        started = time.perf_counter()
        server.start()
        try:
            if not ready.wait(3600):
                raise SystemExit("the lab API did not come up")
            print(f"lab API loaded {args.pods} pods in {time.perf_counter() - started:.1f}s")
            rss_before = _rss_mb()
            source = LiveSource(api_client(kubeconfig), page_size=500, configmap_namespaces=())
            t0 = time.perf_counter()
            source.start()
            if not source.wait_synced(3600):
                raise SystemExit(f"not synced: {source.errors()}")
            print(f"live list: {time.perf_counter() - t0:.1f}s for {source.model.counts()}")
            print(f"RSS after list: {_rss_mb():.0f} MB (before {rss_before:.0f} MB; target <= 700 MB)")
            pods = next(r for r in source.resources if r.kind == "Pod")
            t0 = time.perf_counter()
            source._list(pods)  # what a 410 Gone makes the informer do
            print(f"relist of the pods (after a 410): {time.perf_counter() - t0:.1f}s; RSS {_rss_mb():.0f} MB, "
                  f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
            source.stop()
        finally:
            server.kill()


def requests(n: int, nodes: int, pods: int, services: int, rng: random.Random) -> list[DiagnosisRequest]:
    """pod→pod, pod→ClusterIP, internet→LB and pod→NodePort in turn, validated as the edge validates them."""
    out = []
    for k in range(n):
        a, b = rng.randrange(pods), rng.randrange(pods)
        src = _pod_ip(a % nodes, a // nodes)
        s = rng.randrange(services)
        s10 = s - s % 10
        kind = k % 4
        if kind == 0:
            src_dst_port = (src, _pod_ip(b % nodes, b // nodes), 8080)
        elif kind == 1:
            src_dst_port = (src, str(ipaddress.IPv4Address("10.96.0.0") + 10 + s), 80)
        elif kind == 2:
            src_dst_port = ("8.8.8.8", str(ipaddress.IPv4Address("47.100.0.0") + s10), 80)
        else:
            src_dst_port = (src, str(ipaddress.IPv4Address("10.0.0.10") + rng.randrange(nodes)), 30000 + s10 // 10)
        out.append(DiagnosisRequest.model_validate(
            dict(zip(("src", "dst", "port"), src_dst_port, strict=True), protocol="tcp")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--pods", type=int, default=150_000)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--policies", type=int, default=2000)
    ap.add_argument("--diagnoses", type=int, default=2000)
    ap.add_argument("--live", action="store_true", help="list the cluster from the lab's API instead")
    args = ap.parse_args()
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} on {os.cpu_count()} cores; "
          f"10M-iteration Python loop {_calibrate():.2f}s (an idle core here: ~0.2s)")
    if args.live:
        live(args)
        return
    with tempfile.TemporaryDirectory(prefix="netdiag-bench-topology-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        # a child process generates, so its memory does not count in ours
        child = multiprocessing.get_context("fork").Process(
            target=generate, args=(root, args.nodes, args.pods, args.services, args.policies))
        child.start()
        child.join()
        size_mb = sum(p.stat().st_size for p in (root / "kubernetes").iterdir()) / 1e6
        print(f"generated snapshot: {size_mb:.0f} MB in {time.perf_counter() - started:.1f}s")
        rss_before = _rss_mb()
        cpu = time.process_time()
        load = load_snapshot(root)
        cpu = time.process_time() - cpu
    print(f"load: {load.seconds:.1f}s ({cpu:.1f}s CPU; target <= 6 s) for {dict(load.loaded)}")
    print("  by file: " + ", ".join(f"{name} {s:.2f}s" for name, s in load.file_seconds.items()))
    print(f"RSS after load: {_rss_mb():.0f} MB (before {rss_before:.0f} MB); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (target < 2048)")
    planner = Planner(load.model, "snapshot:bench")
    t0 = time.perf_counter()
    planner.detector.detect()
    print(f"first detection (cached afterwards): {(time.perf_counter() - t0) * 1000:.1f} ms")
    rng = random.Random(7)
    reqs = requests(args.diagnoses, args.nodes, args.pods, args.services, rng)
    plan_ms, dump_ms, sizes = [], [], []
    by_kind: dict[int, list[float]] = {k: [] for k in range(4)}
    for n, req in enumerate(reqs):
        t0 = time.perf_counter()
        report = planner.plan(req)
        t1 = time.perf_counter()
        by_kind[n % 4].append((t1 - t0) * 1000)
        body = detach_node_addresses(report)[0].model_dump_json()
        t2 = time.perf_counter()
        plan_ms.append((t1 - t0) * 1000)
        dump_ms.append((t2 - t1) * 1000)
        sizes.append(len(body))

    def pct(values: list[float] | list[int], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1]

    print(f"per-diagnosis topology ({len(reqs)} requests: pod→pod, pod→ClusterIP, internet→LB, pod→NodePort): "
          f"p50 {statistics.median(plan_ms):.2f} ms, p95 {pct(plan_ms, 95):.2f} ms, max {max(plan_ms):.2f} ms "
          "(target p50 < 1 ms)")
    kinds = ("pod→pod", "pod→ClusterIP", "internet→LB", "pod→NodePort")  # requests() cycles through them
    print("  p50 by kind: " + ", ".join(f"{name} {statistics.median(by_kind[k]):.2f} ms"
                                        for k, name in enumerate(kinds)))
    print(f"topology event JSON: p50 {statistics.median(dump_ms):.2f} ms to serialise, "
          f"size p50 {statistics.median(sizes) / 1024:.1f} KiB, p95 {pct(sizes, 95) / 1024:.1f} KiB, "
          f"max {max(sizes) / 1024:.1f} KiB (target p50 <= 16 KiB)")
    print("  size p50 by kind: " + ", ".join(
        f"{name} {statistics.median(sizes[k::len(kinds)]) / 1024:.1f} KiB" for k, name in enumerate(kinds)))


if __name__ == "__main__":
    main()
